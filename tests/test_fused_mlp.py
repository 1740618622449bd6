"""The fused field MLP (nerfbs/fused_mlp.py, a Triton kernel) against its torch twin, in Triton's interpreter on the
CPU. The interpreter is chosen when the module is imported (TRITON_INTERPRET=1), so the checks run in a child
process and report their figures as JSON."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import torch

triton = pytest.importorskip("triton", reason="Triton is not installed (it comes with torch's Linux builds)")

ROOT = Path(__file__).resolve().parents[1]

CHECKS = textwrap.dedent("""
    import json
    import torch
    from nerfbs.config import ModelConfig
    from nerfbs.field import BlendShapeField, FrozenField
    from nerfbs import fused_mlp
    from taichi_kernels.grid_layout import GridConfig

    g = torch.Generator().manual_seed(0)

    def he(out, inp):
        return torch.randn(out, inp, generator=g, dtype=torch.float64) * (2.0 / inp) ** 0.5

    def twin(density, colour, x, sh):
        # float64, float16 rounding between layers as the kernel (and the products) store them
        r = lambda t: t.half().double()
        h = r(x)
        for w in density[:4]:
            h = r(torch.relu(h @ w.t()))
        out = h @ density[4].t()
        hidden = r(torch.relu(torch.cat([r(sh), r(out[:, :64])], 1) @ colour[0].t()))
        return torch.cat([hidden @ colour[1].t(), out[:, 64:]], 1)  # [N, 4]: colour logits, density logit

    density = [he(64, 64)] + [he(64, 64) for _ in range(3)] + [he(65, 64)]
    colour = [he(64, 80), he(3, 64)]
    mlp = fused_mlp.FusedFieldMLP([w.float() for w in density], [w.float() for w in colour])
    report = {"errors": {}}
    for n, scale in ((1, 1.0), (31, 1.0), (32, 1.0), (33, 1.0), (100, 1.0), (64, 0.0), (64, 8.0)):
        x = torch.randn(n, 64, generator=g, dtype=torch.float64) * scale
        sh = torch.randn(n, 16, generator=g, dtype=torch.float64) * scale
        got = mlp(x.half(), sh.half()).double()
        want = twin([w.half().double() for w in density], [w.half().double() for w in colour], x, sh)
        report["errors"][f"{n}x{scale}"] = ((got - want).abs().max() / want.abs().max().clamp_min(1e-3)).item()
    report["empty"] = list(mlp(torch.zeros(0, 64).half(), torch.zeros(0, 16).half()).shape)
    # A wrong operand shows: the density's first two layers swapped.
    swapped = fused_mlp.FusedFieldMLP([w.float() for w in [density[1], density[0]] + density[2:]],
                                      [w.float() for w in colour])
    x, sh = torch.randn(50, 64, generator=g).half(), torch.randn(50, 16, generator=g).half()
    report["swapped"] = ((swapped(x, sh).double() - mlp(x, sh).double()).abs().max()).item()

    # The frozen field with the kernel against the frozen field with the products (the original model's MLPs, a
    # few bases to keep the tables small).
    field = BlendShapeField(ModelConfig(grid=GridConfig(num_bases=3), table_init=0.5), bound=1.0)
    with torch.no_grad():  # He-scaled weights: densities and colours that vary from point to point
        for layer in list(field.density_net)[0::2] + list(field.color_net)[0::2]:
            layer.weight.copy_(he(*layer.weight.shape))
    coeffs = torch.rand(2, 3, generator=g)
    points = torch.rand(500, 3, generator=g) * 1.6 - 0.8
    directions = torch.nn.functional.normalize(torch.randn(500, 3, generator=g), dim=1)
    frames = torch.randint(0, 2, (500,), generator=g, dtype=torch.int32)
    FrozenField.FUSED_MLP = False
    products = field.frozen(coeffs, torch.float16)
    FrozenField.FUSED_MLP = True  # the default
    fused = field.frozen(coeffs, torch.float16)
    report["fused_used"] = [fused.fused is not None, products.fused is not None]
    (s1, c1), (s2, c2) = fused(points, directions, frames), products(points, directions, frames)
    report["field_sigma"] = ((s1 - s2).abs().max() / s2.abs().max()).item()
    report["field_rgb"] = (c1 - c2).abs().max().item()
    report["sigma_range"] = [s2.min().item(), s2.max().item()]
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def report() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", NERFBS_ARCH="cpu")
    done = subprocess.run([sys.executable, "-c", CHECKS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fused_mlp_matches_its_float64_twin_on_every_tile_edge(report):
    # 1 to 100 samples (tiles of 32: one short, exact, one over), zero inputs, inputs 8 times the usual size
    for case, error in report["errors"].items():
        assert error < 4e-3, (case, error)
    assert report["empty"] == [0, 4]


def test_fused_mlp_check_sees_a_wrong_weight(report):
    assert report["swapped"] > 0.1


def test_frozen_field_fused_equals_its_products(report):
    assert report["fused_used"] == [True, False]
    assert report["sigma_range"][1] - report["sigma_range"][0] > 0.3  # a field with structure, not a constant
    assert report["field_sigma"] < 2e-3
    assert report["field_rgb"] < 1e-3


def test_fused_mlp_only_takes_the_original_models_shapes(monkeypatch):
    from nerfbs import fused_mlp
    from nerfbs.config import SMALL_MODEL
    from nerfbs.field import BlendShapeField, FrozenField

    monkeypatch.setattr(FrozenField, "FUSED_MLP", True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # where the frozen field would take the kernel on a CPU

    small = BlendShapeField(SMALL_MODEL, bound=1.0)
    density, colour = small.density_net.weights(), small.color_net.weights()
    assert not fused_mlp.fits(density, colour)
    with pytest.raises(ValueError, match="original model"):
        fused_mlp.FusedFieldMLP(density, colour)
    assert small.frozen(torch.rand(1, SMALL_MODEL.grid.num_bases), torch.float16).fused is None  # the products


def test_fused_mlp_is_the_default_only_where_it_can_run(monkeypatch):
    """On by default, but a CPU render (float32, no interpreter) and a float16 field on the CPU keep the products."""
    from nerfbs.config import ModelConfig
    from nerfbs.field import BlendShapeField, FrozenField
    from taichi_kernels.grid_layout import GridConfig

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert FrozenField.FUSED_MLP
    field = BlendShapeField(ModelConfig(grid=GridConfig(num_bases=2)), bound=1.0)
    coeffs = torch.rand(1, 2)
    assert field.frozen(coeffs, torch.float32).fused is None
    assert field.frozen(coeffs, torch.float16).fused is None
