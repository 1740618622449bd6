"""The frozen field's two MLPs in one Triton kernel, for inference renders on a CUDA GPU.

A render's MLPs are bound by memory: as seven float16 cuBLAS products (the density's 64 -> 64 x4 -> 65, the colour's
80 -> 64 -> 3) they read and write about 1.7 KB per sample. This kernel takes a tile of samples from their 64 features
and 16 harmonics to the density and colour logits on the tensor cores, every hidden layer in registers: it reads
160 bytes per sample and writes 8 (3.2 times faster on an H100, docs/PERF.md session 15). It is written in Triton,
which ships with torch's CUDA builds, because Taichi kernels cannot reach the tensor cores, and without them the
same work per thread is slower than the products.

Only the original model's shapes (``fits``); float16 in, float32 accumulation, float16 between layers and out, as
the products compute. ``TRITON_INTERPRET=1`` (set before this module is imported) runs it on a CPU, for the tests.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

FEATURES, HIDDEN, GEOMETRY, HARMONICS = 64, 64, 64, 16  # 16 levels x 4 features, sh degree 4
# Samples per program and warps: on an H100, tiles of 32 with 1 warp took 1.04 ms for 4.2 M samples; with 2 or 4
# warps 1.2 and 1.7, tiles of 16 1.7-2.2 (bench/fused_mlp.py). Tiles of 64 stopped there with an illegal memory
# access (Triton 3.6; not investigated).
TILE, WARPS = 32, 1
OUT_COLUMNS = 4  # a sample's output row: the colour's 3 logits, then the density's


@triton.jit
def _product(x, w, K: tl.constexpr, N: tl.constexpr):
    """x [TILE, K] float16 times the row-major [K, N] float16 matrix at ``w``: [TILE, N] float32."""
    k = tl.arange(0, K)
    n = tl.arange(0, N)
    return tl.dot(x, tl.load(w + k[:, None] * N + n[None, :]))


@triton.jit
def _field_mlp_kernel(features, harmonics, d1, d2, d3, d4, d_geometry, d_density, c_harmonics, c_geometry, c_last,
                      out, n, TILE: tl.constexpr):
    rows = (tl.program_id(0) * TILE + tl.arange(0, TILE)).to(tl.int64)
    live = rows < n
    c64 = tl.arange(0, 64)
    c16 = tl.arange(0, 16)
    h = tl.load(features + rows[:, None] * 64 + c64[None, :], mask=live[:, None], other=0.0)
    h = tl.maximum(_product(h, d1, 64, 64), 0.0).to(tl.float16)
    h = tl.maximum(_product(h, d2, 64, 64), 0.0).to(tl.float16)
    h = tl.maximum(_product(h, d3, 64, 64), 0.0).to(tl.float16)
    h = tl.maximum(_product(h, d4, 64, 64), 0.0).to(tl.float16)
    density = tl.sum(h.to(tl.float32) * tl.load(d_density + c64).to(tl.float32)[None, :], axis=1)
    geometry = _product(h, d_geometry, 64, 64).to(tl.float16)
    sh = tl.load(harmonics + rows[:, None] * 16 + c16[None, :], mask=live[:, None], other=0.0)
    hidden = tl.maximum(_product(sh, c_harmonics, 16, 64) + _product(geometry, c_geometry, 64, 64), 0.0)
    colour = _product(hidden.to(tl.float16), c_last, 64, 16)  # the 3 logits, then zeros
    tl.store(out + rows[:, None] * 4 + c16[None, :], colour.to(tl.float16), mask=live[:, None] & (c16[None, :] < 3))
    tl.store(out + rows * 4 + 3, density.to(tl.float16), mask=live)


def fits(density: list[torch.Tensor], colour: list[torch.Tensor]) -> bool:
    """Whether the MLPs' weights ([out, in], first to last) have the shapes the kernel is written for."""
    return ([tuple(w.shape) for w in density] == [(HIDDEN, FEATURES)] + [(HIDDEN, HIDDEN)] * 3 + [(GEOMETRY + 1, HIDDEN)]
            and [tuple(w.shape) for w in colour] == [(HIDDEN, HARMONICS + GEOMETRY), (3, HIDDEN)])


class FusedFieldMLP:
    """Both MLPs of a field as one kernel call: ``(features [N, 64], harmonics [N, 16]) -> [N, 4]`` float16 logits,
    the colour's three then the density. ``density``: the density MLP's weights, its last layer's 64 geometry
    features first, then the density (``FrozenField``'s order); ``colour``: the colour MLP's, its first layer reading
    [harmonics, geometry]."""

    def __init__(self, density: list[torch.Tensor], colour: list[torch.Tensor]):
        if not fits(density, colour):
            raise ValueError("FusedFieldMLP: the MLPs' shapes are not the original model's")
        half = lambda w: w.detach().to(torch.float16).contiguous()  # noqa: E731
        last_colour = colour[1].new_zeros(HIDDEN, 16)
        last_colour[:, :3] = colour[1].t()
        self.operands = ([half(w.t()) for w in density[:4]]
                         + [half(density[4][:GEOMETRY].t()), half(density[4][GEOMETRY]),
                            half(colour[0][:, :HARMONICS].t()), half(colour[0][:, HARMONICS:].t()), half(last_colour)])

    @torch.no_grad()
    def __call__(self, features: torch.Tensor, harmonics: torch.Tensor) -> torch.Tensor:
        n = features.shape[0]
        if features.shape != (n, FEATURES) or harmonics.shape != (n, HARMONICS):
            raise ValueError(f"features [N, {FEATURES}] and harmonics [N, {HARMONICS}], got {tuple(features.shape)} and "
                             f"{tuple(harmonics.shape)}")
        out = features.new_empty(n, OUT_COLUMNS, dtype=torch.float16)
        if n:
            _field_mlp_kernel[(triton.cdiv(n, TILE),)](features.to(torch.float16).contiguous(),
                                                        harmonics.to(torch.float16).contiguous(), *self.operands, out,
                                                        n, TILE=TILE, num_warps=WARPS)
        return out
