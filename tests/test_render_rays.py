import dataclasses

import torch

from nerfbs.config import RenderConfig
from nerfbs.field import BlendShapeField
from nerfbs.render.rays import render_rays_train, visible_counts
from taichi_kernels.occupancy import OccupancyGrid
from taichi_kernels.samples import Samples
from tiny import TINY_MODEL

BOUND = 0.06


def _flat(counts: list[int], seed: int = 0) -> Samples:
    """Flat samples for rays with the given counts (t increasing along each ray)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.tensor(counts, dtype=torch.int32)
    m = int(c.sum())
    ray = torch.repeat_interleave(torch.arange(len(counts)), c.long()).to(torch.int32)
    dt = 1e-3 * (0.5 + torch.rand(m, generator=g))
    return Samples(torch.rand(m, 3, generator=g), torch.rand(m, 3, generator=g), torch.cumsum(dt, 0), dt, ray,
                   (torch.cumsum(c, 0) - c).to(torch.int32), c)


def test_visible_counts_match_the_compositing_loop():
    counts = [0, 1, 5, 40, 0, 17, 3]
    s = _flat(counts)
    sigma = torch.rand(s.num_samples, generator=torch.Generator().manual_seed(1)) * 8000.0
    sigma[:10] = 0.0  # transparent samples
    for stop in (1e-4, 1e-2, 0.5):
        got = visible_counts(sigma, s, stop)
        expected = []
        for r, n in enumerate(counts):  # the composite kernel: sample j counts when T before it >= stop
            T, used = 1.0, 0
            for j in range(n):
                i = int(s.ray_offsets[r]) + j
                used += 1
                T *= float(torch.exp(-sigma[i].double() * s.dt[i].double()))
                if T < stop:
                    break
            expected.append(used)
        assert got.tolist() == expected and got.dtype == torch.int32
    assert visible_counts(sigma[:0], _flat([0, 0]), 1e-4).tolist() == [0, 0]


def test_prefix_keeps_the_first_samples_of_each_ray():
    s = _flat([3, 0, 6, 2])
    p = s.prefix(torch.tensor([1, 0, 6, 0]))
    assert p.ray_counts.tolist() == [1, 0, 6, 0] and p.ray_offsets.tolist() == [0, 1, 1, 7]
    keep = torch.tensor([0, 3, 4, 5, 6, 7, 8])
    for name in ("positions", "directions", "t", "dt", "ray_index"):
        assert torch.equal(getattr(p, name), getattr(s, name)[keep]), name


def _dense_field(seed: int = 0) -> BlendShapeField:
    """A tiny field whose density varies from ~0 to several thousands inside the box."""
    torch.manual_seed(seed)
    field = BlendShapeField(dataclasses.replace(TINY_MODEL, table_init=1.0), bound=BOUND)
    with torch.no_grad():
        field.density_net[-1].weight[0] *= 20000.0
    return field


def test_skipping_hidden_samples_changes_nothing_but_the_sample_count():
    field = _dense_field()
    config = RenderConfig(bound=BOUND, grid_resolution=16)
    grid = OccupancyGrid(bound=BOUND, resolution=16)  # every cell occupied
    g = torch.Generator().manual_seed(0)
    rays = 64
    origins = torch.tensor([0.0, 0.0, 0.25]) + 0.02 * torch.randn(rays, 3, generator=g)
    directions = torch.nn.functional.normalize(0.03 * torch.randn(rays, 3, generator=g) - origins, dim=1)
    ray_frame = torch.randint(0, 2, (rays,), generator=g, dtype=torch.int32)
    coeffs = torch.rand(2, TINY_MODEL.grid.num_bases, generator=g)
    coeffs[:, 0] = 1.0
    background = torch.rand(rays, 3, generator=g)
    cotangent = torch.randn(rays, 5, generator=g)
    results = []
    for skip in (False, True):
        field.zero_grad()
        out = render_rays_train(field, grid, dataclasses.replace(config, skip_hidden_samples=skip), origins, directions,
                                ray_frame, coeffs, background, jitter=False)
        ((torch.cat((out.rgb, out.opacity[:, None], out.depth[:, None]), 1) * cotangent).sum()).backward()
        grads = [p.grad.clone() for p in field.parameters()]
        results.append((out, grads))
    (full, g_full), (skip, g_skip) = results
    assert skip.num_samples < 0.7 * full.num_samples and skip.num_marched == full.num_marched == full.num_samples
    assert (full.opacity > 0.99).sum() > rays // 4  # many rays pass an opaque region, so samples were dropped
    for a, b, name in ((full.rgb, skip.rgb, "rgb"), (full.opacity, skip.opacity, "opacity"), (full.depth, skip.depth, "depth")):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    for a, b in zip(g_full, g_skip):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
