"""The field: blended hash grid -> density MLP -> colour MLP.

The model knows points, view directions and expression coefficients only: nothing of rays,
cameras or datasets. Points are world coordinates inside the scene cube [-bound, bound]^3; the
encoder sees them mapped to [0, 1]^3.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nerfbs.config import ModelConfig
from taichi_kernels.hash_grid import BlendedHashGrid


def spherical_harmonics(directions: torch.Tensor, degree: int) -> torch.Tensor:
    """Real spherical harmonics of unit directions [N, 3] up to ``degree`` bands (1 to 4): [N, degree^2]."""
    if not 1 <= degree <= 4:
        raise ValueError(f"spherical harmonics degree must lie in [1, 4], got {degree}")
    x, y, z = directions.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xy, yz, xz, x2, y2, z2 = x * y, y * z, x * z, x * x, y * y, z * z
        out += [1.0925484305920792 * xy, -1.0925484305920792 * yz, 0.94617469575755997 * z2 - 0.31539156525251999,
                -1.0925484305920792 * xz, 0.54627421529603959 * (x2 - y2)]
    if degree > 3:
        out += [0.59004358992664352 * y * (-3.0 * x2 + y2),
                2.8906114426405538 * xy * z, 0.45704579946446572 * y * (1.0 - 5.0 * z2),
                0.3731763325901154 * z * (5.0 * z2 - 3.0), 0.45704579946446572 * x * (1.0 - 5.0 * z2),
                1.4453057213202769 * z * (x2 - y2), 0.59004358992664352 * x * (-x2 + 3.0 * y2)]
    return torch.stack(out, dim=-1)


def _mlp(dim_in: int, hidden: int, layers: int, dim_out: int) -> nn.Sequential:
    dims = [dim_in] + [hidden] * layers
    blocks: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        blocks += [nn.Linear(a, b, bias=False), nn.ReLU(inplace=True)]
    blocks.append(nn.Linear(dims[-1], dim_out, bias=False))
    return nn.Sequential(*blocks)


class BlendShapeField(nn.Module):
    """sigma(x, e) and rgb(x, d, e) for points x, directions d and expression coefficients e."""

    def __init__(self, config: ModelConfig, bound: float):
        super().__init__()
        self.config = config
        self.bound = float(bound)
        self.encoder = BlendedHashGrid(config.grid, init_scale=config.table_init)
        self.density_net = _mlp(config.grid.output_dim, config.density_hidden, config.density_layers,
                                1 + config.geo_features)
        self.color_net = _mlp(config.sh_degree ** 2 + config.geo_features, config.color_hidden,
                              config.color_layers, 3)

    @property
    def num_bases(self) -> int:
        return self.config.grid.num_bases

    def _geometry(self, points: torch.Tensor, frame_index: torch.Tensor, coeffs: torch.Tensor):
        unit = (points + self.bound) / (2.0 * self.bound)  # [N, 3] in [0, 1]^3 inside the box
        features = self.encoder(unit, frame_index, coeffs)  # [N, L*C] float32
        h = self.density_net(features)
        sigma = F.softplus(h[:, 0].float())  # [N]
        return sigma, h[:, 1:]

    def density(self, points: torch.Tensor, frame_index: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        """Density [N] at world points [N, 3]; ``frame_index`` [N] int32 selects rows of ``coeffs`` [F, K]."""
        return self._geometry(points, frame_index, coeffs)[0]

    def forward(self, points: torch.Tensor, directions: torch.Tensor, frame_index: torch.Tensor,
                coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma [N], rgb [N, 3]) at world points [N, 3] seen along unit directions [N, 3]."""
        sigma, geo = self._geometry(points, frame_index, coeffs)
        sh = spherical_harmonics(directions, self.config.sh_degree).to(geo.dtype)
        rgb = torch.sigmoid(self.color_net(torch.cat([sh, geo], dim=-1)).float())
        return sigma, rgb

    def mlp_parameters(self) -> list[nn.Parameter]:
        return list(self.density_net.parameters()) + list(self.color_net.parameters())
