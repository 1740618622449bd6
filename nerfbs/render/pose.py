"""Per-frame rigid corrections of camera poses (pose refinement), applied on the world side.

A correction is a rotation ``w`` (axis-angle 3-vector, radians) and a translation ``t`` (world units). It
maps a renderer camera-to-world P to ``P' = C @ P`` with ``C = [[R(w), t], [0, 1]]``: the camera turns about
the world origin (the head's centre) and shifts by ``t``. A ray of P, origin o and unit direction d, is the
ray of P' with origin ``R(w) o + t`` and direction ``R(w) d``, so training applies corrections to ray batches
and rendering to whole poses, with the same result. Zero corrections leave rays and poses bit-identical.
``refined_subject`` is the one place where a trained run's corrections replace the training frames' cameras
for rendering (avatars, benchmarks); held-out frames keep their tracked cameras.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from nerfbs.data.subject import Subject


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [B, 3, 3] of axis-angle vectors w [B, 3] (radians), by Rodrigues' formula:
    ``R = I + a K + b K^2`` with K the cross-product matrix of w, ``a = sin(θ)/θ``, ``b = (1 - cos θ)/θ^2``,
    θ = |w|; near θ = 0 the series of a and b keep values and gradients finite (dR/dw at 0 is exact).
    Differentiable; computed in w's dtype."""
    theta2 = (w * w).sum(-1)  # [B]
    small = theta2 < 1e-6
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / safe2)
    zero = torch.zeros_like(w[:, 0])
    k = torch.stack([zero, -w[:, 2], w[:, 1],
                     w[:, 2], zero, -w[:, 0],
                     -w[:, 1], w[:, 0], zero], -1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(k)
    return eye + a[:, None, None] * k + b[:, None, None] * (k @ k)


def correct_poses(poses: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """``C @ P`` for camera-to-world poses [F, 4, 4] and corrections rotation [F, 3] (radians), translation
    [F, 3] (world units). Differentiable in the corrections; float32 whatever autocast says."""
    with torch.autocast(poses.device.type, enabled=False):
        rot = so3_exp(rotation.float())  # [F, 3, 3]
        out = poses.float().clone()
        out[:, :3, :3] = rot @ poses[:, :3, :3].float()
        out[:, :3, 3] = (rot @ poses[:, :3, 3:].float()).squeeze(-1) + translation.float()
    return out


class PoseCorrection(nn.Module):
    """Learnable corrections of F frames' cameras: ``rotation`` [F, 3] radians and ``translation`` [F, 3] world
    units, zero at the start (see the module docstring for how they act)."""

    def __init__(self, num_frames: int):
        super().__init__()
        self.rotation = nn.Parameter(torch.zeros(num_frames, 3))
        self.translation = nn.Parameter(torch.zeros(num_frames, 3))

    @property
    def num_frames(self) -> int:
        """F, the number of frames corrected."""
        return self.rotation.shape[0]

    def correct_rays(self, origins: torch.Tensor, directions: torch.Tensor, frames: torch.Tensor,
                     slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays of the corrected cameras: origins, unit directions [R, 3] float32 of the rays of frames[slot[r]]
        (frames [B] long rows of the corrections, slot [R] in [0, B)). Differentiable in the corrections;
        float32 whatever autocast says (an fp16 rotation would move origins by ~1e-4, a pixel)."""
        with torch.autocast(origins.device.type, enabled=False):
            rot = so3_exp(self.rotation[frames])[slot.long()]  # [R, 3, 3]
            shift = self.translation[frames][slot.long()]  # [R, 3]
            new_origins = (rot * origins[:, None, :]).sum(-1) + shift
            new_directions = (rot * directions[:, None, :]).sum(-1)
        return new_origins, new_directions

    def penalty(self, frames: torch.Tensor, bound: float) -> torch.Tensor:
        """Mean over frames [B] of ``|rotation|^2 + |translation / bound|^2`` (dimensionless; a scalar)."""
        rot, shift = self.rotation[frames], self.translation[frames] / bound
        return ((rot * rot).sum(-1) + (shift * shift).sum(-1)).mean()

    @torch.no_grad()
    def recenter_(self) -> None:
        """Subtract the mean correction over all frames (in place). A correction shared by every frame moves the
        scene, not a frame's error: without it the field would drift away from the held-out frames' tracked
        poses. No host sync."""
        self.rotation.sub_(self.rotation.mean(0, keepdim=True))
        self.translation.sub_(self.translation.mean(0, keepdim=True))

    def poses(self, poses: torch.Tensor) -> torch.Tensor:
        """The corrected poses [F, 4, 4] of the F frames' poses [F, 4, 4] (not differentiable)."""
        if poses.shape[0] != self.num_frames:
            raise ValueError(f"PoseCorrection.poses: {self.num_frames} corrections for {poses.shape[0]} poses")
        with torch.no_grad():
            return correct_poses(poses, self.rotation, self.translation)


def refined_subject(subject: Subject, correction: PoseCorrection | None) -> Subject:
    """``subject`` with its training frames' cameras ``poses[:num_train]`` corrected by ``correction`` (one row
    per training frame), held-out cameras unchanged; a shallow copy sharing everything else. None: ``subject``."""
    if correction is None:
        return subject
    if correction.num_frames != subject.num_train:
        raise ValueError(f"refined_subject: {correction.num_frames} corrections for {subject.num_train} training frames")
    poses = subject.poses.clone()
    poses[:subject.num_train] = correction.poses(poses[:subject.num_train]).to(poses.device)
    return dataclasses.replace(subject, poses=poses)
