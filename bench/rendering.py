"""Benchmark of the rendering kernels: training march + composite, a 512x512 inference render, and the
occupancy study (which coefficient vectors give the tighter grid without holes):
    NERFBS_ARCH=cuda python3 bench/rendering.py --out rendering.json

Prints a table and writes every number as JSON. Fields are analytic (pure torch), so the timings are
the renderer's own cost; the inference render also reports how much of its time the field took.
"""
import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerfbs.config import RenderConfig  # noqa: E402
from taichi_kernels import inference, march, runtime, samples  # noqa: E402
from taichi_kernels.composite import composite  # noqa: E402
from taichi_kernels.occupancy import OccupancyGrid  # noqa: E402

BOUND = 0.06
RADIUS = 0.04


def _sync():
    if runtime.current_arch() == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def sphere_field(sigma=400.0, radius=RADIUS, softness=0.0005):
    """A soft-edged constant-density sphere with a position-dependent colour."""
    def field(positions, directions, frame_index):
        density = sigma * torch.sigmoid((radius - positions.norm(dim=1)) / softness)
        return density, torch.sigmoid(positions * 40.0)
    return field


def _sphere_grid(device, resolution=128):
    grid = OccupancyGrid(bound=BOUND, resolution=resolution).to(device)
    field = sphere_field()
    coeffs = torch.ones(1, 1, device=device)
    grid.update(lambda p, f, c: field(p, None, f)[0], coeffs, step=0,
                generator=torch.Generator(device=device).manual_seed(0))
    return grid


def _pinhole(n, device, distance=0.3, half_width=0.07, eye=(0.0, 0.0, 1.0)):
    """n x n rays from ``distance * eye`` through a square of half-width ``half_width`` at the origin."""
    eye_dir = torch.nn.functional.normalize(torch.tensor(eye, device=device), dim=0)
    up = torch.tensor([0.0, 1.0, 0.0], device=device)
    right = torch.nn.functional.normalize(torch.linalg.cross(up, eye_dir), dim=0)
    up = torch.linalg.cross(eye_dir, right)
    u = torch.linspace(-half_width, half_width, n, device=device)
    y, x = torch.meshgrid(u, u, indexing="ij")
    targets = x.reshape(-1, 1) * right + y.reshape(-1, 1) * up
    origins = (distance * eye_dir).expand(n * n, 3).contiguous()
    return origins, torch.nn.functional.normalize(targets - origins, dim=1)


def bench_training(device, grid, params, rays_per_image=1024, images=2):
    """March (jittered) + field + composite forward/backward for ``images x rays_per_image`` rays."""
    gen = torch.Generator(device=device).manual_seed(0)
    origins, directions = [], []
    for k in range(images):
        o, d = _pinhole(512, device, eye=(math.sin(0.3 * k), 0.1, math.cos(0.3 * k)))
        pick = torch.randint(o.shape[0], (rays_per_image,), generator=gen, device=device)
        origins.append(o[pick])
        directions.append(d[pick])
    origins, directions = torch.cat(origins), torch.cat(directions)
    rays = origins.shape[0]
    field = sphere_field(sigma=100.0)
    background = torch.rand(rays, 3, device=device, generator=gen)

    def do_march():
        return march.march_rays_train(origins, directions, grid, params, jitter=True, generator=gen)

    s = do_march()
    sigma, rgb = field(s.positions, s.directions, s.ray_index)
    sigma, rgb = sigma.detach().requires_grad_(True), rgb.detach().requires_grad_(True)
    v = torch.randn(rays, 3, device=device, generator=gen)

    def forward():
        return composite(sigma, rgb, s.t, s.dt, s.ray_offsets, s.ray_counts, background)

    def forward_backward():
        out_rgb, opacity, _ = forward()
        torch.autograd.grad((out_rgb * v).sum() + opacity.sum(), (sigma, rgb))

    def full_step():
        smp = do_march()
        sg, c = field(smp.positions, smp.directions, smp.ray_index)
        sg = sg.detach().requires_grad_(True)
        out_rgb, opacity, _ = composite(sg, c, smp.t, smp.dt, smp.ray_offsets, smp.ray_counts, background)
        torch.autograd.grad((out_rgb * v).sum() + opacity.sum(), (sg,))

    return {
        "rays": rays,
        "samples": s.num_samples,
        "samples_per_ray": s.num_samples / rays,
        "samples_per_hit_ray": s.num_samples / max(1, int((s.ray_counts > 0).sum())),
        "march_ms": _median_ms(do_march),
        "composite_forward_ms": _median_ms(forward),
        "composite_forward_backward_ms": _median_ms(forward_backward),
        "march_field_composite_fwd_bwd_ms": _median_ms(full_step),
    }


