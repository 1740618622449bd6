import pytest
import torch

from nerfbs.render.distortion import ray_distortion

COUNTS = [0, 1, 5, 17, 0, 40, 3]
EDGE = 0.12


def _samples(seed=0, counts=COUNTS):
    g = torch.Generator().manual_seed(seed)
    counts_t = torch.tensor(counts, dtype=torch.int32)
    offsets = (torch.cumsum(counts_t, 0) - counts_t).to(torch.int32)
    m = int(counts_t.sum())
    sigmas = torch.rand(m, generator=g, dtype=torch.float64) * 40.0
    dt = 0.001 + 0.004 * torch.rand(m, generator=g, dtype=torch.float64)
    t = torch.zeros(m, dtype=torch.float64)
    for r, c in enumerate(counts):
        sl = slice(int(offsets[r]), int(offsets[r]) + c)
        t[sl] = 0.2 + torch.cumsum(dt[sl], 0) - dt[sl] / 2
    ray_index = torch.repeat_interleave(torch.arange(len(counts), dtype=torch.int32), counts_t.long())
    return sigmas, t, dt, ray_index, offsets, counts


def _reference(sigmas, t, dt, offsets, counts):
    """The definition, ray by ray, with a double loop over sample pairs (float64)."""
    out = []
    for r, c in enumerate(counts):
        sl = slice(int(offsets[r]), int(offsets[r]) + c)
        sg, s, ds = sigmas[sl], t[sl] / EDGE, dt[sl] / EDGE
        trans = torch.exp(-torch.cat([sg.new_zeros(1), torch.cumsum(sg * dt[sl], 0)[:-1]]))
        w = trans * (1 - torch.exp(-sg * dt[sl]))
        total = sg.new_zeros(())
        for i in range(c):
            for j in range(c):
                total = total + w[i] * w[j] * (s[i] - s[j]).abs()
            total = total + w[i] ** 2 * ds[i] / 3
        out.append(total)
    return torch.stack(out)


def test_distortion_matches_the_definition_forward_and_backward():
    sigmas, t, dt, ray_index, offsets, counts = _samples()
    a = sigmas.clone().requires_grad_(True)
    b = sigmas.clone().requires_grad_(True)
    got = ray_distortion(a, t, dt, ray_index, offsets, EDGE)
    want = _reference(b, t, dt, offsets, counts)
    assert got.dtype == torch.float32 and got.shape == (len(counts),)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-8)
    assert got[0] == 0 and got[4] == 0  # rays without samples
    v = torch.randn(len(counts), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (ga,) = torch.autograd.grad((got.double() * v).sum(), a)
    (gb,) = torch.autograd.grad((want * v).sum(), b)
    assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-9)


def test_one_surface_costs_less_than_two():
    """An opaque shell three samples thick, against ~40% of the opacity in one sample and the rest in a shell 20
    samples further on (a semi-transparent layer in front of the surface)."""
    dt = torch.full((40,), 0.0005, dtype=torch.float64)
    t = 0.2 + torch.arange(40, dtype=torch.float64) * 0.0005
    one = torch.zeros(40, dtype=torch.float64)
    one[10:13] = 3000.0
    two = torch.zeros(40, dtype=torch.float64)
    two[10] = 1000.0
    two[30:33] = 3000.0
    idx = torch.zeros(40, dtype=torch.int32)
    off = torch.zeros(1, dtype=torch.int32)
    assert ray_distortion(two, t, dt, idx, off, EDGE) > 5 * ray_distortion(one, t, dt, idx, off, EDGE)


@pytest.mark.parametrize("rays", [0, 3])
def test_empty_batch_gives_zeros_with_a_gradient_path(rays):
    sigmas = torch.zeros(0, requires_grad=True)
    empty = torch.zeros(0)
    out = ray_distortion(sigmas, empty, empty, torch.zeros(0, dtype=torch.int32),
                         torch.zeros(rays, dtype=torch.int32), EDGE)
    assert out.shape == (rays,) and not out.any()
    out.sum().backward()
    assert sigmas.grad is not None and sigmas.grad.shape == (0,)
