"""The colour MLP's input in one pass: view-direction spherical harmonics, then geometry features.

``color_input(directions [N, 3], density_out [N, 1 + G], degree) -> [N, degree^2 + G]``: columns
``0 : degree^2`` are the real spherical harmonics of the unit directions (bands 0 to degree - 1, the
order of ``reference.color_input.spherical_harmonics``), the rest is ``density_out[:, 1:]`` (the density
MLP's output without its density column). The output has ``density_out``'s dtype (float16 under autocast).

``write_harmonics(directions, row, degree, columns)`` writes the harmonics alone into the first columns of a
wider row, without autograd: the inference field (``nerfbs.field.FrozenField``) lets the density MLP write its
features beside them, so the colour MLP reads one row and nothing is copied.

In torch this is ~30 elementwise launches for the harmonics, a cast and a concatenation, each a pass
over memory: on the H100 it took more time than the density MLP in an inference render (docs/PERF.md).
Here it is one kernel. Directions get no gradient (they come from the cameras); ``density_out`` gets
the output gradient of its feature columns.
"""
import functools

import taichi as ti
import torch

from taichi_kernels import runtime
from taichi_kernels.launch import fast

_TI_TYPE = {torch.float16: ti.f16, torch.float32: ti.f32, torch.float64: ti.f64}


@ti.func
def _harmonics(x, y, z, degree: ti.template()):
    """The degree^2 real spherical harmonics of the unit vector (x, y, z), as a float32 vector."""
    out = ti.Vector.zero(ti.f32, degree * degree)
    out[0] = 0.28209479177387814
    if ti.static(degree > 1):
        out[1] = -0.48860251190291987 * y
        out[2] = 0.48860251190291987 * z
        out[3] = -0.48860251190291987 * x
    if ti.static(degree > 2):
        xy, yz, xz, x2, y2, z2 = x * y, y * z, x * z, x * x, y * y, z * z
        out[4] = 1.0925484305920792 * xy
        out[5] = -1.0925484305920792 * yz
        out[6] = 0.94617469575755997 * z2 - 0.31539156525251999
        out[7] = -1.0925484305920792 * xz
        out[8] = 0.54627421529603959 * (x2 - y2)
        if ti.static(degree > 3):
            out[9] = 0.59004358992664352 * y * (-3.0 * x2 + y2)
            out[10] = 2.8906114426405538 * xy * z
            out[11] = 0.45704579946446572 * y * (1.0 - 5.0 * z2)
            out[12] = 0.3731763325901154 * z * (5.0 * z2 - 3.0)
            out[13] = 0.45704579946446572 * x * (1.0 - 5.0 * z2)
            out[14] = 1.4453057213202769 * z * (x2 - y2)
            out[15] = 0.59004358992664352 * x * (-x2 + 3.0 * y2)
    return out


@functools.cache
def _kernels(degree: int, features: int, dtype: torch.dtype, arch: str):
    real = _TI_TYPE[dtype]
    sh = degree * degree
    width = sh + features  # a constant: the per-element index division compiles to a multiplication
    per_element = arch == "cuda"

    # On CUDA one thread per output element: neighbouring threads write neighbouring columns, so a
    # warp's stores land in a few 32-byte sectors (a thread per point, writing its row of sh + G values
    # alone, ran 2x slower than torch on the H100: scattered stores). On the CPU one thread per point
    # (rows stay in cache; per element, the harmonics would be recomputed for every column).
    @fast
    @ti.kernel
    def forward(
        directions: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [N, 3] unit
        density_out: ti.types.ndarray(dtype=real, ndim=2),  # [N, 1 + G + any padding]
        out: ti.types.ndarray(dtype=real, ndim=2),  # [N, sh + G] written
    ):
        if ti.static(per_element):
            for i in range(directions.shape[0] * width):
                n, k = i // width, i % width
                if k < sh:
                    harmonics = _harmonics(directions[n, 0], directions[n, 1], directions[n, 2], degree)
                    out[n, k] = ti.cast(harmonics[k], real)
                else:
                    out[n, k] = density_out[n, 1 + k - sh]
        else:
            for n in range(directions.shape[0]):
                harmonics = _harmonics(directions[n, 0], directions[n, 1], directions[n, 2], degree)
                for k in ti.static(range(sh)):
                    out[n, k] = ti.cast(harmonics[k], real)
                for k in range(sh, width):
                    out[n, k] = density_out[n, 1 + k - sh]

    @fast
    @ti.kernel
    def backward(
        grad_out: ti.types.ndarray(dtype=real, ndim=2),  # [N, sh + G]
        grad_density_out: ti.types.ndarray(dtype=real, ndim=2),  # [N, 1 + G + any padding] written
    ):
        padded = grad_density_out.shape[1]
        for i in range(grad_out.shape[0] * padded):
            n, g = i // padded, i % padded
            value = ti.cast(0.0, real)
            if 0 < g <= features:
                value = grad_out[n, sh + g - 1]
            grad_density_out[n, g] = value

    return forward, backward


