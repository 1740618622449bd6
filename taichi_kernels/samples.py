"""Plain records shared by the marching kernels, the inference loop and their torch twins (no Taichi here):
marching parameters, flat samples and the field callback's signature."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

FieldFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``field_fn(positions [S, 3], directions [S, 3], frame_index [S] int32) -> (sigma [S], rgb [S, 3])``."""


def one_cell_step(bound: float, res: int) -> float:
    """The original recipe's largest step, 2 bound / (res - 1): about one cell of a res^3 grid. Longer steps
    look for occupancy this far ahead of their start (half of it), not at their midpoint."""
    return 2.0 * bound / (res - 1)


@dataclass(frozen=True)
class MarchParams:
    """Marching parameters (all distances in world units along unit directions).

    From a ``RenderConfig`` ``rc``: ``MarchParams.from_render_config(rc)``, i.e. bound=rc.bound,
    near_min=rc.near_min, min_step=rc.min_step, max_step=rc.max_step, step_growth=rc.step_growth * rc.step_scale,
    max_steps_per_ray=rc.max_steps_per_ray, early_stop=rc.display_early_stop.
    """

    bound: float  # the scene cube is [-bound, bound]^3
    near_min: float  # marching starts no nearer than this
    min_step: float  # dt = clamp(t * step_growth, min_step, max_step)
    max_step: float
    step_growth: float
    max_steps_per_ray: int
    early_stop: float  # transmittance below which the inference loop retires a ray

    def __post_init__(self) -> None:
        if not 0 < self.min_step <= self.max_step:
            raise ValueError(f"need 0 < min_step <= max_step, got {self.min_step}, {self.max_step}")
        if self.max_steps_per_ray < 1 or self.bound <= 0:
            raise ValueError("need max_steps_per_ray >= 1 and bound > 0")

    @classmethod
    def from_render_config(cls, rc: Any) -> "MarchParams":
        """The one way to build marching parameters: from a render config (``nerfbs.config.RenderConfig``)."""
        return cls(bound=rc.bound, near_min=rc.near_min, min_step=rc.min_step, max_step=rc.max_step,
                   step_growth=rc.step_growth * rc.step_scale, max_steps_per_ray=rc.max_steps_per_ray,
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
        """M, the samples of all rays together."""
        return self.t.shape[0]

    def prefix(self, keep_counts: torch.Tensor) -> "Samples":
        """The first ``keep_counts[r]`` (<= ray_counts[r]) samples of each ray r, as new flat Samples
        (keep_counts [R] int). One host sync (the number kept)."""
        ray = self.ray_index.long()
        within = torch.arange(self.num_samples, device=self.t.device) - self.ray_offsets.long()[ray]
        keep = torch.nonzero(within < keep_counts.long()[ray]).squeeze(1)
        counts = torch.minimum(keep_counts.to(torch.int32), self.ray_counts)
        offsets = (torch.cumsum(counts, 0, dtype=torch.int32) - counts).to(torch.int32)
        return Samples(self.positions[keep], self.directions[keep], self.t[keep], self.dt[keep], self.ray_index[keep],
                       offsets, counts)
