"""Test-time pose refinement of held-out frames (as BARF evaluates): the field frozen, only a frame's 6 pose
numbers (a ``PoseCorrection`` of one camera) fitted to its own image by the L1 colour loss, then the frame
rendered from the refined camera. It tells how much of the held-out error is the tracked pose's; the
headline figures stay those of the tracked cameras."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nerfbs.config import RenderConfig
from nerfbs.data.camera import pixel_rays
from nerfbs.data.subject import Subject
from nerfbs.field import BlendShapeField
from nerfbs.render.image import render_image
from nerfbs.render.pose import PoseCorrection
from nerfbs.render.rays import render_rays_train
from taichi_kernels.occupancy import OccupancyGrid


@dataclass(frozen=True)
class PoseFit:
    """Settings of one frame's fit: Adam steps, rays per step (``face_fraction`` of them inside the frame's face
    rectangle, the rest anywhere), and initial step sizes (radians, world units) decaying tenfold over the steps."""

    steps: int = 100
    rays: int = 2048
    face_fraction: float = 0.9
    rotation_lr: float = 2e-3
    translation_lr: float = 1.2e-4
    seed: int = 0


@dataclass
class RefinedFrame:
    """A held-out frame rendered from its refined camera: prediction and truth float32 [H, W, 3] in [0, 1], the
    refined camera-to-world [4, 4] and the correction's size (degrees; world units)."""

    prediction: np.ndarray
    truth: np.ndarray
    pose: torch.Tensor
    rotation_deg: float
    translation: float


def _pixels(rect: torch.Tensor, width: int, height: int, count: int, face_fraction: float,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random integer pixels (u, v) [count]: round(face_fraction x count) inside rect (x0, y0, x1, y1), the rest
    anywhere in the image."""
    n_face = int(round(count * face_fraction))
    lo = torch.tensor([[float(rect[0]), float(rect[1])]] * n_face + [[0.0, 0.0]] * (count - n_face))
    hi = torch.tensor([[float(rect[2]), float(rect[3])]] * n_face + [[float(width), float(height)]] * (count - n_face))
    uv = (lo + torch.rand(count, 2, generator=generator) * (hi - lo)).long()
    uv = torch.minimum(uv, hi.long() - 1)
    return uv[:, 0], uv[:, 1]


def refine_frame(field: BlendShapeField, grid: OccupancyGrid, config: RenderConfig, subject: Subject, frame: int,
                 fit: PoseFit = PoseFit()) -> RefinedFrame:
    """Fit frame ``frame``'s camera to its head image with the field frozen (float32, no autocast), then render
    it from the refined camera. The coefficients are the frame's own and are never fitted."""
    device = subject.device
    truth = subject.frame(frame)[0].float() / 255.0  # [H, W, 3]
    background = subject.background.float() / 255.0  # [H, W, 3]
    pose = subject.poses[frame].float()
    coeffs = subject.coeffs[frame:frame + 1]
    correction = PoseCorrection(1).to(device)
    optimizer = torch.optim.Adam([{"params": [correction.rotation], "lr": fit.rotation_lr},
                                  {"params": [correction.translation], "lr": fit.translation_lr}],
                                 betas=(0.9, 0.99), eps=1e-15)
    cpu_gen = torch.Generator().manual_seed(fit.seed + frame)
    march_gen = torch.Generator(device=device).manual_seed(fit.seed + frame)
    rect = subject.face_rects[frame].cpu()
    zero_slot = torch.zeros(fit.rays, dtype=torch.long, device=device)
    frames = torch.zeros(1, dtype=torch.long, device=device)
    was_training = [p.requires_grad for p in field.parameters()]
    field.requires_grad_(False)
    try:
        for step in range(fit.steps):
            decay = 0.1 ** (step / max(fit.steps, 1))
            for group, lr in zip(optimizer.param_groups, (fit.rotation_lr, fit.translation_lr)):
                group["lr"] = lr * decay
            u, v = (x.to(device) for x in _pixels(rect, subject.width, subject.height, fit.rays, fit.face_fraction,
                                                  cpu_gen))
            origins, directions = pixel_rays(pose[None], subject.fx, subject.fy, subject.cx, subject.cy, u, v, zero_slot)
            origins, directions = correction.correct_rays(origins, directions, frames, zero_slot)
            out = render_rays_train(field, grid, config, origins, directions, zero_slot.int(), coeffs,
                                    background[v, u], generator=march_gen)
            loss = (out.rgb - truth[v, u]).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        for p, flag in zip(field.parameters(), was_training):
            p.requires_grad_(flag)
    refined = correction.poses(pose[None])[0]
    pred = render_image(field, grid, config, refined, subject.intrinsics, subject.coeffs[frame], background).rgb[0]
    return RefinedFrame(prediction=pred.clamp(0, 1).cpu().numpy(), truth=truth.cpu().numpy(), pose=refined,
                        rotation_deg=float(torch.rad2deg(correction.rotation.detach().norm())),
                        translation=float(correction.translation.detach().norm()))