@functools.cache
def _harmonics_kernel(degree: int, columns: int, dtype: torch.dtype, arch: str):
    real = _TI_TYPE[dtype]
    sh = degree * degree
    per_element = arch == "cuda"

    # On CUDA one thread per written element, as the colour input's forward: a thread per point, writing its
    # columns alone, scattered a warp's stores over 32 rows and took 4.6 ms of a 512x512 frame on the H200
    # (docs/PERF.md, session 9). Each thread computes the point's harmonics and keeps its own (static indices:
    # the harmonics stay in registers). On the CPU one thread per point.
    @fast
    @ti.kernel
    def harmonics(
        directions: ti.types.ndarray(dtype=ti.f32, ndim=2),  # [N, 3] unit
        row: ti.types.ndarray(dtype=real, ndim=2),  # [N, W >= columns]: columns 0 .. columns - 1 written
    ):
        if ti.static(per_element):
            for i in range(directions.shape[0] * columns):
                n, k = i // columns, i % columns
                values = _harmonics(directions[n, 0], directions[n, 1], directions[n, 2], degree)
                value = 0.0
                for j in ti.static(range(sh)):
                    if k == j:
                        value = values[j]
                row[n, k] = ti.cast(value, real)
        else:
            for n in range(directions.shape[0]):
                values = _harmonics(directions[n, 0], directions[n, 1], directions[n, 2], degree)
                for k in ti.static(range(sh)):
                    row[n, k] = ti.cast(values[k], real)
                for k in ti.static(range(sh, columns)):
                    row[n, k] = ti.cast(0.0, real)

    return harmonics


class _ColorInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, directions, density_out, degree, features):
        forward, _ = _kernels(degree, features, density_out.dtype, runtime.current_arch())
        out = torch.empty(density_out.shape[0], degree * degree + features, dtype=density_out.dtype,
                          device=density_out.device)
        if out.shape[0]:
            forward(directions, density_out.detach(), out)  # detached: Taichi would give it a .grad
        ctx.degree, ctx.features = degree, features
        ctx.shape = density_out.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        _, backward = _kernels(ctx.degree, ctx.features, grad_out.dtype, runtime.current_arch())
        grad = torch.empty(ctx.shape, dtype=grad_out.dtype, device=grad_out.device)
        if grad.shape[0]:
            backward(grad_out.contiguous(), grad)
        return None, grad, None, None


def _check_directions(directions: torch.Tensor, degree: int) -> None:
    runtime.ensure_initialized()
    if not 1 <= degree <= 4:
        raise ValueError(f"spherical harmonics degree must lie in [1, 4], got {degree}")
    if directions.dim() != 2 or directions.shape[1] != 3 or directions.dtype != torch.float32:
        raise ValueError(f"directions must be [N, 3] float32, got {tuple(directions.shape)} {directions.dtype}")
    runtime.check_device("directions", directions)


def color_input(directions: torch.Tensor, density_out: torch.Tensor, degree: int) -> torch.Tensor:
    """[N, degree^2 + G]: spherical harmonics of ``directions`` [N, 3] (float32, unit), then
    ``density_out[:, 1:]`` of ``density_out`` [N, 1 + G]."""
    _check_directions(directions, degree)
    n = directions.shape[0]
    if density_out.dim() != 2 or density_out.shape[0] != n or density_out.shape[1] < 1:
        raise ValueError(f"density_out must be [{n}, 1 + G], got {tuple(density_out.shape)}")
    if density_out.dtype not in _TI_TYPE:
        raise ValueError(f"density_out must be float16/32/64, got {density_out.dtype}")
    runtime.check_device("density_out", density_out)
    return _ColorInput.apply(directions.contiguous(), density_out.contiguous(), degree, density_out.shape[1] - 1)


@torch.no_grad()
def write_harmonics(directions: torch.Tensor, row: torch.Tensor, degree: int, columns: int) -> None:
    """Write the degree^2 spherical harmonics of ``directions`` [N, 3] (float32, unit) into ``row[:, :degree^2]``
    and zeros into ``row[:, degree^2:columns]``, in ``row``'s type; ``row`` [N, W] (contiguous, W >= columns)
    keeps its other columns. No autograd."""
    _check_directions(directions, degree)
    n = directions.shape[0]
    if row.dim() != 2 or row.shape[0] != n or not degree * degree <= columns <= row.shape[1]:
        raise ValueError(f"row must be [{n}, W] with {degree * degree} <= columns = {columns} <= W, "
                         f"got {tuple(row.shape)}")
    if row.dtype not in _TI_TYPE or not row.is_contiguous():
        raise ValueError(f"row must be a contiguous float16/32/64 tensor, got {row.dtype}")
    runtime.check_device("row", row)
    if n:
        _harmonics_kernel(degree, columns, row.dtype, runtime.current_arch())(directions.contiguous(), row)
