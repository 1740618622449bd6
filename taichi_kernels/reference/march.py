"""Plain-PyTorch twin of ``taichi_kernels.march`` (same names and signatures): ray-box intersection and
training marching. All rays advance in lockstep, one step per Python iteration: slow, for tests only."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from taichi_kernels.occupancy import OccupancyGrid

from taichi_kernels.samples import MarchParams, Samples

_NUDGE = 1e-3  # past a cell's exit, in cell sizes (as the kernel)


def ray_aabb(origins: torch.Tensor, directions: torch.Tensor, bound: float,
             near_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of ``taichi_kernels.march.ray_aabb``: (near [R], far [R]) against [-bound, bound]^3."""
    safe = torch.where(directions >= 0, directions.clamp_min(1e-12), directions.clamp_max(-1e-12))
    inv = 1.0 / safe
    t1 = (-bound - origins) * inv
    t2 = (bound - origins) * inv
    near = torch.minimum(t1, t2).amax(1).clamp_min(near_min) if origins.shape[0] else origins.new_zeros(0)
    far = torch.maximum(t1, t2).amin(1) if origins.shape[0] else origins.new_zeros(0)
    miss = ~(far > near)
    near = torch.where(miss, torch.full_like(near, near_min), near)
    far = torch.where(miss, torch.full_like(far, near_min), far)
    return near, far


def _cell_at(points: torch.Tensor, grid: "OccupancyGrid") -> tuple[torch.Tensor, torch.Tensor]:
    """(integer cell [N, 3], flat index [N]) of world points, clamped to the grid."""
    res = grid.resolution
    cell = torch.floor((points + grid.bound) * (res / (2.0 * grid.bound))).long().clamp(0, res - 1)
    return cell, cell[:, 0] + res * (cell[:, 1] + res * cell[:, 2])


def march_rays_train(origins: torch.Tensor, directions: torch.Tensor, grid: "OccupancyGrid", params: MarchParams, *,
                     jitter: bool, generator: torch.Generator | None = None) -> Samples:
    """Twin of ``taichi_kernels.march.march_rays_train``: the same flat Samples, all rays in lockstep."""
    rays = origins.shape[0]
    device = origins.device
    near, far = ray_aabb(origins, directions, params.bound, params.near_min)

    def step(t, scale):
        return (t * (params.step_growth * scale)).clamp(params.min_step, params.max_step * scale)

    def denser(t):
        return grid.density[_cell_at(origins + t[:, None] * directions, grid)[1]] > params.long_step_density

    u = torch.rand(rays, generator=generator, device=device) if jitter else torch.zeros(rays, device=device)
    t = near + u * step(near, params.step_scale)
    n = torch.zeros(rays, dtype=torch.int64, device=device)
    active = far > near
    cell_size = 2.0 * params.bound / grid.resolution
    out_r, out_t, out_dt, out_k = [], [], [], []
    while bool(active.any()):
        dt = step(t, params.step_scale)
        tm = t + 0.5 * dt
        active &= tm < far
        probe = t + 0.5 * dt.clamp_max(params.max_step)
        cell, index = _cell_at(origins + probe[:, None] * directions, grid)
        take = active & grid.occupied()[index]
        if params.long_step_density > 0 and params.step_scale != 1:
            dense = (grid.density[index] > params.long_step_density) | denser(tm) | denser(t + dt)
            dt = torch.where(dense, step(t, 1.0), dt)
            tm = t + 0.5 * dt
        out_r.append(torch.nonzero(take).squeeze(1))
        out_t.append(tm[take])
        out_dt.append(dt[take])
        out_k.append(n[take])
        face = torch.where(directions >= 0, (cell + 1) * cell_size - params.bound, cell * cell_size - params.bound)
        safe = torch.where(directions >= 0, directions.clamp_min(1e-12), directions.clamp_max(-1e-12))
        t_exit = ((face - origins) / safe).amin(1)
        skip = torch.maximum(t_exit, probe) + _NUDGE * cell_size
        t = torch.where(take, t + dt, torch.where(active, skip, t))
        n += take.long()
        active &= (n < params.max_steps_per_ray) & (t < far)
    ray = torch.cat(out_r) if out_r else torch.zeros(0, dtype=torch.int64, device=device)
    order = torch.argsort(ray * (params.max_steps_per_ray + 1) + (torch.cat(out_k) if out_k else ray))
    ray = ray[order]
    tm = torch.cat(out_t)[order] if out_t else origins.new_zeros(0)
    dt = torch.cat(out_dt)[order] if out_dt else origins.new_zeros(0)
    counts = torch.bincount(ray, minlength=rays).to(torch.int32)
    offsets = (torch.cumsum(counts, 0) - counts).to(torch.int32)
    return Samples(origins[ray] + tm[:, None] * directions[ray], directions[ray].clone(), tm, dt,
                   ray.to(torch.int32), offsets, counts)
