import math

import torch

from nerfbs.config import ModelConfig
from nerfbs.model import BlendShapeField, spherical_harmonics
from taichi_kernels.grid_layout import GridConfig


def test_spherical_harmonics_are_orthonormal_on_the_sphere():
    # Monte-Carlo integral of Y_i Y_j over the unit sphere is the identity (times 4 pi / N samples).
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(400000, 3, generator=g, dtype=torch.float64), dim=-1)
    sh = spherical_harmonics(d, 4)
    gram = sh.T @ sh * (4 * math.pi / d.shape[0])
    assert sh.shape == (400000, 16)
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=0.02)


def test_field_shapes_ranges_and_gradients_reach_every_part():
    cfg = ModelConfig(grid=GridConfig(num_bases=3, num_levels=2, log2_table_size=8, finest_resolution=32))
    field = BlendShapeField(cfg, bound=0.06)
    n = 64
    points = (torch.rand(n, 3) - 0.5) * 0.1
    dirs = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    frame = torch.randint(0, 2, (n,), dtype=torch.int32)
    coeffs = torch.rand(2, 3, requires_grad=True)
    sigma, rgb = field(points, dirs, frame, coeffs)
    assert sigma.shape == (n,) and rgb.shape == (n, 3)
    assert (sigma >= 0).all() and (rgb > 0).all() and (rgb < 1).all()
    (sigma.sum() + rgb.sum()).backward()
    assert field.encoder.tables.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in field.mlp_parameters())
    assert coeffs.grad.abs().sum() > 0
    assert torch.allclose(field.density(points, frame, coeffs), sigma)
