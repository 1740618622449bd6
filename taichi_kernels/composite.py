"""Volume compositing of flat samples, forward and exact backward, as Taichi kernels.

For the samples i = 0, 1, ... of one ray (in marching order, contiguous from the ray's offset):

    alpha_i = 1 - exp(-sigma_i * dt_i),   T_0 = 1,   T_{i+1} = T_i * (1 - alpha_i),   w_i = T_i * alpha_i
    rgb = sum_i w_i * c_i + (1 - opacity) * background,   opacity = sum_i w_i,   depth = sum_i w_i * t_i

Accumulation stops after the first sample that brings T below ``early_stop``; later samples get
weight 0 and gradient 0. The backward is exact w.r.t. sigmas and rgbs for all three outputs (depth
included) and w.r.t. background (by torch, which does the background blend). ``t`` and ``dt`` come
from marching and are not differentiable.
"""
import functools

import taichi as ti
import torch

from taichi_kernels import runtime
from taichi_kernels.launch import fast

_TI_REAL = {torch.float32: ti.f32, torch.float64: ti.f64}


@ti.func
def weight_and_transmittance(T, sigma, dt):
    """[w_i, T_{i+1}] of one sample, given T_i. Shared by training and inference compositing."""
    alpha = 1.0 - ti.exp(-sigma * dt)
    return ti.Vector([T * alpha, T * (1.0 - alpha)])


@functools.cache
def _kernels(dtype: torch.dtype):
    real = _TI_REAL[dtype]

    @fast
    @ti.kernel
    def forward(
        sigmas: ti.types.ndarray(dtype=real, ndim=1),  # [M] densities
        rgbs: ti.types.ndarray(dtype=real, ndim=2),  # [M, 3] colours
        t: ti.types.ndarray(dtype=real, ndim=1),  # [M] sample distance along its ray
        dt: ti.types.ndarray(dtype=real, ndim=1),  # [M] step length
        offsets: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [R] first sample of each ray
        counts: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [R] samples of each ray
        early_stop: real,
        out: ti.types.ndarray(dtype=real, ndim=2),  # [R, 5] written: r, g, b (no background), opacity, depth
        used: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [R] written: samples composited before early stop
    ):
        for r in range(offsets.shape[0]):
            T = ti.cast(1.0, real)
            acc = ti.Vector([0.0, 0.0, 0.0, 0.0, 0.0], dt=real)
            n = 0
            for j in range(counts[r]):
                i = offsets[r] + j
                wt = weight_and_transmittance(T, sigmas[i], dt[i])
                acc += wt[0] * ti.Vector([rgbs[i, 0], rgbs[i, 1], rgbs[i, 2], 1.0, t[i]], dt=real)
                T = wt[1]
                n += 1
                if T < early_stop:
                    break
            for k in ti.static(range(5)):
                out[r, k] = acc[k]
            used[r] = n

    @fast
    @ti.kernel
    def backward(
        sigmas: ti.types.ndarray(dtype=real, ndim=1),  # [M]
        rgbs: ti.types.ndarray(dtype=real, ndim=2),  # [M, 3]
        t: ti.types.ndarray(dtype=real, ndim=1),  # [M]
        dt: ti.types.ndarray(dtype=real, ndim=1),  # [M]
        offsets: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [R]
        used: ti.types.ndarray(dtype=ti.i32, ndim=1),  # [R] from forward
        out: ti.types.ndarray(dtype=real, ndim=2),  # [R, 5] forward's totals
        grad_out: ti.types.ndarray(dtype=real, ndim=2),  # [R, 5] cotangent of out
        grad_sigmas: ti.types.ndarray(dtype=real, ndim=1),  # [M] written (zero-initialised by the caller)
        grad_rgbs: ti.types.ndarray(dtype=real, ndim=2),  # [M, 3] written (zero-initialised by the caller)
    ):
        # d(sum_j w_j x_j)/d sigma_i = dt_i * (T_{i+1} x_i - sum_{j>i} w_j x_j); the suffix sum is the
        # forward total minus the running prefix, so one forward sweep per ray suffices.
        for r in range(offsets.shape[0]):
            g = ti.Vector([grad_out[r, 0], grad_out[r, 1], grad_out[r, 2], grad_out[r, 3], grad_out[r, 4]], dt=real)
            total = ti.Vector([out[r, 0], out[r, 1], out[r, 2], out[r, 3], out[r, 4]], dt=real)
            prefix = ti.Vector([0.0, 0.0, 0.0, 0.0, 0.0], dt=real)
            T = ti.cast(1.0, real)
            for j in range(used[r]):
                i = offsets[r] + j
                wt = weight_and_transmittance(T, sigmas[i], dt[i])
                x = ti.Vector([rgbs[i, 0], rgbs[i, 1], rgbs[i, 2], 1.0, t[i]], dt=real)
                prefix += wt[0] * x
                T = wt[1]
                grad_sigmas[i] = dt[i] * g.dot(T * x - (total - prefix))
                for k in ti.static(range(3)):
                    grad_rgbs[i, k] = g[k] * wt[0]

    class Composite(torch.autograd.Function):
        @staticmethod
        def forward(ctx, sigmas, rgbs, t, dt, offsets, counts, early_stop):
            # Detached views: Taichi would otherwise look for .grad on inputs that require grad.
            sigmas, rgbs = sigmas.detach(), rgbs.detach()
            rays = offsets.shape[0]
            out = torch.zeros(rays, 5, dtype=dtype, device=sigmas.device)
            used = torch.zeros(rays, dtype=torch.int32, device=sigmas.device)
            if rays and sigmas.shape[0]:
                forward(sigmas, rgbs, t, dt, offsets, counts, early_stop, out, used)
            ctx.save_for_backward(sigmas, rgbs, t, dt, offsets, used, out)
            return out

        @staticmethod
        def backward(ctx, grad_out):
            sigmas, rgbs, t, dt, offsets, used, out = ctx.saved_tensors
            grad_sigmas = torch.zeros_like(sigmas)
            grad_rgbs = torch.zeros_like(rgbs)
            if offsets.shape[0] and sigmas.shape[0]:
                backward(sigmas, rgbs, t, dt, offsets, used, out.detach(), grad_out.detach().contiguous(), grad_sigmas,
                         grad_rgbs)
            return grad_sigmas, grad_rgbs, None, None, None, None, None

    return Composite


