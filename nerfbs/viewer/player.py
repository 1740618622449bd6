"""Playing a sequence in the viewer: its frames' coefficients, and their cameras when followed, in time.

While playing with ``follow``, every browser sees each frame from the frame's own camera (the state's
override); paused, the browsers' own cameras rule again (the panel moves them to the frame's camera when
followed, so the user orbits on from there)."""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from nerfbs.viewer.frames import Sequence
from nerfbs.viewer.state import ViewerState

DEFAULT_FPS = 25.0


class Player:
    """Shows frames of one of ``sequences`` through ``state``; ``play`` advances them ``fps`` times a second
    on a thread of its own (looping), ``pause`` stops there. ``fov_y`` is the field of view (radians) of the
    frames' cameras; ``follow`` plays each frame from its own camera (else each browser keeps its own).
    ``on_frame(name, index)`` hears of every frame shown."""

    def __init__(self, state: ViewerState, sequences: dict[str, Sequence], fov_y: float, *,
                 on_frame: Optional[Callable[[str, int], None]] = None, fps: float = DEFAULT_FPS):
        if not sequences:
            raise ValueError("Player: no sequence to play")
        self.state, self.sequences, self.fov_y = state, sequences, fov_y
        self.name = next(iter(sequences))
        self.index = 0
        self.follow = True
        self.fps = fps
        self.on_frame = on_frame
        self._lock = threading.RLock()
        self._playing = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def sequence(self) -> Sequence:
        """The sequence being shown."""
        return self.sequences[self.name]

    @property
    def playing(self) -> bool:
        """Whether frames advance by themselves."""
        return self._playing.is_set()

    def select(self, name: str) -> None:
        """Switch to sequence ``name`` at its first frame (shown)."""
        if name not in self.sequences:
            raise KeyError(f"no sequence {name!r}; there are {', '.join(self.sequences)}")
        with self._lock:
            self.name = name
            self.show(0)

    def show(self, index: int) -> int:
        """Show frame ``index`` (wrapped into the sequence) of the current sequence; returns the shared version."""
        with self._lock:
            seq = self.sequence
            self.index = index % len(seq)
            pose = seq.poses[self.index] if self.follow and self.playing else None
            version = self.state.set_frame(seq.coeffs[self.index], pose, self.fov_y)
            name, shown = self.name, self.index
        if self.on_frame is not None:
            self.on_frame(name, shown)
        return version

    def set_follow(self, follow: bool) -> None:
        """Play frames from their own cameras (True) or from each browser's (False); the current frame is
        shown again."""
        with self._lock:
            self.follow = follow
            self.show(self.index)

    def play(self) -> None:
        """Advance ``fps`` frames a second from the current one, looping, until ``pause``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nerfbs-viewer-player", daemon=True)
            self._thread.start()
        self._playing.set()

    def pause(self) -> None:
        """Stop at the current frame, shown again from the browsers' own cameras."""
        with self._lock:
            if self._playing.is_set():
                self._playing.clear()
                self.show(self.index)

    def stop(self) -> None:
        """End the playing thread for good."""
        self._stop.set()
        self._playing.set()  # wake the thread so that it sees the stop
        if self._thread is not None:
            self._thread.join(5.0)
        self._playing.clear()

    def _run(self) -> None:
        next_time = time.monotonic()
        while not self._stop.is_set():
            if not self._playing.is_set():
                self._playing.wait()
                next_time = time.monotonic()
                continue
            next_time += 1.0 / max(self.fps, 1e-3)
            delay = next_time - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_time = time.monotonic()  # behind: do not try to catch up
            with self._lock:  # (a pause between the check and the frame would show a played frame last)
                if self._playing.is_set() and not self._stop.is_set():
                    self.show(self.index + 1)
