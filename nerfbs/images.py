"""Small image helpers: float/uint8 conversion, comparison grids with an error heat map, convex-hull masks,
atomic PNG writes."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from nerfbs.atomic import atomic_path


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [H, W, C] in [0, 1] -> uint8."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def error_heatmap(pred: np.ndarray, truth: np.ndarray, max_error: float = 0.25) -> np.ndarray:
    """Per-pixel mean absolute error as a colour map (uint8 RGB), saturating at ``max_error``."""
    err = np.abs(pred.astype(np.float32) - truth.astype(np.float32)).mean(axis=-1)
    scaled = np.clip(err / max_error, 0.0, 1.0)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return heat[..., ::-1]


def error_grid(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """prediction | truth | error heat map, side by side, uint8 RGB."""
    return np.concatenate([to_uint8(pred), to_uint8(truth), error_heatmap(pred, truth)], axis=1)


def convex_hull_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """[height, width] bool: the pixels (centres at integer coordinates) inside the convex hull of points
    [N, 2] (x, y), rasterised with quarter-pixel precision."""
    mask = np.zeros((height, width), np.uint8)
    hull = cv2.convexHull(np.round(np.asarray(points, np.float64) * 4).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=2)
    return mask.astype(bool)


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB or RGBA uint8 image (or float in [0, 1]) as PNG, atomically."""
    if image.dtype != np.uint8:
        image = to_uint8(image)
    if image.ndim == 3 and image.shape[-1] == 4:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    elif image.ndim == 3:
        bgr = image[..., ::-1]
    else:
        bgr = image
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(bgr)):
            raise OSError(f"could not write {path}")
