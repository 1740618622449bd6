"""``nerfbs demo``: the whole pipeline on a fresh machine within a time budget.

Synthesises a small talking head, trains an avatar on it (validating several times, so both curves of
``curves.png`` are drawn), scores the held-out frames, and renders from the checkpoint: the whole sequence
(training and held-out frames) beside the truth, an expression sweep that opens the jaw and raises the
brows within the trained range, and the held-out frames from the original's swinging novel-view camera.
``demo.mp4`` plays the sequence twice and the sweep twice; ``novel_view.mp4`` the novel views. On a CPU the
subject and the model are small; on a GPU the subject is larger and the model is the original recipe.
``demo_subject`` and ``demo_config`` hold those choices. Progress goes through a ``Reporter``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from nerfbs.config import SMALL_MODEL, SMALL_RENDER, Config, DataConfig, TrainConfig
from nerfbs.errors import UserError
from nerfbs.progress import SILENT, Reporter

RESERVE_FRACTION = 0.25  # of the budget kept for evaluation, rendering and encoding after training
MIN_TRAIN_SECONDS = 10.0
VIDEO_FPS = 15
VIDEO_MIN_HEIGHT = 256  # demo.mp4 frames are scaled up (by a whole factor) to at least this height
SWEEP_STEPS = 13
JAW = ("jawOpen",)
BROWS = ("browInnerUp", "browOuterUpLeft", "browOuterUpRight")


@dataclass(frozen=True)
class DemoSubject:
    """The synthetic subject: frame count, image size, coefficients, held-out frames."""

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

    CUDA: the original recipe. CPU: a smaller hash grid, MLPs and occupancy grid, a higher learning rate and
    30% of the face's rays inside the mouth, so that a few minutes on two cores give a recognisable avatar
    with coloured lips (docs/PERF.md, "nerfbs demo on a CPU"). Both validate often enough to draw the
    held-out curve and keep no periodic checkpoints."""
    if device.type == "cuda":
        return Config(train=TrainConfig(steps=30000, validate_every=1000, checkpoint_every=10 ** 9))
    return Config(
        model=SMALL_MODEL,
        render=SMALL_RENDER,
        train=TrainConfig(steps=100000, rays_per_image=1024, images_per_step=2, lr=5e-3, mask_loss_steps=300,
                          use_lpips=False, lpips_from_step=10 ** 9, occupancy_warmup_steps=64, validate_every=100,
                          mouth_ray_fraction=0.3, checkpoint_every=10 ** 9))


@dataclass
class DemoResult:
    """Where the demo put everything, the held-out scores, and the suggested next command."""

    root: Path
    subject: Path
    workspace: Path
    checkpoint: Path
    video: Path
    novel_video: Path
    evaluation: object  # evaluate.report.Evaluation
    render_fps: float
    seconds: float
    next_command: str

    def listing(self) -> str:
        """What each output is, for the closing message."""
        r = self.root
        return (f"demo finished in {self.seconds / 60:.1f} min. Everything is under {r}/:\n"
                f"  demo.mp4        the whole sequence, render (left) beside the truth (right; held-out frames "
                f"marked), twice;\n"
                f"                  then the jaw opening (left) and the brows rising (right), twice\n"
                f"  novel_view.mp4  the held-out frames from the original's swinging novel-view camera\n"
                f"  subject/        the synthetic subject (NeRFBlendShape layout)\n"
                f"  run/            training: checkpoints/latest.pth, curves.png, validation/, eval/\n"
                f"  render/         rendered PNGs ({self.render_fps:.1f} frames/s): sequence/, sweep_jaw/, "
                f"sweep_brows/, novel_view/;\n"
                f"                  composed/ and demo_video/ (demo.mp4's frames)\n"
                f"Next: {self.next_command}")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty — remove it or pass --out <new folder>")


