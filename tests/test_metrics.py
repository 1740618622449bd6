"""PSNR, SSIM and the LPIPS wrapper against direct numpy computations and closed forms."""
import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from nerfbs.evaluate import metrics


def _images(seed: int, h: int = 24, w: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.random((h, w, 3))
    pred = np.clip(target + 0.1 * rng.standard_normal((h, w, 3)), 0.0, 1.0)
    return pred.astype(np.float32), target.astype(np.float32)


def _ssim_direct(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """SSIM window by window: explicit weighted sums over every [size, size] window inside the image."""
    c = np.arange(size) - (size - 1) / 2
    w = np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * sigma ** 2))
    w /= w.sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    per_channel = []
    for ch in range(3):
        xs = sliding_window_view(x[..., ch].astype(np.float64), (size, size))  # [h', w', size, size]
        ys = sliding_window_view(y[..., ch].astype(np.float64), (size, size))
        mx, my = (xs * w).sum((-1, -2)), (ys * w).sum((-1, -2))
        vx = (w * (xs - mx[..., None, None]) ** 2).sum((-1, -2))
        vy = (w * (ys - my[..., None, None]) ** 2).sum((-1, -2))
        cov = (w * (xs - mx[..., None, None]) * (ys - my[..., None, None])).sum((-1, -2))
        s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
        per_channel.append(s.mean())
    return float(np.mean(per_channel))


def test_psnr_matches_direct_computation_and_crops():
    pred, target = _images(0)
    mse = np.mean((pred.astype(np.float64) - target) ** 2)
    assert metrics.psnr(pred, target) == pytest.approx(10 * np.log10(1 / mse), rel=1e-12)
    rect = (3, 5, 20, 17)
    crop = np.mean((pred[5:17, 3:20].astype(np.float64) - target[5:17, 3:20]) ** 2)
    assert metrics.psnr(pred, target, rect=rect) == pytest.approx(-10 * np.log10(crop), rel=1e-12)
    # A rectangle reaching past the image is clipped to it.
    assert metrics.psnr(pred, target, rect=(-4, -2, 99, 99)) == pytest.approx(metrics.psnr(pred, target), rel=1e-12)


def test_psnr_of_a_constant_offset_and_of_identical_images():
    target = np.full((8, 9, 3), 0.3)
    assert metrics.psnr(target + 0.1, target) == pytest.approx(20.0, abs=1e-9)  # -10 log10(0.1^2)
    assert metrics.psnr(target + 0.01, target) == pytest.approx(40.0, abs=1e-9)
    assert metrics.psnr(target, target) == math.inf


def test_ssim_matches_window_by_window_computation():
    pred, target = _images(1)
    assert metrics.ssim(pred, target) == pytest.approx(_ssim_direct(pred, target), rel=1e-9)
    rect = (2, 1, 27, 20)
    assert metrics.ssim(pred, target, rect=rect) == pytest.approx(
        _ssim_direct(pred[1:20, 2:27], target[1:20, 2:27]), rel=1e-9)


def test_ssim_of_identical_images_is_one_and_of_constants_follows_the_closed_form():
    pred, _ = _images(2)
    assert metrics.ssim(pred, pred) == pytest.approx(1.0, abs=1e-12)
    a, b = 0.2, 0.7  # flat images: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    expected = (2 * a * b + 0.01 ** 2) / (a * a + b * b + 0.01 ** 2)
    assert metrics.ssim(np.full((16, 16, 3), a), np.full((16, 16, 3), b)) == pytest.approx(expected, rel=1e-9)


def test_ssim_of_a_small_crop_uses_the_largest_odd_window_that_fits():
    pred, target = _images(3)
    rect = (4, 4, 12, 10)  # 8 wide, 6 high -> a 5x5 window
    assert metrics.ssim(pred, target, rect=rect) == pytest.approx(
        _ssim_direct(pred[4:10, 4:12], target[4:10, 4:12], size=5), rel=1e-9)


def test_inputs_are_checked_and_uint8_is_scaled():
    pred, target = _images(4)
    as_uint8 = (target * 255).round().astype(np.uint8)
    assert metrics.psnr(as_uint8, as_uint8.astype(np.float64) / 255) == math.inf
    assert metrics.psnr(torch.from_numpy(pred), target) == pytest.approx(metrics.psnr(pred, target))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(pred, target[:-1])
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        metrics.ssim(pred[..., 0], target[..., 0])
    with pytest.raises(ValueError, match="holds no pixel"):
        metrics.psnr(pred, target, rect=(10, 10, 10, 20))


class _MeanAbsDiff(torch.nn.Module):
    """Stands in for LPIPS: the mean absolute difference, remembering the shapes it saw."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self.shapes = []

    def forward(self, a, b):
        self.shapes.append(tuple(a.shape))
        return (a - b).abs().mean((1, 2, 3))


def test_lpips_distance_crops_and_enlarges_small_crops():
    pred, target = _images(5, h=40, w=48)
    model = _MeanAbsDiff()
    got = metrics.lpips_distance(model, pred, target, rect=(8, 4, 40, 36))
    assert model.shapes[-1] == (1, 3, 32, 32)
    assert got == pytest.approx(float(np.abs(pred[4:36, 8:40] - target[4:36, 8:40]).mean()), rel=1e-6)
    metrics.lpips_distance(model, pred, target, rect=(0, 0, 24, 8))  # 24 wide, 8 high -> 48 x 16
    assert model.shapes[-1] == (1, 3, 16, 48)
    assert metrics.lpips_distance(model, pred, pred) == 0.0
