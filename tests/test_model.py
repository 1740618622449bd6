import pytest
import torch

from nerfbs.config import ModelConfig
from nerfbs.field import MLP, BlendShapeField, FrozenMLP
from taichi_kernels.grid_layout import GridConfig


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


def test_inference_mlp_with_fused_relu_matches_the_layer_by_layer_mlp():
    torch.manual_seed(0)
    net = MLP(32, 64, 3, 5)
    x = torch.randn(257, 32)
    with torch.no_grad():
        fused = net(x)
        net.fused_inference = False
        plain = net(x)
    trained = MLP.forward(net, x)  # autograd on: always layer by layer
    assert fused.shape == (257, 5)
    assert torch.allclose(fused, plain, atol=1e-5, rtol=1e-5)
    assert torch.allclose(trained, plain, atol=1e-5, rtol=1e-5) and trained.requires_grad
    assert (plain != 0).any() and (plain < 0).any()  # ReLUs inside, an unclamped linear last layer


@pytest.mark.parametrize("degree, features", [(4, 64), (3, 15)])  # the default's row, and the small model's
def test_frozen_field_blends_once_and_matches_the_field(degree, features):
    cfg = ModelConfig(grid=GridConfig(num_bases=3, num_levels=2, log2_table_size=8, finest_resolution=32),
                      sh_degree=degree, geo_features=features)
    field = BlendShapeField(cfg, bound=0.06)
    with torch.no_grad():
        field.encoder.tables.normal_(0, 1)
    points = (torch.rand(100, 3) - 0.5) * 0.1
    dirs = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
    frame = torch.randint(0, 2, (100,), dtype=torch.int32)
    coeffs = torch.rand(2, 3)
    frozen = field.frozen(coeffs)
    with torch.no_grad():
        sigma, rgb = field(points, dirs, frame, coeffs)
        field.encoder.tables.zero_()  # the frozen field keeps the tables it blended
    got_sigma, got_rgb = frozen(points, dirs, frame)
    assert torch.allclose(got_sigma, sigma, atol=1e-6) and torch.allclose(got_rgb, rgb, atol=1e-6)
    assert torch.allclose(frozen.density(points, frame), sigma, atol=1e-6)
    assert sigma.std() > 0 and not got_sigma.requires_grad
    other = field(points, dirs, frame, coeffs)[0].detach()
    assert not torch.allclose(other, sigma)  # zeroed tables would change the live field


def test_frozen_mlp_pads_its_last_layer_with_zero_outputs():
    torch.manual_seed(1)
    net = MLP(16, 32, 2, 65)
    x = torch.randn(40, 16)
    frozen = FrozenMLP(net, torch.float32, align=8)
    out = frozen(x)
    assert out.shape == (40, 72)
    assert torch.allclose(out[:, :65], net(x).detach(), atol=1e-5) and out[:, :65].abs().sum() > 0
    assert (out[:, 65:] == 0).all()
    assert FrozenMLP(net, torch.float32, align=1)(x).shape == (40, 65)


def test_frozen_mlp_last_layer_in_column_products_writes_every_column_in_place():
    torch.manual_seed(2)
    net = MLP(16, 32, 2, 20)
    x = torch.randn(30, 16)
    whole = FrozenMLP(net, torch.float32, align=8)(x)
    row = torch.full((30, 40), 7.0)
    split = FrozenMLP(net, torch.float32, align=8, product_columns=8)
    assert len(split.last_blocks) == 3
    split(x, out=row[:, 8:32])  # a slice of a wider row, as the frozen field's
    torch.testing.assert_close(row[:, 8:32], whole)
    assert (row[:, :8] == 7).all() and (row[:, 32:] == 7).all()
