"""Ray marching through the occupancy grid: ray-box intersection, training samples, inference loop.

Steps follow instant-ngp: from the current distance t the next interval has length
``dt = clamp(t * step_growth, min_step, max_step)`` and its sample sits at the midpoint
``t + dt / 2``. A sample is kept when that point's cell is occupied; otherwise t jumps to where the
ray leaves the empty cell (one DDA step), so empty space costs one iteration per cell crossed.
Marching starts at ``near`` (plus ``jitter * dt`` when jittering), stops at ``far`` (a midpoint at or
beyond ``far`` is not taken) or after ``max_steps_per_ray`` samples. Training marching and the
inference loop share this step function, so without jitter they place identical samples.

Nothing here is differentiable.
"""
import functools
import time
from dataclasses import dataclass
from typing import Any, Callable

import taichi as ti
import torch

from taichi_kernels import runtime
from taichi_kernels.composite import weight_and_transmittance
from taichi_kernels.occupancy import OccupancyGrid, cell_index, cell_of, is_occupied

FieldFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_NUDGE = 1e-3  # past a cell's exit, in cell sizes: guarantees progress against rounding


@dataclass(frozen=True)
class MarchParams:
    """Marching parameters (all distances in world units along unit directions).

    From a ``RenderConfig`` ``rc``: ``MarchParams.from_render_config(rc)``, i.e. bound=rc.bound,
    near_min=rc.near_min, min_step=rc.min_step, max_step=rc.max_step, step_growth=rc.step_growth,
    max_steps_per_ray=rc.max_steps_per_ray, early_stop=rc.display_early_stop.
    """

    bound: float = 0.06
    near_min: float = 0.05
    min_step: float = 0.12 / 1024
    max_step: float = 0.12 / 128
    step_growth: float = 1.0 / 256
    max_steps_per_ray: int = 1024
    early_stop: float = 1e-4  # transmittance below which the inference loop retires a ray

    def __post_init__(self) -> None:
        if not 0 < self.min_step <= self.max_step:
            raise ValueError(f"need 0 < min_step <= max_step, got {self.min_step}, {self.max_step}")
        if self.max_steps_per_ray < 1 or self.bound <= 0:
            raise ValueError("need max_steps_per_ray >= 1 and bound > 0")

    @classmethod
    def from_render_config(cls, rc: Any) -> "MarchParams":
        return cls(bound=rc.bound, near_min=rc.near_min, min_step=rc.min_step, max_step=rc.max_step,
                   step_growth=rc.step_growth, max_steps_per_ray=rc.max_steps_per_ray,
                   early_stop=rc.display_early_stop)


@dataclass
class Samples:
    """Flat samples, ray-major: ray r owns ``ray_offsets[r] : ray_offsets[r] + ray_counts[r]``."""

    positions: torch.Tensor  # [M, 3] float32 world points (interval midpoints)
    directions: torch.Tensor  # [M, 3] float32 the ray's direction
    t: torch.Tensor  # [M] float32 distance of the midpoint along the ray
    dt: torch.Tensor  # [M] float32 interval length
    ray_index: torch.Tensor  # [M] int32
    ray_offsets: torch.Tensor  # [R] int32
    ray_counts: torch.Tensor  # [R] int32

    @property
    def num_samples(self) -> int:
        return self.t.shape[0]


@ti.func
def _aabb(o, d, bound, near_min):
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
def _next_sample(o, d, t_start, far, bitfield: ti.template(), res, bound, min_step, max_step, growth):
    """From distance ``t_start``, the next sample in an occupied cell: [found (0/1), t_mid, dt, t_after]."""
    cell_size = 2.0 * bound / res
    t = t_start
    found = 0.0
    tm = 0.0
    dt = 0.0
    while t < far:
        dt = _step(t, min_step, max_step, growth)
        tm = t + 0.5 * dt
        if tm >= far:
            t = far
            break
        c = cell_of(o + tm * d, res, bound)
        if is_occupied(bitfield, cell_index(c, res)):
            found = 1.0
            t = t + dt
            break
        t_exit = 1e30
        for k in ti.static(range(3)):
            face = (c[k] + 1) * cell_size - bound if d[k] >= 0 else c[k] * cell_size - bound
            step_k = d[k] if ti.abs(d[k]) > 1e-12 else (1e-12 if d[k] >= 0 else -1e-12)
            t_exit = ti.min(t_exit, (face - o[k]) / step_k)
        t = ti.max(t_exit, tm) + _NUDGE * cell_size
    return ti.Vector([found, tm, dt, t])


