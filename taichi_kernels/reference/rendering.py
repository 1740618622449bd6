"""Plain-PyTorch twins of the occupancy, marching and compositing kernels (same names and signatures).

``composite`` is differentiable by torch autograd (the tests compare the Taichi backward against it).
Marching here advances all rays in lockstep, one step per Python iteration: slow, for tests only.
"""
from __future__ import annotations

import torch

from taichi_kernels.march import FieldFn, MarchParams, Samples
from taichi_kernels.occupancy import OccupancyGrid

_NUDGE = 1e-3


def pack_bitfield(density: torch.Tensor, threshold: float) -> torch.Tensor:
    """[C] float32 -> [C / 8] uint8, bit k of byte b is density[8 b + k] > threshold."""
    bits = (density > threshold).reshape(-1, 8).to(torch.int32)
    weights = 2 ** torch.arange(8, device=density.device, dtype=torch.int32)
    return (bits * weights).sum(1).to(torch.uint8)


def ray_aabb(origins: torch.Tensor, directions: torch.Tensor, bound: float,
             near_min: float) -> tuple[torch.Tensor, torch.Tensor]:
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


def _occupied_at(points: torch.Tensor, grid: OccupancyGrid) -> tuple[torch.Tensor, torch.Tensor]:
    res = grid.resolution
    cell = torch.floor((points + grid.bound) * (res / (2.0 * grid.bound))).long().clamp(0, res - 1)
    index = cell[:, 0] + res * (cell[:, 1] + res * cell[:, 2])
    return grid.occupied()[index], cell


def march_rays_train(origins: torch.Tensor, directions: torch.Tensor, grid: OccupancyGrid, params: MarchParams, *,
                     jitter: bool, generator: torch.Generator | None = None) -> Samples:
    rays = origins.shape[0]
    device = origins.device
    near, far = ray_aabb(origins, directions, params.bound, params.near_min)

    def step(t):
        return (t * params.step_growth).clamp(params.min_step, params.max_step)

    u = torch.rand(rays, generator=generator, device=device) if jitter else torch.zeros(rays, device=device)
    t = near + u * step(near)
    n = torch.zeros(rays, dtype=torch.int64, device=device)
    active = far > near
    cell_size = 2.0 * params.bound / grid.resolution
    out_r, out_t, out_dt, out_k = [], [], [], []
    while bool(active.any()):
        dt = step(t)
        tm = t + 0.5 * dt
        active &= tm < far
        points = origins + tm[:, None] * directions
        occupied, cell = _occupied_at(points, grid)
        take = active & occupied
        out_r.append(torch.nonzero(take).squeeze(1))
        out_t.append(tm[take])
        out_dt.append(dt[take])
        out_k.append(n[take])
        face = torch.where(directions >= 0, (cell + 1) * cell_size - params.bound, cell * cell_size - params.bound)
        safe = torch.where(directions >= 0, directions.clamp_min(1e-12), directions.clamp_max(-1e-12))
        t_exit = ((face - origins) / safe).amin(1)
        skip = torch.maximum(t_exit, tm) + _NUDGE * cell_size
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


def composite(sigmas: torch.Tensor, rgbs: torch.Tensor, t: torch.Tensor, dt: torch.Tensor,
              ray_offsets: torch.Tensor, ray_counts: torch.Tensor, background: torch.Tensor, *,
              early_stop: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rays = ray_offsets.shape[0]
    longest = int(ray_counts.max()) if rays else 0
    dtype = t.dtype
    if longest == 0:
        zero = background.new_zeros(rays).to(dtype) + 0.0 * sigmas.sum() + 0.0 * rgbs.sum()
        return background.to(dtype) + zero[:, None], zero, zero
    j = torch.arange(longest, device=t.device)
    valid = j[None, :] < ray_counts[:, None].long()
    index = torch.where(valid, ray_offsets[:, None].long() + j[None, :], torch.zeros_like(j)[None, :])
    alpha = torch.where(valid, 1.0 - torch.exp(-sigmas.to(dtype)[index] * dt[index]), torch.zeros((), dtype=dtype))
    after = torch.cumprod(1.0 - alpha, dim=1)
    before = torch.cat((torch.ones_like(after[:, :1]), after[:, :-1]), dim=1)
    used = valid & (before >= early_stop)
    w = torch.where(used, before * alpha, torch.zeros((), dtype=dtype))
    rgb_acc = (w[:, :, None] * rgbs.to(dtype)[index]).sum(1)
    opacity = w.sum(1)
    depth = (w * t[index]).sum(1)
    return rgb_acc + (1.0 - opacity)[:, None] * background.to(dtype), opacity, depth


def render_rays_inference(origins: torch.Tensor, directions: torch.Tensor, ray_frame: torch.Tensor,
                          field_fn: FieldFn, grid: OccupancyGrid, params: MarchParams, background: torch.Tensor, *,
                          samples_per_round: int = 8, max_samples_per_round: int = 64,
                          stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The twin renders in one pass (march everything, evaluate, composite); the round sizes do not matter."""
    s = march_rays_train(origins, directions, grid, params, jitter=False)
    with torch.no_grad():
        sigma, rgb = field_fn(s.positions, s.directions, ray_frame[s.ray_index.long()])
        return composite(sigma, rgb, s.t, s.dt, s.ray_offsets, s.ray_counts, background, early_stop=params.early_stop)
