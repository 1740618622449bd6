"""``nerfbs demo``: the whole pipeline on a fresh machine within a time budget.

Synthesises a small talking head, trains an avatar on it, scores the held-out frames, renders them
(and the original's novel-view twins) from the checkpoint, and encodes ``demo.mp4`` (render beside
truth) and ``novel_view.mp4``. On a CPU the subject and the model are small; on a GPU the subject is
larger and the model is the original recipe. ``demo_subject`` and ``demo_config`` hold those choices.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nerfbs.config import SMALL_MODEL, SMALL_RENDER, Config, DataConfig, TrainConfig
from nerfbs.errors import UserError

RESERVE_FRACTION = 0.15  # of the budget kept for evaluation, rendering and encoding after training
MIN_TRAIN_SECONDS = 10.0


@dataclass(frozen=True)
class DemoSubject:
    frames: int
    size: int
    coeffs: int
    test_last: int


def demo_subject(device: torch.device) -> DemoSubject:
    """The synthetic subject the demo trains on: small on a CPU, larger on a GPU."""
    if device.type == "cuda":
        return DemoSubject(frames=300, size=512, coeffs=46, test_last=30)
    return DemoSubject(frames=60, size=128, coeffs=8, test_last=10)


def demo_config(device: torch.device) -> Config:
    """The demo's training recipe (the subject folder, held-out count and time budget are filled in later).

    CUDA: the original recipe. CPU: a smaller hash grid, MLPs and occupancy grid, and a higher learning
    rate, so that a few minutes on two cores give a recognisable avatar."""
    no_checkpoints = dict(validate_every=10 ** 9, checkpoint_every=10 ** 9)
    if device.type == "cuda":
        return Config(train=TrainConfig(steps=30000, **no_checkpoints))
    return Config(
        model=SMALL_MODEL,
        render=SMALL_RENDER,
        train=TrainConfig(steps=100000, rays_per_image=1024, images_per_step=2, lr=5e-3, mask_loss_steps=300,
                          use_lpips=False, lpips_from_step=10 ** 9, occupancy_warmup_steps=64, **no_checkpoints))


@dataclass
class DemoResult:
    root: Path
    subject: Path
    workspace: Path
    checkpoint: Path
    render_dir: Path
    truth_dir: Path
    video: Path
    novel_video: Path
    metrics: dict
    render_fps: float
    seconds: float


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty — remove it or pass --out <new folder>")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def run_demo(out: Path, *, minutes: float = 10.0, frames: int = 0, size: int = 0, steps: int = 0) -> DemoResult:
    """Run the demo into ``out`` (which must be new or empty) and print where everything is.

    ``frames`` / ``size`` (0: the device's default) change the synthetic subject; ``steps`` (0: none)
    caps training, which otherwise ends with the time budget."""
    from nerfbs import commands
    from nerfbs.evaluate import report as evaluate
    from nerfbs.export.avatar import load_avatar
    from nerfbs.images import write_png
    from nerfbs.train.perceptual import load_lpips
    from nerfbs.export.job import plan_render, run_job
    from nerfbs.synth.generate import synthesize
    from nerfbs.export.video import export_video
    from taichi_kernels import runtime

    if minutes <= 0:
        raise UserError(f"--minutes must be positive, got {minutes}")
    out = Path(out)
    _check_out(out)
    start = time.perf_counter()
    console = commands.console
    device = runtime.torch_device()
    spec = demo_subject(device)
    n_frames = frames or spec.frames
    test_last = min(spec.test_last, max(1, n_frames // 5))
    spec = dataclasses.replace(spec, frames=n_frames, size=size or spec.size, test_last=test_last)
    if spec.frames < 2:
        raise UserError(f"--frames must be at least 2 (training and held-out frames), got {spec.frames}")
    console.print(f"nerfbs demo on {device.type}: {spec.frames} frames of {spec.size}x{spec.size}, "
                  f"{spec.coeffs} coefficients, {minutes:g} min budget -> {out}")

    subject_dir = out / "subject"
    with commands.progress_bar("synthesising a subject", total=spec.frames) as update:
        synthesize(subject_dir, frames=spec.frames, size=spec.size, coeffs=spec.coeffs, seed=0, progress=update)

    config = demo_config(device)
    train_s = max(MIN_TRAIN_SECONDS, minutes * 60.0 * (1.0 - RESERVE_FRACTION) - (time.perf_counter() - start))
    train_cfg = dataclasses.replace(config.train, minutes=train_s / 60.0, steps=steps or config.train.steps)
    if train_cfg.use_lpips and load_lpips(device, allow_missing=True) is None:
        console.print("LPIPS weights not found: training without the perceptual loss")
        train_cfg = dataclasses.replace(train_cfg, use_lpips=False)
    config = config.replace(data=DataConfig(subject=str(subject_dir.resolve()), test_last=spec.test_last),
                            train=train_cfg)
    workspace = out / "run"
    metrics = commands.train_and_report(config, workspace, resume=False, print_table=False)

    checkpoint = workspace / "checkpoints" / "latest.pth"
    avatar = load_avatar(checkpoint, device)
    job = plan_render(avatar, frames="test")
    render_dir, truth_dir, novel_dir = out / "render", out / "truth", out / "novel_view"
    with commands.progress_bar("rendering held-out frames", total=len(job)) as update:
        stats = run_job(avatar, job, render_dir, batch=4, progress=update)
    novel_dir.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(int(f) for f in avatar.subject.test_indices):
        write_png(truth_dir / f"{i:04d}.png", avatar.subject.frame(frame)[0].cpu().numpy())
        _link_or_copy(render_dir / f"{i:04d}_nvs.png", novel_dir / f"{i:04d}.png")
    with commands.progress_bar("encoding videos") as update:
        video = out / "demo.mp4"
        export_video(render_dir, video, fps=25, side_by_side=truth_dir, progress=update)
        novel_video = out / "novel_view.mp4"
        export_video(novel_dir, novel_video, fps=25, progress=update)

    seconds = time.perf_counter() - start
    table = evaluate.Evaluation(rows=metrics["per_frame"]).markdown()
    console.print(f"\n{table}")
    console.print(f"demo finished in {seconds / 60:.1f} min. Everything is under {out}/:\n"
                  f"  demo.mp4        render (left) beside the held-out truth (right)\n"
                  f"  novel_view.mp4  the same frames from the original's swinging novel-view camera\n"
                  f"  subject/        the synthetic subject (NeRFBlendShape layout)\n"
                  f"  run/            training workspace: checkpoints/latest.pth, curves.png, validation/, eval/\n"
                  f"  render/         rendered PNGs ({stats.fps:.1f} frames/s), render/*_nvs.png novel views\n"
                  f"Next: nerfbs render {checkpoint} --set jawOpen=1.0   (open the mouth in every frame)")
    return DemoResult(root=out, subject=subject_dir, workspace=workspace, checkpoint=checkpoint, render_dir=render_dir,
                      truth_dir=truth_dir, video=video, novel_video=novel_video, metrics=metrics,
                      render_fps=stats.fps, seconds=seconds)
