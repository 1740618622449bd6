"""Plain-PyTorch twin of ``taichi_kernels.hash_grid``: the blended multi-resolution hash encoding.

Slow (it gathers from every table, with autograd over the gathers) but short and differentiable in
float32 and float64; the tests compare the Taichi kernels against it.
"""
from __future__ import annotations

import torch

from taichi_kernels.grid_layout import GridConfig

_PRIMES = (1, 2654435761, 805459861)
_U32 = 0xFFFFFFFF


def level_indices(corner: torch.Tensor, grid: GridConfig, level: int) -> torch.Tensor:
    """Row index into the level-``level`` slice of a table for integer corners ``[..., 3]`` (int64).

    Dense levels are row-major with x fastest and stride ``resolution + 1``; hashed levels xor the
    coordinates times the primes (uint32 arithmetic) modulo the level size. The level offset is added.
    """
    size = grid.level_sizes[level]
    if grid.level_dense[level]:
        stride = grid.level_resolutions[level] + 1
        index = corner[..., 0] + stride * (corner[..., 1] + stride * corner[..., 2])
    else:
        index = torch.zeros_like(corner[..., 0])
        for d, prime in enumerate(_PRIMES):
            index = index ^ ((corner[..., d] * prime) & _U32)
    return index % size + grid.level_offsets[level]


def blended_hash_encode(
    points: torch.Tensor,  # [N, 3] float, points in [0, 1]^3 (outside: zero features)
    frame_index: torch.Tensor,  # [N] int32, row of coeffs for each point
    coeffs: torch.Tensor,  # [F, K] float, blend weights per frame
    tables: torch.Tensor,  # [K, P, C] float, one hash table per basis
    grid: GridConfig,
) -> torch.Tensor:  # [N, L * C] float
    """feature(x, f)[l * C + c] = sum_k coeffs[f, k] * trilinear lookup of tables[k] at x on level l.

    Differentiable w.r.t. points (inside the box), coeffs and tables; frame_index is not.
    """
    num_bases, entries, channels = tables.shape
    if entries != grid.table_entries or channels != grid.features_per_level or num_bases != grid.num_bases:
        raise ValueError(f"tables: expected [{grid.num_bases}, {grid.table_entries}, {grid.features_per_level}], got {list(tables.shape)}")
    blended = (coeffs @ tables.reshape(num_bases, -1)).reshape(-1, entries, channels)  # [F, P, C]
    inside = ((points >= 0) & (points <= 1)).all(dim=-1)  # [N]
    x = torch.where(inside[:, None], points, torch.zeros_like(points))
    frame = frame_index.long()
    features = []
    for level, scale in enumerate(grid.level_scales):
        pos = x * torch.tensor(scale, dtype=points.dtype) + 0.5  # [N, 3]
        corner = torch.floor(pos)
        frac = pos - corner
        corner = corner.long()
        value = torch.zeros(points.shape[0], channels, dtype=tables.dtype, device=tables.device)
        for bits in range(8):
            offset = torch.tensor([(bits >> d) & 1 for d in range(3)], device=points.device)
            weight = torch.prod(torch.where(offset.bool(), frac, 1 - frac), dim=-1)  # [N]
            rows = level_indices(corner + offset, grid, level)  # [N]
            value = value + weight[:, None] * blended[frame, rows]
        features.append(value)
    out = torch.cat(features, dim=-1)  # [N, L * C]
    return out * inside[:, None].to(out.dtype)
