"""Ray marching through the occupancy grid: ray-box intersection and training samples.

Steps follow instant-ngp: from the current distance t the next interval has length
``dt = clamp(t * step_growth, min_step, max_step)`` (times ``step_scale`` for long steps) and its sample sits at
the midpoint ``t + dt / 2``. A sample is kept when the interval starts in an occupied cell: the cell at ``t +
min(dt, max_step) / 2``, which is the midpoint's for the original's steps, and for long ones keeps them from
jumping over the first occupied cells. Otherwise t jumps to where the ray leaves the empty cell (one DDA step), so
empty space costs one iteration per cell crossed. With ``long_step_density`` > 0, a long step whose start, middle
or end lies in a cell of the grid denser than that is replaced by the original's step: long steps in a soft,
fog-like field, short ones at a sharp surface.
Marching starts at ``near`` (plus ``jitter * dt`` when jittering), stops at ``far`` (a midpoint at or
beyond ``far`` is not taken) or after ``max_steps_per_ray`` samples. Training marching and the
inference loop (``taichi_kernels.inference``) share this step function, so without jitter they place
identical samples.

Nothing here is differentiable.
"""
import functools

import taichi as ti
import torch

from taichi_kernels import runtime
from taichi_kernels.launch import fast
from taichi_kernels.occupancy import OccupancyGrid, cell_index, cell_of, is_occupied
from taichi_kernels.samples import MarchParams, Samples

_NUDGE = 1e-3  # past a cell's exit, in cell sizes: guarantees progress against rounding


@ti.func
def ray_box_interval(o, d, bound, near_min):
    """[near, far] of the ray o + t d against [-bound, bound]^3, near >= near_min; a miss gives near == far."""
    inv = ti.Vector([0.0, 0.0, 0.0])
    for k in ti.static(range(3)):
        inv[k] = 1.0 / ti.max(d[k], 1e-12) if d[k] >= 0 else 1.0 / ti.min(d[k], -1e-12)
    t1 = (-bound - o) * inv
    t2 = (bound - o) * inv
    near = ti.max(ti.min(t1, t2).max(), near_min)
    far = ti.max(t1, t2).min()
    if not far > near:
        near = near_min
        far = near_min
    return ti.Vector([near, far])


@ti.func
def _step(t, min_step, max_step, growth):
    return ti.min(ti.max(t * growth, min_step), max_step)


@ti.func
def _denser_than(density: ti.template(), p, res, bound, limit):
    return density[cell_index(cell_of(p, res, bound), res)] > limit


@ti.func
def next_sample_in_grid(o, d, t_start, far, bitfield: ti.template(), density: ti.template(), res, bound,
                        min_step, max_step, growth, scale: ti.template(), density_limit: ti.template()):
    """From distance ``t_start``, the next sample in an occupied cell: [found (0/1), t_mid, dt, t_after]. The
    step is ``scale`` times ``clamp(t * growth, min_step, max_step)``; it is taken when the cell at ``t +
    min(dt, max_step) / 2`` is occupied. With ``density_limit`` > 0 a long step whose start, middle or end lies
    in a cell denser than it is replaced by the unscaled step."""
    cell_size = 2.0 * bound / res
    t = t_start
    found = 0.0
    tm = 0.0
    dt = 0.0
    while t < far:
        dt = _step(t, min_step, max_step * scale, growth * scale)
        tm = t + 0.5 * dt
        if tm >= far:
            t = far
            break
        probe = t + 0.5 * ti.min(dt, max_step)
        c = cell_of(o + probe * d, res, bound)
        if is_occupied(bitfield, cell_index(c, res)):
            if ti.static(density_limit > 0 and scale != 1):
                if (density[cell_index(c, res)] > density_limit
                        or _denser_than(density, o + tm * d, res, bound, density_limit)
                        or _denser_than(density, o + (t + dt) * d, res, bound, density_limit)):
                    dt = _step(t, min_step, max_step, growth)
                    tm = t + 0.5 * dt
            found = 1.0
            t = t + dt
            break
        t_exit = 1e30
        for k in ti.static(range(3)):
            face = (c[k] + 1) * cell_size - bound if d[k] >= 0 else c[k] * cell_size - bound
            step_k = d[k] if ti.abs(d[k]) > 1e-12 else (1e-12 if d[k] >= 0 else -1e-12)
            t_exit = ti.min(t_exit, (face - o[k]) / step_k)
        t = ti.max(t_exit, probe) + _NUDGE * cell_size
    return ti.Vector([found, tm, dt, t])


