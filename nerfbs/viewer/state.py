"""The viewer's newest state: what every browser looks at and what the avatar shows.

The web server's threads only write here (a camera moved, a slider changed, a setting changed); the one
render thread asks ``next_request`` for the newest state still to be shown, renders it, and reports it
``served``. A state that arrives while a frame renders simply replaces the older one: there is never more
than the newest state waiting, so nothing piles up. A browser whose camera moved less than
``rest_seconds`` ago gets a quick low-resolution frame; once its camera rests it gets the full resolution.

Coefficient vectors here are [K] in exp_ori order (the model's row drops its leading 1.0), always inside the
avatar's training range (clamped by ``export.expressions.apply_settings``, as every render is).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from nerfbs.export.expressions import apply_settings
from nerfbs.viewer.camera import View

BACKGROUNDS = ("dataset", "white", "transparent")
REST_SECONDS = 0.2  # a camera still for this long is at rest: render at full resolution


@dataclass(frozen=True, eq=False)
class Request:
    """One frame to render for browser ``client``: its ``view``, the coefficients [K] float32, the background
    kind and the longest image side ``side`` (pixels) at rest. ``full`` is False while the camera moves (the
    render loop then picks a lower resolution); ``snapshot`` asks for the image to be saved too. ``key``
    names the state shown: (shared version, the client's view version)."""

    client: int
    key: tuple[int, int]
    view: View
    coeffs: np.ndarray
    background: str
    side: int
    full: bool
    snapshot: bool = False


class ViewerState:
    """Thread-safe newest state of the viewer (see the module docstring).

    ``lo``, ``hi`` [K]: the training range of the coefficients; ``coeffs`` [K]: the expression to start with."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, coeffs: np.ndarray, *, background: str = "dataset",
                 side: int = 512, rest_seconds: float = REST_SECONDS):
        self._lo = torch.as_tensor(np.asarray(lo, dtype=np.float32)).reshape(-1)
        self._hi = torch.as_tensor(np.asarray(hi, dtype=np.float32)).reshape(-1)
        self._cond = threading.Condition()
        self._coeffs = self._clamped(coeffs)[0]
        self._background = self._check_background(background)
        self._side = self._check_side(side)
        self._override: Optional[tuple[np.ndarray, float]] = None  # (pose [4, 4], fov_y) of a played frame
        self._version = 0  # bumped by every change every browser sees
        self._views: dict[int, View] = {}
        self._view_versions: dict[int, int] = {}
        self._moved_at: dict[int, float] = {}
        self._served: dict[int, tuple[tuple[int, int], bool]] = {}  # client -> (key, at full resolution)
        self._served_at: dict[int, float] = {}
        self._snapshots: set[int] = set()
        self._closed = False
        self.rest_seconds = rest_seconds

    # ------------------------------------------------------------------------------------------ the writers
    @property
    def num_coeffs(self) -> int:
        """K, the number of expression coefficients."""
        return int(self._lo.shape[0])

    @property
    def version(self) -> int:
        """The shared version: a frame whose ``key[0]`` reaches it shows every change made so far."""
        with self._cond:
            return self._version

    def coefficients(self) -> np.ndarray:
        """The current coefficients [K] float32 (a copy)."""
        with self._cond:
            return self._coeffs.copy()

    def set_coefficient(self, index: int, value: float) -> tuple[int, list[str]]:
        """Set coefficient ``index`` (clamped into the training range); returns the new shared version and
        notes on clamping."""
        if not 0 <= index < self.num_coeffs:
            raise IndexError(f"coefficient {index} out of range 0..{self.num_coeffs - 1}")
        with self._cond:
            row, notes = self._clamped(self._coeffs, {index: float(value)})
            return self._bump(coeffs=row), notes

    def set_coefficients(self, values: Sequence[float]) -> tuple[int, list[str]]:
        """Set every coefficient [K] at once (clamped); returns the new shared version and clamping notes."""
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        if values.shape[0] != self.num_coeffs:
            raise ValueError(f"set_coefficients: expected {self.num_coeffs} values, got {values.shape[0]}")
        row, notes = self._clamped(values)
        with self._cond:
            return self._bump(coeffs=row), notes

    def set_frame(self, values: Sequence[float], pose: Optional[np.ndarray], fov_y: float = 0.0) -> int:
        """Show a sequence frame in one change: its coefficients [K] and, unless ``pose`` is None, its camera
        (see ``set_override``); returns the new shared version."""
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        if values.shape[0] != self.num_coeffs:
            raise ValueError(f"set_frame: expected {self.num_coeffs} values, got {values.shape[0]}")
        row = self._clamped(values)[0]
        override = None if pose is None else (np.asarray(pose, dtype=np.float64), float(fov_y))
        with self._cond:
            return self._bump(coeffs=row, override=override)

    def neutral(self) -> np.ndarray:
        """The neutral expression [K]: every coefficient 0, clamped into the training range."""
        return self._clamped(np.zeros(self.num_coeffs, dtype=np.float32))[0]

    def set_background(self, kind: str) -> int:
        """Composite over ``kind`` (one of ``BACKGROUNDS``); returns the new shared version."""
        with self._cond:
            return self._bump(background=self._check_background(kind))

    @property
    def background(self) -> str:
        """The background kind now."""
        with self._cond:
            return self._background

    def set_side(self, side: int) -> int:
        """The longest image side (pixels) rendered at rest."""
        with self._cond:
            return self._bump(side=self._check_side(side))

    @property
    def side(self) -> int:
        """The longest image side (pixels) at rest now."""
        with self._cond:
            return self._side

    def set_override(self, pose: Optional[np.ndarray], fov_y: float = 0.0) -> int:
        """Show every browser the camera ``pose`` [4, 4] with field of view ``fov_y`` (a played frame's own
        camera) instead of its own; ``None`` gives each browser its camera back."""
        with self._cond:
            return self._bump(override=None if pose is None else (np.asarray(pose, dtype=np.float64), float(fov_y)))

    def set_view(self, client: int, view: View, *, moving: bool = True) -> None:
        """Browser ``client`` looks through ``view``; ``moving`` marks its camera as in motion."""
        with self._cond:
            self._views[client] = view
            self._view_versions[client] = self._view_versions.get(client, 0) + 1
            if moving or client not in self._moved_at:
                self._moved_at[client] = time.monotonic() if moving else -np.inf
            self._cond.notify_all()

    def view(self, client: int) -> Optional[View]:
        """Browser ``client``'s last recorded view (None for an unknown browser)."""
        with self._cond:
            return self._views.get(client)

    def remove_client(self, client: int) -> None:
        """Forget browser ``client`` (it disconnected)."""
        with self._cond:
            for table in (self._views, self._view_versions, self._moved_at, self._served, self._served_at):
                table.pop(client, None)
            self._snapshots.discard(client)
            self._cond.notify_all()

    def clients(self) -> list[int]:
        """The browsers with a recorded view."""
        with self._cond:
            return list(self._views)

    def request_snapshot(self, client: int) -> None:
        """Ask for a full-resolution frame of ``client``'s view to be rendered and saved."""
        with self._cond:
            if client not in self._views:
                raise KeyError(f"no browser {client}")
            self._snapshots.add(client)
            self._cond.notify_all()

    def idle(self) -> bool:
        """Whether every browser has been shown its newest state at full resolution (no snapshot pending)."""
        with self._cond:
            if self._snapshots:
                return False
            return all(self._served.get(c) == ((self._version, self._view_versions[c]), True) for c in self._views)

    def close(self) -> None:
        """Wake the render thread for good: ``next_request`` returns None from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ----------------------------------------------------------------------------------------- the reader
    def next_request(self, timeout: Optional[float] = None) -> Optional[Request]:
        """The newest state still to be shown to some browser, waiting up to ``timeout`` seconds for one
        (None: forever); None when nothing came (or the state is closed). Browsers served longest ago come
        first; a pending snapshot comes before everything."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                request, wake = self._pick(time.monotonic())
                if request is not None:
                    return request
                now = time.monotonic()
                waits = [t - now for t in (wake, deadline) if t is not None]
                if deadline is not None and now >= deadline:
                    return None
                self._cond.wait(max(min(waits), 1e-3) if waits else None)
            return None

    def served(self, request: Request) -> None:
        """The render thread showed ``request``'s state to its browser."""
        with self._cond:
            if request.client in self._views:
                self._served[request.client] = (request.key, request.full)
                self._served_at[request.client] = time.monotonic()

    # ---------------------------------------------------------------------------------------------- inside
    def _pick(self, now: float) -> tuple[Optional[Request], Optional[float]]:
        wake = None
        for client in sorted(self._snapshots):
            self._snapshots.discard(client)
            return self._request(client, full=True, snapshot=True), None
        for client in sorted(self._views, key=lambda c: self._served_at.get(c, -np.inf)):
            key = (self._version, self._view_versions[client])
            rest_at = self._moved_at[client] + self.rest_seconds
            resting = now >= rest_at or self._override is not None
            served_key, served_full = self._served.get(client, (None, False))
            if key != served_key:
                return self._request(client, full=resting), None
            if not served_full:
                if resting:
                    return self._request(client, full=True), None
                wake = rest_at if wake is None else min(wake, rest_at)
        return None, wake

    def _request(self, client: int, *, full: bool, snapshot: bool = False) -> Request:
        view = self._views[client]
        if self._override is not None:
            view = View(pose=self._override[0], fov_y=self._override[1], aspect=view.aspect)
        return Request(client=client, key=(self._version, self._view_versions[client]), view=view,
                       coeffs=self._coeffs.copy(), background=self._background, side=self._side, full=full,
                       snapshot=snapshot)

    def _bump(self, *, coeffs: Optional[np.ndarray] = None, background: Optional[str] = None,
              side: Optional[int] = None, override=...) -> int:
        if coeffs is not None:
            self._coeffs = coeffs
        if background is not None:
            self._background = background
        if side is not None:
            self._side = side
        if override is not ...:
            self._override = override
        self._version += 1
        self._cond.notify_all()
        return self._version

    def _clamped(self, values, settings: Optional[dict[int, float]] = None) -> tuple[np.ndarray, list[str]]:
        """``values`` [K] with ``settings`` applied, clamped into the training range ([K] float32, notes)."""
        row = torch.cat([torch.ones(1), torch.as_tensor(np.asarray(values, dtype=np.float32)).reshape(-1)])[None]
        if settings is None:
            settings = {i: float(v) for i, v in enumerate(row[0, 1:].tolist())}
        row, notes = apply_settings(row, settings, self._lo, self._hi)
        return row[0, 1:].numpy().astype(np.float32), notes

    @staticmethod
    def _check_background(kind: str) -> str:
        if kind not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {kind!r}")
        return kind

    @staticmethod
    def _check_side(side: int) -> int:
        side = int(side)
        if not 16 <= side <= 4096:
            raise ValueError(f"the image side must lie in [16, 4096] pixels, got {side}")
        return side
