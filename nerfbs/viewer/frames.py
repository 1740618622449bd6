"""Images of an avatar from a camera and a coefficient vector, and the sequences the viewer plays.

``FrameRenderer`` knows a pose, intrinsics, coefficients and a background kind, nothing of the web; it
renders through ``render.image.render_image``, the renderer of validation, evaluation and ``nerfbs render``
(one image per call; a batch-1 fast path would help the viewer most, see the render-speed work).
``sequences`` builds the held-out, training and driven sequences with ``export.job.plan_render`` (the
semantics of ``nerfbs render --frames / --drive``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from nerfbs.data.camera import Intrinsics
from nerfbs.export.avatar import Avatar
from nerfbs.export.job import background_image, plan_render, to_pixels
from nerfbs.render.image import render_image

_CACHED_BACKGROUNDS = 4


def backdrop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The dataset background ``image`` [h, w, 3] uint8 for a ``height`` x ``width`` view of the same vertical
    field of view: scaled to the height (so its centre lines up with the dataset camera's view), then
    cropped to the width, or widened by repeating its edge columns."""
    h0, w0 = image.shape[:2]
    scaled_width = max(1, round(w0 * height / h0))
    interpolation = cv2.INTER_AREA if height < h0 else cv2.INTER_LINEAR
    scaled = cv2.resize(image, (scaled_width, height), interpolation=interpolation)
    if scaled_width >= width:
        x0 = (scaled_width - width) // 2
        return np.ascontiguousarray(scaled[:, x0:x0 + width])
    left = (width - scaled_width) // 2
    return cv2.copyMakeBorder(scaled, 0, 0, left, width - scaled_width - left, cv2.BORDER_REPLICATE)


class FrameRenderer:
    """Renders ``avatar`` images for the viewer. Call it from one thread at a time (the render thread)."""

    def __init__(self, avatar: Avatar):
        self.avatar = avatar
        self._backgrounds: dict[tuple[str, int, int], torch.Tensor] = {}

    def background(self, kind: str, height: int, width: int) -> torch.Tensor:
        """[H, W, 3] float32 in [0, 1] on the avatar's device for the kind ``dataset`` (``backdrop`` of bc.jpg),
        ``white`` or ``transparent`` (zeros; the opacity becomes the alpha channel)."""
        key = (kind, height, width)
        if key not in self._backgrounds:
            if kind == "dataset":
                bc = backdrop(self.avatar.subject.background.cpu().numpy(), height, width)
                image = torch.from_numpy(bc).to(self.avatar.device).float() / 255.0
            else:
                image = background_image(self.avatar, "white" if kind == "white" else "alpha", height, width)
            while len(self._backgrounds) >= _CACHED_BACKGROUNDS:
                self._backgrounds.pop(next(iter(self._backgrounds)))
            self._backgrounds[key] = image
        return self._backgrounds[key]

    def warm_up(self, pose: np.ndarray, coeffs: np.ndarray) -> None:
        """Render small frames of every background kind from ``pose`` [4, 4] with ``coeffs`` [K], on the calling
        thread, which must be the main thread: Taichi compiles kernels on its main thread only (it asserts
        so), and the render thread must find them compiled."""
        camera = self.avatar.subject.intrinsics
        for kind, side in (("dataset", 24), ("white", 32), ("transparent", 40)):
            self(pose, camera.resized(side, side), coeffs, kind)

    def __call__(self, pose: np.ndarray, camera: Intrinsics, coeffs: np.ndarray, background: str) -> np.ndarray:
        """One image: ``pose`` [4, 4] renderer camera-to-world, ``coeffs`` [K] (already in the training range).

        Returns uint8 [H, W, 3], or [H, W, 4] with the opacity as alpha for the ``transparent`` background."""
        device = self.avatar.device
        row = torch.ones(len(coeffs) + 1, dtype=torch.float32)
        row[1:] = torch.as_tensor(np.asarray(coeffs, dtype=np.float32))
        pose_t = torch.as_tensor(np.asarray(pose, dtype=np.float32)).to(device)
        images = render_image(self.avatar.field, self.avatar.grid, self.avatar.config.render, pose_t, camera,
                              row.to(device), self.background(background, camera.height, camera.width))
        return to_pixels(images.rgb[0], images.opacity[0], background == "transparent").cpu().numpy()


@dataclass
class Sequence:
    """Frames to play: ``poses`` [T, 4, 4] float64 renderer camera-to-world, ``coeffs`` [T, K] float32 and,
    per frame, what it shows (``labels``, e.g. ``frame 8`` or ``driver frame 3``)."""

    name: str
    poses: np.ndarray
    coeffs: np.ndarray
    labels: list[str]

    def __len__(self) -> int:
        return self.coeffs.shape[0]


def sequences(avatar: Avatar, drive: Optional[str | Path] = None, drive_relative: bool = False) -> dict[str, Sequence]:
    """The sequences the viewer offers: ``held-out`` (when there are held-out frames), ``training`` and,
    with ``drive``, ``driven`` (the driving sequence's coefficients on the held-out cameras, forth and back,
    as ``nerfbs render --drive``). Bad driving files raise UserError."""
    s = avatar.subject
    out: dict[str, Sequence] = {}
    choices = [("held-out", "test")] if s.num_frames > s.num_train else []
    choices.append(("training", "train"))
    for name, frames in choices:
        job = plan_render(avatar, frames=frames, nvs=False)
        labels = [f"frame {src['frame']}" for src in job.sources]
        out[name] = Sequence(name, job.poses.double().cpu().numpy(), job.coeffs[:, 1:].cpu().numpy(), labels)
    if drive is not None:
        job = plan_render(avatar, frames="test" if "held-out" in out else "train", drive=drive,
                          drive_relative=drive_relative, nvs=False)
        labels = [f"driver frame {src['driver_frame']}" for src in job.sources]
        out["driven"] = Sequence("driven", job.poses.double().cpu().numpy(), job.coeffs[:, 1:].cpu().numpy(), labels)
    return out
