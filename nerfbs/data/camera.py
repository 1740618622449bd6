"""Cameras of the NeRFBlendShape layout: the stored <-> renderer pose conversion and pixel rays.

The renderer's camera-to-world P comes from the stored matrix M (transforms.json) by taking M's rows
in the order 1, 2, 0, negating the 3x3 block's second and third columns and scaling the translation
(``scale``, 0.33 in the format). ``stored_from_renderer`` is its exact inverse. A pixel (u, v) (no
half-pixel offset) lifts to the camera point ((u - cx) / fx, (v - cy) / fy, 1); its ray leaves P's
translation along P's rotation applied to that point, normalised. Nothing here is differentiated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FORMAT_SCALE = 0.33
_ROWS = [1, 2, 0]  # renderer row i is stored row _ROWS[i]
_FLIP = (1.0, -1.0, -1.0)  # column signs of the 3x3 block


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole camera's image size (pixels) and intrinsics (pixels; no half-pixel offset, FORMAT.md)."""

    height: int
    width: int
    fx: float
    fy: float
    cx: float
    cy: float

    def resized(self, height: int, width: int) -> "Intrinsics":
        """The same camera seeing an image of ``height`` x ``width``: focal lengths and centre scale with it."""
        sy, sx = height / self.height, width / self.width
        return Intrinsics(height, width, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy)


def _check_pose(m, name: str) -> None:
    if tuple(m.shape[-2:]) != (4, 4):
        raise ValueError(f"{name}: expected [..., 4, 4], got {tuple(m.shape)}")


def renderer_from_stored(m, scale: float = FORMAT_SCALE):
    """Renderer camera-to-world P [..., 4, 4] from the stored transform_matrix M [..., 4, 4].

    Works on numpy arrays and torch tensors (same type, dtype and device as the input).
    """
    _check_pose(m, "renderer_from_stored")
    lib = torch if isinstance(m, torch.Tensor) else np
    out = lib.zeros_like(m)
    for i, r in enumerate(_ROWS):
        for j in range(3):
            out[..., i, j] = m[..., r, j] * _FLIP[j]
        out[..., i, 3] = m[..., r, 3] * scale
    out[..., 3, 3] = 1.0
    return out


def stored_from_renderer(p, scale: float = FORMAT_SCALE):
    """Stored transform_matrix M [..., 4, 4] such that ``renderer_from_stored(M, scale) == P``."""
    _check_pose(p, "stored_from_renderer")
    lib = torch if isinstance(p, torch.Tensor) else np
    out = lib.zeros_like(p)
    for i, r in enumerate(_ROWS):
        for j in range(3):
            out[..., r, j] = p[..., i, j] * _FLIP[j]
        out[..., r, 3] = p[..., i, 3] / scale
    out[..., 3, 3] = 1.0
    return out


def pixel_rays(poses: torch.Tensor, fx: float, fy: float, cx: float, cy: float,
               u: torch.Tensor, v: torch.Tensor, pose_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixels (u[r], v[r]) of the cameras poses[pose_index[r]].

    poses [B, 4, 4] renderer camera-to-world; u, v [R] float pixel coordinates (u along the width);
    pose_index [R] long in [0, B). Returns origins [R, 3] and unit directions [R, 3] (poses' dtype).
    """
    _check_pose(poses, "pixel_rays")
    if poses.dim() != 3:
        raise ValueError(f"pixel_rays: poses must be [B, 4, 4], got {tuple(poses.shape)}")
    if u.shape != v.shape or u.shape != pose_index.shape or u.dim() != 1:
        raise ValueError(f"pixel_rays: u, v, pose_index must be [R] alike, got {tuple(u.shape)}, "
                         f"{tuple(v.shape)}, {tuple(pose_index.shape)}")
    dtype = poses.dtype
    cam = torch.stack([(u.to(dtype) - cx) / fx, (v.to(dtype) - cy) / fy, torch.ones_like(u, dtype=dtype)], -1)
    p = poses[pose_index.long()]  # [R, 4, 4]
    directions = torch.einsum("rij,rj->ri", p[:, :3, :3], cam)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return p[:, :3, 3].contiguous(), directions


def image_rays(poses: torch.Tensor, camera: Intrinsics) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays of every pixel of B cameras that share ``camera``'s intrinsics, image-major then row-major
    (index b * H * W + v * W + u).

    poses [B, 4, 4] (or one [4, 4]) renderer camera-to-world. Returns origins [B*H*W, 3], unit directions
    [B*H*W, 3] (poses' dtype) and each ray's image index [B*H*W] int32.
    """
    _check_pose(poses, "image_rays")
    poses = poses.reshape(-1, 4, 4)
    b, h, w, device, dtype = poses.shape[0], camera.height, camera.width, poses.device, poses.dtype
    # One camera-space direction per pixel, shared by the B cameras, turned by each camera's rotation in one
    # batched product: gathering a [4, 4] pose per ray and a per-ray product cost half a millisecond per 512x512
    # frame of a batched render (docs/PERF.md, session 13).
    vv, uu = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    cam = torch.stack([(uu.reshape(-1).to(dtype) - camera.cx) / camera.fx,
                       (vv.reshape(-1).to(dtype) - camera.cy) / camera.fy,
                       torch.ones(h * w, dtype=dtype, device=device)], -1)  # [H*W, 3]
    directions = torch.matmul(cam, poses[:, :3, :3].transpose(1, 2)).reshape(-1, 3)  # [B*H*W, 3]
    directions = directions / directions.norm(dim=-1, keepdim=True)
    origins = poses[:, None, :3, 3].expand(b, h * w, 3).reshape(-1, 3)
    index = torch.arange(b, device=device, dtype=torch.int32).repeat_interleave(h * w)
    return origins, directions, index


def project(points: torch.Tensor, pose: torch.Tensor, fx: float, fy: float, cx: float, cy: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates [N, 2] (u, v) and camera depth [N] of world points [N, 3] seen by pose [4, 4]."""
    rot, t = pose[:3, :3], pose[:3, 3]
    cam = (points - t) @ rot  # rows of rot^T (p - t)
    z = cam[:, 2]
    uv = torch.stack([cam[:, 0] / z * fx + cx, cam[:, 1] / z * fy + cy], -1)
    return uv, z
