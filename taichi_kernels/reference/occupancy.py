"""Plain-PyTorch twin of ``taichi_kernels.occupancy``'s bit packing."""
from __future__ import annotations

import torch


def pack_bitfield(density: torch.Tensor, threshold: float) -> torch.Tensor:
    """[C] float32 -> [C / 8] uint8, bit k of byte b is density[8 b + k] > threshold."""
    bits = (density > threshold).reshape(-1, 8).to(torch.int32)
    weights = 2 ** torch.arange(8, device=density.device, dtype=torch.int32)
    return (bits * weights).sum(1).to(torch.uint8)
