"""Whole images of the field from cameras: the one image renderer behind validation, evaluation,
``nerfbs render`` and the viewer."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nerfbs.config import RenderConfig
from nerfbs.data.camera import Intrinsics, image_rays
from nerfbs.data.subject import Subject
from nerfbs.field import BlendShapeField
from nerfbs.render.rays import SAMPLES_PER_ROUND, SINGLE_FRAME_SAMPLES_PER_ROUND, render_rays
from taichi_kernels.occupancy import OccupancyGrid


@dataclass
class Images:
    """B rendered images: rgb [B, H, W, 3] float32 composited over the background, opacity [B, H, W] and
    depth [B, H, W] (ray distance in world units), on the field's device."""

    rgb: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor


@torch.no_grad()
def render_images(field: BlendShapeField, grid: OccupancyGrid, config: RenderConfig, poses: torch.Tensor,
                  camera: Intrinsics, coeffs: torch.Tensor, background: torch.Tensor, *,
                  samples_per_round: int | None = None, stats: dict | None = None) -> Images:
    """Render B images in one inference pass.

    poses [B, 4, 4] renderer camera-to-world; coeffs [B, K+1] the model's coefficient rows (neutral 1.0 first);
    background [H, W, 3] shared, or [B, H, W, 3], float in [0, 1]. Not differentiable. ``samples_per_round``:
    the inference loop's first round (default: ``SINGLE_FRAME_SAMPLES_PER_ROUND`` for one image, else
    ``SAMPLES_PER_ROUND``); ``stats`` receives the loop's figures (``render_rays``)."""
    poses = poses.reshape(-1, 4, 4).float()
    b, h, w = poses.shape[0], camera.height, camera.width
    if coeffs.dim() != 2 or coeffs.shape[0] != b:
        raise ValueError(f"render_images: coeffs must be [{b}, K+1] for {b} poses, got {tuple(coeffs.shape)}")
    background = background.float().reshape(-1, h * w, 3).expand(b, h * w, 3).reshape(-1, 3)
    origins, directions, index = image_rays(poses, camera)
    if samples_per_round is None:
        samples_per_round = SINGLE_FRAME_SAMPLES_PER_ROUND if b == 1 else SAMPLES_PER_ROUND
    rgb, opacity, depth = render_rays(field, grid, config, origins, directions, index, coeffs, background,
                                      samples_per_round=samples_per_round, stats=stats)
    return Images(rgb.reshape(b, h, w, 3), opacity.reshape(b, h, w), depth.reshape(b, h, w))


def render_image(field: BlendShapeField, grid: OccupancyGrid, config: RenderConfig, pose: torch.Tensor,
                 camera: Intrinsics, coeffs: torch.Tensor, background: torch.Tensor, *,
                 samples_per_round: int | None = None, stats: dict | None = None) -> Images:
    """One image (the viewer's call): pose [4, 4], coeffs [K+1], background [H, W, 3]; the result has B = 1.
    One host sync per round of the inference loop (see ``render_images`` for the options)."""
    return render_images(field, grid, config, pose.reshape(1, 4, 4), camera, coeffs.reshape(1, -1), background,
                         samples_per_round=samples_per_round, stats=stats)


def render_subject_frame(field: BlendShapeField, grid: OccupancyGrid, config: RenderConfig, subject: Subject,
                         frame: int) -> Images:
    """Frame ``frame`` of ``subject`` re-rendered with its own pose, coefficients and background (B = 1)."""
    background = subject.background.float() / 255.0  # [H, W, 3]
    return render_image(field, grid, config, subject.poses[frame], subject.intrinsics, subject.coeffs[frame], background)


def render_with_truth(field: BlendShapeField, grid: OccupancyGrid, config: RenderConfig, subject: Subject,
                      frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``frame`` re-rendered and its head image: (prediction, truth) as float32 [H, W, 3] numpy images
    in [0, 1], for validation and evaluation."""
    pred = render_subject_frame(field, grid, config, subject, frame).rgb[0]
    truth = subject.frame(frame)[0].float() / 255.0
    return pred.clamp(0, 1).cpu().numpy(), truth.cpu().numpy()
