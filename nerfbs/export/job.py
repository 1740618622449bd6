"""Render a list of views (pose, coefficient row, background) of an avatar to PNGs.

``plan_render`` turns the ``nerfbs render`` options into a ``RenderJob``; ``run_job`` renders it
several images per renderer call (``ray_frame`` indexes the batch's coefficient rows), writes the
PNGs on a background thread and reports frames per second of rendering alone (rays, marching,
the field and the copy to the host; no PNG encoding).
"""
from __future__ import annotations

import json
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import torch

from nerfbs.config import OUTPUT
from nerfbs.export import expressions as reenact
from nerfbs.export import views
from nerfbs.atomic import write_text
from nerfbs.export.avatar import Avatar
from nerfbs.data.camera import Intrinsics
from nerfbs.errors import UserError
from nerfbs.images import write_png
from nerfbs.render.image import render_images

BACKGROUNDS = ("dataset", "white", "alpha")
CAMERAS = ("dataset", "orbit")
_OUTPUT_NAME = re.compile(r"^\d+(_nvs)?\.png$")
MAX_PENDING_WRITES = 64  # images waiting for the PNG writer before rendering waits for it


@dataclass
class RenderJob:
    """V views of one size: output stems ``names`` (``0000``, ``0000_nvs``, ...), poses [V, 4, 4] and
    coefficient rows [V, K+1] on the avatar's device; intrinsics of the output size; ``background`` [H, W, 3]
    float in [0, 1] (zeros with ``alpha``, whose PNGs are RGBA with the opacity as alpha)."""

    names: list[str]
    poses: torch.Tensor
    coeffs: torch.Tensor
    camera: Intrinsics
    background: torch.Tensor
    alpha: bool = False
    sources: list[dict] = field(default_factory=list)  # per output frame: where its pose and coefficients came from
    notes: list[str] = field(default_factory=list)  # things the user should hear (clamped --set values)

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class RenderStats:
    """What a render job did: images written, seconds of rendering alone and images per second."""
    images: int
    seconds: float  # rendering alone, all batches
    fps: float  # images per second, after the first batch (kernel compilation) when there are several
    out_dir: Path


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of the output for a ``--scale`` factor in (0, 8]; a UserError outside it."""
    if not 0 < scale <= 8:
        raise UserError(f"--scale must lie in (0, 8], got {scale}")
    return max(1, round(height * scale)), max(1, round(width * scale))


def background_image(avatar: Avatar, kind: str, height: int, width: int) -> torch.Tensor:
    """[H, W, 3] float32 in [0, 1]: the dataset's bc.jpg (resized to the output), white, or zeros (alpha)."""
    if kind not in BACKGROUNDS:
        raise UserError(f"--background {kind}: use one of {', '.join(BACKGROUNDS)}")
    if kind == "white":
        return torch.ones(height, width, 3, device=avatar.device)
    if kind == "alpha":
        return torch.zeros(height, width, 3, device=avatar.device)
    bc = avatar.subject.background
    if tuple(bc.shape[:2]) != (height, width):
        small = height < bc.shape[0]
        resized = cv2.resize(bc.cpu().numpy(), (width, height), interpolation=cv2.INTER_AREA if small else cv2.INTER_LINEAR)
        bc = torch.from_numpy(resized).to(avatar.device)
    return bc.float() / 255.0


