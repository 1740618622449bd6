"""GPU benchmark of the blended hash encoder: forward and forward + backward at fixed sizes.

Default grid (47 bases x 16 levels x 2^14 entries x 4 features), 2 frames (samples split evenly),
float32. Two point sets: uniform in [0, 1]^3, and "head" samples: rays aimed at an ellipsoid,
32 samples per ray ordered along the ray within a thin shell around the surface, as an occupancy
grid leaves them in training. Times are CUDA-event medians of 20 runs after warm-up; forward +
backward includes the blend and the gradient w.r.t. all 47 tables. Run with ``NERFBS_ARCH=cuda``:

    python3 bench/encoder.py --out encoder.json
"""
import argparse
import dataclasses
import json
import statistics
import time

import taichi as ti
import torch

from taichi_kernels import hash_grid, runtime
from taichi_kernels.grid_layout import GridConfig
from taichi_kernels.reference import hash_grid as reference

FRAMES = 2
WARMUP = 3
REPEATS = 20
SAMPLES_PER_RAY = 32
HBM_BYTES_PER_S = 3.0e12  # a plain device copy on the H100 (../shared/GPU.md)
ORIGINAL_MS = {  # the original CUDA implementation on the H100 (../shared/GPU.md): forward, forward + backward
    65536: (0.585, 1.905),
    262144: (0.782, 2.440),
    1048576: (1.524, 5.856),
}


def uniform_points(n: int, gen: torch.Generator) -> torch.Tensor:  # [n, 3]
    return torch.rand(n, 3, generator=gen, device="cuda")


