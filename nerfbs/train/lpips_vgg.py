"""LPIPS-VGG (Zhang et al. 2018, version 0.1) as a plain torch module: no ``lpips`` package, no torchvision.

The network is the ``lpips`` package's ``LPIPS(net="vgg")`` layer for layer, with its parameter names, so the
same state dicts load into either: a scaling layer, VGG16's first 30 ``features`` cut after relu1_2, relu2_2,
relu3_3, relu4_3 and relu5_3 (``net.slice<s>.<i>`` keeps torchvision's feature index ``i``), and per cut a 1x1
convolution without bias (``lin<k>.model.1``) weighting the squared difference of channel-normalised features.

    d(x0, x1) = sum_k mean_{h,w} w_k . (f_k(x0) / |f_k(x0)| - f_k(x1) / |f_k(x1)|)^2,   inputs in [-1, 1].

Weights come from ``nerfbs.train.perceptual`` (never downloaded here).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

# VGG16 "D" up to relu5_3: channel counts, "M" for a 2x2 max-pool; torchvision's feature indices follow from it.
_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
SLICE_ENDS = (4, 9, 16, 23, 30)  # exclusive feature-index ends of the five cuts
CHANNELS = (64, 128, 256, 512, 512)  # channels at the cuts
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # feature indices of the 13 convolutions
EPS = 1e-10  # the lpips package's normalize_tensor


def _features() -> list[nn.Module]:
    """torchvision's ``vgg16().features[:30]`` as a list of fresh (random) layers."""
    layers: list[nn.Module] = []
    channels = 3
    for item in _LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            channels = item
    return layers


class Vgg16Slices(nn.Module):
    """The five cuts of VGG16's features: ``forward(x [B, 3, H, W])`` -> five ``[B, C_k, H / 2^k, W / 2^k]``."""

    def __init__(self):
        super().__init__()
        layers = _features()
        start = 0
        for s, end in enumerate(SLICE_ENDS, start=1):
            self.add_module(f"slice{s}", nn.Sequential(OrderedDict((str(i), layers[i]) for i in range(start, end))))
            start = end

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The features at the five cuts of x [B, 3, H, W], shallowest first."""
        outs = []
        for s in range(1, len(SLICE_ENDS) + 1):
            x = getattr(self, f"slice{s}")(x)
            outs.append(x)
        return outs


class _Linear(nn.Module):
    """Dropout (inactive in eval mode) and a 1x1 convolution to one channel, named as the lpips package."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LpipsVgg(nn.Module):
    """``forward(x0, x1)`` with ``[B, 3, H, W]`` images in [-1, 1] -> ``[B, 1, 1, 1]`` LPIPS distances."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.net = Vgg16Slices()
        for k, channels in enumerate(CHANNELS):
            self.add_module(f"lin{k}", _Linear(channels))

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """LPIPS distances [B, 1, 1, 1] between x0 and x1 [B, 3, H, W] in [-1, 1]."""
        f0 = self.net((x0 - self.shift) / self.scale)
        f1 = self.net((x1 - self.shift) / self.scale)
        total = 0.0
        for k, (a, b) in enumerate(zip(f0, f1)):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + EPS)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + EPS)
            total = total + getattr(self, f"lin{k}")((a - b) ** 2).mean((2, 3), keepdim=True)
        return total
