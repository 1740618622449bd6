"""Image quality metrics on whole images or a rectangle of them: PSNR, SSIM and LPIPS.

Images are ``[H, W, 3]`` arrays (numpy, or CPU torch tensors) of floats in [0, 1]; uint8 images are divided by
255. ``rect = (x0, y0, x1, y1)`` selects columns ``x0:x1`` and rows ``y0:y1``, clipped to the image. None of these
is differentiable: they return Python floats (the training loss calls the LPIPS module itself).
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np
import torch

Rect = Sequence[int]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
LPIPS_MIN_SIDE = 16  # VGG's four 2x2 poolings leave no pixel of a smaller image


def _as_image(image, name: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{name} must be an [H, W, 3] image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{name} must hold floats in [0, 1] or uint8, got {image.dtype}")
    return image.astype(np.float64)


def _crop_pair(pred, target, rect: Rect | None) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 [h, w, 3], cropped to ``rect`` (clipped to the image)."""
    pred, target = _as_image(pred, "pred"), _as_image(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in shape: {pred.shape} vs {target.shape}")
    if rect is None:
        return pred, target
    h, w = pred.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in rect)
    x0, x1 = max(x0, 0), min(x1, w)
    y0, y1 = max(y0, 0), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"rectangle {tuple(rect)} (x0, y0, x1, y1) holds no pixel of a {w}x{h} image")
    return pred[y0:y1, x0:x1], target[y0:y1, x0:x1]


def psnr(pred, target, rect: Rect | None = None, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``-10 log10(mean squared error)`` over all pixels and channels (peak 1),
    or over the pixels where ``mask`` ([H, W] bool, of the whole image) is True; infinite for identical images."""
    if mask is not None:
        if rect is not None:
            raise ValueError("give psnr a rect or a mask, not both")
        pred, target = _crop_pair(pred, target, None)
        if mask.shape != pred.shape[:2] or not mask.any():
            raise ValueError(f"mask of shape {mask.shape} must be the image's {pred.shape[:2]} and select a pixel")
        pred, target = pred[mask], target[mask]
    else:
        pred, target = _crop_pair(pred, target, rect)
    mse = float(np.mean((pred - target) ** 2))
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """[size] float64 normalised 1-D Gaussian; SSIM's window is its outer product with itself."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def ssim(pred, target, rect: Rect | None = None) -> float:
    """Structural similarity (Wang et al. 2004): an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
    data range 1, computed per channel over the windows that fit inside the image ("valid"), averaged over
    windows and channels. A crop smaller than 11 pixels on a side uses the largest odd window that fits
    (same sigma)."""
    pred, target = _crop_pair(pred, target, rect)
    size = min(SSIM_WINDOW, min(pred.shape[:2]))
    size -= 1 - size % 2
    g = gaussian_window(size)
    r = size // 2

    def local_mean(image: np.ndarray) -> np.ndarray:  # [h, w, 3] -> [h - 2r, w - 2r, 3], windows inside only
        filtered = cv2.sepFilter2D(np.ascontiguousarray(image), cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
        return filtered.reshape(image.shape)[r:image.shape[0] - r, r:image.shape[1] - r]

    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    mu_x, mu_y = local_mean(pred), local_mean(target)
    var_x = local_mean(pred * pred) - mu_x ** 2
    var_y = local_mean(target * target) - mu_y ** 2
    cov = local_mean(pred * target) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def lpips_distance(model: torch.nn.Module, pred, target, rect: Rect | None = None) -> float:
    """LPIPS distance from ``model`` (``nerfbs.train.perceptual.load_lpips``) between the two images or their crops. A
    crop smaller than 16 pixels on a side is first enlarged bilinearly so that its short side is 16."""
    pred, target = _crop_pair(pred, target, rect)
    device = next(model.parameters()).device
    batch = torch.from_numpy(np.stack([pred, target])).float().permute(0, 3, 1, 2).to(device)  # [2, 3, h, w]
    h, w = batch.shape[-2:]
    if min(h, w) < LPIPS_MIN_SIDE:
        scale = LPIPS_MIN_SIDE / min(h, w)
        size = (max(LPIPS_MIN_SIDE, round(h * scale)), max(LPIPS_MIN_SIDE, round(w * scale)))
        batch = torch.nn.functional.interpolate(batch, size=size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        return float(model(batch[:1], batch[1:]))
