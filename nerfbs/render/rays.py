"""Ties the kernels and the field together: training renders of ray batches, inference renders of
whole images, and the occupancy grid's refresh. Knows rays and cameras, not datasets."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nerfbs.config import RenderConfig
from nerfbs.render.distortion import ray_distortion
from nerfbs.field import BlendShapeField
from taichi_kernels.composite import composite
from taichi_kernels.inference import render_rays_inference
from taichi_kernels.march import march_rays_train
from taichi_kernels.samples import MarchParams, Samples
from taichi_kernels.occupancy import OccupancyGrid


@dataclass
class RenderOutput:
    """A training render of R rays: colour, opacity and depth (ray distance in world units) per ray, the sample
    counts, and the per-ray distortion when asked for."""

    rgb: torch.Tensor  # [R, 3] composited over the per-ray background
    opacity: torch.Tensor  # [R]
    depth: torch.Tensor  # [R]
    num_samples: int  # samples the field evaluated with gradient for these rays
    distortion: torch.Tensor | None = None  # [R] mip-NeRF 360 distortion per ray, when asked for
    num_marched: int = 0  # samples marched (more than num_samples when hidden ones were skipped)


def make_occupancy_grid(config: RenderConfig) -> OccupancyGrid:
    """An empty occupancy grid of the render config's box, resolution and threshold ceiling."""
    return OccupancyGrid(bound=config.bound, resolution=config.grid_resolution,
                         threshold_ceiling=config.density_threshold_ceiling)


def render_rays_train(field: BlendShapeField, grid: OccupancyGrid, config: RenderConfig, origins: torch.Tensor,
                      directions: torch.Tensor, ray_frame: torch.Tensor, coeffs: torch.Tensor,
                      background: torch.Tensor, *, jitter: bool = True, generator: torch.Generator | None = None,
                      distortion: bool = False) -> RenderOutput:
    """Differentiable render of R rays: origins/directions [R, 3], ray_frame [R] int32 rows of coeffs [F, K],
    background [R, 3]. Gradients reach the field's parameters and ``coeffs``, and the rays when they require
    grad (pose refinement): the marching kernel places the samples on the detached rays, then each sample's
    position is recomputed in torch as ``o + t d`` of its ray (t fixed), so the field's spatial derivative
    reaches o and d. View directions carry no gradient (the colour input's kernel gives none). With
    ``config.skip_hidden_samples`` the samples behind each ray's early stop are dropped before the field
    runs (``_visible_samples``). ``distortion`` also returns each ray's distortion (``nerfbs.render.distortion``)."""
    samples = march_rays_train(origins.detach(), directions.detach(), grid, MarchParams.from_render_config(config),
                               jitter=jitter, generator=generator)
    marched = samples.num_samples
    if config.skip_hidden_samples:
        samples = _visible_samples(field, samples, ray_frame, coeffs, config.early_stop_transmittance)
    ray = samples.ray_index.long()  # [M]
    positions = samples.positions  # [M, 3]
    if origins.requires_grad or directions.requires_grad:
        with torch.autocast(origins.device.type, enabled=False):
            positions = torch.addcmul(origins[ray].float(), samples.t[:, None], directions[ray].float())
    sigma, rgb = field(positions, samples.directions, ray_frame[ray].int(), coeffs)
    color, opacity, depth = composite(sigma, rgb, samples.t, samples.dt, samples.ray_offsets, samples.ray_counts,
                                      background, early_stop=config.early_stop_transmittance)
    spread = None
    if distortion:
        spread = ray_distortion(sigma, samples.t, samples.dt, samples.ray_index, samples.ray_offsets, 2.0 * config.bound)
    return RenderOutput(color, opacity, depth, samples.num_samples, spread, marched)


def visible_counts(sigma: torch.Tensor, samples: Samples, early_stop: float) -> torch.Tensor:
    """[R] int32: how many of each ray's samples see transmittance T >= ``early_stop`` before them, given their
    densities sigma [M] (T falls along a ray, so these are a prefix of its samples)."""
    if samples.num_samples == 0:
        return torch.zeros_like(samples.ray_counts)
    tau = sigma.detach().double() * samples.dt.double()  # [M] optical depth of each sample
    before = torch.cumsum(tau, 0) - tau  # [M] exclusive, over all rays
    ray = samples.ray_index.long()
    start = before[samples.ray_offsets.long().clamp(max=samples.num_samples - 1)]  # [R]
    visible = (before - start[ray]) <= -math.log(early_stop)
    return torch.zeros_like(samples.ray_counts).index_add_(0, ray, visible.to(torch.int32))


