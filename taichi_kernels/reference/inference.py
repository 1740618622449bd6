"""Plain-PyTorch twin of ``taichi_kernels.inference``: marches every ray at once, evaluates the field and
composites (the round sizes of the alive-ray loop do not matter to the result)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from taichi_kernels.occupancy import OccupancyGrid

from taichi_kernels.reference.composite import composite
from taichi_kernels.reference.march import march_rays_train
from taichi_kernels.samples import FieldFn, FieldLogits, MarchParams


def render_rays_inference(origins: torch.Tensor, directions: torch.Tensor, ray_frame: torch.Tensor,
                          field_fn: FieldFn, grid: "OccupancyGrid", params: MarchParams, background: torch.Tensor, *,
                          samples_per_round: int = 8, max_samples_per_round: int = 64,
                          stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The twin renders in one pass (march everything, evaluate, composite); the round sizes do not matter."""
    s = march_rays_train(origins, directions, grid, params, jitter=False)
    with torch.no_grad():
        out = field_fn(s.positions, s.directions, ray_frame[s.ray_index.long()])
        sigma, rgb = out.activated() if isinstance(out, FieldLogits) else out
        return composite(sigma, rgb, s.t, s.dt, s.ray_offsets, s.ray_counts, background, early_stop=params.early_stop)
