"""Space carving from head masks: the occupancy-grid cells that some training camera sees inside the head.

A training pixel outside the head mask has the background as its target (the dataset replaced everything but
the head by bc.jpg), so every ray through it should cross empty space. A cell that projects outside the
(slightly dilated) head mask in *every* training frame can therefore hold no density that training wants;
it is carved. The test is a union over frames, not the visual hull's intersection: a cell inside the head's
silhouette in a single frame is kept, so geometry that only some expressions have (an open jaw) survives,
and a frame whose mask misses part of the head cannot carve it away. Cells no training camera sees are carved
too: no training ray samples them, so whatever density they hold is untrained.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.nn import functional as F

from nerfbs.data.camera import Intrinsics, project

# Dilation radii (pixels) of the masks: each cell is tested against the smallest one that covers its
# projected half-diagonal plus the margin.
_RADII = (1, 2, 4, 8, 16, 32, 64)


def cell_centres(resolution: int, bound: float, device: torch.device) -> torch.Tensor:
    """[res^3, 3] float32 world centres of the grid's cells, linear index x + res * (y + res * z)."""
    i = torch.arange(resolution ** 3, device=device)
    xyz = torch.stack((i % resolution, (i // resolution) % resolution, i // (resolution * resolution)), 1).float()
    return (xyz + 0.5) * (2.0 * bound / resolution) - bound


def _dilations(mask: torch.Tensor) -> torch.Tensor:
    """[len(_RADII), H, W] bool: ``mask`` [H, W] dilated by each radius (square structuring element)."""
    m = mask.float()[None, None]
    return torch.stack([F.max_pool2d(m, 2 * r + 1, stride=1, padding=r)[0, 0] > 0.5 for r in _RADII])


def silhouette_cells(resolution: int, bound: float, camera: Intrinsics,
                     frames: Iterable[tuple[torch.Tensor, torch.Tensor]], *, margin_px: float = 1.0) -> torch.Tensor:
    """[res^3] bool: cells whose centre projects inside some frame's head mask, dilated by the cell's projected
    half-diagonal plus ``margin_px`` (a cell nearer the camera than that test can resolve is kept).

    frames: (pose [4, 4] renderer camera-to-world, mask [H, W] bool) pairs, on one device. Cells behind a
    camera or outside its image count as not seen by it.
    """
    kept = None
    half_diag = math.sqrt(3.0) * bound / resolution  # world units
    radii = None
    for pose, mask in frames:
        if kept is None:
            device = mask.device
            centres = cell_centres(resolution, bound, device)
            kept = torch.zeros(resolution ** 3, dtype=torch.bool, device=device)
            radii = torch.tensor(_RADII, dtype=torch.float32, device=device)
        if mask.shape != (camera.height, camera.width):
            raise ValueError(f"silhouette_cells: mask {tuple(mask.shape)} does not match the camera's "
                             f"{camera.height}x{camera.width}")
        uv, z = project(centres, pose.to(centres.dtype), camera.fx, camera.fy, camera.cx, camera.cy)
        u, v = torch.round(uv[:, 0]).long(), torch.round(uv[:, 1]).long()
        seen = (z > 1e-6) & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
        need = max(camera.fx, camera.fy) * half_diag / z.clamp_min(1e-6) + margin_px  # pixels
        level = torch.searchsorted(radii, need.contiguous()).clamp_max(len(_RADII) - 1)
        dilated = _dilations(mask)
        inside = dilated[level, v.clamp(0, camera.height - 1), u.clamp(0, camera.width - 1)]
        kept |= seen & (inside | (need > radii[-1]))  # too near the camera to test: kept
    if kept is None:
        raise ValueError("silhouette_cells: no frames given")
    return kept