@functools.cache
def _aabb_kernel():
    @fast
    @ti.kernel
    def aabb(
        origins: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [R, 3] float32 world
        directions: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [R, 3] float32 unit
        bound: ti.f32,
        near_min: ti.f32,
        near_far: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [R, 2] written
    ):
        for r in range(origins.shape[0]):
            o = ti.Vector([origins[r, 0], origins[r, 1], origins[r, 2]])
            d = ti.Vector([directions[r, 0], directions[r, 1], directions[r, 2]])
            nf = ray_box_interval(o, d, bound, near_min)
            near_far[r, 0] = nf[0]
            near_far[r, 1] = nf[1]

    return aabb


def grid_stepper(res: int, params: MarchParams):
    """``next_sample(o, d, t, far, bitfield, density)``, the marching step of ``next_sample_in_grid`` as a
    ``ti.func`` with the grid resolution and ``params`` compiled in: shared by training marching and the inference
    loop."""
    bound, growth = float(params.bound), float(params.step_growth)
    min_step, max_step = float(params.min_step), float(params.max_step)
    scale, limit = float(params.step_scale), float(params.long_step_density)

    @ti.func
    def next_sample(o, d, t, far, bitfield: ti.template(), density: ti.template()):
        return next_sample_in_grid(o, d, t, far, bitfield, density, res, bound, min_step, max_step, growth, scale,
                                   limit)

    return next_sample


@functools.cache
def _kernels(res: int, params: MarchParams):
    """Training marching kernels (a count pass and a write pass) with the grid resolution and ``params``
    compiled in.

    Constants instead of scalar arguments: each kernel argument costs host time at every launch.
    """
    bound, near_min = float(params.bound), float(params.near_min)
    min_step = float(params.min_step)
    long_max, long_growth = float(params.long_max_step), float(params.long_step_growth)
    max_steps = int(params.max_steps_per_ray)
    next_sample = grid_stepper(res, params)

    def make_train(write: bool):
        @fast
        @ti.kernel
        def march(
            origins: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [R, 3] float32
            directions: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [R, 3] float32 unit
            jitter: ti.types.ndarray(dtype=ti.f32, ndim=1),  # [R] float32 in [0, 1): first step offset
            bitfield: ti.types.ndarray(dtype=ti.u8, ndim=1),  # [res^3 / 8] uint8
            density: ti.types.ndarray(dtype=ti.f32, ndim=1),  # [res^3] float32, the grid's cell densities
            counts: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [R] written by the count pass
            offsets: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [R] read by the write pass
            positions: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [M, 3] written by the write pass
            sample_dirs: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [M, 3] written by the write pass
            t_dt: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [M, 2] written by the write pass: t, dt
            ray_index: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [M] written by the write pass
        ):
            for r in range(origins.shape[0]):
                o = ti.Vector([origins[r, 0], origins[r, 1], origins[r, 2]])
                d = ti.Vector([directions[r, 0], directions[r, 1], directions[r, 2]])
                nf = ray_box_interval(o, d, bound, near_min)
                t = nf[0] + jitter[r] * _step(nf[0], min_step, long_max, long_growth)
                n = 0
                while n < max_steps:
                    s = next_sample(o, d, t, nf[1], bitfield, density)
                    if s[0] == 0.0:
                        break
                    if ti.static(write):
                        i = offsets[r] + n
                        p = o + s[1] * d
                        for k in ti.static(range(3)):
                            positions[i, k] = p[k]
                            sample_dirs[i, k] = d[k]
                        t_dt[i, 0] = s[1]
                        t_dt[i, 1] = s[2]
                        ray_index[i] = r
                    t = s[3]
                    n += 1
                if ti.static(not write):
                    counts[r] = n

        return march

    return {"count": make_train(False), "write": make_train(True)}


