"""The contact sheet (contact.png): a few held-out frames spread over the held-out range, one row each:
render | original frame | error heat map | the mouth, twice zoomed, from the render and from the original.

The original is ori_imgs (same crop and size as the render, as the face score compares them), else the
head_imgs truth. The sheet keeps the images of its own frames while the evaluation scores them, so no frame is
rendered twice and memory holds at most ``count`` frames. Numpy and OpenCV only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from nerfbs.images import error_heatmap, to_uint8

SHEET_FRAMES = 6  # rows of the sheet (fewer when there are fewer held-out frames)
MAX_WIDTH = 2048  # rows wider than this are scaled down
LABEL_HEIGHT = 16  # px of the label strip above each row
MOUTH_ZOOM = 2.0  # the mouth crops' magnification (less when a crop would outgrow the row)
MOUTH_MARGIN = 0.25  # the mouth rectangle grows by this share of its larger side on each side, for the lip edges


def spread(frames: Sequence[int], count: int = SHEET_FRAMES) -> list[int]:
    """``count`` of ``frames`` evenly spaced over the list, first and last included (all when fewer)."""
    n = len(frames)
    if n <= count:
        return [int(f) for f in frames]
    return [int(frames[i]) for i in np.round(np.linspace(0, n - 1, count)).astype(int)]


@dataclass
class SheetRow:
    """One frame of the sheet: images float32 [H, W, 3] in [0, 1], the crop (x0, y0, x1, y1) and the face score."""

    frame: int
    render: np.ndarray
    reference: np.ndarray  # the original frame, else the head_imgs truth
    from_original: bool
    mouth: tuple[int, int, int, int]
    score: float | None

    def label(self) -> str:
        """'frame 12  face 27.31 dB', with '(vs head_imgs)' when the frame has no original."""
        score = "n/a" if self.score is None else f"{self.score:.2f} dB"
        return f"frame {self.frame}  face {score}" + ("" if self.from_original else "  (vs head_imgs)")


def mouth_crop(rect, height: int, width: int, margin: float = MOUTH_MARGIN) -> tuple[int, int, int, int]:
    """The mouth rectangle (x0, y0, x1, y1; x1, y1 exclusive) grown by ``margin`` of its larger side, clipped."""
    x0, y0, x1, y1 = (int(v) for v in rect)
    m = int(round(margin * max(x1 - x0, y1 - y0)))
    return max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, width), min(y1 + m, height)


class ContactSheet:
    """Collects the rows of the frames it chose (``spread(frames, count)``) while an evaluation scores them."""

    def __init__(self, frames: Sequence[int], count: int = SHEET_FRAMES):
        self.frames = spread(frames, count)
        self.rows: dict[int, SheetRow] = {}

    def offer(self, frame: int, pred: np.ndarray, truth: np.ndarray, original: np.ndarray | None, mouth_rect,
              score: float | None) -> None:
        """Keep frame ``frame`` if the sheet chose it: prediction and truth float [H, W, 3] in [0, 1], the
        original (uint8 or float [H, W, 3], or None), the mouth rectangle and the face score in dB."""
        if int(frame) not in self.frames:
            return
        h, w = pred.shape[:2]
        if original is not None:
            reference = original.astype(np.float32) / 255.0 if original.dtype == np.uint8 else original
        else:
            reference = truth
        self.rows[int(frame)] = SheetRow(int(frame), np.asarray(pred, np.float32), np.asarray(reference, np.float32),
                                         original is not None, mouth_crop(mouth_rect, h, w), score)

    def image(self) -> np.ndarray | None:
        """The sheet as uint8 RGB [rows * (LABEL_HEIGHT + row height), width <= MAX_WIDTH, 3]; None when empty."""
        rows = [self.rows[f] for f in self.frames if f in self.rows]
        if not rows:
            return None
        h = rows[0].render.shape[0]
        crop_w = max(r.mouth[2] - r.mouth[0] for r in rows)
        crop_h = max(r.mouth[3] - r.mouth[1] for r in rows)
        zoom = min(MOUTH_ZOOM, h / crop_h)
        panel_w = int(math.ceil(zoom * crop_w))
        strips = [_row(r, zoom, panel_w) for r in rows]
        scale = min(1.0, MAX_WIDTH / strips[0].shape[1])
        out = []
        for row, strip in zip(rows, strips):
            if scale < 1.0:
                size = (max(1, int(strip.shape[1] * scale)), max(1, int(round(strip.shape[0] * scale))))
                strip = cv2.resize(strip, size, interpolation=cv2.INTER_AREA)
            out += [_label(row.label(), strip.shape[1]), strip]
        return np.concatenate(out, axis=0)


def _row(row: SheetRow, zoom: float, panel_w: int) -> np.ndarray:
    """render | reference | error heat map | mouth of the render | mouth of the reference, uint8 [H, W', 3]."""
    x0, y0, x1, y1 = row.mouth
    panels = [to_uint8(row.render), to_uint8(row.reference), error_heatmap(row.render, row.reference)]
    for image in (row.render, row.reference):
        crop = to_uint8(image[y0:y1, x0:x1])
        size = (max(1, int(round(zoom * crop.shape[1]))), max(1, int(round(zoom * crop.shape[0]))))
        zoomed = cv2.resize(crop, size, interpolation=cv2.INTER_NEAREST)
        panel = np.zeros((row.render.shape[0], panel_w, 3), np.uint8)
        top, left = (panel.shape[0] - zoomed.shape[0]) // 2, (panel_w - zoomed.shape[1]) // 2
        panel[top:top + zoomed.shape[0], left:left + zoomed.shape[1]] = zoomed
        panels.append(panel)
    return np.concatenate(panels, axis=1)


def _label(text: str, width: int) -> np.ndarray:
    """A dark strip LABEL_HEIGHT high holding ``text`` in white."""
    strip = np.full((LABEL_HEIGHT, width, 3), 32, np.uint8)
    cv2.putText(strip, text, (3, LABEL_HEIGHT - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return strip
