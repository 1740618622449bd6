"""The colour-input kernel (spherical harmonics + geometry features) against its torch twin."""
import math

import pytest
import torch

from taichi_kernels import color_input as kernel
from taichi_kernels.reference import color_input as reference


def unit_directions(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    axes = torch.eye(3)
    return torch.cat([d, axes, -axes])  # the axes: components exactly 0 and +-1


def test_reference_harmonics_are_orthonormal_on_the_sphere():
    # Monte-Carlo integral of Y_i Y_j over the unit sphere is the identity (times 4 pi / N samples).
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(400000, 3, generator=g, dtype=torch.float64), dim=-1)
    sh = reference.spherical_harmonics(d, 4)
    gram = sh.T @ sh * (4 * math.pi / d.shape[0])
    assert sh.shape == (400000, 16)
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=0.02)


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_backward_match_the_reference(degree, dtype):
    d = unit_directions(300, seed=degree)
    h = torch.randn(d.shape[0], 1 + 15, dtype=dtype, requires_grad=True)
    ref_h = h.detach().clone().requires_grad_(True)
    out = kernel.color_input(d, h, degree)
    ref = reference.color_input(d.double(), ref_h, degree)
    assert out.shape == (d.shape[0], degree * degree + 15) and out.dtype == dtype
    sh = degree * degree  # harmonics are computed in float32 (directions are float32); features copied exactly
    assert (out[:, :sh].double() - ref[:, :sh]).abs().max() < 2e-6
    assert torch.equal(out[:, sh:].double(), ref[:, sh:].double())
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(h.grad, ref_h.grad)
    assert (h.grad[:, 0] == 0).all() and h.grad[:, 1:].abs().sum() > 0


def test_half_precision_output_rounds_the_harmonics_only():
    d = unit_directions(64, seed=9)
    h = torch.randn(d.shape[0], 65).half()
    out = kernel.color_input(d, h, 4)
    ref = reference.color_input(d, h, 4)
    assert out.dtype == torch.float16
    assert torch.equal(out[:, 16:], h[:, 1:])
    assert (out[:, :16].float() - ref[:, :16].float()).abs().max() <= 2e-3


@pytest.mark.parametrize("degree", [1, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_harmonics_written_into_a_wider_row_leave_its_other_columns_alone(degree, dtype):
    # The inference field's row: harmonics, zeros up to ``columns``, then columns the density MLP writes.
    d = unit_directions(70, seed=degree)
    sh = degree * degree
    row = torch.full((d.shape[0], 24), float("nan"), dtype=dtype)
    row[:, 16:] = 7.0
    kernel.write_harmonics(d, row, degree, columns=16)
    ref = reference.spherical_harmonics(d.double(), degree)
    tolerance = 2e-3 if dtype == torch.float16 else 2e-6  # computed in float32, rounded to the row's type
    assert (row[:, :sh].double() - ref).abs().max() <= tolerance and ref.abs().sum() > 0
    assert (row[:, sh:16] == 0).all() and (row[:, 16:] == 7.0).all()
    kernel.write_harmonics(d[:0], row[:0], degree, columns=sh)  # an empty batch is fine
    with pytest.raises(ValueError, match="columns"):
        kernel.write_harmonics(d, row, degree, columns=25)
    with pytest.raises(ValueError, match="contiguous"):
        kernel.write_harmonics(d, row[:, 8:], degree, columns=sh)
    with pytest.raises(ValueError, match="directions"):
        kernel.write_harmonics(d.double(), row, degree, columns=16)


@pytest.mark.parametrize("arch", ["cpu", "cuda"])
def test_both_harmonics_thread_layouts_match_the_reference(arch):
    # Per point on the CPU, per element on CUDA; both layouts run here on whatever backend Taichi uses.
    d = unit_directions(90, seed=5)
    row = torch.full((d.shape[0], 20), float("nan"))
    kernel._harmonics_kernel(3, 16, torch.float32, arch)(d, row)
    assert (row[:, :9].double() - reference.spherical_harmonics(d.double(), 3)).abs().max() < 2e-6
    assert (row[:, 9:16] == 0).all() and row[:, 16:].isnan().all()


def test_empty_batch_and_bad_input():
    empty = kernel.color_input(torch.zeros(0, 3), torch.zeros(0, 65, requires_grad=True), 4)
    assert empty.shape == (0, 80)
    empty.sum().backward()
    with pytest.raises(ValueError, match="degree"):
        kernel.color_input(torch.zeros(2, 3), torch.zeros(2, 65), 5)
    with pytest.raises(ValueError, match="directions"):
        kernel.color_input(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 65), 4)
    with pytest.raises(ValueError, match="density_out"):
        kernel.color_input(torch.zeros(2, 3), torch.zeros(3, 65), 4)


@pytest.mark.parametrize("arch", ["cpu", "cuda"])
def test_both_thread_layouts_match_the_reference(arch):
    # The kernels are built for a backend's thread layout (per point on the CPU, per element on CUDA);
    # both layouts run here on whatever backend Taichi uses.
    d = unit_directions(100, seed=3)
    h = torch.randn(d.shape[0], 65)
    forward, backward = kernel._kernels(4, 64, torch.float32, arch)
    out = torch.empty(d.shape[0], 16 + 64)
    forward(d, h, out)
    assert torch.allclose(out, reference.color_input(d, h, 4), atol=2e-6)
    grad_out, grad = torch.randn_like(out), torch.full_like(h, float("nan"))
    backward(grad_out, grad)
    assert (grad[:, 0] == 0).all() and torch.equal(grad[:, 1:], grad_out[:, 16:])
