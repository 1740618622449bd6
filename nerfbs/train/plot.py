"""Training curves drawn with OpenCV (no plotting library needed): loss (log scale) and PSNR against step."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from nerfbs.atomic import atomic_path


def _panel(xs: list[float], ys: list[float], title: str, color: tuple[int, int, int], *, log: bool,
           size: tuple[int, int] = (320, 480)) -> np.ndarray:
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    cv2.putText(img, title, (10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    pts = [(x, math.log10(y) if log else y) for x, y in zip(xs, ys) if y is not None and (y > 0 or not log)]
    if len(pts) < 2:
        return img
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    y1 = y1 if y1 > y0 else y0 + 1e-6
    x1 = x1 if x1 > x0 else x0 + 1
    left, right, top, bottom = 50, w - 10, 30, h - 25
    poly = np.array([[left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)]
                     for x, y in pts], np.int32)
    cv2.rectangle(img, (left, top), (right, bottom), (200, 200, 200), 1)
    cv2.polylines(img, [poly], False, color, 1, cv2.LINE_AA)
    fmt = (lambda v: f"{10 ** v:.2g}") if log else (lambda v: f"{v:.1f}")
    cv2.putText(img, fmt(y1), (2, top + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, fmt(y0), (2, bottom), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"step {int(x0)}", (left, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"{int(x1)}", (right - 40, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def write_curves(records: list[dict], out_png: str | Path) -> None:
    """Loss and PSNR panels side by side from metrics records (``step``, ``loss``, ``psnr``, ``val_psnr``)."""
    steps = [r["step"] for r in records if "loss" in r]
    loss = _panel(steps, [r["loss"] for r in records if "loss" in r], "training loss (log)", (200, 60, 20), log=True)
    val = [r for r in records if "val_psnr" in r]
    psnr = _panel([r["step"] for r in val], [r["val_psnr"] for r in val], "held-out PSNR (dB)", (20, 140, 20),
                  log=False)
    with atomic_path(out_png) as tmp:
        cv2.imwrite(str(tmp), np.concatenate([loss, psnr], axis=1))