def bench_inference(device, grid, params, size=512, samples_per_round=8):
    """A full ``size x size`` render of the sphere: total time, time inside the field, rounds, syncs."""
    origins, directions = _pinhole(size, device)
    rays = origins.shape[0]
    frames = torch.zeros(rays, dtype=torch.int32, device=device)
    background = torch.ones(rays, 3, device=device)
    field = sphere_field()

    def render(fn=field, stats=None):
        return inference.render_rays_inference(origins, directions, frames, fn, grid, params, background,
                                           samples_per_round=samples_per_round, stats=stats)

    total = _median_ms(render)
    stats = {}
    rgb, opacity, _ = render(stats=stats)
    # Instrumented runs: sync around each stage to split the time (slower than the real pipelined run).
    stages = {"field": [], "round_kernel": [], "round_kernel_host": []}

    def timed(name, fn):
        def wrapper(*args):
            _sync()
            start = time.perf_counter()
            out = fn(*args)
            if name + "_host" in stages:  # the call's return: host time to launch
                stages[name + "_host"].append((time.perf_counter() - start) * 1e3)
            _sync()
            stages[name].append((time.perf_counter() - start) * 1e3)
            return out
        return wrapper

    original = inference._kernels

    def instrumented_kernels(res, p):
        kernels = dict(original(res, p))
        kernels["first_round"] = timed("round_kernel", kernels["first_round"])
        kernels["round"] = timed("round_kernel", kernels["round"])
        return kernels

    inference._kernels = instrumented_kernels
    try:
        instrumented = []
        for _ in range(10):
            for v in stages.values():
                v.clear()
            instrumented.append((_median_ms(lambda: render(timed("field", field)), reps=1, warmup=0),
                                 {k: sum(v) for k, v in stages.items()}))
    finally:
        inference._kernels = original
    instrumented.sort(key=lambda x: x[0])
    inst_total, inst_stages = instrumented[len(instrumented) // 2]
    return {
        "rays": rays,
        "samples_per_round": samples_per_round,
        "total_ms": total,
        "rounds": stats["rounds"],
        "host_syncs": stats["host_syncs"],
        "samples": stats["samples"],
        "hit_fraction": float((opacity > 0.5).float().mean()),
        "instrumented_total_ms": inst_total,
        "instrumented_stage_ms": inst_stages,
        "instrumented_total_minus_field_ms": inst_total - inst_stages["field"],
        "field_alone_ms": _median_ms(lambda: field(origins, directions, frames)),
    }


def bench_launch_overhead(device):
    """Host cost of one tiny Taichi kernel launch with 5 ndarray arguments (the floor of a round)."""
    import taichi as ti

    @ti.kernel
    def touch(a: ti.types.ndarray(dtype=ti.f32, ndim=1), b: ti.types.ndarray(dtype=ti.f32, ndim=1),
              c: ti.types.ndarray(dtype=ti.f32, ndim=1), d: ti.types.ndarray(dtype=ti.f32, ndim=1),
              e: ti.types.ndarray(dtype=ti.f32, ndim=1)):
        for i in range(a.shape[0]):
            a[i] += b[i] + c[i] + d[i] + e[i]

    xs = [torch.zeros(1024, device=device) for _ in range(5)]

    def hundred():
        for _ in range(100):
            touch(*xs)

    return {"taichi_launch_5_ndarrays_us": _median_ms(hundred, reps=5) * 10.0}


def profile_breakdown(device, grid, params, size=512):
    """Device time per kernel (torch.profiler, CUDA activity) and host time for one 512x512 render and
    one training composite forward + backward. Empty off the GPU."""
    if device.type != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile

    origins, directions = _pinhole(size, device)
    frames = torch.zeros(origins.shape[0], dtype=torch.int32, device=device)
    background = torch.ones(origins.shape[0], 3, device=device)
    field = sphere_field()
    s = march.march_rays_train(origins[::128].contiguous(), directions[::128].contiguous(), grid, params, jitter=False)
    sigma, rgb = field(s.positions, s.directions, s.ray_index)
    sigma.requires_grad_(True)
    rgb.requires_grad_(True)

    def render():
        inference.render_rays_inference(origins, directions, frames, field, grid, params, background)

    def composite_fwd_bwd():
        out_rgb, opacity, _ = composite(sigma, rgb, s.t, s.dt, s.ray_offsets, s.ray_counts, background[:s.ray_counts.shape[0]])
        torch.autograd.grad(out_rgb.sum() + opacity.sum(), (sigma, rgb))

    out = {}
    for name, fn in (("inference_512", render), ("composite_fwd_bwd_2048", composite_fwd_bwd)):
        for _ in range(3):
            fn()
        _sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            _sync()
        rows = []
        for e in prof.key_averages():
            device_us = getattr(e, "device_time_total", None)
            if device_us is None:
                device_us = getattr(e, "cuda_time_total", 0.0)
            if device_us > 0 and e.count and not e.key.startswith("aten::"):
                rows.append({"kernel": e.key[:60], "calls": e.count, "device_us": device_us})
        rows.sort(key=lambda r: -r["device_us"])
        out[name] = rows[:12]
    return out


# --- which coefficient vectors should the occupancy update use? ------------------------------------------

def study_field(points, frame_index, coeffs):
    """A head whose mouth region moves with three blendshape coefficients (neutral 1.0 first).

    jaw (c1) lowers the mouth and opens it, smile (c2) widens it, pucker (c3) pushes it forward, less so
    when the jaw is open: the shape depends on the coefficients jointly, not as a sum of single bases.
    """
    c = coeffs[frame_index.long()]
    jaw, smile, pucker = c[:, 1], c[:, 2], c[:, 3]
    head = 400.0 * torch.sigmoid((0.035 - (points - torch.tensor([0.0, 0.008, 0.0], device=points.device)).norm(dim=1)) / 5e-4)
    centre = torch.stack((torch.zeros_like(jaw), -0.026 - 0.012 * jaw, 0.03 + 0.014 * pucker * (1 - 0.6 * jaw)), dim=1)
    radii = torch.stack((0.008 + 0.008 * smile, 0.004 + 0.005 * jaw, 0.006 + 0.002 * pucker), dim=1)
    level = (((points - centre) / radii) ** 2).sum(1).sqrt()
    mouth = 400.0 * torch.sigmoid((1.0 - level) / 0.05)
    return torch.maximum(head, mouth)


def _frames(count, gen, device):
    """Training-like coefficients: mostly small, sometimes large, weakly correlated."""
    u = torch.rand(count, 3, generator=gen, device=device)
    jaw = u[:, 0] ** 2.5
    smile = u[:, 1] ** 3.0
    pucker = (u[:, 2] ** 4.0) * (1.0 - 0.5 * jaw)
    return torch.stack((torch.ones_like(jaw), jaw, smile, pucker), dim=1)


def coefficient_set_study(device, resolution=64, updates=8, test_frames=200, threshold=10.0):
    """Coverage and tightness of the occupied set implied by different coefficient sets.

    A cell is needed by a held-out frame when that frame's density at the cell centre exceeds
    ``threshold`` (the ceiling, which the mean density exceeds here); a strategy marks the cells where
    the max over its coefficient vectors exceeds it, over ``updates`` grid updates (fresh draws per
    update for the sampled strategies; decay keeps about that many updates above the threshold).
    Cell centres, no jitter: the numbers measure coefficient coverage only, not the update's sampling.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    train = _frames(2000, gen, device)
    test = _frames(test_frames, gen, device)
    maxima = train.amax(0)
    neutral = torch.tensor([1.0, 0.0, 0.0, 0.0], device=device)
    per_basis = torch.stack([neutral] + [neutral + maxima * torch.eye(4, device=device)[k] for k in (1, 2, 3)])
    all_max = torch.stack((neutral, maxima))

    def sample(n):
        return train[torch.randint(train.shape[0], (n,), generator=gen, device=device)]

    strategies = {
        "per_basis_max (4 vectors)": lambda: per_basis,
        "all_bases_at_max (2 vectors)": lambda: all_max,
        "per_basis_max + all_max (5)": lambda: torch.cat((per_basis, maxima[None])),
        "sampled_frames_8": lambda: sample(8),
        "sampled_frames_32": lambda: sample(32),
        "sampled_frames_128": lambda: sample(128),
        "per_basis_max + sampled_32": lambda: torch.cat((per_basis, sample(32))),
    }
    grid = OccupancyGrid(bound=BOUND, resolution=resolution)
    cells = torch.arange(resolution ** 3, device=device)
    res = resolution
    xyz = torch.stack((cells % res, (cells // res) % res, cells // (res * res)), dim=1).float()
    centres = (xyz + 0.5) * (2.0 * grid.bound / res) - grid.bound

    def occupied_by(coeffs):
        mask = torch.zeros(cells.shape[0], dtype=torch.bool, device=device)
        for k in range(coeffs.shape[0]):
            frame = torch.full((cells.shape[0],), k, dtype=torch.int32, device=device)
            mask |= study_field(centres, frame, coeffs) > threshold
        return mask

    needed = [occupied_by(test[f:f + 1]) for f in range(test.shape[0])]
    union_needed = torch.stack(needed).any(0)
    results = {"ideal (union of held-out frames)": {"occupancy_percent": 100.0 * float(union_needed.float().mean()),
                                                     "mean_missing_percent": 0.0, "worst_missing_percent": 0.0,
                                                     "frames_with_missing_cells_percent": 0.0}}
    for name, sets in strategies.items():
        marked = torch.zeros(cells.shape[0], dtype=torch.bool, device=device)
        for _ in range(updates):
            marked |= occupied_by(sets())
        missing = [float((need & ~marked).sum()) / max(1, int(need.sum())) for need in needed]
        results[name] = {
            "occupancy_percent": 100.0 * float(marked.float().mean()),
            "mean_missing_percent": 100.0 * statistics.mean(missing),
            "worst_missing_percent": 100.0 * max(missing),
            "frames_with_missing_cells_percent": 100.0 * sum(m > 0 for m in missing) / len(missing),
        }
    return {"resolution": resolution, "updates": updates, "test_frames": test_frames, "threshold": threshold,
            "strategies": results}


def bench_rendering(study=True) -> dict:
    device = runtime.torch_device()
    params = samples.MarchParams.from_render_config(RenderConfig(bound=BOUND))
    grid = _sphere_grid(device)
    out = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "arch": runtime.current_arch(),
        "grid_occupancy_percent": 100.0 * grid.occupancy_fraction,
        "launch": bench_launch_overhead(device),
        "training_2x1024": bench_training(device, grid, params),
        "inference_512": {k: bench_inference(device, grid, params, samples_per_round=k) for k in (8, 16, 32)},
    }
    out["profile"] = profile_breakdown(device, grid, params)
    if study:
        out["occupancy_study"] = coefficient_set_study(device, resolution=128 if device.type == "cuda" else 48)
    return out


def _print_table(results: dict) -> None:
    print(f"device: {results['device']} (taichi {results['arch']}), sphere grid occupancy "
          f"{results['grid_occupancy_percent']:.2f}%")
    print(f"taichi launch, 5 ndarrays: {results['launch']['taichi_launch_5_ndarrays_us']:.1f} us")
    tr = results["training_2x1024"]
    print(f"\ntraining {tr['rays']} rays, {tr['samples']} samples ({tr['samples_per_hit_ray']:.1f} per hit ray)")
    for key in ("march_ms", "composite_forward_ms", "composite_forward_backward_ms", "march_field_composite_fwd_bwd_ms"):
        print(f"  {key:<36} {tr[key]:8.3f}")
    print("\ninference 512x512: spr  total ms  rounds  syncs  instrumented: total  field  kernels  total-field")
    for spr, r in results["inference_512"].items():
        st = r["instrumented_stage_ms"]
        print(f"  {spr:>22} {r['total_ms']:9.3f} {r['rounds']:7d} {r['host_syncs']:6d} {r['instrumented_total_ms']:19.3f}"
              f" {st['field']:6.3f} {st['round_kernel']:8.3f} (launch {st['round_kernel_host']:.3f})"
              f" {r['instrumented_total_minus_field_ms']:12.3f}")
    for name, rows in results.get("profile", {}).items():
        print(f"\nprofile {name}: device time per kernel")
        for r in rows:
            print(f"  {r['kernel']:<60} {r['calls']:4d} {r['device_us']:10.1f} us")
    if "occupancy_study" in results:
        study = results["occupancy_study"]
        print(f"\noccupancy study (res {study['resolution']}, {study['test_frames']} held-out frames)")
        print(f"  {'strategy':<30} occupied%  mean-missing%  worst-missing%  frames-with-holes%")
        for name, r in study["strategies"].items():
            print(f"  {name:<30} {r['occupancy_percent']:9.3f} {r['mean_missing_percent']:14.4f}"
                  f" {r['worst_missing_percent']:15.4f} {r['frames_with_missing_cells_percent']:19.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the full numbers here as JSON")
    parser.add_argument("--no-study", action="store_true", help="skip the occupancy coefficient-set study")
    args = parser.parse_args()
    results = bench_rendering(study=not args.no_study)
    _print_table(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
