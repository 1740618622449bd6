"""Person segmentation for the video preprocessor: MediaPipe's selfie segmenter on each crop, and a
zero-phase temporal smoothing of its confidence.

The segmenter (``selfie_segmentation.tflite``) comes from ``--segmenter PATH``, else the cache, else a
checked download (``nerfbs.preprocess.models``). It says person vs background (long hair and earrings stay
with the person); ``nerfbs.preprocess.masks`` turns that into a head mask with the tracked geometry.
Nothing here is differentiable.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from nerfbs.preprocess.models import SEGMENTER, open_task, resolve_model

SMOOTH_SIGMA_FRAMES = 1.0  # the Gaussian window over time, in frames (zero lag: it is symmetric)
SMOOTH_RADIUS_FRAMES = 2  # frames on each side of the window


def resolve_segmenter(path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The person segmenter: ``path`` if given, else the cached copy, else a checked download into the cache.
    Raises UserError naming where to put the file."""
    return resolve_model(SEGMENTER, path, download=download)


class Segmenter:
    """MediaPipe's ImageSegmenter (image mode: no state between frames) as a context manager.

    ``person(rgb)`` maps an RGB uint8 image [H, W, 3] to the person confidence [H, W] float32 in [0, 1]. A
    model with one confidence mask gives it directly; one with several takes mask 0 as the background
    (MediaPipe's convention) and gives 1 - mask 0. A file MediaPipe cannot load is a one-line UserError.
    """

    def __init__(self, model: str | os.PathLike):
        from nerfbs.preprocess.tracking import _import_mediapipe

        self._mp, BaseOptions, vision = _import_mediapipe()
        options = vision.ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=str(model)), running_mode=vision.RunningMode.IMAGE,
            output_confidence_masks=True, output_category_mask=False)
        self._task = open_task(SEGMENTER, Path(model), lambda: vision.ImageSegmenter.create_from_options(options))

    def person(self, rgb: np.ndarray) -> np.ndarray:
        """Person confidence [H, W] float32 in [0, 1] of an RGB uint8 image [H, W, 3]."""
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        masks = self._task.segment(image).confidence_masks
        conf = masks[0].numpy_view().reshape(rgb.shape[:2])
        conf = conf if len(masks) == 1 else 1.0 - conf
        return np.clip(conf, 0.0, 1.0).astype(np.float32)

    def close(self) -> None:
        """Release the MediaPipe task."""
        self._task.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def temporal_weights(sigma: float = SMOOTH_SIGMA_FRAMES, radius: int = SMOOTH_RADIUS_FRAMES) -> np.ndarray:
    """[2 radius + 1] float64 normalised Gaussian weights over frame offsets -radius..radius."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (offsets / max(sigma, 1e-6)) ** 2)
    return w / w.sum()


def zero_phase_smooth(stream: Iterable[tuple[Any, np.ndarray]], sigma: float = SMOOTH_SIGMA_FRAMES,
                      radius: int = SMOOTH_RADIUS_FRAMES) -> Iterator[tuple[Any, np.ndarray]]:
    """Smooth a stream of (item, map [H, W] float) over time with a symmetric Gaussian window, yielding
    (item, smoothed map [H, W] float32) in order, ``radius`` items behind the input.

    The window is symmetric, so nothing lags: a step from 0 to 1 at frame t stays above 0.5 from t on and
    below it before; an edge moving at constant speed keeps its 0.5 crossing where it is. Near either end
    of the stream the window shrinks to the frames available on both sides (the first and last frames are
    their own), which keeps it symmetric there too.
    """
    items: list = []
    maps: list[np.ndarray] = []
    base = emitted = 0  # stream index of items[0]; items yielded so far

    def emit(i: int, total: int | None) -> tuple[Any, np.ndarray]:
        r = min(radius, i, radius if total is None else total - 1 - i)
        out = np.zeros(maps[i - base].shape, np.float32)
        for off, weight in zip(range(-r, r + 1), temporal_weights(sigma, r)):
            out += np.float32(weight) * maps[i + off - base]
        return items[i - base], out

    for item, conf in stream:
        items.append(item)
        maps.append(np.asarray(conf, dtype=np.float32))
        while emitted + radius < base + len(maps):
            yield emit(emitted, None)
            emitted += 1
            while emitted - radius > base:  # no later window needs the oldest map
                items.pop(0)
                maps.pop(0)
                base += 1
    total = base + len(maps)
    while emitted < total:
        yield emit(emitted, total)
        emitted += 1
