"""Plain records shared by the marching kernels, the inference loop and their torch twins (no Taichi here):
marching parameters, flat samples and the field callback's signature."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class FieldLogits:
    """A field's outputs before their activations, for the inference loop, whose round kernel applies them as it
    composites (no pass over every sample to convert and activate them first): density
    ``softplus(density_rows[:, density_column])`` and colour ``sigmoid(colour_rows[:, :3])``. The rows may be
    wider than what is read (the frozen field's padded outputs) and of any float type (float16 on the GPU)."""

    density_rows: torch.Tensor  # [S, W]
    density_column: int
    colour_rows: torch.Tensor  # [S, >= 3]

    def activated(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma [S], rgb [S, 3]) float32: the activations in torch."""
        sigma = torch.nn.functional.softplus(self.density_rows[:, self.density_column].float())
        return sigma, torch.sigmoid(self.colour_rows[:, :3].float())


FieldFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | FieldLogits]
"""``field_fn(positions [S, 3], directions [S, 3], frame_index [S] int32) -> (sigma [S], rgb [S, 3])``, or the
same as ``FieldLogits`` (the inference loop takes either)."""


@dataclass(frozen=True)
class MarchParams:
    """Marching parameters (all distances in world units along unit directions).

    From a ``RenderConfig`` ``rc``: ``MarchParams.from_render_config(rc)``, i.e. the fields of the same names
    and early_stop=rc.display_early_stop.

    Steps are ``dt = clamp(t * step_growth, min_step, max_step)`` times ``step_scale``, except where
    ``long_step_density`` > 0 and the occupancy grid's density at a step's start, middle or end exceeds it: there
    ``step_scale`` is 1.
    """

    bound: float  # the scene cube is [-bound, bound]^3
    near_min: float  # marching starts no nearer than this
    min_step: float  # dt = clamp(t * step_growth, min_step, max_step) (times step_scale for long steps)
    max_step: float
    step_growth: float
    max_steps_per_ray: int
    early_stop: float  # transmittance below which the inference loop retires a ray
    step_scale: float = 1.0  # long steps: step_growth and max_step times this
    long_step_density: float = 0.0  # > 0: long steps only where the grid's density is at most this

    def __post_init__(self) -> None:
        if not 0 < self.min_step <= self.max_step:
            raise ValueError(f"need 0 < min_step <= max_step, got {self.min_step}, {self.max_step}")
        if self.max_steps_per_ray < 1 or self.bound <= 0:
            raise ValueError("need max_steps_per_ray >= 1 and bound > 0")
        if self.step_scale < 1 or self.long_step_density < 0:
            raise ValueError(f"need step_scale >= 1 and long_step_density >= 0, got {self.step_scale}, "
                             f"{self.long_step_density}")

    @property
    def long_max_step(self) -> float:
        """The largest long step: ``max_step * step_scale``."""
        return self.max_step * self.step_scale

    @property
    def long_step_growth(self) -> float:
        """The long steps' growth with distance: ``step_growth * step_scale``."""
        return self.step_growth * self.step_scale

    @classmethod
    def from_render_config(cls, rc: Any) -> "MarchParams":
        """The one way to build marching parameters: from a render config (``nerfbs.config.RenderConfig``)."""
        return cls(bound=rc.bound, near_min=rc.near_min, min_step=rc.min_step, max_step=rc.max_step,
                   step_growth=rc.step_growth, max_steps_per_ray=rc.max_steps_per_ray,
                   early_stop=rc.display_early_stop, step_scale=rc.step_scale,
                   long_step_density=rc.long_step_density)


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
