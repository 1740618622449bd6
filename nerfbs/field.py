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
from taichi_kernels.color_input import color_input
from taichi_kernels.hash_grid import BlendedHashGrid


class MLP(nn.Sequential):
    """Bias-free Linear / ReLU layers, a Linear last.

    Without autograd each hidden layer is one cuBLAS call with the ReLU in its epilogue
    (``torch._addmm_activation``) instead of a matrix product followed by a ReLU pass: an inference
    render's MLPs are bound by memory traffic, and the separate pass reads and writes every hidden
    activation once more. ``fused_inference = False`` on an instance turns that off (benchmarks).
    """

    fused_inference = True

    def __init__(self, dim_in: int, hidden: int, layers: int, dim_out: int):
        dims = [dim_in] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b, bias=False), nn.ReLU(inplace=True)]
        blocks.append(nn.Linear(dims[-1], dim_out, bias=False))
        super().__init__(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, in] -> [N, out]; without autograd, one fused addmm + ReLU per layer in the autocast dtype."""
        if not self.fused_inference or torch.is_grad_enabled():
            return super().forward(x)
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        h = x.to(dtype)
        linears = list(self)[0::2]
        for layer in linears[:-1]:
            weight = layer.weight.to(dtype)
            h = torch._addmm_activation(h.new_zeros(weight.shape[0]), h, weight.t())
        return h @ linears[-1].weight.to(dtype).t()


class BlendShapeField(nn.Module):
    """sigma(x, e) and rgb(x, d, e) for points x, directions d and expression coefficients e."""

    def __init__(self, config: ModelConfig, bound: float):
        super().__init__()
        self.config = config
        self.bound = float(bound)
        self.encoder = BlendedHashGrid(config.grid, init_scale=config.table_init)
        self.density_net = MLP(config.grid.output_dim, config.density_hidden, config.density_layers,
                               1 + config.geo_features)
        self.color_net = MLP(config.sh_degree ** 2 + config.geo_features, config.color_hidden,
                             config.color_layers, 3)

    @property
    def num_bases(self) -> int:
        """K + 1: the neutral basis and one per tracked coefficient."""
        return self.config.grid.num_bases

    def _geometry(self, points: torch.Tensor, frame_index: torch.Tensor, coeffs: torch.Tensor):
        unit = (points + self.bound) / (2.0 * self.bound)  # [N, 3] in [0, 1]^3 inside the box
        features = self.encoder(unit, frame_index, coeffs)  # [N, L*C] (float16 in inference under autocast)
        h = self.density_net(features)  # [N, 1 + G]: raw density, geometry features
        sigma = F.softplus(h[:, 0].float())  # [N]
        return sigma, h

    def density(self, points: torch.Tensor, frame_index: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        """Density [N] at world points [N, 3]; ``frame_index`` [N] int32 selects rows of ``coeffs`` [F, K]."""
        return self._geometry(points, frame_index, coeffs)[0]

    def forward(self, points: torch.Tensor, directions: torch.Tensor, frame_index: torch.Tensor,
                coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma [N], rgb [N, 3]) at world points [N, 3] seen along unit directions [N, 3]."""
        sigma, h = self._geometry(points, frame_index, coeffs)
        rgb = torch.sigmoid(self.color_net(color_input(directions, h, self.config.sh_degree)).float())
        return sigma, rgb

    def mlp_parameters(self) -> list[nn.Parameter]:
        """The density and colour MLPs' weights (the ones that get weight decay)."""
        return list(self.density_net.parameters()) + list(self.color_net.parameters())
