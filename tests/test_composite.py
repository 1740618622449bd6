import pytest
import torch

from taichi_kernels import composite as kernels
from taichi_kernels.reference import composite as ref

# Rays of different lengths, empty ones included; ray 5 is dense enough to terminate early.
COUNTS = [0, 1, 5, 17, 0, 40, 3, 12]


def _inputs(dtype, seed=0, counts=COUNTS):
    g = torch.Generator().manual_seed(seed)
    counts_t = torch.tensor(counts, dtype=torch.int32)
    offsets = (torch.cumsum(counts_t, 0) - counts_t).to(torch.int32)
    m = int(counts_t.sum())
    sigmas = torch.rand(m, generator=g, dtype=dtype) * 30.0
    ray = torch.repeat_interleave(torch.arange(len(counts)), counts_t.long())
    if m:
        sigmas[ray == 5] *= 20.0
    rgbs = torch.rand(m, 3, generator=g, dtype=dtype)
    dt = 0.005 + 0.02 * torch.rand(m, generator=g, dtype=dtype)
    t = torch.zeros(m, dtype=dtype)
    for r in range(len(counts)):
        sl = slice(int(offsets[r]), int(offsets[r]) + counts[r])
        t[sl] = 0.2 + torch.cumsum(dt[sl], 0)
    background = torch.rand(len(counts), 3, generator=g, dtype=dtype)
    return sigmas, rgbs, t, dt, offsets, counts_t, background


def _grads(fn, sigmas, rgbs, t, dt, offsets, counts, background, seed=1):
    s = sigmas.clone().requires_grad_(True)
    c = rgbs.clone().requires_grad_(True)
    b = background.clone().requires_grad_(True)
    outs = fn(s, c, t, dt, offsets, counts, b, early_stop=1e-4)
    g = torch.Generator().manual_seed(seed)
    vs = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
    loss = sum((o * v).sum() for o, v in zip(outs, vs))
    return [o.detach() for o in outs], torch.autograd.grad(loss, (s, c, b))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_forward_and_backward_match_twin(dtype, tol):
    args = _inputs(dtype)
    outs, grads = _grads(kernels.composite, *args)
    ref_outs, ref_grads = _grads(ref.composite, *args)
    for name, a, b in zip(("rgb", "opacity", "depth"), outs, ref_outs):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=name)
    for name, a, b in zip(("d sigmas", "d rgbs", "d background"), grads, ref_grads):
        torch.testing.assert_close(a, b, atol=tol * 10, rtol=tol * 10, msg=name)


def test_early_termination_zeroes_later_samples():
    sigmas, rgbs, t, dt, offsets, counts, background = _inputs(torch.float64)
    outs, (g_sigma, g_rgb, _) = _grads(kernels.composite, sigmas, rgbs, t, dt, offsets, counts, background)
    start, n = int(offsets[5]), int(counts[5])
    trans = torch.cumprod(torch.exp(-sigmas[start:start + n] * dt[start:start + n]), 0)
    stop = int(torch.nonzero(trans < 1e-4)[0])  # the sample that brings T below the threshold
    assert stop < n - 1, "the test ray should terminate early"
    assert (g_sigma[start + stop + 1:start + n] == 0).all() and (g_rgb[start + stop + 1:start + n] == 0).all()
    assert (g_rgb[start:start + stop + 1].abs().sum(1) > 0).all()
    assert outs[1][5] > 1 - 1e-4


def test_gradcheck_float64():
    sigmas, rgbs, t, dt, offsets, counts, background = _inputs(torch.float64, counts=[3, 0, 4])
    sigmas.requires_grad_(True)
    rgbs.requires_grad_(True)

    def fn(s, c):
        return kernels.composite(s, c, t, dt, offsets, counts, background, early_stop=0.0)

    assert torch.autograd.gradcheck(fn, (sigmas, rgbs), eps=1e-6, atol=1e-7)


def test_background_shows_through_empty_rays_and_empty_batches():
    sigmas, rgbs, t, dt, offsets, counts, background = _inputs(torch.float32, counts=[0, 0, 0])
    rgb, opacity, depth = kernels.composite(sigmas, rgbs, t, dt, offsets, counts, background)
    assert torch.equal(rgb, background) and (opacity == 0).all() and (depth == 0).all()
    empty = _inputs(torch.float32, counts=[])
    rgb, opacity, depth = kernels.composite(*empty)
    assert rgb.shape == (0, 3) and opacity.shape == (0,) and depth.shape == (0,)


def test_bad_inputs_are_refused():
    sigmas, rgbs, t, dt, offsets, counts, background = _inputs(torch.float32)
    with pytest.raises(ValueError, match="rgbs"):
        kernels.composite(sigmas, rgbs[:-1], t, dt, offsets, counts, background)
    with pytest.raises(ValueError, match="ray_offsets"):
        kernels.composite(sigmas, rgbs, t, dt, offsets.long(), counts, background)
    with pytest.raises(ValueError, match="not differentiable"):
        kernels.composite(sigmas, rgbs, t.requires_grad_(True), dt, offsets, counts, background)
