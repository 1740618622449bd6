"""The distortion loss of mip-NeRF 360 (Barron et al. 2022) on flat, ray-major samples.

Per ray, with weights w_i = T_i (1 - exp(-sigma_i dt_i)) at interval midpoints s_i of length ds_i:

    L = sum_i sum_j w_i w_j |s_i - s_j| + 1/3 sum_i w_i^2 ds_i

small when a ray's weight sits in one short interval, large when it is spread over several surfaces (a
semi-transparent layer over another). Distances are measured in units of the scene box's edge. Computed in
O(samples) with exclusive per-ray prefix sums (samples are sorted by distance within a ray), in float64, since
the prefix sums run over the whole batch.
"""
from __future__ import annotations

import torch


def _exclusive_ray_cumsum(x: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Per-ray exclusive prefix sum of x [M]; ``first`` [M] is the index of each sample's ray's first sample."""
    before = torch.cumsum(x, 0) - x
    return before - before[first]


def ray_distortion(sigmas: torch.Tensor, t: torch.Tensor, dt: torch.Tensor, ray_index: torch.Tensor,
                   ray_offsets: torch.Tensor, box_edge: float) -> torch.Tensor:
    """Distortion [R] of each ray (0 for a ray without samples). sigmas [M] (differentiable), t and dt [M] the
    samples' midpoints and lengths, ray_index [M] and ray_offsets [R] int32 as the marcher returns them."""
    num_rays = ray_offsets.shape[0]
    if sigmas.shape[0] == 0:
        return sigmas.new_zeros(num_rays, dtype=torch.float32) + 0.0 * sigmas.sum()
    ray = ray_index.long()
    first = ray_offsets.long()[ray]
    tau = sigmas.double() * dt.double()
    w = torch.exp(-_exclusive_ray_cumsum(tau, first)) * -torch.expm1(-tau)
    s = t.double() / box_edge
    ds = dt.double() / box_edge
    pairs = 2.0 * w * (s * _exclusive_ray_cumsum(w, first) - _exclusive_ray_cumsum(w * s, first))
    per_sample = pairs + w * w * ds / 3.0
    return torch.zeros(num_rays, dtype=torch.float64, device=sigmas.device).index_add_(0, ray, per_sample).float()
