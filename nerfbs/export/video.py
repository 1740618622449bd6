"""Folders of rendered frames -> H.264 mp4 (yuv420p) through imageio-ffmpeg, written whole or not at all."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import cv2
import imageio_ffmpeg
import numpy as np
from PIL import Image

from nerfbs.atomic import atomic_path
from nerfbs.config import OUTPUT
from nerfbs.errors import UserError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
_NUMERIC_STEM = re.compile(r"\d+")


def list_frames(frames_dir: Path) -> list[Path]:
    """PNG/JPG files of ``frames_dir`` whose stem is a plain number (``0000.png``, ``17.jpg``), sorted by that
    number. Other files, such as the novel-view twins ``0000_nvs.png`` that ``nerfbs render`` writes beside each
    frame, are skipped."""
    frames_dir = Path(frames_dir)
    if not frames_dir.is_dir():
        raise UserError(f"{frames_dir}: no such folder — pass the folder holding the rendered frames")
    numbered: dict[int, Path] = {}
    for path in frames_dir.iterdir():
        if path.suffix.lower() not in FRAME_SUFFIXES or not _NUMERIC_STEM.fullmatch(path.stem):
            continue
        number = int(path.stem)
        if number in numbered:
            raise UserError(f"{frames_dir}: {numbered[number].name} and {path.name} are both frame {number} — "
                            f"keep one of them")
        numbered[number] = path
    if not numbered:
        raise UserError(f"{frames_dir}: no numbered frames (0000.png, 0001.png, ...) — render some first")
    return [numbered[n] for n in sorted(numbered)]


def _common_size(frames: list[Path]) -> tuple[int, int]:
    """(h, w) shared by every frame, read from the headers only."""
    sizes = {}
    for path in frames:
        try:
            with Image.open(path) as image:
                sizes.setdefault(image.size[::-1], path)
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: not a readable image ({err}) — delete or re-render it") from err
    if len(sizes) > 1:
        listed = ", ".join(f"{p.name} is {w}x{h}" for (h, w), p in sizes.items())
        raise UserError(f"{frames[0].parent}: frames differ in size ({listed}) — render them at one resolution")
    return next(iter(sizes))


def read_rgb(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB; grey becomes RGB, 16-bit is scaled to 8, alpha is composited over white."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError(f"{path}: not a readable image — delete or re-render it")
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[-1] == 4:
        alpha = image[..., 3:].astype(np.float32) / 255.0
        rgb = image[..., 2::-1].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        image = (rgb + 0.5).astype(np.uint8)
    else:
        image = image[..., ::-1]
    return np.ascontiguousarray(image)


def _pad_to_even(image: np.ndarray) -> np.ndarray:
    """Repeat the last row / column where H or W is odd (yuv420p halves both)."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def export_video(frames_dir: Path, out_path: Path, *, fps: float = OUTPUT.video_fps, side_by_side: Path | None = None,
                 progress: Callable[[int, int], None] | None = None) -> tuple[int, tuple[int, int]]:
    """Encode the numbered frames of ``frames_dir`` (see ``list_frames``: ``0000.png``, ``0001.png``, ... in
    numeric order; ``0000_nvs.png`` twins and other names are skipped) into an H.264 yuv420p mp4 at ``out_path``.

    With ``side_by_side``, each frame is shown with the frame of the same rank in that folder to its right (both
    folders need the same number of frames and the same height). Odd dimensions are padded to even by repeating
    the last row / column. The video is written under a temporary name and renamed when complete: on an error or
    Ctrl-C no file is left under ``out_path``. ``progress(done, total)`` is called after each frame.

    Returns the number of frames and the video's (height, width).
    """
    if fps <= 0:
        raise UserError(f"--fps must be positive, got {fps}")
    left = list_frames(Path(frames_dir))
    h, w = _common_size(left)
    right: list[Path] = []
    if side_by_side is not None:
        right = list_frames(Path(side_by_side))
        if len(right) != len(left):
            raise UserError(f"{side_by_side}: {len(right)} frames, but {frames_dir} has {len(left)} — "
                            f"side by side needs the same number of frames")
        h_right, w_right = _common_size(right)
        if h_right != h:
            raise UserError(f"{side_by_side}: frames are {h_right} pixels high, those of {frames_dir} {h} — "
                            f"side by side needs one height")
        w += w_right
    size = (h + h % 2, w + w % 2)
    with atomic_path(out_path, suffix=".mp4") as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (size[1], size[0]), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            quality=None, macro_block_size=2, output_params=["-crf", "18", "-movflags", "+faststart"])
        writer.send(None)  # start ffmpeg
        try:
            for i, path in enumerate(left):
                frame = read_rgb(path)
                if right:
                    frame = np.concatenate([frame, read_rgb(right[i])], axis=1)
                writer.send(_pad_to_even(frame).tobytes())
                if progress is not None:
                    progress(i + 1, len(left))
        finally:
            writer.close()  # flushes on success; on an error or Ctrl-C atomic_path then deletes the partial file
    return len(left), size
