"""The blended hash grid's layout: levels, resolutions, table sizes and offsets, computed once."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GridConfig:
    """The blended multi-resolution hash grid (instant-ngp / torch-ngp layout, align_corners=False).

    Level ``l`` uses ``scale_l = 2^(l * log2(b)) * base_resolution - 1`` and
    ``resolution_l = ceil(scale_l) + 1`` with ``b = (finest / base)^(1 / (levels - 1))``. A point x in
    [0, 1]^3 maps to ``x * scale_l + 0.5``. A level stores ``min(2^log2_table_size, (resolution_l + 1)^3)``
    entries rounded up to a multiple of 8; it is dense (row-major, x fastest) when its whole grid fits,
    else hashed with primes (1, 2654435761, 805459861) modulo its size.
    """

    num_bases: int = 47
    num_levels: int = 16
    features_per_level: int = 4
    base_resolution: int = 16
    finest_resolution: int = 1024
    log2_table_size: int = 14

    def __post_init__(self) -> None:
        if self.num_bases < 1 or self.num_levels < 1 or self.features_per_level < 1:
            raise ValueError("grid: bases, levels and features per level must be >= 1")
        if self.finest_resolution < self.base_resolution or self.base_resolution < 2:
            raise ValueError("grid: need 2 <= base_resolution <= finest_resolution")
        if not 4 <= self.log2_table_size <= 24:
            raise ValueError("grid: log2_table_size must lie in [4, 24]")

    @property
    def per_level_scale(self) -> float:
        """Growth factor b of the resolution from one level to the next: base * b^(L-1) = finest."""
        if self.num_levels == 1:
            return 1.0
        return math.exp((math.log(self.finest_resolution) - math.log(self.base_resolution)) / (self.num_levels - 1))

    @property
    def level_scales(self) -> tuple[float, ...]:
        """Per level, the lattice scale: base * b^l - 1 (points in [0, 1] map to [0, scale])."""
        s = math.log2(self.per_level_scale)
        return tuple(math.pow(2.0, l * s) * self.base_resolution - 1.0 for l in range(self.num_levels))

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        """Per level, the lattice's vertices along one axis: ceil(scale) + 1."""
        return tuple(int(math.ceil(scale)) + 1 for scale in self.level_scales)

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Per level, the table entries: min(2^log2_table_size, (resolution + 1)^3), rounded up to 8."""
        cap = 1 << self.log2_table_size
        sizes = []
        for res in self.level_resolutions:
            n = min(cap, (res + 1) ** 3)
            sizes.append(int(math.ceil(n / 8) * 8))
        return tuple(sizes)

    @property
    def level_dense(self) -> tuple[bool, ...]:
        """Per level, True when the whole lattice fits its table (direct indexing, no hashing)."""
        return tuple((res + 1) ** 3 <= size for res, size in zip(self.level_resolutions, self.level_sizes))

    @property
    def level_offsets(self) -> tuple[int, ...]:
        """Start of each level's entries in a basis table, and the total at the end (L + 1 values)."""
        offsets = [0]
        for size in self.level_sizes:
            offsets.append(offsets[-1] + size)
        return tuple(offsets)

    @property
    def table_entries(self) -> int:
        """P: entries per basis table, all levels together."""
        return self.level_offsets[-1]

    @property
    def output_dim(self) -> int:
        """Width of the encoding: levels x features per level."""
        return self.num_levels * self.features_per_level
