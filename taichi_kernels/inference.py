"""The inference renderer: the alive-ray loop that marches, evaluates the field and composites whole
images without autograd.

Each round one fused kernel composites every alive ray's previous samples (applying the field's activations
itself when the field gives ``FieldLogits``), retires the rays that are done and marches the rest a few samples
further (with ``taichi_kernels.march``'s step function, so it places the samples that training marching places
without jitter). The new samples are written compacted, each ray's contiguous, so the field (called between
rounds) sees exactly the live samples; the kernel's two counters (rays still alive, samples written) are read in
one host sync per round.
"""
import functools
import time

import taichi as ti
import torch

from taichi_kernels import runtime
from taichi_kernels.composite import weight_and_transmittance
from taichi_kernels.launch import fast
from taichi_kernels.march import check_grid, check_rays, grid_stepper, ray_box_interval
from taichi_kernels.occupancy import OccupancyGrid
from taichi_kernels.samples import FieldFn, FieldLogits, MarchParams


@ti.func
def softplus(x):
    """log(1 + e^x) in float32, as torch's softplus (x above 20 passes through); below about -15, where 1 + e^x
    rounds to 1, it gives 0 instead of e^x, a density no composite can see."""
    x = ti.cast(x, ti.f32)
    y = ti.log(1.0 + ti.exp(ti.min(x, 20.0)))
    if x > 20.0:
        y = x
    return y


@ti.func
def sigmoid(x):
    return 1.0 / (1.0 + ti.exp(-ti.cast(x, ti.f32)))