def _check(name: str, x: torch.Tensor, shape: tuple, dtypes: tuple) -> None:
    if x.dim() != len(shape) or any(s is not None and a != s for a, s in zip(x.shape, shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if x.dtype not in dtypes:
        raise ValueError(f"{name} must be {' or '.join(str(d) for d in dtypes)}, got {x.dtype}")
    runtime.check_device(name, x)


def composite(sigmas: torch.Tensor, rgbs: torch.Tensor, t: torch.Tensor, dt: torch.Tensor,
              ray_offsets: torch.Tensor, ray_counts: torch.Tensor, background: torch.Tensor, *,
              early_stop: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Composite flat samples into (rgb [R, 3], opacity [R], depth [R]); see the module docstring.

    sigmas [M], rgbs [M, 3], t [M], dt [M] float32 or float64 (one dtype for all; float16 sigmas or
    rgbs are upcast to t's dtype), ray_offsets and ray_counts [R] int32 (each ray's samples are
    ``offsets[r] : offsets[r] + counts[r]``), background [R, 3]. Differentiable w.r.t. sigmas, rgbs
    and background; ``t`` and ``dt`` must not require grad. Depth is sum_i w_i t_i (not normalised).
    """
    runtime.ensure_initialized()
    _check("t", t, (None,), (torch.float32, torch.float64))
    dtype = t.dtype
    floats = (torch.float16, torch.float32, torch.float64)
    m = t.shape[0]
    _check("dt", dt, (m,), (dtype,))
    _check("sigmas", sigmas, (m,), floats)
    _check("rgbs", rgbs, (m, 3), floats)
    _check("ray_offsets", ray_offsets, (None,), (torch.int32,))
    rays = ray_offsets.shape[0]
    _check("ray_counts", ray_counts, (rays,), (torch.int32,))
    _check("background", background, (rays, 3), floats)
    if t.requires_grad or dt.requires_grad:
        raise ValueError("t and dt are not differentiable (they come from marching): pass them detached")
    Composite = _kernels(dtype)
    out = Composite.apply(sigmas.to(dtype).contiguous(), rgbs.to(dtype).contiguous(), t.contiguous(), dt.contiguous(),
                          ray_offsets.contiguous(), ray_counts.contiguous(), float(early_stop))
    opacity = out[:, 3]
    rgb = out[:, :3] + (1.0 - opacity)[:, None] * background.to(dtype)
    return rgb, opacity, out[:, 4]
