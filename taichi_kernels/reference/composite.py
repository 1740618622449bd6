"""Plain-PyTorch twin of ``taichi_kernels.composite`` (same name and signature), differentiable by torch
autograd: the tests compare the Taichi backward against it."""
from __future__ import annotations

import torch


def composite(sigmas: torch.Tensor, rgbs: torch.Tensor, t: torch.Tensor, dt: torch.Tensor,
              ray_offsets: torch.Tensor, ray_counts: torch.Tensor, background: torch.Tensor, *,
              early_stop: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Twin of ``taichi_kernels.composite.composite``: (rgb [R, 3], opacity [R], depth [R]), differentiable by autograd."""
    rays = ray_offsets.shape[0]
    longest = int(ray_counts.max()) if rays else 0
    dtype = t.dtype
    if longest == 0:
        zero = background.new_zeros(rays).to(dtype) + 0.0 * sigmas.sum() + 0.0 * rgbs.sum()
        return background.to(dtype) + zero[:, None], zero, zero
    j = torch.arange(longest, device=t.device)
    valid = j[None, :] < ray_counts[:, None].long()
    index = torch.where(valid, ray_offsets[:, None].long() + j[None, :], torch.zeros_like(j)[None, :])
    alpha = torch.where(valid, 1.0 - torch.exp(-sigmas.to(dtype)[index] * dt[index]), torch.zeros((), dtype=dtype))
    after = torch.cumprod(1.0 - alpha, dim=1)
    before = torch.cat((torch.ones_like(after[:, :1]), after[:, :-1]), dim=1)
    used = valid & (before >= early_stop)
    w = torch.where(used, before * alpha, torch.zeros((), dtype=dtype))
    rgb_acc = (w[:, :, None] * rgbs.to(dtype)[index]).sum(1)
    opacity = w.sum(1)
    depth = (w * t[index]).sum(1)
    return rgb_acc + (1.0 - opacity)[:, None] * background.to(dtype), opacity, depth
