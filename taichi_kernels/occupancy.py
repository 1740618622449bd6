"""The occupancy grid: which cells of the scene cube hold density, as floats and as a packed bitfield.

The grid covers [-bound, bound]^3 with ``resolution^3`` cells, linear index ``x + res * (y + res * z)``
(x fastest, like the hash grid's dense levels). Cell ``i`` is occupied when its density exceeds the
threshold ``min(mean density, threshold_ceiling)``; bit ``i & 7`` of byte ``i >> 3`` of the bitfield
says so, which is what the marching kernels read.

The grid never sees the model: ``update`` calls a density callback. Expressions move the face, so the
callback is evaluated for several coefficient vectors and each cell keeps the maximum over them.
``restrict`` confines the grid to a set of allowed cells (e.g. those some training camera sees inside the
head's silhouette): the others are never evaluated and never occupied. Nothing here is differentiable.
"""
import functools
from typing import Callable

import taichi as ti
import torch
from torch import nn

from taichi_kernels import runtime
from taichi_kernels.launch import fast

DensityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Points per density callback call during an update: bounds the callback's memory whatever the
# resolution and the number of coefficient vectors.
DEFAULT_CHUNK = 1 << 18


@ti.func
def cell_of(p, res, bound):
    """The (clamped) integer cell of world point ``p`` (vec3) in a ``res^3`` grid over [-bound, bound]^3."""
    scale = res / (2.0 * bound)
    c = ti.cast(ti.floor((p + bound) * scale), ti.i32)
    return ti.math.clamp(c, 0, res - 1)


@ti.func
def cell_index(c, res):
    """Flat index of integer cell ``c`` (vec3, x fastest) in a ``res^3`` grid."""
    return c[0] + res * (c[1] + res * c[2])


@ti.func
def is_occupied(bitfield: ti.template(), index):
    """1 when bit ``index`` of the packed uint8 bitfield is set, else 0."""
    return (ti.cast(bitfield[index >> 3], ti.i32) >> (index & 7)) & 1


@functools.cache
def _pack_kernel():
    @fast
    @ti.kernel
    def pack(
        density: ti.types.ndarray(dtype=ti.f32, ndim=1),  # [C] float32, one density per cell
        threshold: ti.f32,
        bitfield: ti.types.ndarray(dtype=ti.u8, ndim=1),  # [C / 8] uint8, written
    ):
        for byte in range(bitfield.shape[0]):
            bits = 0
            for k in ti.static(range(8)):
                if density[8 * byte + k] > threshold:
                    bits |= 1 << k
            bitfield[byte] = ti.cast(bits, ti.u8)

    return pack


