"""The blended multi-resolution hash encoding (NeRFBlendShape), as Taichi kernels behind autograd.

feature(x, f)[l * C + c] = sum_k coeffs[f, k] * trilinear lookup of tables[k] at x on level l.

Shape of the computation (blend, then look up): the K basis tables are blended once per frame of
the batch by one matrix product, ``blended[F, P, C] = coeffs[F, K] @ tables[K, P * C]``, and the
kernels gather only from the F blended tables. With F (frames per batch, usually 1-4) far below
K (47) this reads each table once instead of K times per sample. The backward mirrors it: a kernel
scatter-adds the output gradient into ``grad_blended[F, P, C]``, then two matrix products give
``grad_tables = coeffs^T @ grad_blended`` and ``grad_coeffs = grad_blended . tables``.

The forward runs one thread per (sample, feature) (the inference lookup, ``lookup_blended``, can gather
several of a sample's features per thread: ``LOOKUP_FEATURES_PER_THREAD``), the backward one per (sample, x side of the
cell, feature), with levels and corners unrolled (``ti.static``): neighbouring threads touch the C
adjacent floats of a table row together, so a warp's loads and atomics land on a few 32-byte
sectors instead of 32 scattered words (on the H100 the scatter-add got about 3.5x faster than one
thread per (sample, level) issuing 4 scalar atomics per corner: docs/PERF.md, "Blended hash encoder"). On CUDA
the scatter-add also merges, inside each warp, consecutive samples that hit the same row (samples
along a ray share coarse cells) into one atomic. Kernels come from cached factories keyed on
(GridConfig, dtype, backend); levels' scales, sizes, offsets and dense/hashed choice are
compile-time constants.
"""
import functools
import math

import taichi as ti
import torch
from torch import nn

from taichi_kernels import runtime
from taichi_kernels.grid_layout import GridConfig
from taichi_kernels.launch import fast

_PRIMES = (1, 2654435761, 805459861)
_TI_REAL = {torch.float32: ti.f32, torch.float64: ti.f64}
_BLOCK_DIM = 128
_WARP = 32
# Features of a point gathered per thread by ``lookup_blended`` (the inference lookup; the training forward gathers
# one per thread), per backend: 1 hashes each corner once per feature, a point's C features once per point. Backends
# not named gather all C: on the CPU whole renders took 10 % less time than with 1 (docs/PERF.md, session 13). On an
# H100 one per thread renders fastest (batched katie 7.1-7.2 ms per frame, 7.8-8.0 with 2, 9.3 with 4; session 14).
LOOKUP_FEATURES_PER_THREAD = {"cuda": 1}
_FULL_MASK = 0xFFFFFFFF  # all 32 lanes


