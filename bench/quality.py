"""GPU quality and throughput benchmark for training (issue "Training end to end").

Synthesises a subject (or takes one), trains it with a wall-clock budget, scores every held-out frame
at the given minutes of training (evaluation time is not counted as training time), then measures a
step-time breakdown, and the batched render speed of the held-out frames. Prints a short table and
writes everything as JSON to --out.

    NERFBS_ARCH=cuda python3 bench/quality.py --out $OUT/quality.json --minutes 5 --marks 1,2,5
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerfbs.evaluate import report as evaluate
from nerfbs.train import loop as train  # noqa: E402
from nerfbs.render.image import render_with_truth  # noqa: E402
from nerfbs.render.pose import refined_subject  # noqa: E402
from nerfbs.config import Config, DataConfig, TrainConfig  # noqa: E402
from nerfbs.train.workspace import Workspace  # noqa: E402
from taichi_kernels import runtime  # noqa: E402
from taichi_kernels.composite import composite  # noqa: E402
from taichi_kernels.march import march_rays_train  # noqa: E402
from taichi_kernels.samples import MarchParams  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def render(run: train.TrainRun, frame: int):
    """(prediction, truth) of one frame of the run (or of an ``Avatar``: the same field names; its subject's
    training cameras are refined already), training frames seen by their refined cameras."""
    subject = refined_subject(run.subject, getattr(run, "poses", None))
    return render_with_truth(run.field, run.grid, run.config.render, subject, frame)


def score_held_out(run: train.TrainRun) -> dict:
    frames = [int(i) for i in run.subject.test_indices]
    result, _ = evaluate.evaluate_frames(
        lambda f: render(run, f),
        frames, run.subject.face_rects, run.subject.mouth_rects, None,
        originals=lambda f: (run.subject.original(f), run.subject.landmarks[f].numpy()))
    return result.mean()


def write_sheet(run: train.TrainRun, path: Path, count: int = 4) -> None:
    from nerfbs.images import error_grid, write_png
    import numpy as np

    test = [int(i) for i in run.subject.test_indices]
    picks = [test[i * (len(test) - 1) // max(count - 1, 1)] for i in range(count)]
    rows = [error_grid(*render(run, f)) for f in picks]
    write_png(path, np.concatenate(rows, axis=0))


def step_breakdown(run: train.TrainRun, steps: int = 30) -> dict:
    """Median milliseconds of each part of a training step, each part synchronised (so slower in sum
    than an unsynchronised step)."""
    cfg = run.config.train
    parts: dict[str, list[float]] = {k: [] for k in ("sample_rays", "march", "field_forward", "composite_forward",
                                                     "loss_backward", "optimizer", "occupancy_update")}
    params = MarchParams.from_render_config(run.config.render)
    for i in range(steps):
        marks = [time.perf_counter()]

        def mark(name):
            sync()
            now = time.perf_counter()
            parts[name].append((now - marks[-1]) * 1000)
            marks.append(now)

        frames = torch.randint(0, run.subject.num_train, (cfg.images_per_step,), device=run.device)
        rays = run.sampler.sample(frames, cfg.rays_per_image, face_fraction=cfg.face_ray_fraction)
        coeffs = run.subject.coeffs[frames]
        mark("sample_rays")
        samples = march_rays_train(rays.origins, rays.directions, run.grid, params, jitter=True)
        mark("march")
        with torch.autocast("cuda", dtype=torch.float16, enabled=run.device.type == "cuda"):
            sigma, rgb = run.field(samples.positions, samples.directions,
                                   rays.frame_slot[samples.ray_index.long()].int(), coeffs)
        mark("field_forward")
        color, opacity, _ = composite(sigma, rgb, samples.t, samples.dt, samples.ray_offsets, samples.ray_counts,
                                      rays.background)
        mark("composite_forward")
        loss = (color - rays.rgb).abs().mean() + run.field.encoder.tables[1:].abs().mean()
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        mark("loss_backward")
        run.scaler.step(run.optimizer)
        run.scaler.update()
        mark("optimizer")
        if i % cfg.occupancy_update_every == 0:
            train.update_occupancy(run.field, run.grid, train.occupancy_probes(run), step=10 ** 6,
                                   warmup_steps=0)
            mark("occupancy_update")
    med = {k: sorted(v)[len(v) // 2] if v else 0.0 for k, v in parts.items()}
    med["occupancy_update_per_step"] = med.pop("occupancy_update") / cfg.occupancy_update_every
    return med


def apply_overrides(config: Config, items: list[str]) -> Config:
    """Dotted overrides such as ``train.lr=1e-2`` or ``model.grid.num_levels=8``, typed from the current value."""
    import dataclasses

    def replaced(obj, path: list[str], text: str):
        current = getattr(obj, path[0])
        if len(path) > 1:
            value = replaced(current, path[1:], text)
        elif isinstance(current, bool):
            value = text.lower() in ("1", "true", "yes")
        else:
            value = type(current)(float(text)) if isinstance(current, int) else type(current)(text)
        return dataclasses.replace(obj, **{path[0]: value})

    for item in items:
        name, _, text = item.partition("=")
        config = replaced(config, name.split("."), text)
    return config


def mouth_diagnosis(run: train.TrainRun, train_frames: int = 40) -> dict:
    """Per-frame mouth PSNR on every held-out frame and on evenly spaced training frames, with the frame's
    coefficients: tells under-fitting (low on training frames too) from poor generalisation."""
    def rows(frames):
        result, _ = evaluate.evaluate_frames(
            lambda f: render(run, f),
            frames, run.subject.face_rects, run.subject.mouth_rects, None)
        return [{"frame": r["frame"], "mouth": r["mouth"]["psnr"], "face": r["face"]["psnr"], "full": r["full"]["psnr"],
                 "coeffs": [round(float(c), 3) for c in run.subject.coeffs[r["frame"], 1:].tolist()]} for r in result.rows]
    n = run.subject.num_train
    picks = [i * (n - 1) // max(train_frames - 1, 1) for i in range(train_frames)]
    rects = run.subject.mouth_rects
    return {"names": list(run.subject.coeff_names or []), "test": rows([int(i) for i in run.subject.test_indices]),
            "train": rows(picks), "mouth_rect_sizes": [[int(rects[i][2] - rects[i][0]), int(rects[i][3] - rects[i][1])]
                                                       for i in picks[:5]]}


def pose_swap_diagnosis(run: train.TrainRun, scene, pairs: int = 40, partners: list[int] | None = None) -> dict:
    """Mouth PSNR of expressions seen from another frame's pose, the truth rendered by the synthetic head
    (``scene``: ``nerfbs.synth.generate.make_scene`` of the subject): a training expression at a partner's pose, and the
    partner's expression at the training frame's pose, each against the same expression at its own pose.
    Partners are held-out frames unless ``partners`` names others (e.g. other training frames, which tells a
    new pose from a held-out pose). Tells pose generalisation from expression generalisation."""
    import numpy as np
    from nerfbs.data.subject import landmark_rects
    from nerfbs.synth.generate import render_frames

    s, poses = run.subject, run.sampler.poses
    test = [int(i) for i in s.test_indices] if partners is None else list(partners)
    train_picks = [i * (s.num_train - 1) // max(pairs - 1, 1) for i in range(pairs)]
    test_picks = [test[i * (len(test) - 1) // max(pairs - 1, 1)] for i in range(pairs)]
    saved = poses.clone()

    def mouth_psnr(expression: int, pose_of: int) -> float:
        poses[expression] = saved[pose_of]
        try:
            pred, _ = render(run, expression)
        finally:
            poses.copy_(saved)
        r = render_frames(scene, [expression], poses=saved[pose_of:pose_of + 1].cpu().numpy())
        truth = r.head[0].astype(np.float32) / 255.0
        face, mouth, _ = landmark_rects(r.landmarks, s.width, s.height)
        return evaluate.score_frame(pred, truth, face[0], mouth[0], None)["mouth"]["psnr"]

    rows = [{"train": t, "test": h, "train_own": mouth_psnr(t, t), "train_at_test_pose": mouth_psnr(t, h),
             "test_own": mouth_psnr(h, h), "test_at_train_pose": mouth_psnr(h, t)}
            for t, h in zip(train_picks, test_picks)]
    means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("train", "test")}
    return {"means": means, "rows": rows}


def write_mouth_sheet(run: train.TrainRun, path: Path, count: int = 6, zoom: int = 3) -> None:
    """Mouth crops (prediction | truth | error), zoomed, of ``count`` held-out frames spread over the tail."""
    from nerfbs.images import error_grid, write_png
    import numpy as np

    test = [int(i) for i in run.subject.test_indices]
    picks = [test[i * (len(test) - 1) // max(count - 1, 1)] for i in range(count)]
    rows = []
    for f in picks:
        pred, truth = render(run, f)
        x0, y0, x1, y1 = (int(v) for v in run.subject.mouth_rects[f])
        pad = 12
        h, w = pred.shape[:2]
        x0, y0, x1, y1 = max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, w), min(y1 + pad, h)
        crop = error_grid(pred[y0:y1, x0:x1], truth[y0:y1, x0:x1])
        crop = np.repeat(np.repeat(crop, zoom, axis=0), zoom, axis=1)
        rows.append(crop)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    write_png(path, np.concatenate(rows, axis=0))


def diagnose_checkpoint(args: argparse.Namespace, device: torch.device) -> None:
    """Mouth figures of a saved avatar: ``mouth_diagnosis``, the same with every occupancy cell on, and (given
    ``--pose-swap N``, for a subject written by ``synthesize(frames=--frames, size=--size, coeffs=46, seed=0)``)
    ``pose_swap_diagnosis`` on N frame pairs."""
    import numpy as np
    from nerfbs.export.avatar import load_avatar

    avatar = load_avatar(args.checkpoint, device)
    report: dict = {"checkpoint": args.checkpoint, "step": avatar.step, "diagnosis": mouth_diagnosis(avatar)}
    for part in ("test", "train"):
        report[f"{part}_mouth"] = float(np.mean([r["mouth"] for r in report["diagnosis"][part]]))
    bits = avatar.grid.bitfield.clone()
    avatar.grid.bitfield.fill_(255)
    every_cell = mouth_diagnosis(avatar, train_frames=1)
    avatar.grid.bitfield.copy_(bits)
    report["test_mouth_every_cell_on"] = float(np.mean([r["mouth"] for r in every_cell["test"]]))
    if args.pose_swap:
        from nerfbs.synth.generate import make_scene

        scene = make_scene(args.frames, args.size, avatar.num_coeffs, 0, device)
        report["pose_swap"] = pose_swap_diagnosis(avatar, scene, pairs=args.pose_swap)
    if args.mouth_sheet:
        write_mouth_sheet(avatar, Path(args.mouth_sheet))
    print(json.dumps({k: v for k, v in report.items() if k not in ("diagnosis", "pose_swap")}
                     | ({"pose_swap": report["pose_swap"]["means"]} if args.pose_swap else {})), flush=True)
    Path(args.out).write_text(json.dumps(report))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--subject", default="")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--test-last", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--marks", default="1,2,5")
    ap.add_argument("--neutral-only", action="store_true")
    ap.add_argument("--workspace", default="/tmp/nerfbs-quality")
    ap.add_argument("--render-batch", type=int, default=8)
    ap.add_argument("--mouth-rays", type=float, default=None, help="TrainConfig.mouth_ray_fraction (default: the recipe's)")
    ap.add_argument("--quality-only", action="store_true", help="skip the step breakdown and the render speed")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override, e.g. train.lr=1e-2 (repeatable)")
    ap.add_argument("--diagnose", default="", help="write per-frame mouth figures (held-out and training frames) as JSON")
    ap.add_argument("--mouth-sheet", default="", help="write zoomed mouth crops (prediction | truth | error) of 6 held-out frames")
    ap.add_argument("--sheet", default="", help="write a contact sheet (prediction | truth | error) of 4 held-out frames")
    ap.add_argument("--checkpoint", default="", help="diagnose this saved avatar's mouth instead of training (--out: JSON)")
    ap.add_argument("--pose-swap", type=int, default=0, metavar="N",
                    help="with --checkpoint: also pose_swap_diagnosis on N frame pairs (synthetic subjects only)")
    args = ap.parse_args()
    device = runtime.torch_device()
    if args.checkpoint:
        diagnose_checkpoint(args, device)
        return
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "args": vars(args)}

    subject = args.subject
    if not subject:
        from nerfbs.synth.generate import synthesize

        subject = "/tmp/nerfbs-synth"
        t0 = time.perf_counter()
        synthesize(subject, frames=args.frames, size=args.size, coeffs=46, seed=0, device=device)
        report["synth_seconds"] = time.perf_counter() - t0
        print(f"synthesised {args.frames} frames at {args.size}px in {report['synth_seconds']:.1f} s", flush=True)

    config = Config(data=DataConfig(subject=subject, test_last=args.test_last, neutral_only=args.neutral_only),
                    train=TrainConfig(steps=10 ** 9, minutes=args.minutes, validate_every=10 ** 9,
                                      checkpoint_every=10 ** 9, use_lpips=False,
                                      **({} if args.mouth_rays is None else {"mouth_ray_fraction": args.mouth_rays})))
    config = apply_overrides(config, args.set)
    report["config"] = config.to_dict()
    ws = Workspace(Path(args.workspace))
    t0 = time.perf_counter()
    run = train.prepare_run(config, ws, device, resume_from=None, lpips_loader=lambda needed: None)
    report["load_seconds"] = time.perf_counter() - t0
    marks = [float(m) for m in args.marks.split(",") if m]
    curve = []

    def on_step(step: int, figures: dict) -> None:
        if step == 1:  # the first step compiles every training kernel once: not training time
            run.elapsed_before -= figures["ms_per_step"] / 1000.0
            report["first_step_seconds"] = figures["ms_per_step"] / 1000.0
        if marks and run.elapsed >= marks[0] * 60.0:
            t = time.perf_counter()
            scores = score_held_out(run)
            spent = time.perf_counter() - t
            run.elapsed_before -= spent  # evaluation is not training time
            curve.append({"minutes": marks.pop(0), "step": step, "ms_per_step": figures["ms_per_step"],
                          "samples_per_ray": figures["samples_per_ray"], "occupancy": figures["occupancy"],
                          **{f"{r}_psnr": scores[r]["psnr"] for r in scores}, "eval_seconds": spent,
                          "scores": scores})
            print(json.dumps({k: v for k, v in curve[-1].items() if k != "scores"}), flush=True)

    t0 = time.perf_counter()
    train.train(run, on_step=on_step, log_every=200)
    report["train_wall_seconds"] = time.perf_counter() - t0
    report["steps"] = run.step
    report["curve"] = curve
    last_mark = curve[-1] if curve else None
    report["final"] = (last_mark["scores"] if last_mark and last_mark["minutes"] >= args.minutes
                       else score_held_out(run))
    rows = ws.read_metrics()
    step_ms = sorted(r["ms_per_step"] for r in rows[1:]) or [float("nan")]
    report["median_ms_per_step"] = step_ms[len(step_ms) // 2]
    report["steps_per_second"] = run.step / max(run.elapsed, 1e-9)
    report["rays_per_second"] = (config.train.rays_per_image * config.train.images_per_step
                                 * report["steps_per_second"])
    if args.diagnose:
        Path(args.diagnose).write_text(json.dumps(mouth_diagnosis(run)))
    if args.mouth_sheet:
        write_mouth_sheet(run, Path(args.mouth_sheet))
    if args.quality_only:
        print(json.dumps({k: report[k] for k in ("steps", "final", "rays_per_second")}), flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
        return
    report["breakdown_ms"] = step_breakdown(run)
    print(json.dumps({k: report[k] for k in ("steps", "final", "median_ms_per_step", "steps_per_second", "rays_per_second",
                                             "breakdown_ms")}, indent=1), flush=True)

    if args.sheet:
        write_sheet(run, Path(args.sheet))

    from nerfbs.export.avatar import load_avatar
    from nerfbs.export.job import plan_render, run_job

    avatar = load_avatar(ws.latest, device)
    job = plan_render(avatar, frames="test", nvs=False)
    stats = run_job(avatar, job, Path(args.workspace) / "render", batch=args.render_batch)
    report["render"] = {"frames": stats.images, "seconds": stats.seconds, "fps": stats.fps,
                        "batch": args.render_batch}
    print(f"render: {stats.images} frames at {stats.fps:.1f} fps (batch {args.render_batch})", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
