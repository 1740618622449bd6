"""The field: blended hash grid -> density MLP -> colour MLP.

The model knows points, view directions and expression coefficients only: nothing of rays,
cameras or datasets. Points are world coordinates inside the scene cube [-bound, bound]^3; the
encoder sees them mapped to [0, 1]^3.
"""
from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from nerfbs.config import ModelConfig
from taichi_kernels.color_input import color_input, write_harmonics
from taichi_kernels.hash_grid import BlendedHashGrid, blend_tables, lookup_blended
from taichi_kernels.samples import FieldLogits


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

    def weights(self) -> list[torch.Tensor]:
        """The layers' weights [out, in], first to last, detached."""
        return [layer.weight.detach() for layer in list(self)[0::2]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, in] -> [N, out]; without autograd, one fused addmm + ReLU per layer in the autocast dtype."""
        if not self.fused_inference or torch.is_grad_enabled():
            return super().forward(x)
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        return FrozenMLP(self, dtype)(x)


class FrozenMLP:
    """An ``MLP`` for inference (or its weights, ``MLP.weights``), cast to ``dtype`` once (a render calls it every
    round) and its last layer's rows padded with zeros to a multiple of ``align``: calls return [N, ``width``],
    the outputs rounded up to ``align``. cuBLAS runs a product whose output rows are not 16-byte aligned (65 or 3
    float16 columns) on slow generic kernels (docs/PERF.md, session 8). ``product_columns`` (a multiple of
    ``align``), if given, computes the last layer in products of that many output columns each."""

    def __init__(self, mlp: "MLP | list[torch.Tensor]", dtype: torch.dtype, align: int = 1,
                 product_columns: int | None = None):
        weights = [w.to(dtype) for w in (mlp.weights() if isinstance(mlp, MLP) else mlp)]
        last = weights.pop()
        rows = -(-last.shape[0] // align) * align
        self.hidden = [(w.new_zeros(w.shape[0]), w.t()) for w in weights]  # (zero bias, weight^T)
        self.last_t = torch.cat([last, last.new_zeros(rows - last.shape[0], last.shape[1])]).t()
        step = product_columns or rows
        self.last_blocks = [(c, self.last_t[:, c:c + step]) for c in range(0, rows, step)]  # (first column, weight^T)
        self.dtype = dtype

    @property
    def width(self) -> int:
        """Columns of the output: the outputs padded to the alignment."""
        return self.last_t.shape[1]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """[N, width]; written into ``out`` when given (a view with unit column stride, as a slice of a wider row:
        cuBLAS writes it in place)."""
        h = x.to(self.dtype)
        for bias, weight_t in self.hidden:
            h = torch._addmm_activation(bias, h, weight_t)
        out = h.new_empty(h.shape[0], self.width) if out is None else out
        for first, weight_t in self.last_blocks:
            torch.mm(h, weight_t, out=out[:, first:first + weight_t.shape[1]])
        return out


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

    def _unit(self, points: torch.Tensor) -> torch.Tensor:
        return (points + self.bound) / (2.0 * self.bound)  # [N, 3] in [0, 1]^3 inside the box

    def _geometry(self, points: torch.Tensor, frame_index: torch.Tensor, coeffs: torch.Tensor):
        features = self.encoder(self._unit(points), frame_index, coeffs)  # [N, L*C] (float16 under inference autocast)
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

    def frozen(self, coeffs: torch.Tensor, dtype: torch.dtype = torch.float32) -> "FrozenField":
        """The field at the expressions ``coeffs`` [F, K] for inference (``FrozenField``), computing in ``dtype``
        (float16 for a GPU render)."""
        return FrozenField(self, blend_tables(coeffs.detach(), self.encoder.tables.detach(), dtype))

    def mlp_parameters(self) -> list[nn.Parameter]:
        """The density and colour MLPs' weights (the ones that get weight decay)."""
        return list(self.density_net.parameters()) + list(self.color_net.parameters())


