"""The fast kernel launch (``taichi_kernels.launch``) against Taichi's own launch path."""
from types import SimpleNamespace

import pytest
import taichi as ti
import torch

from taichi_kernels import runtime
from taichi_kernels.launch import FastKernel, fast


@fast
@ti.kernel
def affine(x: ti.types.ndarray(dtype=ti.f32, ndim=2), out: ti.types.ndarray(dtype=ti.f32, ndim=2), a: ti.f32,
           b: ti.i32, c: ti.u32):
    for i, j in ti.ndrange(x.shape[0], x.shape[1]):
        out[i, j] = a * x[i, j] + b + c


@fast
@ti.kernel
def scaled(x: ti.types.ndarray(dtype=ti.f32, ndim=1), factor: ti.template()):
    for i in range(x.shape[0]):
        x[i] *= factor


def twin(x, a, b, c):
    return a * x + b + c


@pytest.fixture(autouse=True)
def taichi():
    runtime.ensure_initialized()


def test_fast_launches_give_what_taichis_own_launch_gives():
    device = runtime.torch_device()
    x = torch.randn(5, 3, device=device)
    out = torch.full_like(x, float("nan"))
    affine(x, out, 2.0, 3, 4)  # Taichi's own path: checks and compiles
    assert torch.allclose(out, twin(x, 2.0, 3, 4))
    plain = affine.kernel
    affine.kernel = None  # from here on, only the fast path can launch this signature
    try:
        for rows in (5, 17, 1):  # other shapes, other scalars: same signature
            x = torch.randn(rows, 3, device=device)
            out = torch.full_like(x, float("nan"))
            affine(x, out, -0.5, -7, 2)
            assert torch.allclose(out, twin(x, -0.5, -7, 2))
        wide = torch.randn(4, 6, device=device)
        out = torch.full_like(wide, float("nan"))
        affine(wide, out, 1.5, 0, 1)  # the second dimension reaches the kernel too
        assert torch.allclose(out, twin(wide, 1.5, 0, 1))
        with pytest.raises(TypeError):
            affine(x.double(), out.double(), 1.0, 0, 0)  # a new signature goes to Taichi's path (here: None)
    finally:
        affine.kernel = plain


def test_calls_the_fast_path_cannot_take_go_through_taichis_checks():
    device = runtime.torch_device()
    x = torch.randn(6, 4, device=device)
    out = torch.zeros(6, 8, device=device)
    with pytest.raises(ValueError, match="contiguous"):
        affine(x, out[:, :4], 1.0, 0, 0)  # Taichi's own message
    with pytest.raises(Exception, match="f64|float64|type"):
        affine(x.double(), out[:, :4].contiguous().double(), 1.0, 0, 0)
    grad = x.clone().requires_grad_(True)
    result = torch.zeros_like(x)
    affine(grad, result, 1.0, 1, 0)  # requires grad: Taichi's path, which still launches
    assert torch.allclose(result, x + 1)


def test_kernels_with_template_arguments_keep_taichis_launch():
    device = runtime.torch_device()
    x = torch.ones(8, device=device)
    scaled(x, 3.0)
    scaled(x, 2.0)  # a new template instance
    assert scaled._kinds is None and torch.equal(x, torch.full_like(x, 6.0))


def test_without_taichis_internals_every_launch_takes_taichis_path():
    calls = []
    plain = fast(lambda *args: calls.append(args))  # no Taichi kernel behind it
    plain(1, 2.0)
    assert calls == [(1, 2.0)] and plain._kinds is None
    device = runtime.torch_device()
    x = torch.randn(3, 2, device=device)
    out = torch.zeros_like(x)
    other = FastKernel(affine.kernel)
    other._primal = SimpleNamespace(arguments=affine._primal.arguments, return_type=None, has_print=False)
    other(x, out, 2.0, 1, 0)  # Taichi's path; keeping the launch fails (no compiled kernels): the fast path is off
    assert other._kinds is None and not other._launches
    other(x, out, 3.0, 1, 0)
    assert torch.allclose(out, twin(x, 3.0, 1, 0))
