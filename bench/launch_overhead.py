"""Host time of one kernel launch: Taichi's own launch path against ``taichi_kernels.launch.fast``, on one point (so
the launch, not the work, is timed), for a kernel of 2 tensors (the harmonics) and one of 4 (the hash-grid lookup).
On the GPU the launch is asynchronous: the figure is the host's time per launch, the GPU's own work is not waited
for except once at the end.

    python3 bench/launch_overhead.py --launches 2000
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from taichi_kernels import color_input, hash_grid, runtime  # noqa: E402
from taichi_kernels.grid_layout import GridConfig  # noqa: E402


def per_launch_us(fn, args: tuple, launches: int) -> float:
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(launches):
        fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - start) / launches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=2000)
    args = parser.parse_args()
    device = runtime.torch_device()
    directions = torch.nn.functional.normalize(torch.ones(1, 3, device=device), dim=-1)
    row = torch.empty(1, 88, dtype=torch.float16, device=device)
    grid = GridConfig(num_bases=2, num_levels=16, log2_table_size=14)
    points = torch.full((1, 3), 0.5, device=device)
    frames = torch.zeros(1, dtype=torch.int32, device=device)
    blended = torch.randn(1, grid.table_entries, grid.features_per_level, device=device).half()
    out = torch.empty(1, grid.output_dim, dtype=torch.float16, device=device)
    kernels = {
        "harmonics (2 tensors)": (color_input._harmonics_kernel(4, 16, torch.float16, runtime.current_arch()), (directions, row)),
        "hash-grid lookup (4 tensors)": (hash_grid._kernels(grid, torch.float32, runtime.current_arch(), True, True)[2][True, 1],
                                         (points, frames, blended, out)),
    }
    print(f"{runtime.current_arch()}: host time per launch, median of 3 passes of {args.launches}")
    for name, (fast, call_args) in kernels.items():
        taichi_us = sorted(per_launch_us(fast.kernel, call_args, args.launches) for _ in range(3))[1]
        fast_us = sorted(per_launch_us(fast, call_args, args.launches) for _ in range(3))[1]
        print(f"  {name:30s} Taichi's path {taichi_us:7.1f} us, fast {fast_us:7.1f} us")


if __name__ == "__main__":
    main()
