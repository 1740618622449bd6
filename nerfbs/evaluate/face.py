"""The face score: a real-video figure that does not depend on the head masks.

Two preprocessors that mask the head differently write different head_imgs, so PSNR against head_imgs
cannot compare them. The face score is the PSNR of the render against the original frame (ori_imgs, same
crop and intrinsics as the render) inside the face: the convex hull of the frame's 478 landmarks, eroded
by FACE_SHRINK of its size so that the silhouette edge, hair and background stay out. Numpy only.
"""
from __future__ import annotations

import cv2
import numpy as np

from nerfbs.evaluate import metrics
from nerfbs.images import convex_hull_mask

FACE_SHRINK = 0.04  # the hull is eroded by this share of its larger side (12 px for a 300 px face)


def face_region(landmarks: np.ndarray, height: int, width: int, shrink: float = FACE_SHRINK) -> np.ndarray:
    """[H, W] bool: the convex hull of landmarks [N, 2] (pixel x, y; centres at integers), eroded by a
    disk of radius ``round(shrink * larger side of the landmarks' bounding box)`` pixels."""
    hull = convex_hull_mask(landmarks, height, width)
    side = float(np.max(np.ptp(np.asarray(landmarks, np.float64), axis=0)))
    r = int(round(shrink * side))
    if r <= 0:
        return hull
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.erode(hull.astype(np.uint8), disk, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def face_psnr(pred, original, landmarks: np.ndarray, shrink: float = FACE_SHRINK) -> float | None:
    """PSNR in dB of ``pred`` against ``original`` ([H, W, 3], floats in [0, 1] or uint8) over the face region
    of ``landmarks`` [N, 2]; None when the region holds no pixel."""
    h, w = np.shape(original)[:2]
    region = face_region(landmarks, h, w, shrink)
    if not region.any():
        return None
    return metrics.psnr(pred, original, mask=region)