def _caption(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` (uint8 RGB) with ``text`` in white on a dark band along its top edge."""
    out = image.copy()
    h = max(12, image.shape[0] // 14)
    out[:h] = (out[:h].astype(np.float32) * 0.35).astype(np.uint8)
    scale = h / 30.0
    cv2.putText(out, text, (3, int(h * 0.78)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _upscale(image: np.ndarray) -> np.ndarray:
    factor = max(1, math.ceil(VIDEO_MIN_HEIGHT / image.shape[0]))
    if factor == 1:
        return image
    return cv2.resize(image, (image.shape[1] * factor, image.shape[0] * factor), interpolation=cv2.INTER_LINEAR)


def _read(path: Path) -> np.ndarray:
    from nerfbs.export.video import read_rgb

    return read_rgb(path)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _novel_views_only(job):
    """The ``_nvs`` twins of a job planned with ``nvs=True``, renamed ``0000``, ``0001``, ... (the frames
    themselves are rendered with the sequence)."""
    keep = slice(1, None, 2)
    return dataclasses.replace(job, names=[f"{i:04d}" for i in range(len(job.names) // 2)], poses=job.poses[keep],
                               coeffs=job.coeffs[keep], sources=job.sources)


def _write_video_frames(out: Path, avatar, sequence_dir: Path, sweeps: list[tuple[str, Path, list[dict]]],
                        progress) -> Path:
    """demo.mp4's frames, numbered in ``out/demo_video`` (hard links to the composites in ``out/composed``): the
    sequence (render | captioned truth) twice, then the sweeps side by side, forth and back, twice."""
    from nerfbs.export.expressions import ping_pong
    from nerfbs.images import write_png

    frames_dir = out / "composed"
    frames_dir.mkdir(parents=True, exist_ok=True)
    s = avatar.subject
    unique: list[Path] = []
    for i in range(s.num_frames):
        render = _read(sequence_dir / f"{i:04d}.png")
        truth = s.frame(i)[0].cpu().numpy()  # uint8 [H, W, 3]
        label = "truth, held-out" if i >= s.num_train else "truth, training"
        image = np.concatenate([_caption(render, f"nerfbs {i}"), _caption(truth, label)], axis=1)
        path = frames_dir / f"seq_{i:04d}.png"
        write_png(path, _upscale(image))
        unique.append(path)
        progress(i + 1)
    order = unique * 2
    if sweeps:
        steps = len(sweeps[0][2])
        sweep_frames = []
        for t in range(steps):
            panels = []
            for title, folder, sources in sweeps:
                value = next(iter(sources[t]["sweep"].values()))
                panels.append(_caption(_read(folder / f"{t:04d}.png"), f"{title} {value:.2f}"))
            if len(panels) == 1:
                panels.append(np.zeros_like(panels[0]))
            path = frames_dir / f"sweep_{t:04d}.png"
            write_png(path, _upscale(np.concatenate(panels, axis=1)))
            sweep_frames.append(path)
            progress(s.num_frames + t + 1)
        loop = ping_pong(list(range(steps)), 2 * (steps - 1))
        order += [sweep_frames[t] for t in loop] * 2
    numbered = out / "demo_video"
    numbered.mkdir(exist_ok=True)
    for n, path in enumerate(order):
        _link_or_copy(path, numbered / f"{n:04d}.png")
    return numbered


def run_demo(out: Path, *, minutes: float = 10.0, frames: int = 0, size: int = 0, steps: int = 0,
             report: Reporter = SILENT) -> DemoResult:
    """Run the demo into ``out`` (which must be new or empty), reporting through ``report``.

    ``frames`` / ``size`` (0: the device's default) change the synthetic subject; ``steps`` (0: none)
    caps training, which otherwise ends with the time budget."""
    from nerfbs import commands
    from nerfbs.export.avatar import load_avatar
    from nerfbs.export.job import plan_render, run_job
    from nerfbs.export.sweep import sweep_job
    from nerfbs.export.video import export_video
    from nerfbs.synth.generate import synthesize
    from nerfbs.train.perceptual import load_lpips
    from taichi_kernels import runtime

    if minutes <= 0:
        raise UserError(f"--minutes must be positive, got {minutes}")
    out = Path(out)
    _check_out(out)
    start = time.perf_counter()
    device = runtime.torch_device()
    spec = demo_subject(device)
    n_frames = frames or spec.frames
    test_last = min(spec.test_last, max(1, n_frames // 5))
    spec = dataclasses.replace(spec, frames=n_frames, size=size or spec.size, test_last=test_last)
    if spec.frames < 2:
        raise UserError(f"--frames must be at least 2 (training and held-out frames), got {spec.frames}")
    report.message(f"nerfbs demo on {device.type}: {spec.frames} frames of {spec.size}x{spec.size}, "
                   f"{spec.coeffs} coefficients, {minutes:g} min budget -> {out}")

    subject_dir = out / "subject"
    with report.stage("synthesising a subject", total=spec.frames) as update:
        synthesize(subject_dir, frames=spec.frames, size=spec.size, coeffs=spec.coeffs, seed=0, progress=update)

    config = demo_config(device)
    train_s = max(MIN_TRAIN_SECONDS, minutes * 60.0 * (1.0 - RESERVE_FRACTION) - (time.perf_counter() - start))
    train_cfg = dataclasses.replace(config.train, minutes=train_s / 60.0, steps=steps or config.train.steps)
    if train_cfg.use_lpips and load_lpips(device, allow_missing=True) is None:
        report.message("LPIPS weights not found: training without the perceptual loss")
        train_cfg = dataclasses.replace(train_cfg, use_lpips=False)
    config = config.replace(data=DataConfig(subject=str(subject_dir.resolve()), test_last=spec.test_last),
                            train=train_cfg)
    workspace = out / "run"
    outcome = commands.train_and_evaluate(config, workspace, resume=False, report=report,
                                          model_note=f"the demo's on {device.type}")

    checkpoint = workspace / "checkpoints" / "latest.pth"
    avatar = load_avatar(checkpoint, device)
    renders = out / "render"
    jobs = [("sequence", plan_render(avatar, frames="all", nvs=False)),
            ("novel_view", _novel_views_only(plan_render(avatar, frames="test", nvs=True)))]
    sweeps = []
    for title, folder, names in (("jaw open", "sweep_jaw", JAW), ("brows up", "sweep_brows", BROWS)):
        job = sweep_job(avatar, names, SWEEP_STEPS)
        if job is not None:
            jobs.append((folder, job))
            sweeps.append((title, renders / folder, job.sources))
    rendered, seconds = 0, 0.0
    with report.stage("rendering the avatar", total=sum(len(j) for _, j in jobs)) as update:
        for folder, job in jobs:
            stats = run_job(avatar, job, renders / folder, batch=4,
                            progress=lambda done, total, base=rendered: update(base + done))
            rendered += stats.images
            seconds += stats.seconds
    novel_dir = renders / "novel_view"  # numbered 0000.png, ... by _novel_views_only
    composed = avatar.subject.num_frames + (SWEEP_STEPS if sweeps else 0)
    with report.stage("composing demo.mp4", total=composed) as update:
        video_frames = _write_video_frames(renders, avatar, renders / "sequence", sweeps, update)
    video, novel_video = out / "demo.mp4", out / "novel_view.mp4"
    for frames_dir, path in ((video_frames, video), (novel_dir, novel_video)):
        with report.stage(f"encoding {path.name}") as update:
            export_video(frames_dir, path, fps=VIDEO_FPS, progress=update)

    return DemoResult(root=out, subject=subject_dir, workspace=workspace, checkpoint=checkpoint, video=video,
                      novel_video=novel_video, evaluation=outcome.evaluation,
                      render_fps=rendered / max(seconds, 1e-9), seconds=time.perf_counter() - start,
                      next_command=next_command(avatar, checkpoint))


def next_command(avatar, checkpoint: Path) -> str:
    """A ``nerfbs render`` that opens the jaw in every held-out frame, at 90% of the trained range (inside
    it, so nothing is clamped); a plain render of the held-out frames when the avatar has no jawOpen."""
    names = avatar.coeff_names or []
    base = f"nerfbs render {checkpoint}"
    if "jawOpen" not in names:
        return base + "   (render the held-out frames again)"
    i = names.index("jawOpen")
    lo, hi = float(avatar.coeff_min[i]), float(avatar.coeff_max[i])
    value = math.floor((lo + 0.9 * (hi - lo)) * 100) / 100
    return (f"{base} --set jawOpen={value:.2f} --out {checkpoint.parents[1] / 'render' / 'jaw_open'}   "
            f"(every held-out frame with its mouth open; jawOpen was trained from {lo:.2f} to {hi:.2f})")