@functools.cache
def _aabb_kernel():
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
            nf = _aabb(o, d, bound, near_min)
            near_far[r, 0] = nf[0]
            near_far[r, 1] = nf[1]

    return aabb


@functools.cache
def _kernels(res: int, params: MarchParams):
    """Training and inference marching kernels with the grid resolution and ``params`` compiled in.

    Constants instead of scalar arguments: each kernel argument costs host time at every launch.
    """
    bound, near_min = float(params.bound), float(params.near_min)
    min_step, max_step, growth = float(params.min_step), float(params.max_step), float(params.step_growth)
    max_steps, early_stop = int(params.max_steps_per_ray), float(params.early_stop)

    @ti.func
    def next_sample(o, d, t, far, bitfield: ti.template()):
        return _next_sample(o, d, t, far, bitfield, res, bound, min_step, max_step, growth)

    def make_train(write: bool):
        @ti.kernel
        def march(
            origins: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [R, 3] float32
            directions: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [R, 3] float32 unit
            jitter: ti.types.ndarray(dtype=ti.f32, ndim=1),  # [R] float32 in [0, 1): first step offset
            bitfield: ti.types.ndarray(dtype=ti.u8, ndim=1),  # [res^3 / 8] uint8
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
                nf = _aabb(o, d, bound, near_min)
                t = nf[0] + jitter[r] * _step(nf[0], min_step, max_step, growth)
                n = 0
                while n < max_steps:
                    s = next_sample(o, d, t, nf[1], bitfield)
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

    def make_round(first: bool):
        @ti.kernel
        def render_round(
            rays: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [R, 8] ox oy oz dx dy dz t far; t (and first: t, far) written
            acc: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [R, 6] T, r, g, b, opacity, depth; updated
            ray_ints: ti.types.ndarray(dtype=ti.i32, ndim=2),  # [R, 2] frame, samples so far; the latter updated
            bitfield: ti.types.ndarray(dtype=ti.u8, ndim=1),  # [res^3 / 8] uint8
            work_in: ti.types.ndarray(dtype=ti.i32, ndim=2),  # [A, 3] ray, samples last round, march finished
            sigmas: ti.types.ndarray(dtype=ti.f32, ndim=1),  # [A * n_in] last round's field output
            rgbs: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [A * n_in, 3]
            t_dt_in: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [A * n_in, 2] last round's samples
            counter: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [1] zero on entry; rays still alive on exit
            work_out: ti.types.ndarray(dtype=ti.i32, ndim=2),  # [A, 3] written for the first `counter` rows
            positions: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [A * n_out, 3] written (0 in unused slots)
            sample_dirs: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [A * n_out, 3] written
            frames: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [A * n_out] written
            t_dt_out: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [A * n_out, 2] written
        ):
            # Composite last round's samples of each ray, then (if it is still alive) reserve a slot with
            # an atomic counter and march its next n_out samples there. Slot sizes come from the shapes.
            n_in = sigmas.shape[0] // ti.max(work_in.shape[0], 1)
            n_out = positions.shape[0] // ti.max(work_out.shape[0], 1)
            for a in range(work_in.shape[0]):
                r = work_in[a, 0]
                done = work_in[a, 2]
                if ti.static(first):
                    o = ti.Vector([rays[r, 0], rays[r, 1], rays[r, 2]])
                    nf = _aabb(o, ti.Vector([rays[r, 3], rays[r, 4], rays[r, 5]]), bound, near_min)
                    rays[r, 6] = nf[0]
                    rays[r, 7] = nf[1]
                    if not nf[1] > nf[0]:
                        done = 1
                else:
                    T = acc[r, 0]
                    total = ti.Vector([acc[r, 1], acc[r, 2], acc[r, 3], acc[r, 4], acc[r, 5]])
                    for j in range(work_in[a, 1]):
                        i = a * n_in + j
                        wt = weight_and_transmittance(T, sigmas[i], t_dt_in[i, 1])
                        total += wt[0] * ti.Vector([rgbs[i, 0], rgbs[i, 1], rgbs[i, 2], 1.0, t_dt_in[i, 0]])
                        T = wt[1]
                        if T < early_stop:
                            done = 1
                            break
                    acc[r, 0] = T
                    for k in ti.static(range(5)):
                        acc[r, k + 1] = total[k]
                if done == 0:
                    slot = ti.atomic_add(counter[0], 1)
                    o = ti.Vector([rays[r, 0], rays[r, 1], rays[r, 2]])
                    d = ti.Vector([rays[r, 3], rays[r, 4], rays[r, 5]])
                    t = rays[r, 6]
                    n = ray_ints[r, 1]
                    k = 0
                    finished = 0
                    while k < n_out:
                        s = ti.Vector([0.0, 0.0, 0.0, 0.0])
                        if n < max_steps:
                            s = next_sample(o, d, t, rays[r, 7], bitfield)
                        if s[0] == 0.0:
                            finished = 1
                            break
                        i = slot * n_out + k
                        p = o + s[1] * d
                        for c in ti.static(range(3)):
                            positions[i, c] = p[c]
                            sample_dirs[i, c] = d[c]
                        frames[i] = ray_ints[r, 0]
                        t_dt_out[i, 0] = s[1]
                        t_dt_out[i, 1] = s[2]
                        t = s[3]
                        n += 1
                        k += 1
                    for j in range(k, n_out):
                        i = slot * n_out + j
                        for c in ti.static(range(3)):
                            positions[i, c] = 0.0
                            sample_dirs[i, c] = d[c]
                        frames[i] = ray_ints[r, 0]
                        t_dt_out[i, 0] = 0.0
                        t_dt_out[i, 1] = 0.0
                    rays[r, 6] = t
                    ray_ints[r, 1] = n
                    work_out[slot, 0] = r
                    work_out[slot, 1] = k
                    work_out[slot, 2] = finished

        return render_round

    return {"count": make_train(False), "write": make_train(True),
            "first_round": make_round(True), "round": make_round(False)}


def _check_rays(origins: torch.Tensor, directions: torch.Tensor) -> None:
    for name, x in (("origins", origins), ("directions", directions)):
        if x.dim() != 2 or x.shape[1] != 3 or x.dtype != torch.float32:
            raise ValueError(f"{name} must be [R, 3] float32, got {tuple(x.shape)} {x.dtype}")
        runtime.check_device(name, x)
    if origins.shape[0] != directions.shape[0]:
        raise ValueError(f"origins has {origins.shape[0]} rays but directions has {directions.shape[0]}")


def _check_grid(grid: OccupancyGrid, params: MarchParams) -> None:
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
    _check_rays(origins, directions)
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
    _check_rays(origins, directions)
    _check_grid(grid, params)
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
        kernels["count"](origins, directions, offsets_in_step, grid.bitfield, counts, offsets, empty3, empty3,
                         empty3[:, :2], torch.empty(0, dtype=torch.int32, device=device))
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
        kernels["write"](origins, directions, offsets_in_step, grid.bitfield, counts, offsets, positions, sample_dirs,
                         t_dt, ray_index)
    return Samples(positions, sample_dirs, t_dt[:, 0], t_dt[:, 1], ray_index, offsets, counts)


def render_rays_inference(origins: torch.Tensor, directions: torch.Tensor, ray_frame: torch.Tensor,
                          field_fn: FieldFn, grid: OccupancyGrid, params: MarchParams, background: torch.Tensor, *,
                          samples_per_round: int = 8, max_samples_per_round: int = 64,
                          stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render rays with the alive-ray loop: (rgb [R, 3], opacity [R], depth [R]), no autograd.

    One fused kernel per round composites each alive ray's previous samples, retires rays that left
    the box, hit the step cap or fell below ``params.early_stop`` transmittance, compacts the rest
    with an atomic counter, and marches their next ``n`` samples (the first launch intersects the box
    instead of compositing). ``n`` starts at ``samples_per_round`` and grows as rays retire, keeping
    the batch near ``rays that hit * samples_per_round``, capped at ``max_samples_per_round``. Between
    launches ``field_fn(positions [A*n, 3], directions [A*n, 3], frame_index [A*n] int32) ->
    (sigma [A*n], rgb [A*n, 3])`` is called once (only on live slots; empty ones are skipped).
    The field sees only the live slots. Host syncs: one per launch (reading the alive count) and one per
    field call (the live-slot count), i.e. 2 * rounds + 1. Gives the same result as ``march_rays_train(jitter=False)`` followed by
    ``composite``. ``stats``, if given, receives rounds, host_syncs, sample_slots (field batch
    sizes summed) and round_kernel_ms (host time from each round kernel's launch to its count being read:
    the kernel's run time when the field's work before it was synchronised).
    """
    runtime.ensure_initialized()
    _check_rays(origins, directions)
    _check_grid(grid, params)
    rays = origins.shape[0]
    if ray_frame.shape != (rays,) or ray_frame.dtype != torch.int32:
        raise ValueError(f"ray_frame must be [{rays}] int32, got {tuple(ray_frame.shape)} {ray_frame.dtype}")
    if background.shape != (rays, 3):
        raise ValueError(f"background must be [{rays}, 3], got {tuple(background.shape)}")
    if samples_per_round < 1 or max_samples_per_round < samples_per_round:
        raise ValueError("need 1 <= samples_per_round <= max_samples_per_round")
    device = origins.device
    acc = torch.zeros(rays, 6, dtype=torch.float32, device=device)
    acc[:, 0] = 1.0
    run = {"rounds": 0, "host_syncs": 0, "sample_slots": 0, "round_kernel_ms": 0.0}
    if rays:
        _render_loop(origins, directions, ray_frame, field_fn, grid, params, acc, samples_per_round,
                     max_samples_per_round, run)
    if stats is not None:
        stats.update(run)
    opacity = acc[:, 4]
    rgb = acc[:, 1:4] + (1.0 - opacity)[:, None] * background.to(torch.float32)
    return rgb, opacity, acc[:, 5]


def _field_on_live_slots(field_fn, positions, directions, frames, dt):
    """Call the field only on the round's live slots (dt > 0; rays that left the box or stopped leave
    empty slots): often well under half of them, and the field is the costly part. One host sync
    (the live count). Empty slots get sigma 0, rgb 0."""
    live = torch.nonzero(dt > 0).squeeze(1)
    sigma = torch.zeros(dt.shape[0], dtype=torch.float32, device=dt.device)
    rgb = torch.zeros(dt.shape[0], 3, dtype=torch.float32, device=dt.device)
    if live.numel():
        s, c = field_fn(positions[live], directions[live], frames[live])
        sigma[live] = s.reshape(-1).float()
        rgb[live] = c.float()
    return sigma, rgb


@torch.no_grad()
def _render_loop(origins, directions, ray_frame, field_fn, grid, params, acc, per_round, max_per_round, run):
    device = origins.device
    rays = origins.shape[0]
    kernels = _kernels(grid.resolution, params)
    state = torch.cat((origins, directions, torch.zeros(rays, 2, device=device)), dim=1)
    ray_ints = torch.stack((ray_frame, torch.zeros_like(ray_frame)), dim=1)
    zeros = torch.zeros(rays, dtype=torch.int32, device=device)
    work = [torch.stack((torch.arange(rays, dtype=torch.int32, device=device), zeros, zeros), dim=1),
            torch.empty(rays, 3, dtype=torch.int32, device=device)]
    capacity = rays * per_round
    positions = torch.empty(capacity, 3, dtype=torch.float32, device=device)
    sample_dirs = torch.empty(capacity, 3, dtype=torch.float32, device=device)
    frames = torch.empty(capacity, dtype=torch.int32, device=device)
    t_dt = [torch.empty(0, 2, dtype=torch.float32, device=device), torch.empty(capacity, 2, dtype=torch.float32, device=device)]
    # One counter per launch, zeroed once: a ray that survives a round marched n >= per_round samples.
    counters = torch.zeros(params.max_steps_per_ray // per_round + 3, dtype=torch.int32, device=device)
    sigma = torch.empty(0, dtype=torch.float32, device=device)
    rgb = torch.empty(0, 3, dtype=torch.float32, device=device)
    alive, n, first_alive, kernel = rays, per_round, 0, kernels["first_round"]
    for k in range(counters.shape[0]):
        slots = alive * n
        started = time.perf_counter()
        kernel(state, acc, ray_ints, grid.bitfield, work[0][:alive], sigma, rgb, t_dt[0], counters[k:k + 1],
               work[1][:alive], positions[:slots], sample_dirs[:slots], frames[:slots], t_dt[1][:slots])
        alive = int(counters[k])  # the round's host sync
        run["round_kernel_ms"] += (time.perf_counter() - started) * 1000
        run["host_syncs"] += 1
        if alive == 0:
            return
        first_alive = first_alive or alive
        slots = alive * n
        sigma, rgb = _field_on_live_slots(field_fn, positions[:slots], sample_dirs[:slots], frames[:slots],
                                          t_dt[1][:slots, 1])
        run["host_syncs"] += 1
        work.reverse()
        t_dt.reverse()
        t_dt[1] = t_dt[1] if t_dt[1].shape[0] else torch.empty(capacity, 2, dtype=torch.float32, device=device)
        run["rounds"] += 1
        run["sample_slots"] += slots
        n = min(max_per_round, max(per_round, first_alive * per_round // alive))
        kernel = kernels["round"]
    raise RuntimeError("inference loop exceeded its round bound: rays kept marching past max_steps_per_ray")