def pack_bitfield(density: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pack ``density > threshold`` into bits: [C] float32 (C a multiple of 8) -> [C / 8] uint8."""
    runtime.ensure_initialized()
    if density.dim() != 1 or density.dtype != torch.float32 or density.shape[0] % 8:
        raise ValueError(f"density must be [C] float32 with C a multiple of 8, got {tuple(density.shape)} {density.dtype}")
    runtime.check_device("density", density)
    bitfield = torch.empty(density.shape[0] // 8, dtype=torch.uint8, device=density.device)
    if bitfield.numel():
        _pack_kernel()(density.contiguous(), float(threshold), bitfield)
    return bitfield


def unpack_bitfield(bitfield: torch.Tensor) -> torch.Tensor:
    """[C / 8] uint8 -> [C] bool, the inverse of ``pack_bitfield`` (plain torch)."""
    shifts = torch.arange(8, device=bitfield.device, dtype=torch.uint8)
    return ((bitfield[:, None] >> shifts) & 1).bool().reshape(-1)


class OccupancyGrid(nn.Module):
    """Density grid [res^3] float32 and packed bitfield [res^3 / 8] uint8 over [-bound, bound]^3.

    Buffers only (saved in ``state_dict``): ``density``, ``bitfield`` and ``mean`` (the mean density,
    a 0-d tensor); ``allowed`` [res^3] bool (all True unless ``restrict`` was called) is not saved: the
    saved bitfield already leaves the disallowed cells out. Before the first update every allowed cell is
    marked occupied so that early marching covers the whole cube.
    """

    def __init__(self, bound: float = 0.06, resolution: int = 128, decay: float = 0.9,
                 threshold_ceiling: float = 10.0):
        super().__init__()
        if resolution < 2 or resolution % 2:
            raise ValueError(f"resolution must be an even number >= 2 (the bitfield packs 8 cells), got {resolution}")
        if bound <= 0 or not 0.0 <= decay <= 1.0:
            raise ValueError(f"need bound > 0 and decay in [0, 1], got bound={bound}, decay={decay}")
        self.bound = float(bound)
        self.resolution = int(resolution)
        self.decay = float(decay)
        self.threshold_ceiling = float(threshold_ceiling)
        cells = resolution ** 3
        self.register_buffer("density", torch.zeros(cells, dtype=torch.float32))
        self.register_buffer("bitfield", torch.full((cells // 8,), 255, dtype=torch.uint8))
        self.register_buffer("mean", torch.zeros((), dtype=torch.float32))
        self.register_buffer("allowed", torch.ones(cells, dtype=torch.bool), persistent=False)

    @property
    def num_cells(self) -> int:
        """res^3, the number of cells."""
        return self.resolution ** 3

    @property
    def mean_density(self) -> float:
        """The mean density of the cells (negative values counted as 0) at the last update."""
        return float(self.mean)

    @property
    def threshold(self) -> float:
        """min(mean density, ceiling): cells above it are occupied."""
        return min(self.mean_density, self.threshold_ceiling)

    @property
    def occupancy_fraction(self) -> float:
        """The share of occupied cells in [0, 1] (a host sync; ``occupied_share`` avoids it)."""
        return float(self.occupied_share())

    def occupied_share(self) -> torch.Tensor:
        """The share of occupied cells as a 0-d tensor on the grid's device (read it without a host sync)."""
        return unpack_bitfield(self.bitfield).float().mean()

    def occupied(self) -> torch.Tensor:
        """[res^3] bool, the unpacked bitfield."""
        return unpack_bitfield(self.bitfield)

    def cell_points(self, cells: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """World points jittered uniformly inside each cell: [N] int64 cell indices -> [N, 3] float32."""
        res = self.resolution
        xyz = torch.stack((cells % res, (cells // res) % res, cells // (res * res)), dim=1).float()
        jitter = torch.rand(xyz.shape, generator=generator, device=xyz.device)
        return (xyz + jitter) * (2.0 * self.bound / res) - self.bound

    @torch.no_grad()
    def restrict(self, allowed: torch.Tensor) -> None:
        """Allow only the cells where ``allowed`` [res^3] bool is True: the others lose their density and
        bit now and are never evaluated or occupied by later updates."""
        if allowed.shape != (self.num_cells,) or allowed.dtype != torch.bool:
            raise ValueError(f"allowed must be [{self.num_cells}] bool, got {tuple(allowed.shape)} {allowed.dtype}")
        self.allowed.copy_(allowed)
        self.density.mul_(self.allowed)
        self.bitfield.copy_(self.bitfield & pack_bitfield(self.allowed.float(), 0.5))

    @torch.no_grad()
    def update(self, density_fn: DensityFn, coeff_sets: torch.Tensor, *, step: int, warmup_steps: int = 256,
               generator: torch.Generator | None = None, chunk: int = DEFAULT_CHUNK) -> None:
        """Re-evaluate densities, decay the old ones, take the max, and repack the bitfield.

        density_fn(points [N, 3] float32 world, frame_index [N] int32, coeff_sets [S, K]) -> sigma [N]
        is called with ``frame_index`` selecting a row of ``coeff_sets``; each evaluated cell gets the
        max over all S rows, at one jittered point per cell. While ``step < warmup_steps`` every allowed cell
        is evaluated; afterwards A/4 uniform draws among the A allowed cells plus A/4 draws among the occupied
        cells. Then density = max(decay * density, fresh) (unevaluated cells only decay, disallowed ones stay
        0), mean = the mean of the clamped-positive densities, and the bitfield marks density >
        min(mean, ceiling).
        Each callback call sees at most ``chunk`` points.
        """
        if coeff_sets.dim() != 2 or coeff_sets.shape[0] < 1:
            raise ValueError(f"coeff_sets must be [S, K] with S >= 1, got {tuple(coeff_sets.shape)}")
        device = self.density.device
        cells = self._cells_to_evaluate(step, warmup_steps, generator)
        sets = coeff_sets.shape[0]
        per_call = max(1, chunk // sets)
        frame_index = torch.arange(sets, device=device, dtype=torch.int32)
        fresh = torch.zeros_like(self.density)
        for start in range(0, cells.shape[0], per_call):
            block = cells[start:start + per_call]
            points = self.cell_points(block, generator)
            sigma = density_fn(points.repeat(sets, 1), frame_index.repeat_interleave(block.shape[0]), coeff_sets)
            best = sigma.reshape(sets, block.shape[0]).float().amax(dim=0).clamp_min(0.0)
            fresh.scatter_reduce_(0, block, best, reduce="amax")
        torch.maximum(self.density * self.decay, fresh, out=self.density)
        self.density.mul_(self.allowed)
        self.mean.copy_(self.density.clamp_min(0.0).mean())
        self.bitfield.copy_(pack_bitfield(self.density, self.threshold))

    def _cells_to_evaluate(self, step: int, warmup_steps: int, generator: torch.Generator | None) -> torch.Tensor:
        device = self.density.device
        n = self.num_cells
        restricted = not bool(self.allowed.all())
        allowed = torch.nonzero(self.allowed).squeeze(1) if restricted else None
        if step < warmup_steps:
            return allowed if restricted else torch.arange(n, device=device)
        a = allowed.shape[0] if restricted else n
        uniform = torch.randint(max(a, 1), (a // 4,), generator=generator, device=device)
        if restricted:
            uniform = allowed[uniform] if a else uniform[:0]
        occupied = torch.nonzero(self.occupied()).squeeze(1)
        if occupied.numel() == 0:
            return uniform
        picks = torch.randint(occupied.shape[0], (a // 4,), generator=generator, device=device)
        return torch.cat((uniform, occupied[picks]))