def check_rays(origins: torch.Tensor, directions: torch.Tensor) -> None:
    """Raise ValueError unless origins and directions are [R, 3] float32 alike on Taichi's device."""
    for name, x in (("origins", origins), ("directions", directions)):
        if x.dim() != 2 or x.shape[1] != 3 or x.dtype != torch.float32:
            raise ValueError(f"{name} must be [R, 3] float32, got {tuple(x.shape)} {x.dtype}")
        runtime.check_device(name, x)
    if origins.shape[0] != directions.shape[0]:
        raise ValueError(f"origins has {origins.shape[0]} rays but directions has {directions.shape[0]}")


def check_grid(grid: OccupancyGrid, params: MarchParams) -> None:
    """Raise ValueError unless the grid covers the box of ``params`` and lives on Taichi's device."""
    if abs(grid.bound - params.bound) > 1e-9:
        raise ValueError(f"the occupancy grid covers bound={grid.bound} but params.bound={params.bound}: build them from one config")
    runtime.check_device("grid.bitfield", grid.bitfield)


def ray_aabb(origins: torch.Tensor, directions: torch.Tensor, bound: float,
             near_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(near [R], far [R]) float32 of rays [R, 3] against [-bound, bound]^3, near clamped to >= near_min.

    Rays that miss the box (or leave it before near_min) get near == far == near_min; never NaN,
    also for directions with zero components.
    """
    runtime.ensure_initialized()
    check_rays(origins, directions)
    near_far = torch.empty(origins.shape[0], 2, dtype=torch.float32, device=origins.device)
    if origins.shape[0]:
        _aabb_kernel()(origins.contiguous(), directions.contiguous(), float(bound), float(near_min), near_far)
    return near_far[:, 0], near_far[:, 1]


def march_rays_train(origins: torch.Tensor, directions: torch.Tensor, grid: OccupancyGrid, params: MarchParams, *,
                     jitter: bool, generator: torch.Generator | None = None) -> Samples:
    """March rays [R, 3] (unit directions) through the occupied cells of ``grid`` into flat Samples.

    Two passes, no host sync per step: a kernel counts each ray's samples, torch turns the counts
    into offsets, one host sync reads the total M to allocate, and a second kernel re-marches and
    writes (deterministic, ray-major order). With ``jitter`` each ray's first step is offset by
    U[0, 1) * dt (drawn from ``generator``, which must live on the rays' device).
    """
    runtime.ensure_initialized()
    check_rays(origins, directions)
    check_grid(grid, params)
    device = origins.device
    rays = origins.shape[0]
    origins = origins.contiguous()
    directions = directions.contiguous()
    if jitter:
        offsets_in_step = torch.rand(rays, generator=generator, device=device)
    else:
        offsets_in_step = torch.zeros(rays, device=device)
    counts = torch.zeros(rays, dtype=torch.int32, device=device)
    offsets = torch.zeros(rays, dtype=torch.int32, device=device)
    kernels = _kernels(grid.resolution, params)
    if rays:
        empty3 = torch.empty(0, 3, dtype=torch.float32, device=device)
        kernels["count"](origins, directions, offsets_in_step, grid.bitfield, grid.density, counts, offsets, empty3,
                         empty3, empty3[:, :2], torch.empty(0, dtype=torch.int32, device=device))
        ends = torch.cumsum(counts, 0, dtype=torch.int32)
        offsets = ends - counts
        total = int(ends[-1])  # the one host sync
    else:
        total = 0
    positions = torch.empty(total, 3, dtype=torch.float32, device=device)
    sample_dirs = torch.empty(total, 3, dtype=torch.float32, device=device)
    t_dt = torch.empty(total, 2, dtype=torch.float32, device=device)
    ray_index = torch.empty(total, dtype=torch.int32, device=device)
    if total:
        kernels["write"](origins, directions, offsets_in_step, grid.bitfield, grid.density, counts, offsets, positions,
                         sample_dirs, t_dt, ray_index)
    return Samples(positions, sample_dirs, t_dt[:, 0], t_dt[:, 1], ray_index, offsets, counts)