@functools.cache
def _kernels(res: int, params: MarchParams, density_column: int = 0, activate: bool = False):
    """The round kernels (the first intersects the box, later ones composite) with the grid resolution,
    ``params`` and the field outputs' layout compiled in (constants instead of scalar arguments, since each
    argument costs host time): the density in column ``density_column`` of its rows, the colour in the first three
    columns of its own, both activated here when ``activate`` (``FieldLogits``) and read as they are otherwise."""
    bound, near_min = float(params.bound), float(params.near_min)
    max_steps, early_stop = int(params.max_steps_per_ray), float(params.early_stop)
    next_sample = grid_stepper(res, params)

    @ti.func
    def field_output(field_density: ti.template(), field_colour: ti.template(), i):
        """[sigma, r, g, b] float32 of compact sample i."""
        out = ti.Vector([ti.cast(field_density[i, density_column], ti.f32), ti.cast(field_colour[i, 0], ti.f32),
                         ti.cast(field_colour[i, 1], ti.f32), ti.cast(field_colour[i, 2], ti.f32)])
        if ti.static(activate):
            out = ti.Vector([softplus(out[0]), sigmoid(out[1]), sigmoid(out[2]), sigmoid(out[3])])
        return out

    def make_round(first: bool):
        @fast
        @ti.kernel
        def render_round(
            rays: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [R, 8] ox oy oz dx dy dz t far; t (and first: t, far) written
            acc: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [R, 6] T, r, g, b, opacity, depth; updated
            ray_ints: ti.types.ndarray(dtype=ti.i32, ndim=2),  # [R, 2] frame, samples so far; the latter updated
            bitfield: ti.types.ndarray(dtype=ti.u8, ndim=1),  # [res^3 / 8] uint8
            density: ti.types.ndarray(dtype=ti.f32, ndim=1),  # [res^3] float32, the grid's cell densities
            work_in: ti.types.ndarray(dtype=ti.i32, ndim=2),  # [A, 4] ray, first sample, samples, march finished
            field_density: ti.types.ndarray(ndim=2),  # [S_in, W] last round's field output, compact: density rows
            field_colour: ti.types.ndarray(ndim=2),  # [S_in, >= 3] colour rows
            t_dt_in: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [S_in, 2] last round's samples, compact
            counter: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [2] zero on entry: rays alive, samples written
            work_out: ti.types.ndarray(dtype=ti.i32, ndim=2),  # [A, 4] written for the first counter[0] rows
            scratch: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [A * n_out, 2] per input slot t, dt before compaction
            positions: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [S_out, 3] written for the first counter[1] rows
            sample_dirs: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [S_out, 3] written
            frames: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [S_out] written
            t_dt_out: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [S_out, 2] written
        ):
            # Composite last round's samples of each ray; if it is still alive, march up to n_out samples into its
            # input slot's scratch, then, if it found any, reserve a work slot and that many compact sample rows and
            # write them there (the field gets only live samples, each ray's contiguous and in marching order).
            n_out = scratch.shape[0] // ti.max(work_in.shape[0], 1)
            for a in range(work_in.shape[0]):
                r = work_in[a, 0]
                done = work_in[a, 3]
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
                    base_in = work_in[a, 1]
                    for j in range(work_in[a, 2]):
                        i = base_in + j
                        out = field_output(field_density, field_colour, i)
                        wt = weight_and_transmittance(T, out[0], t_dt_in[i, 1])
                        total += wt[0] * ti.Vector([out[1], out[2], out[3], 1.0, t_dt_in[i, 0]])
                        T = wt[1]
                        if T < early_stop:
                            done = 1
                            break
                    acc[r, 0] = T
                    for k in ti.static(range(5)):
                        acc[r, k + 1] = total[k]
                if done == 0:
                    o = ti.Vector([rays[r, 0], rays[r, 1], rays[r, 2]])
                    d = ti.Vector([rays[r, 3], rays[r, 4], rays[r, 5]])
                    t = rays[r, 6]
                    n = ray_ints[r, 1]
                    k = 0
                    finished = 0
                    while k < n_out:
                        s = ti.Vector([0.0, 0.0, 0.0, 0.0])
                        if n < max_steps:
                            s = next_sample(o, d, t, rays[r, 7], bitfield, density)
                        if s[0] == 0.0:
                            finished = 1
                            break
                        scratch[a * n_out + k, 0] = s[1]
                        scratch[a * n_out + k, 1] = s[2]
                        t = s[3]
                        n += 1
                        k += 1
                    rays[r, 6] = t
                    ray_ints[r, 1] = n
                    if k > 0:  # a ray that left the box without a new sample has nothing left to composite
                        slot = ti.atomic_add(counter[0], 1)
                        base = ti.atomic_add(counter[1], k)
                        frame = ray_ints[r, 0]
                        for j in range(k):
                            tm = scratch[a * n_out + j, 0]
                            i = base + j
                            p = o + tm * d
                            for c in ti.static(range(3)):
                                positions[i, c] = p[c]
                                sample_dirs[i, c] = d[c]
                            frames[i] = frame
                            t_dt_out[i, 0] = tm
                            t_dt_out[i, 1] = scratch[a * n_out + j, 1]
                        work_out[slot, 0] = r
                        work_out[slot, 1] = base
                        work_out[slot, 2] = k
                        work_out[slot, 3] = finished

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
    instead of compositing), written compacted. ``n`` starts at ``samples_per_round`` and grows as rays
    retire, keeping the batch near ``rays that hit * samples_per_round``, capped at
    ``max_samples_per_round``. Between launches ``field_fn(positions [S, 3], directions [S, 3],
    frame_index [S] int32) -> (sigma [S], rgb [S, 3])`` is called once on the round's S live samples; it may
    return ``FieldLogits`` instead, whose activations the next round's kernel applies as it reads them.
    Host syncs: one per launch (reading both counters at once), i.e. rounds + 1. Gives the same result as
    ``march_rays_train(jitter=False)`` followed by ``composite``. ``stats``, if given, receives rounds,
    host_syncs, samples (the field's batch sizes summed), ray_samples ([R] int32, samples marched per ray)
    and round_kernel_ms (host time from each round kernel's launch to its counters being read: the
    kernel's run time when the field's work before it was synchronised).
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
    ray_ints = torch.stack((ray_frame, torch.zeros_like(ray_frame)), dim=1)
    run = {"rounds": 0, "host_syncs": 0, "samples": 0, "round_kernel_ms": 0.0}
    if rays:
        _render_loop(origins, directions, field_fn, grid, params, acc, ray_ints, samples_per_round,
                     max_samples_per_round, run)
    if stats is not None:
        stats.update(run, ray_samples=ray_ints[:, 1])
    opacity = acc[:, 4]
    rgb = acc[:, 1:4] + (1.0 - opacity)[:, None] * background.to(torch.float32)
    return rgb, opacity, acc[:, 5]


@torch.no_grad()
def _render_loop(origins, directions, field_fn, grid, params, acc, ray_ints, per_round, max_per_round, run):
    device = origins.device
    rays = origins.shape[0]
    kernel = _kernels(grid.resolution, params)["first_round"]
    state = torch.cat((origins, directions, torch.zeros(rays, 2, device=device)), dim=1)
    zeros = torch.zeros(rays, dtype=torch.int32, device=device)
    work = [torch.stack((torch.arange(rays, dtype=torch.int32, device=device), zeros, zeros, zeros), dim=1),
            torch.empty(rays, 4, dtype=torch.int32, device=device)]
    capacity = rays * per_round  # the largest round: alive * n never exceeds it (n grows as rays retire)
    scratch = torch.empty(capacity, 2, dtype=torch.float32, device=device)
    positions = torch.empty(capacity, 3, dtype=torch.float32, device=device)
    sample_dirs = torch.empty(capacity, 3, dtype=torch.float32, device=device)
    frames = torch.empty(capacity, dtype=torch.int32, device=device)
    t_dt = [torch.empty(0, 2, dtype=torch.float32, device=device), torch.empty(capacity, 2, dtype=torch.float32, device=device)]
    # One pair of counters per launch, zeroed once: a ray that survives a round marched n >= per_round samples.
    counters = torch.zeros(params.max_steps_per_ray // per_round + 3, 2, dtype=torch.int32, device=device)
    field_density = torch.empty(0, 1, dtype=torch.float32, device=device)
    field_colour = torch.empty(0, 3, dtype=torch.float32, device=device)
    alive, n, first_alive, layout = rays, per_round, 0, (0, False)  # layout: density column, activate
    for k in range(counters.shape[0]):
        slots = alive * n
        started = time.perf_counter()
        kernel(state, acc, ray_ints, grid.bitfield, grid.density, work[0][:alive], field_density, field_colour,
               t_dt[0], counters[k], work[1][:alive], scratch[:slots], positions[:slots], sample_dirs[:slots],
               frames[:slots], t_dt[1][:slots])
        alive, live = counters[k].tolist()  # the round's host sync
        run["round_kernel_ms"] += (time.perf_counter() - started) * 1000
        run["host_syncs"] += 1
        if alive == 0:
            return
        first_alive = first_alive or alive
        if live:
            out = field_fn(positions[:live], sample_dirs[:live], frames[:live])
            if isinstance(out, FieldLogits):
                field_density, field_colour = out.density_rows.contiguous(), out.colour_rows.contiguous()
                layout = (out.density_column, True)
            else:
                field_density, field_colour = out[0].reshape(-1, 1).float(), out[1].float().contiguous()
                layout = (0, False)
        else:
            field_density, field_colour = field_density[:0], field_colour[:0]
        work.reverse()
        t_dt.reverse()
        t_dt[1] = t_dt[1] if t_dt[1].shape[0] else torch.empty(capacity, 2, dtype=torch.float32, device=device)
        run["rounds"] += 1
        run["samples"] += live
        n = min(max_per_round, max(per_round, first_alive * per_round // alive))
        kernel = _kernels(grid.resolution, params, *layout)["round"]
    raise RuntimeError("inference loop exceeded its round bound: rays kept marching past max_steps_per_ray")