class FrozenField:
    """``BlendShapeField`` without autograd at fixed expressions (``BlendShapeField.frozen``), for the inference
    loop, which calls the field once per round on the same frames: the K tables are blended once (a pass over all
    of them each round cost as much as a small round's lookups) and the MLPs' weights cast once. Computes in the
    blended tables' type (float16 for a float16 render).

    Each point's colour input is one row, ``[harmonics, zeros to ALIGN, geometry features, density, zeros to
    ALIGN]``: ``write_harmonics`` fills its head and the density MLP writes its output, features first, into the
    rest (its last layer's rows reordered); the colour MLP reads the row's first columns, its first layer's
    weights laid out the same way. Nothing is copied (the colour-input kernel's copy of the features took 4.4 ms
    of a 512x512 frame, docs/PERF.md sessions 8 and 9), and every product's rows are 16-byte aligned, which
    cuBLAS's fast kernels need (``FrozenMLP``).

    With ``FUSED_MLP`` on a CUDA GPU, for the original model's shapes, both MLPs run as one kernel instead
    (``nerfbs.fused_mlp``): the harmonics and the features in, the colour's and density's logits out, nothing
    between them through memory."""

    ALIGN = 8  # float16 rows of 8 are 16 bytes
    # Output columns per product of the MLPs' last layers (None: one product each): cuBLAS picks its kernel by
    # the product's shape (bench/render_profile.py --product-columns times the choices). Products of 8 columns made a
    # batched frame 1.2 ms slower on an H100: each product reads the hidden layer again (docs/PERF.md, session 15).
    PRODUCT_COLUMNS: int | None = None
    # Both MLPs in one kernel where it applies (``_fused_mlp``): on an H100 katie's batched 512x512 frames render at
    # 202 frames/s with it, 146 with the products (the same recipe and steps, session 14), images within 1e-4 of the
    # products' (docs/PERF.md, session 16).
    FUSED_MLP = True
    FUSED_MLP_MIN_CAPABILITY = (8, 0)  # measured on Hopper; Ampere's tensor cores take the same float16 products

    def __init__(self, field: BlendShapeField, blended: torch.Tensor):
        config = field.config
        self.field = field
        self.blended = blended  # [F, P, C]
        self.degree, self.features = config.sh_degree, config.geo_features
        sh = self.degree ** 2
        self.sh_columns = -(-sh // self.ALIGN) * self.ALIGN
        density = field.density_net.weights()
        density[-1] = density[-1][list(range(1, 1 + self.features)) + [0]]  # features first, then the density
        colour = field.color_net.weights()
        first = colour[0]  # [hidden, sh + G]
        colour[0] = torch.cat([first[:, :sh], first.new_zeros(first.shape[0], self.sh_columns - sh), first[:, sh:]], 1)
        self.density_net = FrozenMLP(density, blended.dtype, self.ALIGN, self.PRODUCT_COLUMNS)
        self.color_net = FrozenMLP(colour, blended.dtype, self.ALIGN, self.PRODUCT_COLUMNS)
        self.fused = self._fused_mlp(density, colour, blended)

    def _fused_mlp(self, density: list[torch.Tensor], colour: list[torch.Tensor], blended: torch.Tensor):
        """``nerfbs.fused_mlp.FusedFieldMLP`` of the MLPs where it applies: float16 on a CUDA GPU (or on a CPU in
        Triton's interpreter, ``TRITON_INTERPRET=1``, for the tests), a GPU of compute capability 8.0 or newer,
        Triton importable, the original model's shapes; else None."""
        if not self.FUSED_MLP or blended.dtype != torch.float16:
            return None
        interpreted = os.environ.get("TRITON_INTERPRET") == "1"
        if not interpreted and not (blended.is_cuda and torch.cuda.get_device_capability(blended.device)
                                    >= self.FUSED_MLP_MIN_CAPABILITY):
            return None
        try:
            from nerfbs import fused_mlp
        except ImportError:  # a CUDA torch without Triton: the products
            return None
        return fused_mlp.FusedFieldMLP(density, colour) if fused_mlp.fits(density, colour) else None

    @torch.no_grad()
    def density(self, points: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
        """Density [N] at world points [N, 3]; ``frame_index`` [N] int32 picks the blended frame."""
        return F.softplus(self.density_net(self._encode(points, frame_index))[:, self.features].float())

    @torch.no_grad()
    def __call__(self, points: torch.Tensor, directions: torch.Tensor,
                 frame_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma [N], rgb [N, 3]), as ``BlendShapeField.forward`` with the frozen expressions."""
        return self.logits(points, directions, frame_index).activated()

    @torch.no_grad()
    def logits(self, points: torch.Tensor, directions: torch.Tensor, frame_index: torch.Tensor) -> FieldLogits:
        """The same before the activations, in the blended tables' type: the inference loop activates as it
        composites (``taichi_kernels.samples.FieldLogits``)."""
        encoded = self._encode(points, frame_index)
        if self.fused is not None:
            harmonics = torch.empty(points.shape[0], self.sh_columns, dtype=self.blended.dtype, device=points.device)
            write_harmonics(directions, harmonics, self.degree, self.sh_columns)
            out = self.fused(encoded, harmonics)  # [N, 4]: the colour's 3 logits, then the density's
            return FieldLogits(out, 3, out)
        row = torch.empty(points.shape[0], self.sh_columns + self.density_net.width, dtype=self.blended.dtype,
                          device=points.device)
        write_harmonics(directions, row, self.degree, self.sh_columns)
        self.density_net(encoded, out=row[:, self.sh_columns:])
        colour = self.color_net(row[:, :self.sh_columns + self.features])
        return FieldLogits(row, self.sh_columns + self.features, colour)

    def _encode(self, points: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
        return lookup_blended(self.field._unit(points), frame_index, self.blended, self.field.config.grid)
