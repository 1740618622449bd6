"""The field MLPs of an inference render: one Triton kernel (nerfbs/fused_mlp.py) against the cuBLAS products.

On the original model's shapes and random weights, times ``FrozenMLP``'s products as ``FrozenField.logits`` ran them
before session 15 (the colour-input row, the density MLP writing into it, the colour MLP reading it) against
``FusedFieldMLP``, for tiles of several sizes and warps, after checking both against a float32 reference. Without a
GPU, ``TRITON_INTERPRET=1`` runs the kernel in Triton's interpreter (the check only, a few samples):

    python3 bench/fused_mlp.py --samples 4194304 --tiles 16,32 --warps 1,2,4      # on the GPU machine
    TRITON_INTERPRET=1 python3 bench/fused_mlp.py --samples 300 --tiles 32 --check-only

``--render N`` also renders an N x N image of a random field of the original model's shapes (3 bases) inside a
sphere of the occupancy grid through the inference loop, with the kernel and with the products: their largest
difference, and milliseconds per image.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.rendering import _median_ms as timed  # noqa: E402  (median ms, synchronised, after a warm-up)
from nerfbs import fused_mlp  # noqa: E402
from nerfbs.config import ModelConfig, RenderConfig  # noqa: E402
from nerfbs.field import BlendShapeField, FrozenField, FrozenMLP  # noqa: E402
from taichi_kernels.grid_layout import GridConfig  # noqa: E402
from taichi_kernels.inference import render_rays_inference  # noqa: E402
from taichi_kernels.occupancy import OccupancyGrid  # noqa: E402
from taichi_kernels.samples import MarchParams  # noqa: E402

FEATURES, HIDDEN, HARMONICS = fused_mlp.FEATURES, fused_mlp.HIDDEN, fused_mlp.HARMONICS


def random_weights(generator: torch.Generator) -> dict[str, list[torch.Tensor]]:
    """The original model's MLP weights [out, in], He-scaled so that float16 activations stay near 1. The density's
    last layer has its 64 geometry features first, then the density (``FrozenField``'s order)."""
    def layer(out: int, inp: int) -> torch.Tensor:
        return torch.randn(out, inp, generator=generator) * (2.0 / inp) ** 0.5
    return {"density": [layer(HIDDEN, FEATURES)] + [layer(HIDDEN, HIDDEN) for _ in range(3)] + [layer(65, HIDDEN)],
            "colour": [layer(HIDDEN, HARMONICS + 64), layer(3, HIDDEN)]}


class Products:
    """The products as ``FrozenField.logits`` runs them without the kernel: the colour-input row [harmonics,
    geometry, density, padding], the density MLP writing into it, the colour MLP reading its first 80 columns.
    Returns [N, 4] as the kernel does (the colour's 3 logits, then the density's)."""

    def __init__(self, w: dict, device: torch.device):
        self.density = FrozenMLP([m.to(device) for m in w["density"]], torch.float16, align=8)
        self.colour = FrozenMLP([m.to(device) for m in w["colour"]], torch.float16, align=8)

    def __call__(self, features: torch.Tensor, harmonics: torch.Tensor) -> torch.Tensor:
        row = features.new_empty(features.shape[0], HARMONICS + self.density.width)
        row[:, :HARMONICS] = harmonics  # write_harmonics fills it in the render
        self.density(features, out=row[:, HARMONICS:])
        rgb = self.colour(row[:, :HARMONICS + 64])
        return torch.cat([rgb[:, :3], row[:, HARMONICS + 64:HARMONICS + 65]], 1)


def reference(w: dict, features: torch.Tensor, harmonics: torch.Tensor) -> torch.Tensor:
    """[N, 4] in float32 on the CPU."""
    h = features.float().cpu()
    for m in w["density"][:4]:
        h = torch.relu(h @ m.t())
    out = h @ w["density"][4].t()
    rgb = torch.relu(torch.cat([harmonics.float().cpu(), out[:, :64]], 1) @ w["colour"][0].t()) @ w["colour"][1].t()
    return torch.cat([rgb, out[:, 64:]], 1)


def render_check(size: int, device: torch.device, repeat: int) -> None:
    """The inference loop on a random field of the original model's MLP shapes, with the kernel and the products."""
    g = torch.Generator().manual_seed(1)
    config = RenderConfig()
    field = BlendShapeField(ModelConfig(grid=GridConfig(num_bases=3), table_init=0.5), bound=config.bound)
    with torch.no_grad():  # He-scaled weights: densities and colours that vary from point to point
        for layer in list(field.density_net)[0::2] + list(field.color_net)[0::2]:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * (2.0 / layer.weight.shape[1]) ** 0.5)
        list(field.density_net)[-1].weight[0] *= 4000.0  # density logits in the thousands: dense and empty regions
    field = field.to(device)
    grid = OccupancyGrid(bound=config.bound, resolution=config.grid_resolution).to(device)
    grid.update(lambda p, f, c: 1000.0 * (p.norm(dim=1) < 0.6 * config.bound).float(), torch.ones(1, 1, device=device),
                step=0, generator=torch.Generator(device=device).manual_seed(0))
    u = torch.linspace(-0.8 * config.bound, 0.8 * config.bound, size, device=device)
    y, x = torch.meshgrid(u, u, indexing="ij")
    origins = torch.tensor([0.0, 0.0, 5 * config.bound], device=device).expand(size * size, 3).contiguous()
    targets = torch.stack((x.reshape(-1), y.reshape(-1), torch.zeros_like(x.reshape(-1))), dim=1)
    directions = torch.nn.functional.normalize(targets - origins, dim=1)
    frames = torch.zeros(size * size, dtype=torch.int32, device=device)
    background = torch.full((size * size, 3), 0.5, device=device)
    coeffs = torch.rand(1, 3, generator=g).to(device)
    params = MarchParams.from_render_config(config)
    images, stats, default = {}, {}, FrozenField.FUSED_MLP
    for fused in (True, False):
        FrozenField.FUSED_MLP = fused
        frozen = field.frozen(coeffs, torch.float16)
        assert (frozen.fused is not None) == fused

        def one() -> tuple:
            return render_rays_inference(origins, directions, frames, frozen.logits, grid, params, background, stats=stats)
        images[fused] = one()
        ms = timed(one, reps=repeat) if device.type == "cuda" else float("nan")
        print(f"{size}x{size} render, MLPs {'in one kernel' if fused else 'as products'}: {ms:.2f} ms, "
              f"{stats['samples'] / size ** 2:.1f} samples per pixel, opacity {images[fused][1].mean().item():.3f}")
    for name, a, b in zip(("rgb", "opacity", "depth"), images[True], images[False]):
        print(f"kernel against products, {name}: largest difference {(a - b).abs().max().item():.2e}")
    FrozenField.FUSED_MLP = default


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=1 << 22, help="samples per call (a katie frame: 4.12 M)")
    p.add_argument("--tiles", default=str(fused_mlp.TILE), help="samples per kernel program, a list to time each")
    p.add_argument("--warps", default=str(fused_mlp.WARPS), help="warps per program, a list to time each")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--check-only", action="store_true", help="compare the outputs, time nothing")
    p.add_argument("--render", type=int, default=0, metavar="N", help="also the N x N render check")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    w = random_weights(g)
    features = torch.randn(args.samples, FEATURES, generator=g).to(device, torch.float16)
    harmonics = torch.randn(args.samples, HARMONICS, generator=g).to(device, torch.float16)
    kernel = fused_mlp.FusedFieldMLP([m.to(device) for m in w["density"]], [m.to(device) for m in w["colour"]])
    want = reference(w, features, harmonics)
    variants = [(int(t), int(k)) for t in args.tiles.split(",") for k in args.warps.split(",")]

    def error(got: torch.Tensor) -> float:
        return ((got.float().cpu() - want).abs().max() / want.abs().max()).item()

    for tile, warps in variants:
        fused_mlp.TILE, fused_mlp.WARPS = tile, warps
        e = error(kernel(features, harmonics))
        print(f"kernel, tiles of {tile}, {warps} warps: largest difference from the float32 reference {e:.2e} of the "
              f"outputs' range")
        if e > 2e-2:
            sys.exit(f"the kernel disagrees with the reference (tiles of {tile}, {warps} warps)")
    if args.render:
        render_check(args.render, device, args.repeat)
    if args.check_only or device.type != "cuda":
        return
    products = Products(w, device)
    print(f"products: largest difference from the float32 reference {error(products(features, harmonics)):.2e}")
    n = args.samples
    base = timed(lambda: products(features, harmonics), reps=args.repeat)
    print(f"{n} samples: cuBLAS products {base:.3f} ms ({1e6 * base / n:.3f} ns per sample)")
    for tile, warps in variants:
        fused_mlp.TILE, fused_mlp.WARPS = tile, warps
        t = timed(lambda: kernel(features, harmonics), reps=args.repeat)
        print(f"{n} samples: kernel, tiles of {tile}, {warps} warps {t:.3f} ms ({1e6 * t / n:.3f} ns per sample, "
              f"{base / t:.2f}x)")


if __name__ == "__main__":
    main()
