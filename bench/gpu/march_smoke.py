"""A first check on a new device: long marching steps (render.step_scale, render.long_step_density) on CUDA.

A faint sphere beside a dense one in a 32^3 grid, 4,000 rays: for K = 1, K = 4 and K = 4 with a density limit,
the training march against its torch twin (samples, rays that agree, step lengths) and the inference loop against
its twin. Seconds, compilation included. Run first in a session's device time, before long trainings:

    NERFBS_ARCH=cuda python3 bench/gpu/march_smoke.py      (after the taichi setup of ../shared/GPU.md)
"""
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nerfbs.config import RenderConfig  # noqa: E402
from taichi_kernels import inference, march, runtime  # noqa: E402
from taichi_kernels.occupancy import OccupancyGrid  # noqa: E402
from taichi_kernels.reference import inference as ref_inference  # noqa: E402
from taichi_kernels.reference import march as ref_march  # noqa: E402
from taichi_kernels.samples import MarchParams  # noqa: E402

BOUND = 0.06


def fog_and_solid(points: torch.Tensor, frame_index=None, coeffs=None) -> torch.Tensor:
    """Density 20 in a sphere left of the centre, 1000 in one right of it (as tests/test_march.py)."""
    fog = (points - torch.tensor([-0.02, 0.0, 0.0], device=points.device)).norm(dim=1) < 0.018
    solid = (points - torch.tensor([0.022, 0.0, 0.0], device=points.device)).norm(dim=1) < 0.014
    return 20.0 * fog.float() + 1000.0 * solid.float()


def camera_rays(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    origins = -dirs * (0.2 + 0.2 * torch.rand(n, 1, generator=g))
    directions = torch.nn.functional.normalize(0.1 * (torch.rand(n, 3, generator=g) - 0.5) - origins, dim=1)
    return origins.to(device), directions.to(device)


def main() -> None:
    device = runtime.torch_device()
    start = time.time()
    grid = OccupancyGrid(bound=BOUND, resolution=32).to(device)
    grid.update(fog_and_solid, torch.ones(1, 1, device=device), step=0)
    origins, directions = camera_rays(4000, device)
    frames = torch.zeros(origins.shape[0], dtype=torch.int32, device=device)
    background = torch.zeros(origins.shape[0], 3, device=device)
    base = dataclasses.replace(MarchParams.from_render_config(RenderConfig(bound=BOUND)), max_step=2 * BOUND / 31,
                               step_growth=1.0, early_stop=1e-4)

    def field(positions, _directions, frame_index):
        return fog_and_solid(positions), torch.sigmoid(positions * 40.0)

    for scale, limit in ((1.0, 0.0), (4.0, 0.0), (4.0, 100.0)):
        params = dataclasses.replace(base, step_scale=scale, long_step_density=limit)
        s = march.march_rays_train(origins, directions, grid, params, jitter=False)
        twin = ref_march.march_rays_train(origins, directions, grid, params, jitter=False)
        agree = (s.ray_counts == twin.ray_counts).float().mean().item()
        rgb = inference.render_rays_inference(origins, directions, frames, field, grid, params, background)[0]
        twin_rgb = ref_inference.render_rays_inference(origins, directions, frames, field, grid, params, background)[0]
        print(f"K={scale:g} L={limit:g}: {s.num_samples} samples (twin {twin.num_samples}), rays agreeing {agree:.3f}, "
              f"steps {s.dt.min().item():.5f}..{s.dt.max().item():.5f}; inference against its twin: max |rgb| "
              f"difference {(rgb - twin_rgb).abs().max().item():.2e}; {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