def head_points(n: int, gen: torch.Generator) -> torch.Tensor:  # [n, 3], ray after ray
    """Samples on rays aimed at an ellipsoid "head", ordered along each ray, in a +-0.04 shell."""
    rays = -(-n // SAMPLES_PER_RAY)
    center = torch.tensor([0.5, 0.5, 0.5], device="cuda")
    radii = torch.tensor([0.22, 0.28, 0.25], device="cuda")
    normal = torch.nn.functional.normalize(torch.randn(rays, 3, generator=gen, device="cuda"), dim=-1)
    surface = center + radii * normal  # [rays, 3]
    eye_dir = torch.nn.functional.normalize(normal + 0.4 * torch.randn(rays, 3, generator=gen, device="cuda"), dim=-1)
    direction = torch.nn.functional.normalize(surface - (center + 2.0 * eye_dir), dim=-1)
    t = torch.linspace(-0.04, 0.04, SAMPLES_PER_RAY, device="cuda")
    jitter = (torch.rand(rays, 1, generator=gen, device="cuda") - 0.5) * (0.08 / SAMPLES_PER_RAY)
    points = surface[:, None, :] + (t + jitter)[:, :, None] * direction[:, None, :]
    return points.reshape(-1, 3)[:n].clamp(0, 1).contiguous()


def frame_split(n: int) -> torch.Tensor:  # [n] int32: first half frame 0, second half frame 1
    return (torch.arange(n, device="cuda") * FRAMES // max(n, 1)).to(torch.int32)


def time_ms(fn) -> float:
    """Median CUDA-event time of ``fn`` in milliseconds."""
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    ti.sync()
    times = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def floor(grid: GridConfig, n: int) -> dict:
    """Bytes that forward + backward must move to and from device memory, and the time at HBM speed.

    Tables are read once (blend) and their gradient written once; per sample the points, frame
    index, features and feature gradient. The blended tables and their gradient (F x P x C) stay
    in L2 and count once each way.
    """
    table = grid.num_bases * grid.table_entries * grid.features_per_level * 4
    blended = FRAMES * grid.table_entries * grid.features_per_level * 4
    per_sample = 12 + 4 + grid.output_dim * 4
    forward = table + 2 * blended + n * per_sample
    backward = n * per_sample + 3 * blended + table
    atomics = n * grid.num_levels * 8 * grid.features_per_level
    return {
        "forward_bytes": forward,
        "forward_backward_bytes": forward + backward,
        "forward_floor_ms": forward / HBM_BYTES_PER_S * 1e3,
        "forward_backward_floor_ms": (forward + backward) / HBM_BYTES_PER_S * 1e3,
        "scalar_atomics_unmerged": atomics,
    }


@ti.kernel
def _fused_forward(
    points: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [N, 3]
    frame_index: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [N]
    coeffs: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [F, K]
    tables: ti.types.ndarray(dtype=ti.f32, ndim=3),  # [K, P, C]
    rows: ti.types.ndarray(dtype=ti.i32, ndim=2),  # [N, L * 8] table row of each corner
    weights: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [N, L * 8] trilinear weight of each corner
    out: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [N, L * C]
):
    """The fused shape, for comparison: sum over bases at every corner, no blended tables."""
    for n, lc in ti.ndrange(points.shape[0], out.shape[1]):
        f = frame_index[n]
        l, c = lc // tables.shape[2], lc % tables.shape[2]
        acc = 0.0
        for corner in range(8):
            row = rows[n, l * 8 + corner]
            value = 0.0
            for k in range(tables.shape[0]):
                value += coeffs[f, k] * tables[k, row, c]
            acc += weights[n, l * 8 + corner] * value
        out[n, lc] = acc


def corner_rows_and_weights(points: torch.Tensor, grid: GridConfig):
    """[N, L * 8] rows and weights of every corner (torch, for the fused comparison)."""
    rows, weights = [], []
    for level, scale in enumerate(grid.level_scales):
        pos = points * torch.tensor(scale, dtype=points.dtype, device=points.device) + 0.5
        cell = torch.floor(pos)
        frac = pos - cell
        for bits in range(8):
            offset = torch.tensor([(bits >> d) & 1 for d in range(3)], device=points.device)
            rows.append(reference.level_indices(cell.long() + offset, grid, level))
            weights.append(torch.prod(torch.where(offset.bool(), frac, 1 - frac), dim=-1))
    return torch.stack(rows, 1).int().contiguous(), torch.stack(weights, 1).contiguous()


# Backward variants of hash_grid._kernels: (warp_merge, pair_x).
VARIANTS = {"merge": (True, False), "plain": (False, False), "merge_pairx": (True, True), "pairx": (False, True)}


def encode_fn(variant: str):
    """blended_hash_encode with one backward variant."""
    fn = hash_grid._function(GridConfig(), torch.float32, "cuda", *VARIANTS[variant])
    return lambda p, f, c, t, g: fn.apply(p, f, c, t)


def check_against_twin(grid: GridConfig, tables: torch.Tensor, coeffs: torch.Tensor, points: torch.Tensor) -> dict:
    """Largest relative errors (max |error| / max |truth|) against the float64 twin: of the float32
    twin, and of every kernel variant (points gradient for the merged variants only)."""
    n = points.shape[0]
    frame_index = frame_split(n)
    cotangent = torch.randn(n, grid.output_dim, device="cuda", dtype=torch.float64)
    parts = ("features", "points", "coeffs", "tables")

    def run(fn, dtype, with_points):
        inputs = [t.detach().to(dtype).clone().requires_grad_(with_points or i > 0) for i, t in enumerate((points, coeffs, tables))]
        out = fn(inputs[0], frame_index, inputs[1], inputs[2], grid)
        grads = torch.autograd.grad((out * cotangent.to(dtype)).sum(), inputs if with_points else inputs[1:])
        return dict(zip(parts if with_points else parts[:1] + parts[2:], [out.detach(), *grads]))

    truth = run(reference.blended_hash_encode, torch.float64, True)
    errors = {}
    candidates = {"twin_f32": (reference.blended_hash_encode, True)}
    candidates |= {v: (encode_fn(v), v.startswith("merge")) for v in VARIANTS}
    for name, (fn, with_points) in candidates.items():
        for part, got in run(fn, torch.float32, with_points).items():
            want = truth[part]
            errors[f"{name}_{part}"] = ((got.double() - want).abs().max() / want.abs().max()).item()
    return errors


def gpu_kernel_ms(fn, repeats: int = 5) -> float:
    """Device time of the kernels ``fn`` launches (from the CUDA profiler), per call: no host gaps."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    total_us = sum(e.self_device_time_total for e in prof.key_averages())
    return total_us / 1e3 / repeats


def bench_encoder(sizes=(65536, 262144, 1048576)) -> dict:
    """Times (ms) of forward and forward + backward at each size, on uniform and head points."""
    if runtime.ensure_initialized() != "cuda":
        raise RuntimeError("bench/encoder.py measures the GPU: run it where torch sees one (NERFBS_ARCH=cuda)")
    grid = GridConfig()
    gen = torch.Generator(device="cuda").manual_seed(0)
    tables = (torch.rand(grid.num_bases, grid.table_entries, grid.features_per_level, generator=gen, device="cuda") - 0.5) * 0.02
    coeffs = torch.rand(FRAMES, grid.num_bases, generator=gen, device="cuda")
    result = {"grid": dataclasses.asdict(grid) | {"table_entries": grid.table_entries}, "frames": FRAMES, "device": torch.cuda.get_device_name()}
    compile_s = {}
    for variant in VARIANTS:  # first calls compile; time them
        start = time.perf_counter()
        points = uniform_points(1024, gen)
        out = encode_fn(variant)(points, frame_split(1024), coeffs, tables.clone().requires_grad_(), grid)
        out.sum().backward()
        torch.cuda.synchronize()
        compile_s[variant] = time.perf_counter() - start
    result["first_call_s"] = compile_s
    print("first call (compile) s:", json.dumps(compile_s), flush=True)
    result["errors"] = {
        kind: check_against_twin(grid, tables, coeffs, make(16384, gen)) for kind, make in (("uniform", uniform_points), ("head", head_points))
    }
    print("errors vs float64 twin:", json.dumps(result["errors"], indent=1), flush=True)
    forward_kernel = hash_grid._kernels(grid, torch.float32, "cuda", True, True)[0]
    backward_kernels = {v: hash_grid._kernels(grid, torch.float32, "cuda", *flags)[1] for v, flags in VARIANTS.items()}
    flat_tables = tables.reshape(grid.num_bases, -1)
    blended = (coeffs @ flat_tables).reshape(FRAMES, grid.table_entries, grid.features_per_level)
    grad_blended = torch.zeros_like(blended)
    tiny = uniform_points(32, gen)
    result["launch_ms"] = {
        "forward_kernel_32_samples": time_ms(lambda: forward_kernel(tiny, frame_split(32), blended, torch.empty(32, grid.output_dim, device="cuda"))),
        "empty_torch_op": time_ms(lambda: grad_blended.add_(0)),
    }
    print("launch:", json.dumps(result["launch_ms"]), flush=True)
    rows = []
    for n in sizes:
        frame_index = frame_split(n)
        grad_out = torch.randn(n, grid.output_dim, generator=gen, device="cuda")
        out = torch.empty(n, grid.output_dim, device="cuda")
        for kind, make in (("uniform", uniform_points), ("head", head_points)):
            points = make(n, gen)
            row = {"samples": n, "points": kind, **floor(grid, n)}
            leaf = tables.clone().requires_grad_()
            no_points = points.new_empty(0, 3)

            def forward():
                with torch.no_grad():
                    hash_grid.blended_hash_encode(points, frame_index, coeffs, leaf, grid)

            def forward_backward(fn):
                out = fn(points, frame_index, coeffs, leaf, grid)
                torch.autograd.grad(out, [leaf], grad_out)

            row["forward_ms"] = time_ms(forward)
            for variant in VARIANTS:
                row[f"forward_backward_{variant}_ms"] = time_ms(lambda: forward_backward(encode_fn(variant)))
                backward = backward_kernels[variant]
                row[f"scatter_{variant}_ms"] = time_ms(lambda: backward(points, frame_index, grad_out, grad_blended, grad_blended, no_points, False))
            row["forward_backward_default_ms"] = time_ms(lambda: forward_backward(hash_grid.blended_hash_encode))
            row["forward_backward_default_kernels_ms"] = gpu_kernel_ms(lambda: forward_backward(hash_grid.blended_hash_encode))
            row["blend_ms"] = time_ms(lambda: coeffs @ flat_tables)
            row["lookup_ms"] = time_ms(lambda: forward_kernel(points, frame_index, blended, out))
            row["lookup_kernel_ms"] = gpu_kernel_ms(lambda: forward_kernel(points, frame_index, blended, out))
            row["table_grad_ms"] = time_ms(lambda: coeffs.t() @ grad_blended.reshape(FRAMES, -1))
            if n == sizes[0]:
                corner_rows, weights = corner_rows_and_weights(points, grid)
                row["fused_lookup_ms"] = time_ms(lambda: _fused_forward(points, frame_index, coeffs, tables, corner_rows, weights, out))
            original = ORIGINAL_MS.get(n)
            if original:
                row["original_forward_ms"], row["original_forward_backward_ms"] = original
            rows.append(row)
            print(format_row(row), flush=True)
    result["rows"] = rows
    return result


def format_row(row: dict) -> str:
    head = f"{row['samples']:>9,} {row['points']:<7} fwd {row['forward_ms']:.3f}  fwd+bwd"
    variants = " ".join(f"{v} {row[f'forward_backward_{v}_ms']:.3f}" for v in VARIANTS)
    scatter = " ".join(f"{v} {row[f'scatter_{v}_ms']:.3f}" for v in VARIANTS)
    parts = [head, variants, f"default {row['forward_backward_default_ms']:.3f} (kernels {row['forward_backward_default_kernels_ms']:.3f})"]
    parts.append(f"| blend {row['blend_ms']:.3f} lookup {row['lookup_ms']:.3f} (kernel {row['lookup_kernel_ms']:.3f}) tgrad {row['table_grad_ms']:.3f} scatter {scatter}")
    parts.append(f"| floor {row['forward_floor_ms']:.3f}/{row['forward_backward_floor_ms']:.3f}")
    if "original_forward_ms" in row:
        parts.append(f"original {row['original_forward_ms']:.3f}/{row['original_forward_backward_ms']:.3f}")
    if "fused_lookup_ms" in row:
        parts.append(f"fused lookup {row['fused_lookup_ms']:.3f}")
    return "  ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the full results as JSON here")
    parser.add_argument("--sizes", type=int, nargs="+", default=[65536, 262144, 1048576])
    args = parser.parse_args()
    result = bench_encoder(tuple(args.sizes))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
