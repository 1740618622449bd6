"""The viewer's one render thread: takes the newest state, renders it, hands the image on.

While a browser's camera moves, frames are rendered at a lower resolution chosen from the measured
throughput (pixels per second) so that they keep up with about ``MOVING_FPS`` frames per second; once the
camera rests, the same view is rendered again at the full resolution. Rendering happens here only, never on
the web server's threads, and one frame at a time: whatever changed during a render is picked up, as one
newest state, by the next.

Taichi compiles kernels on its main thread only (it asserts so): whoever starts the loop renders a frame of
each kind on the main thread first (``frames.FrameRenderer.warm_up``).
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from nerfbs.data.camera import Intrinsics
from nerfbs.viewer.camera import MIN_SIDE, intrinsics_for
from nerfbs.viewer.state import Request, ViewerState

log = logging.getLogger(__name__)

MOVING_FPS = 12.0  # frames per second aimed at while a camera moves
MOVING_MIN_SIDE = 48  # pixels: the coarsest moving frame
FPS_WINDOW = 2.0  # seconds over which the frame rate is counted
JPEG_QUALITY = 90  # of the frames sent to browsers (PNG when transparent)

RenderFn = Callable[[np.ndarray, Intrinsics, np.ndarray, str], np.ndarray]


@dataclass(frozen=True)
class FrameStats:
    """The read-out: frames per second sent over the last ``FPS_WINDOW`` seconds, the last frame's render
    time (ms, rendering and the copy to the host) and size (height, width), and frames sent in all."""

    fps: float
    render_ms: float
    size: tuple[int, int]
    frames: int


class RenderLoop:
    """Renders ``state``'s requests with ``render`` on a thread of its own.

    ``send(request, image)`` delivers each frame (uint8 [H, W, 3 or 4]); ``snapshot(request, image)`` gets the
    full-resolution frame of a snapshot request as well; ``error(request, exception)`` hears of a failed
    render (the loop goes on)."""

    def __init__(self, state: ViewerState, render: RenderFn, send: Callable[[Request, np.ndarray], None], *,
                 snapshot: Optional[Callable[[Request, np.ndarray], None]] = None,
                 error: Optional[Callable[[Request, BaseException], None]] = None, moving_fps: float = MOVING_FPS):
        self.state = state
        self._render, self._send, self._snapshot, self._error = render, send, snapshot, error
        self.moving_fps = moving_fps
        self._pixels_per_second: Optional[float] = None
        self._sent: collections.deque[float] = collections.deque()
        self._frames = 0
        self._last = (0.0, (0, 0))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nerfbs-viewer-render", daemon=True)

    def start(self) -> "RenderLoop":
        """Start the render thread; returns self."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the frame in progress (the state is closed too)."""
        self._stop.set()
        self.state.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def camera_for(self, request: Request) -> Intrinsics:
        """The intrinsics a request renders at: its full side at rest, else the moving resolution."""
        side = request.side if request.full else self.moving_side(request.side, request.view.aspect)
        return intrinsics_for(request.view.fov_y, request.view.aspect, side)

    def moving_side(self, side: int, aspect: float) -> int:
        """The longest side (pixels) of a frame rendered while the camera moves: what the measured throughput
        renders ``moving_fps`` times a second, between ``MOVING_MIN_SIDE`` and ``side`` (half of it before
        any measurement)."""
        if self._pixels_per_second is None:
            return max(min(side, MOVING_MIN_SIDE), side // 2)
        full = intrinsics_for(1.0, aspect, side)
        scale = math.sqrt(self._pixels_per_second / self.moving_fps / (full.height * full.width))
        return int(min(side, max(min(side, MOVING_MIN_SIDE), MIN_SIDE, round(side * scale))))

    def stats(self) -> FrameStats:
        """The read-out now (frames per second over the last ``FPS_WINDOW`` seconds)."""
        with self._lock:
            now = time.monotonic()
            while self._sent and self._sent[0] < now - FPS_WINDOW:
                self._sent.popleft()
            fps = 0.0 if len(self._sent) < 2 else (len(self._sent) - 1) / max(self._sent[-1] - self._sent[0], 1e-6)
            return FrameStats(fps=fps, render_ms=self._last[0] * 1e3, size=self._last[1], frames=self._frames)

    # --------------------------------------------------------------------------------------------- inside
    def _run(self) -> None:
        while not self._stop.is_set():
            request = self.state.next_request(timeout=0.5)
            if request is None:
                continue
            try:
                self._serve(request)
            except Exception as err:  # a failed frame must not end the viewer
                log.exception("viewer: rendering a frame failed")
                if self._error is not None:
                    self._error(request, err)
            finally:
                self.state.served(request)

    def _serve(self, request: Request) -> None:
        camera = self.camera_for(request)
        start = time.perf_counter()
        image = self._render(request.view.pose, camera, request.coeffs, request.background)
        seconds = time.perf_counter() - start
        rate = camera.height * camera.width / max(seconds, 1e-6)
        self._pixels_per_second = rate if self._pixels_per_second is None else 0.7 * self._pixels_per_second + 0.3 * rate
        with self._lock:  # before sending: the read-out shown with this frame counts it
            self._sent.append(time.monotonic())
            self._frames += 1
            self._last = (seconds, (camera.height, camera.width))
        self._send(request, image)
        if request.snapshot and self._snapshot is not None:
            self._snapshot(request, image)
