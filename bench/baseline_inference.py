"""Frozen copy of the alive-ray inference loop as it was before issue 15 (main at 25225c8,
``taichi_kernels/inference.py``): two host syncs per round, the field fed through a ``nonzero`` of the live
slots. Kept only so that ``bench/empty_space.py`` can time today's renderer beside the new one in one run;
nothing in the package imports it.
"""
import functools
import time

import taichi as ti
import torch

from taichi_kernels import runtime
from taichi_kernels.composite import weight_and_transmittance
from taichi_kernels.march import check_grid, check_rays, next_sample_in_grid, ray_box_interval
from taichi_kernels.occupancy import OccupancyGrid
from taichi_kernels.samples import FieldFn, MarchParams


@functools.cache
def _kernels(res: int, params: MarchParams):
    """The round kernels (the first intersects the box, later ones composite) with the grid resolution and
    ``params`` compiled in: constants instead of scalar arguments, since each argument costs host time."""
    bound, near_min = float(params.bound), float(params.near_min)
    min_step, max_step, growth = float(params.min_step), float(params.max_step), float(params.step_growth)
    max_steps, early_stop = int(params.max_steps_per_ray), float(params.early_stop)

    @ti.func
    def next_sample(o, d, t, far, bitfield: ti.template()):
        return next_sample_in_grid(o, d, t, far, bitfield, res, bound, min_step, max_step, growth)

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
                    nf = ray_box_interval(o, ti.Vector([rays[r, 3], rays[r, 4], rays[r, 5]]), bound, near_min)
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

    return {"first_round": make_round(True), "round": make_round(False)}


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
    check_rays(origins, directions)
    check_grid(grid, params)
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