def plan_render(avatar: Avatar, *, frames: str = OUTPUT.frames, background: str = OUTPUT.background,
                scale: float = OUTPUT.scale,
                drive: Optional[str | Path] = None, drive_relative: bool = False, settings: Sequence[str] = (),
                camera: str = OUTPUT.camera, nvs: bool = OUTPUT.novel_views) -> RenderJob:
    """The views of ``nerfbs render``: see the command's help for each option.

    Coefficients: the selected frames' own, or (``drive``) one row per driving frame; ``settings`` then
    fix single coefficients. Cameras: the selected frames' own (cycled forth and back when driving), or a
    turntable (``orbit``). With ``nvs`` (not with an orbit) each frame gets a ``_nvs`` twin seen from the
    original's swinging novel-view camera, with the same coefficients."""
    s = avatar.subject
    if camera not in CAMERAS:
        raise UserError(f"--camera {camera}: use one of {', '.join(CAMERAS)}")
    if drive_relative and drive is None:
        raise UserError("--drive-relative needs --drive <other subject's transforms.json>")
    chosen = reenact.select_frames(frames, s.num_frames, s.num_train)
    lo, hi = avatar.coeff_min, avatar.coeff_max
    if drive is not None:
        driver = reenact.read_driver(drive)
        anchor = s.coeffs[0, 1:] if drive_relative else None
        rows = reenact.driver_rows(driver, lo, hi, avatar.coeff_names, relative_to=anchor)
        pose_frames = reenact.ping_pong(chosen, rows.shape[0])
        sources = [{"pose_frame": f, "driver": str(driver.path), "driver_frame": t} for t, f in enumerate(pose_frames)]
    else:
        rows = s.coeffs[chosen]
        pose_frames = chosen
        sources = [{"frame": f, "img_id": s.img_ids[f]} for f in chosen]
    notes: list[str] = []
    if settings:
        rows, notes = reenact.apply_settings(rows, reenact.parse_settings(settings, avatar.coeff_names, avatar.num_coeffs),
                                             lo, hi)

    count = rows.shape[0]
    rig = views.rig_from_poses(s.poses)
    if camera == "orbit":
        poses = views.orbit_poses(rig, count).to(avatar.device)
        for src in sources:
            src.pop("pose_frame", None)
            src["camera"] = "orbit"
        nvs = False
    else:
        poses = s.poses[torch.as_tensor(pose_frames, device=s.poses.device)].to(avatar.device)
    names = [f"{i:04d}" for i in range(count)]
    if nvs:
        twin = views.nvs_poses(rig, count).to(avatar.device)
        poses = torch.stack([poses, twin], 1).reshape(-1, 4, 4)
        rows = rows.repeat_interleave(2, 0)
        names = [n for i in range(count) for n in (f"{i:04d}", f"{i:04d}_nvs")]

    height, width = output_size(s.height, s.width, scale)
    return RenderJob(names=names, poses=poses.float(), coeffs=rows.float().to(avatar.device),
                     camera=s.intrinsics.resized(height, width),
                     background=background_image(avatar, background, height, width), alpha=background == "alpha",
                     sources=sources, notes=notes)


def _clear_outputs(out_dir: Path) -> None:
    """Remove frames of an earlier render (``0000.png``, ``0000_nvs.png``, ...) so none outlives this one."""
    for path in out_dir.iterdir():
        if _OUTPUT_NAME.match(path.name):
            path.unlink()


def to_pixels(rgb: torch.Tensor, opacity: torch.Tensor, alpha: bool) -> torch.Tensor:
    """uint8 [..., 3] (or [..., 4] with straight, not premultiplied, colour and the opacity as alpha), computed
    where the render lives: a quarter of the bytes of float32 cross to the host."""
    if alpha:
        a = opacity.clamp(0.0, 1.0)[..., None]
        straight = torch.where(a > 1e-4, rgb / a.clamp_min(1e-4), torch.zeros_like(rgb))
        rgb = torch.cat([straight, a], dim=-1)
    return (rgb.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)


def run_job(avatar: Avatar, job: RenderJob, out_dir: Path, *, batch: int = OUTPUT.batch,
            progress: Optional[Callable[[int, int], None]] = None) -> RenderStats:
    """Render every view of ``job`` into ``out_dir/<name>.png`` (replacing an earlier render's frames) and
    write ``out_dir/render.json`` (checkpoint, step and each frame's sources)."""
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_outputs(out_dir)
    total = len(job)
    seconds, first_batch = 0.0, 0.0
    pending: list[Future] = []
    with ThreadPoolExecutor(max_workers=2) as writer:
        for start in range(0, total, batch):
            end = min(start + batch, total)
            b = end - start
            t0 = time.perf_counter()
            images = render_images(avatar.field, avatar.grid, avatar.config.render, job.poses[start:end], job.camera,
                                   job.coeffs[start:end], job.background)
            pixels = to_pixels(images.rgb, images.opacity, job.alpha).cpu().numpy()
            elapsed = time.perf_counter() - t0
            seconds += elapsed
            if start == 0:
                first_batch = elapsed
            for j in range(b):
                pending.append(writer.submit(write_png, out_dir / f"{job.names[start + j]}.png", pixels[j]))
            while len(pending) > MAX_PENDING_WRITES:
                pending.pop(0).result()
            if progress is not None:
                progress(end, total)
        for f in pending:
            f.result()
    manifest = {"checkpoint": str(avatar.checkpoint), "step": avatar.step, "size": [job.camera.width, job.camera.height], "alpha": job.alpha,
                "frames": job.sources, "names": job.names}
    write_text(out_dir / "render.json", json.dumps(manifest, indent=1))
    steady = total - min(batch, total)
    fps = steady / (seconds - first_batch) if steady and seconds > first_batch else total / max(seconds, 1e-9)
    return RenderStats(images=total, seconds=seconds, fps=fps, out_dir=out_dir)