@functools.cache
def _kernels(grid: GridConfig, dtype: torch.dtype, arch: str, warp_merge: bool, pair_x: bool):
    """Forward and backward kernels for one grid layout, float type and backend, and a forward that reads
    float16 blended tables and writes float16 features (accumulating in ``dtype``: inference under fp16
    autocast, half the bytes gathered and written).

    ``warp_merge`` (CUDA, float32 only): merge equal rows within a warp before the atomics.
    ``pair_x``: the backward runs two threads per (sample, feature), one per x side of the cell,
    so a warp's atomic often covers both x corners, which share a 32-byte sector when the lower
    corner's row is even (always on dense levels, half the time on hashed ones).
    """
    real = _TI_REAL[dtype]
    channels = grid.features_per_level
    levels = [
        (grid.level_scales[l], grid.level_resolutions[l] + 1, grid.level_sizes[l], grid.level_offsets[l], grid.level_dense[l])
        for l in range(grid.num_levels)
    ]
    lanes = channels * (2 if pair_x else 1)  # backward threads per sample
    merge_in_warp = warp_merge and arch == "cuda" and dtype == torch.float32 and _WARP % lanes == 0
    run_steps = [lanes << s for s in range(_WARP.bit_length()) if lanes << s < _WARP]  # lane strides of the scan

    @ti.func
    def corner_terms(x, scale: ti.template(), stride: ti.template(), dense: ti.template()):
        """The fractional position in the cell [3] and, per axis, the index terms of its two corners [3, 2]."""
        pos = x * real(scale) + real(0.5)
        cell = ti.floor(pos)
        frac = pos - cell
        base = ti.cast(ti.cast(cell, ti.i32), ti.u32)
        terms = ti.Matrix.zero(ti.u32, 3, 2)
        for d in ti.static(range(3)):
            mult = ti.u32(stride**d) if ti.static(dense) else ti.u32(_PRIMES[d])
            terms[d, 0] = base[d] * mult
            terms[d, 1] = (base[d] + ti.u32(1)) * mult
        return frac, terms

    @ti.func
    def corner_row(terms, bx, by: ti.template(), bz: ti.template(), size: ti.template(), offset: ti.template(), dense: ti.template()):
        """Row in the packed table of the corner on side bx, by, bz (0: lower, 1: upper) of each axis."""
        tx, ty, tz = ti.select(bx != 0, terms[0, 1], terms[0, 0]), terms[1, by], terms[2, bz]
        combined = tx + ty + tz if ti.static(dense) else tx ^ ty ^ tz
        return ti.cast(combined % ti.u32(size), ti.i32) + offset

    @ti.func
    def corner_weight(frac, bx, by: ti.template(), bz: ti.template()):
        """Trilinear weight of the corner on side bx, by, bz, and its derivative w.r.t. frac [3]."""
        w = ti.Vector([ti.select(bx != 0, frac[0], real(1.0) - frac[0]), frac[1] if ti.static(by) else real(1.0) - frac[1], frac[2] if ti.static(bz) else real(1.0) - frac[2]])
        sign = ti.Vector([ti.select(bx != 0, real(1.0), real(-1.0)), real(1.0) if ti.static(by) else real(-1.0), real(1.0) if ti.static(bz) else real(-1.0)])
        return w[0] * w[1] * w[2], sign * ti.Vector([w[1] * w[2], w[0] * w[2], w[0] * w[1]])

    @ti.func
    def load_point(points: ti.template(), n):
        x = ti.Vector([points[n, 0], points[n, 1], points[n, 2]])
        inside = (x >= 0).all() and (x <= 1).all()
        return ti.select(inside, x, ti.Vector.zero(real, 3)), inside

    def make_forward(store, group: int):
        """The forward with ``group`` of a point's C features per thread (1: one thread per feature, adjacent
        threads reading a row's adjacent values; C: one thread per point, its corners hashed once)."""
        @fast
        @ti.kernel
        def forward(
            points: ti.types.ndarray(dtype=real, ndim=2),  # [N, 3] points in [0, 1]^3
            frame_index: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [N] frame of each point, in [0, F)
            blended: ti.types.ndarray(dtype=store, ndim=3),  # [F, P, C] tables blended per frame
            out: ti.types.ndarray(dtype=store, ndim=2),  # [N, L * C] features (written)
        ):
            ti.loop_config(block_dim=_BLOCK_DIM)
            for i in range(points.shape[0] * (channels // group)):
                n, c0 = i // (channels // group), i % (channels // group) * group
                x, inside = load_point(points, n)
                f = frame_index[n]
                for l in ti.static(range(len(levels))):
                    scale, stride, size, offset, dense = ti.static(levels[l])
                    acc = ti.Vector.zero(real, group)
                    if inside:
                        frac, terms = corner_terms(x, scale, stride, dense)
                        for bits in ti.static(range(8)):
                            bx, by, bz = ti.static(bits & 1, (bits >> 1) & 1, bits >> 2)
                            w, _ = corner_weight(frac, bx, by, bz)
                            row = corner_row(terms, bx, by, bz, size, offset, dense)
                            for g in ti.static(range(group)):
                                acc[g] += w * ti.cast(blended[f, row, c0 + g], real)
                    for g in ti.static(range(group)):
                        out[n, l * channels + c0 + g] = ti.cast(acc[g], store)

        return forward

    # The inference lookup's layouts; one feature per thread in the real type is the training forward itself.
    lookups = {(half, group): make_forward(ti.f16 if half else real, group)
               for half in (False, True) for group in range(1, channels + 1) if channels % group == 0}
    forward = lookups[False, 1]

    @ti.func
    def scatter(grad_blended: ti.template(), f, row, c, value, valid, lane):
        """grad_blended[f, row, c] += value; on CUDA, equal rows of consecutive samples merge first.

        Lanes holding the same feature c (and x side) sit ``lanes`` apart; a run of consecutive
        samples with the same key (frame * P + row, needs F * P < 2^31) is summed by a segmented
        suffix scan over those lanes, and only the run's first lane issues the atomic. Invalid
        lanes (outside points, padding) never merge.
        """
        if ti.static(merge_in_warp):
            full = ti.u32(_FULL_MASK)
            key = ti.select(valid, f * grad_blended.shape[1] + row, -1 - lane)
            key_next = ti.simt.warp.shfl_down_i32(full, key, lanes)
            has_next = lane + lanes < _WARP and key_next == key
            if ti.simt.warp.any_nonzero(full, ti.cast(has_next, ti.i32)):
                key_prev = ti.simt.warp.shfl_up_i32(full, key, lanes)
                is_head = lane < lanes or key_prev != key
                acc = value
                open_run = ti.cast(has_next, ti.i32)  # 1 while the summed lanes have not reached the run's end
                for step in ti.static(run_steps):
                    other = ti.simt.warp.shfl_down_f32(full, acc, step)
                    other_open = ti.simt.warp.shfl_down_i32(full, open_run, step)
                    if open_run:
                        acc += other
                        open_run = other_open
                if is_head and valid:
                    ti.atomic_add(grad_blended[f, row, c], acc)
            elif valid:
                ti.atomic_add(grad_blended[f, row, c], value)
        elif valid:
            ti.atomic_add(grad_blended[f, row, c], value)

    @fast
    @ti.kernel
    def backward(
        points: ti.types.ndarray(dtype=real, ndim=2),  # [N, 3] points in [0, 1]^3
        frame_index: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [N] frame of each point, in [0, F)
        grad_out: ti.types.ndarray(dtype=real, ndim=2),  # [N, L * C] gradient of the features
        blended: ti.types.ndarray(dtype=real, ndim=3),  # [F, P, C] blended tables (read if with_points)
        grad_blended: ti.types.ndarray(dtype=real, ndim=3),  # [F, P, C] accumulated into (zeroed by caller)
        grad_points: ti.types.ndarray(dtype=real, ndim=2),  # [N, 3] accumulated into if with_points, else [0, 3]
        with_points: ti.template(),
    ):
        total = points.shape[0] * lanes
        padded = total
        if ti.static(merge_in_warp):  # whole warps, so every lane takes part in the shuffles
            padded = (total + _WARP - 1) // _WARP * _WARP
        ti.loop_config(block_dim=_BLOCK_DIM)
        for i in range(padded):
            lane = i % _WARP
            n = ti.min(i, total - 1) // lanes
            c = i % channels
            x_side = (i // channels) % 2  # this thread's x side when pair_x
            x, inside = load_point(points, n)
            valid = inside and i < total
            f = frame_index[n]
            dx = ti.Vector.zero(real, 3)
            for l in ti.static(range(len(levels))):
                scale, stride, size, offset, dense = ti.static(levels[l])
                g = grad_out[n, l * channels + c]
                frac, terms = corner_terms(x, scale, stride, dense)
                dfrac = ti.Vector.zero(real, 3)
                for yz in ti.static(range(4)):
                    by, bz = ti.static(yz & 1, yz >> 1)
                    for xs in ti.static(range(1 if pair_x else 2)):
                        bx = xs
                        if ti.static(pair_x):
                            bx = x_side
                        row = corner_row(terms, bx, by, bz, size, offset, dense)
                        w, dw = corner_weight(frac, bx, by, bz)
                        scatter(grad_blended, f, row, c, w * g, valid, lane)
                        if ti.static(with_points):
                            if valid:
                                dfrac += dw * blended[f, row, c]
                if ti.static(with_points):
                    dx += dfrac * (g * real(scale))
            if ti.static(with_points):
                if valid:
                    for d in ti.static(range(3)):
                        ti.atomic_add(grad_points[n, d], dx[d])

    return forward, backward, lookups


@functools.cache
def _function(grid: GridConfig, dtype: torch.dtype, arch: str, warp_merge: bool = True, pair_x: bool = True) -> type[torch.autograd.Function]:
    """The autograd Function for one grid layout, float type and backend (variants: see ``_kernels``).

    Kernels get detached views: Taichi would otherwise allocate ``.grad`` on inputs that require grad.
    """
    forward_kernel, backward_kernel, _ = _kernels(grid, dtype, arch, warp_merge, pair_x)
    entries, channels = grid.table_entries, grid.features_per_level

    class BlendedHashEncode(torch.autograd.Function):
        @staticmethod
        def forward(ctx, points, frame_index, coeffs, tables):
            with torch.autocast(points.device.type, enabled=False):
                blended = (coeffs @ tables.reshape(tables.shape[0], -1)).reshape(-1, entries, channels)
            out = torch.empty(points.shape[0], grid.output_dim, dtype=points.dtype, device=points.device)
            if points.shape[0] > 0:
                forward_kernel(points.detach(), frame_index, blended, out)
            ctx.save_for_backward(points, frame_index, coeffs, tables, blended if ctx.needs_input_grad[0] else None)
            return out

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad_out):
            points, frame_index, coeffs, tables, blended = ctx.saved_tensors
            want_points, _, want_coeffs, want_tables = ctx.needs_input_grad
            grad_blended = torch.zeros(coeffs.shape[0], entries, channels, dtype=points.dtype, device=points.device)
            grad_points = torch.zeros_like(points) if want_points else points.new_empty(0, 3)
            if points.shape[0] > 0:
                backward_kernel(
                    points.detach(), frame_index, grad_out.contiguous(),
                    blended if want_points else grad_blended, grad_blended, grad_points, want_points,
                )
            flat = grad_blended.reshape(coeffs.shape[0], -1)  # [F, P * C]
            with torch.autocast(points.device.type, enabled=False):
                grad_tables = (coeffs.t() @ flat).reshape(tables.shape) if want_tables else None
                grad_coeffs = flat @ tables.reshape(tables.shape[0], -1).t() if want_coeffs else None
            return (grad_points if want_points else None), None, grad_coeffs, grad_tables

    return BlendedHashEncode


def _check_inputs(points, frame_index, coeffs, tables, grid: GridConfig) -> None:
    for name, t in (("points", points), ("frame_index", frame_index), ("coeffs", coeffs), ("tables", tables)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if points.dtype not in _TI_REAL:
        raise ValueError(f"points must be float32 or float64, got {points.dtype}")
    for name, t in (("coeffs", coeffs), ("tables", tables)):
        if t.dtype != points.dtype:
            raise ValueError(f"{name} is {t.dtype} but points are {points.dtype}: use one float type")
    if frame_index.dtype != torch.int32:
        raise ValueError(f"frame_index must be int32, got {frame_index.dtype}")
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got {list(points.shape)}")
    if frame_index.shape != points.shape[:1]:
        raise ValueError(f"frame_index must be [N] = [{points.shape[0]}], got {list(frame_index.shape)}")
    if coeffs.dim() != 2 or coeffs.shape[1] != grid.num_bases or coeffs.shape[0] < 1:
        raise ValueError(f"coeffs must be [F, K] with F >= 1 and K = {grid.num_bases}, got {list(coeffs.shape)}")
    want = [grid.num_bases, grid.table_entries, grid.features_per_level]
    if list(tables.shape) != want:
        raise ValueError(f"tables must be [K, P, C] = {want} for this grid, got {list(tables.shape)}")
    for name, t in (("points", points), ("frame_index", frame_index), ("coeffs", coeffs), ("tables", tables)):
        runtime.check_device(name, t)


def blended_hash_encode(
    points: torch.Tensor,  # [N, 3] float32 (or float64), points in [0, 1]^3
    frame_index: torch.Tensor,  # [N] int32, row of coeffs for each point, in [0, F)
    coeffs: torch.Tensor,  # [F, K] blend weights per frame
    tables: torch.Tensor,  # [K, P, C] one hash table per basis
    grid: GridConfig,
) -> torch.Tensor:  # [N, L * C]
    """Blended multi-resolution hash features: column ``l * C + c`` holds
    ``sum_k coeffs[frame_index[n], k] * trilinear(tables[k], level l, feature c)`` at ``points[n]``.

    Under float16 autocast without autograd (inference) the blended tables and the features are float16.
    Points with any coordinate outside [0, 1] get zero features and zero gradient. Differentiable
    w.r.t. tables, coeffs and points (the trilinear derivative, one-sided at cell borders; computed
    only when points require grad); frame_index is not differentiable and is not range-checked
    (checking would cost a host sync). Not twice differentiable.
    """
    runtime.ensure_initialized()
    _check_inputs(points, frame_index, coeffs, tables, grid)
    device = points.device.type
    if not torch.is_grad_enabled() and torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16:
        return _encode_half(points.contiguous(), frame_index.contiguous(), coeffs, tables, grid)
    fn = _function(grid, points.dtype, runtime.current_arch())
    return fn.apply(points.contiguous(), frame_index.contiguous(), coeffs.contiguous(), tables.contiguous())


def _encode_half(points, frame_index, coeffs, tables, grid: GridConfig) -> torch.Tensor:
    """Inference under float16 autocast: blend in float32, round the blended tables to float16, look up
    into float16 features (the MLP after it runs in float16 anyway)."""
    return lookup_blended(points, frame_index, blend_tables(coeffs, tables, torch.float16), grid)


@torch.no_grad()
def blend_tables(coeffs: torch.Tensor, tables: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The K basis tables [K, P, C] blended per frame by ``coeffs`` [F, K] (in the tables' type, float32 for
    a trained field), stored as ``dtype``: [F, P, C], no autograd. What the encoder gathers from; an inference render
    blends once and looks up many times (``lookup_blended``)."""
    if coeffs.dim() != 2 or tables.dim() != 3 or coeffs.shape[1] != tables.shape[0]:
        raise ValueError(f"coeffs [F, K] and tables [K, P, C] must agree on K, got {list(coeffs.shape)} and "
                         f"{list(tables.shape)}")
    with torch.autocast(tables.device.type, enabled=False):
        blended = coeffs.to(tables.dtype) @ tables.reshape(tables.shape[0], -1)
    return blended.to(dtype).reshape(coeffs.shape[0], *tables.shape[1:])


@torch.no_grad()
def lookup_blended(points: torch.Tensor, frame_index: torch.Tensor, blended: torch.Tensor,
                   grid: GridConfig) -> torch.Tensor:
    """Features [N, L * C] in ``blended``'s type (float16, float32 or float64) of points [N, 3] (float32, or
    float64 with float64 tables) from tables already blended per frame, ``blended`` [F, P, C]
    (``blend_tables``); ``frame_index`` [N] int32 picks the frame. No autograd: the forward of
    ``blended_hash_encode`` without its blend."""
    runtime.ensure_initialized()
    if list(blended.shape[1:]) != [grid.table_entries, grid.features_per_level] or blended.dim() != 3:
        raise ValueError(f"blended must be [F, {grid.table_entries}, {grid.features_per_level}] for this grid, "
                         f"got {list(blended.shape)}")
    real = torch.float32 if blended.dtype == torch.float16 else blended.dtype
    if points.dtype != real or real not in _TI_REAL:
        raise ValueError(f"points must be {real} for {blended.dtype} blended tables, got {points.dtype}")
    if frame_index.dtype != torch.int32 or frame_index.shape != points.shape[:1]:
        raise ValueError(f"frame_index must be [N] = [{points.shape[0]}] int32, got {list(frame_index.shape)} "
                         f"{frame_index.dtype}")
    for name, t in (("points", points), ("frame_index", frame_index), ("blended", blended)):
        runtime.check_device(name, t)
    lookups = _kernels(grid, real, runtime.current_arch(), True, True)[2]
    out = torch.empty(points.shape[0], grid.output_dim, dtype=blended.dtype, device=points.device)
    if points.shape[0] > 0:
        channels = grid.features_per_level
        group = math.gcd(LOOKUP_FEATURES_PER_THREAD.get(runtime.current_arch(), channels), channels)
        kernel = lookups[blended.dtype == torch.float16, group]
        kernel(points.contiguous(), frame_index.contiguous(), blended.contiguous(), out)
    return out


class BlendedHashGrid(nn.Module):
    """K hash tables ``[K, P, C]`` blended per frame by coefficients, then looked up (see
    ``blended_hash_encode``). Output width ``grid.output_dim`` = L * C."""

    def __init__(self, grid: GridConfig = GridConfig(), init_scale: float = 1e-4):
        super().__init__()
        self.grid = grid
        tables = torch.empty(grid.num_bases, grid.table_entries, grid.features_per_level)
        self.tables = nn.Parameter(tables.uniform_(-init_scale, init_scale))

    def forward(self, points: torch.Tensor, frame_index: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        """Encodings [N, L*C] of points [N, 3] in [0, 1]^3; ``frame_index`` [N] int32 picks rows of ``coeffs`` [F, K]."""
        return blended_hash_encode(points, frame_index, coeffs, self.tables, self.grid)