@torch.no_grad()
def _visible_samples(field: BlendShapeField, samples: Samples, ray_frame: torch.Tensor, coeffs: torch.Tensor,
                     early_stop: float) -> Samples:
    """The samples that training compositing can give a gradient: a density pass without autograd finds where
    each ray's transmittance falls below ``early_stop``; the samples after it (composited with weight 0 and no
    gradient) are dropped. The density pass runs in inference precision, so a ray may keep or lose one sample
    at the cut: its effect on the composite is below ``early_stop``."""
    sigma = field.density(samples.positions, ray_frame[samples.ray_index.long()].int(), coeffs.detach())
    return samples.prefix(visible_counts(sigma, samples, early_stop))


# First-round samples per ray of the inference loop (``render_rays_inference``'s ``samples_per_round``): one frame
# is 2^18 rays at 512x512, too few for the GPU to hide a host sync, so it marches more per round (fewer rounds);
# a batch of frames marches less per round (less overshoot past the rays' early stop).
SAMPLES_PER_ROUND = 8
SINGLE_FRAME_SAMPLES_PER_ROUND = 16
MAX_SAMPLES_PER_ROUND = 64  # the most a round grows to as rays retire


@torch.no_grad()
def render_rays(field: BlendShapeField, grid: OccupancyGrid, config: RenderConfig, origins: torch.Tensor,
                directions: torch.Tensor, ray_frame: torch.Tensor, coeffs: torch.Tensor, background: torch.Tensor,
                *, chunk: int = 1 << 21, samples_per_round: int = SAMPLES_PER_ROUND,
                stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inference render (alive-ray loop) of R rays, in chunks of ``chunk`` rays: (rgb [R,3], opacity [R], depth [R]).

    The chunk bounds the loop's sample rows (``samples_per_round`` per ray) and so the field's largest batch:
    2^21 rays at 8 per round give at most 2^24 points, whose widest per-point array (the colour MLP's 80
    inputs) stays below the 2^31 elements that Taichi's int32 indexing reaches. ``stats``, if given, receives
    the loop's figures summed over chunks (rounds, host_syncs, samples) and ray_samples [R]."""
    params = MarchParams.from_render_config(config)
    chunk = max(1, min(chunk, (1 << 24) // samples_per_round))

    # Float16 on the GPU (the field's tables blended once, its MLPs' weights cast once, for every round); the
    # round kernels apply the activations as they read the field's outputs.
    field_fn = field.frozen(coeffs, torch.float16 if origins.device.type == "cuda" else torch.float32).logits

    outs, per_ray = [], []
    for start in range(0, origins.shape[0], chunk):
        end = start + chunk
        part: dict = {}
        outs.append(render_rays_inference(origins[start:end], directions[start:end], ray_frame[start:end], field_fn,
                                          grid, params, background[start:end], samples_per_round=samples_per_round,
                                          max_samples_per_round=max(MAX_SAMPLES_PER_ROUND, samples_per_round), stats=part))
        per_ray.append(part.pop("ray_samples"))
        if stats is not None:
            for k, v in part.items():
                stats[k] = stats.get(k, 0) + v
    if stats is not None:
        stats["ray_samples"] = torch.cat(per_ray) if per_ray else origins.new_zeros(0, dtype=torch.int32)
    if not outs:
        empty = origins.new_zeros(0)
        return origins.new_zeros(0, 3), empty, empty
    return tuple(torch.cat(parts) for parts in zip(*outs))  # type: ignore[return-value]


@torch.no_grad()
def update_occupancy(field: BlendShapeField, grid: OccupancyGrid, probes: torch.Tensor, *, step: int,
                     warmup_steps: int, generator: torch.Generator | None = None) -> None:
    """Refresh the occupancy grid from the field's density at every probe coefficient vector [S, K]."""

    def density_fn(points, frame_index, coeffs):
        with torch.autocast(points.device.type, dtype=torch.float16, enabled=points.device.type == "cuda"):
            return field.density(points, frame_index, coeffs).float()

    grid.update(density_fn, probes, step=step, warmup_steps=warmup_steps, generator=generator)
