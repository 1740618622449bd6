"""Pose refinement (issue 14): training with and without it, scored on the held-out frames.

For each mode of ``--modes`` (``off``, ``on``), trains ``--minutes`` of the default recipe (LPIPS off, as
bench/quality.py) on one subject and prints the held-out PSNR (full frame, face, mouth; held-out frames keep
their tracked cameras), the training frames' PSNR through their refined cameras, and the corrections' sizes.
Without ``--subject`` it synthesises the procedural head (600 frames, 512 px, the last 100 held out).

``--pose-noise-deg D --pose-noise-px P`` first perturbs the training frames' cameras (truth known on a
synthetic subject): a rotation about the head's centre of RMS angle D degrees and a sideways shift of RMS
P pixels, fixed seed; held-out cameras stay exact. Then it also reports how far the refined training cameras
are from the truth, before and after (rotation in degrees, camera centre in pixels at the head's distance).

``--cpu-step-time N`` instead times N training steps of the small field on a 40-frame 128 px subject, with and
without refinement (alternating, twice each), on the CPU: docs/PERF.md's "Session 6" figures.

    NERFBS_ARCH=cuda python bench/pose_refinement.py --out $OUT/poses.json --minutes 5 --modes off,on
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import render, score_held_out  # noqa: E402
from nerfbs.config import SMALL_MODEL, SMALL_RENDER, Config, DataConfig, TrainConfig  # noqa: E402
from nerfbs.data.subject import Subject  # noqa: E402
from nerfbs.evaluate import report as evaluate  # noqa: E402
from nerfbs.render.pose import correct_poses  # noqa: E402
from nerfbs.train import loop as train  # noqa: E402
from nerfbs.train.workspace import Workspace  # noqa: E402
from taichi_kernels import runtime  # noqa: E402


def perturb_training_poses(subject: Subject, degrees: float, pixels: float, seed: int = 0) -> None:
    """Perturb ``subject.poses[:num_train]`` in place: P <- C @ P with C a rotation about the world origin of
    RMS angle ``degrees`` and a shift along the camera's image axes of RMS ``pixels`` (at the head's distance)."""
    n = subject.num_train
    gen = torch.Generator().manual_seed(seed)
    rotation = torch.randn(n, 3, generator=gen) * math.radians(degrees) / math.sqrt(3.0)
    poses = subject.poses[:n].cpu()
    distance = poses[:, :3, 3].norm(dim=-1, keepdim=True)  # [n, 1] camera to head centre
    sideways = torch.randn(n, 2, generator=gen) * pixels / math.sqrt(2.0) * distance / subject.fx  # world units
    translation = sideways[:, :1] * poses[:, :3, 0] + sideways[:, 1:] * poses[:, :3, 1]
    subject.poses[:n] = correct_poses(poses, rotation, translation).to(subject.poses.device)


def pose_errors(poses: torch.Tensor, truth: torch.Tensor, fx: float) -> dict:
    """Mean and max errors of cameras poses [n, 4, 4] against truth [n, 4, 4]: the rotation between them
    (degrees) and how far the head's centre (the world origin) lands from where the true camera sees it
    (pixels)."""
    rel = poses[:, :3, :3] @ truth[:, :3, :3].transpose(1, 2)
    cos = ((rel.diagonal(dim1=1, dim2=2).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    degrees = torch.rad2deg(torch.acos(cos))

    def centre_pixel(p: torch.Tensor) -> torch.Tensor:  # [n, 2]
        cam = -(p[:, :3, :3].transpose(1, 2) @ p[:, :3, 3:]).squeeze(-1)  # the origin in camera coordinates
        return cam[:, :2] / cam[:, 2:] * fx

    pixels = (centre_pixel(poses) - centre_pixel(truth)).norm(dim=-1)
    return {"rotation_deg_mean": float(degrees.mean()), "rotation_deg_max": float(degrees.max()),
            "head_centre_px_mean": float(pixels.mean()), "head_centre_px_max": float(pixels.max())}


def score_training_frames(run: train.TrainRun, count: int = 20) -> float:
    """Mean full-frame PSNR of ``count`` evenly spread training frames, through their refined cameras."""
    n = run.subject.num_train
    frames = [i * (n - 1) // max(count - 1, 1) for i in range(count)]
    result, _ = evaluate.evaluate_frames(lambda f: render(run, f), frames, run.subject.face_rects,
                                         run.subject.mouth_rects, None)
    return result.mean()["full"]["psnr"]


def perturbed_run(config: Config, workspace: Path, device: torch.device, noise: tuple[float, float]
                  ) -> tuple[train.TrainRun, torch.Tensor | None]:
    """A fresh run of ``config`` whose training cameras are perturbed by ``noise`` (degrees, pixels; see
    ``perturb_training_poses``, same seed every time), and the true training cameras [n, 4, 4] (None without
    noise)."""
    ws = Workspace(workspace)
    ws.create()
    for old in (ws.latest, ws.metrics):
        old.unlink(missing_ok=True)
    run = train.build_run(config, ws, device, lpips=None)
    if not any(noise):
        return run, None
    subject = run.subject
    truth = subject.poses[:subject.num_train].cpu().clone()
    perturb_training_poses(subject, *noise)
    run.sampler.poses = subject.poses.to(run.sampler.device)
    return run, truth


def train_mode(run: train.TrainRun, truth: torch.Tensor | None, marks: list[float]) -> dict:
    """Train the run for its config's minutes or steps (the first step's compilation and evaluations not
    counted); its figures."""
    config, subject = run.config, run.subject
    curve: list[dict] = []

    def on_step(step: int, figures: dict) -> None:
        if step == 1:
            run.elapsed_before -= figures["ms_per_step"] / 1000.0
        if marks and run.elapsed >= marks[0] * 60.0:
            t = time.perf_counter()
            scores = score_held_out(run)
            run.elapsed_before -= time.perf_counter() - t
            curve.append({"minutes": marks.pop(0), "step": step,
                          **{f"{r}_psnr": scores[r]["psnr"] for r in scores}})
            print(json.dumps({"pose_refinement": config.train.pose_refinement, **curve[-1]}), flush=True)

    train.train(run, on_step=on_step, log_every=500)
    scores = score_held_out(run)
    result = {"pose_refinement": config.train.pose_refinement, "steps": run.step,
              "steps_per_second": run.step / max(run.elapsed, 1e-9),
              "held_out": {r: scores[r]["psnr"] for r in scores}, "curve": curve,
              "training_frames_full_psnr": score_training_frames(run)}
    n = subject.num_train
    if run.poses is not None:
        rot = torch.rad2deg(run.poses.rotation.detach().norm(dim=-1))
        distance = subject.poses[:n, :3, 3].norm(dim=-1)
        px = run.poses.translation.detach().norm(dim=-1) * subject.fx / distance
        result["corrections"] = {"rotation_deg_mean": float(rot.mean()), "rotation_deg_max": float(rot.max()),
                                 "translation_px_mean": float(px.mean()), "translation_px_max": float(px.max())}
    if truth is not None:
        refined = subject.poses[:n] if run.poses is None else run.poses.poses(subject.poses[:n])
        result["pose_error_vs_truth"] = pose_errors(refined.cpu(), truth, subject.fx)
    return result


def cpu_step_time(steps: int) -> dict:
    """Median wall and process-CPU milliseconds per step over the second half of ``steps`` steps, small field,
    40 frames at 128 px, refinement off and on alternately (twice each): this machine is shared, so the
    process time (all its threads) is the steadier figure."""
    from nerfbs.synth.generate import synthesize

    device = torch.device("cpu")
    folder = Path("/tmp/nerfbs-poses-cpu")
    if not (folder / "transforms.json").is_file():
        synthesize(folder, frames=40, size=128, coeffs=46, seed=0, device=device)
    rows: dict[str, list[dict]] = {"off": [], "on": []}
    for mode in ("off", "on", "off", "on"):
        config = Config(data=DataConfig(subject=str(folder), test_last=5), model=SMALL_MODEL, render=SMALL_RENDER,
                        train=TrainConfig(steps=steps, lr=5e-3, use_lpips=False, validate_every=10 ** 9,
                                          checkpoint_every=10 ** 9, pose_refinement=mode == "on"))
        run, _ = perturbed_run(config, Path(f"/tmp/nerfbs-poses-cpu-{mode}"), device, (0.0, 0.0))
        wall, cpu = [], []
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            figures = train.train_step(run)
            wall.append((time.perf_counter() - t0) * 1000.0)
            cpu.append((time.process_time() - c0) * 1000.0)
        half = lambda xs: sorted(xs[steps // 2:])[len(xs[steps // 2:]) // 2]  # noqa: E731
        rows[mode].append({"wall_ms": round(half(wall), 1), "cpu_ms": round(half(cpu), 1),
                           "samples_per_ray": round(figures["samples_per_ray"], 1), "psnr": round(figures["psnr"], 2)})
        print(json.dumps({"mode": mode, **rows[mode][-1]}), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--subject", default="", help="subject folder [default: synthesise 600 frames at 512 px]")
    ap.add_argument("--test-last", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=10 ** 9, help="also end each training after this many steps")
    ap.add_argument("--small", action="store_true", help="the CPU demo's recipe: small field, lr 5e-3, 300 mask steps")
    ap.add_argument("--marks", default="1,2", help="minutes at which to score the held-out frames as well")
    ap.add_argument("--modes", default="off,on", help="off, on, or both in that order")
    ap.add_argument("--pose-noise-deg", type=float, default=0.0)
    ap.add_argument("--pose-noise-px", type=float, default=0.0)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override as in bench/quality.py, e.g. train.pose_rotation_lr=5e-4 (repeatable)")
    ap.add_argument("--workspace", default="/tmp/nerfbs-poses")
    ap.add_argument("--cpu-step-time", type=int, default=0, metavar="N")
    args = ap.parse_args()
    if args.cpu_step_time:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        Path(args.out).write_text(json.dumps(cpu_step_time(args.cpu_step_time), indent=1))
        return
    from quality import apply_overrides

    device = runtime.torch_device()
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "args": vars(args)}
    folder = args.subject
    if not folder:
        from nerfbs.synth.generate import synthesize

        folder = f"{args.workspace}-synth"
        if not (Path(folder) / "transforms.json").is_file():
            synthesize(folder, frames=600, size=512, coeffs=46, seed=0, device=device)
    base = Config(data=DataConfig(subject=str(folder), test_last=args.test_last),
                  train=TrainConfig(steps=args.steps, minutes=args.minutes, validate_every=10 ** 9,
                                    checkpoint_every=10 ** 9, use_lpips=False))
    if args.small:
        base = base.replace(model=SMALL_MODEL, render=SMALL_RENDER,
                            train=dataclasses.replace(base.train, lr=5e-3, mask_loss_steps=300, occupancy_warmup_steps=64))
    base = apply_overrides(base, args.set)
    report["runs"] = []
    for mode in [m for m in args.modes.split(",") if m]:
        if mode not in ("off", "on"):
            raise SystemExit(f"--modes: off or on, got {mode}")
        config = base.replace(train=dataclasses.replace(base.train, pose_refinement=mode == "on"))
        marks = [float(m) for m in args.marks.split(",") if m]
        run, truth = perturbed_run(config, Path(f"{args.workspace}-{mode}"), device,
                                   (args.pose_noise_deg, args.pose_noise_px))
        if truth is not None and "pose_error_before" not in report:
            report["pose_error_before"] = pose_errors(run.subject.poses[:run.subject.num_train].cpu(), truth,
                                                      run.subject.fx)
            print(json.dumps({"pose_error_before": report["pose_error_before"]}), flush=True)
        result = train_mode(run, truth, marks)
        report["runs"].append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "curve"}), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
