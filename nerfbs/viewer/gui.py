"""The viewer's panel in viser: what each control writes into the state, and how frames reach the browsers.

Every handler only records the newest state (``ViewerState``, ``Player``) and returns; the render thread
(``loop.RenderLoop``) does the rendering. Handlers run on viser's event loop (``async def``), so a browser's
changes are recorded in the order it made them. Changes this module makes itself (syncing the sliders to
a played frame) come back as events without a client and are ignored.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import viser

from nerfbs.images import write_png
from nerfbs.viewer.camera import StartCamera, View, pose_from_camera, start_camera
from nerfbs.viewer.loop import JPEG_QUALITY, FrameStats
from nerfbs.viewer.player import Player
from nerfbs.viewer.regions import group_coefficients
from nerfbs.viewer.state import BACKGROUNDS, Request, ViewerState

SIDES = (128, 192, 256, 384, 512, 768, 1024)  # choices of the longest image side, pixels
READOUT_SECONDS = 0.5  # the frame-rate read-out is refreshed at most this often


def _view(camera: viser.CameraHandle) -> View:
    aspect = camera.image_width / camera.image_height if camera.image_height > 0 else 1.0
    return View(pose=pose_from_camera(camera.wxyz, camera.position), fov_y=float(camera.fov), aspect=aspect)


class ViewerGui:
    """Builds the panel of ``server`` and binds it to ``state`` and ``player``.

    ``names``, ``lo``, ``hi`` [K]: the coefficients' names (or None) and training range; ``start``: where a
    browser's camera starts (and returns to); ``stats``: the render loop's read-out; ``snapshot_dir``: where
    snapshots are written; ``title`` (markdown) heads the panel."""

    def __init__(self, server: viser.ViserServer, state: ViewerState, player: Player, *, names, lo: np.ndarray,
                 hi: np.ndarray, start: StartCamera, stats: Callable[[], FrameStats], snapshot_dir: Path,
                 snapshot_stem: str, title: str = ""):
        self.server, self.state, self.player, self.start = server, state, player, start
        self._stats = stats
        self._snapshot_dir, self._snapshot_stem = Path(snapshot_dir), snapshot_stem
        self._readout_at = 0.0
        self._lock = threading.Lock()
        self._configure_scene()
        gui = server.gui
        gui.configure_theme(control_width="medium", show_share_button=False, show_logo=False,
                            brand_color=(70, 110, 180))
        if title:
            gui.add_markdown(title)
        with gui.add_folder("View"):
            sides = sorted(set(SIDES) | {state.side})
            self.resolution = gui.add_dropdown("Resolution", [str(s) for s in sides], initial_value=str(state.side),
                                               hint="Longest image side in pixels when the camera rests")
            self.background = gui.add_dropdown("Background", list(BACKGROUNDS), initial_value=state.background)
            self.readout = gui.add_text("Frames/s", initial_value="-", disabled=True)
            self.reset_camera = gui.add_button("Reset camera", hint="Back to the subject's own camera")
            self.snapshot = gui.add_button("Snapshot", hint=f"Save a PNG of this view to {self._snapshot_dir}")
        with gui.add_folder("Expression"):
            self.neutral = gui.add_button("Neutral", hint="Every coefficient at 0 (within the training range)")
            self.sliders: dict[int, viser.GuiSliderHandle] = {}
            current = state.coefficients()
            for region, members in group_coefficients(names, state.num_coeffs):
                with gui.add_folder(region, expand_by_default=region in ("Jaw", "Mouth", "Coefficients")):
                    for index, label in members:
                        low, high = float(lo[index]), float(hi[index])
                        step = max((high - low) / 100.0, 1e-4)
                        value = float(np.clip(current[index], low, high))
                        self.sliders[index] = gui.add_slider(label, low, high, step, value, disabled=high <= low)
        with gui.add_folder("Sequence", expand_by_default=False):
            self.sequence = gui.add_dropdown("Sequence", list(player.sequences), initial_value=player.name)
            self.frame = gui.add_slider("Frame", 0, max(len(player.sequence) - 1, 1), 1, 0,
                                        hint="Shows this frame's tracked expression (and camera, when followed)")
            self.frame_label = gui.add_text("Shows", initial_value=player.sequence.labels[0], disabled=True)
            self.play = gui.add_button("Play", icon=viser.Icon.PLAYER_PLAY)
            self.follow = gui.add_checkbox("Follow its cameras", initial_value=player.follow)
            self.fps = gui.add_number("Playback fps", initial_value=player.fps, min=1.0, max=60.0, step=1.0)
        self._bind()

    # ------------------------------------------------------------------------------------------ to browsers
    def send(self, request: Request, image: np.ndarray) -> None:
        """Show a rendered frame in its browser (JPEG, PNG when it has an alpha channel); refresh the read-out."""
        client = self.server.get_clients().get(request.client)
        if client is not None:
            client.scene.set_background_image(image, format="png" if image.shape[-1] == 4 else "jpeg",
                                              jpeg_quality=JPEG_QUALITY)
        now = time.monotonic()
        if request.full or now - self._readout_at >= READOUT_SECONDS:  # a frame at rest may be the last one
            self._readout_at = now
            s = self._stats()
            self.readout.value = f"{s.fps:.1f} fps, {s.size[1]}x{s.size[0]}, {s.render_ms:.0f} ms"

    def save_snapshot(self, request: Request, image: np.ndarray) -> Path:
        """Write a snapshot PNG (RGBA with the transparent background) and tell its browser where it went."""
        with self._lock:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = self._snapshot_dir / f"{self._snapshot_stem}_{stamp}.png"
            n = 1
            while path.exists():
                n += 1
                path = self._snapshot_dir / f"{self._snapshot_stem}_{stamp}_{n}.png"
            write_png(path, image)
        client = self.server.get_clients().get(request.client)
        if client is not None:
            client.add_notification("Snapshot saved", str(path), auto_close_seconds=8.0)
        return path

    def report_error(self, request: Request, error: BaseException) -> None:
        """Tell the browser whose frame failed to render why (the render loop goes on)."""
        client = self.server.get_clients().get(request.client)
        if client is not None:
            client.add_notification("Rendering failed", f"{type(error).__name__}: {error}", color="red",
                                    auto_close_seconds=10.0)

    def show_frame(self, name: str, index: int) -> None:
        """The player showed frame ``index`` of ``name``: move the frame slider and its label there and, when
        not playing, the expression sliders, and the browsers' cameras to the frame's when followed."""
        seq = self.player.sequences[name]
        self.frame.value = index
        self.frame_label.value = seq.labels[index]
        if not self.player.playing:
            self.sync_sliders()
            if self.player.follow:
                target = start_camera(seq.poses[index], self.start.fov_y, self.start.scene_up)
                for client in self.server.get_clients().values():
                    self._move_camera(client, target)

    def sync_sliders(self) -> None:
        """Set every expression slider to the state's coefficient."""
        values = self.state.coefficients()
        for index, slider in self.sliders.items():
            slider.value = float(values[index])

    # --------------------------------------------------------------------------------------------- inside
    def _configure_scene(self) -> None:
        s, scene = self.start, self.server.scene
        scene.set_up_direction(tuple(s.scene_up))
        cam = self.server.initial_camera
        cam.position, cam.look_at, cam.up, cam.fov = tuple(s.position), tuple(s.look_at), tuple(s.up), s.fov_y
        scene.world_axes.visible = False

    @staticmethod
    def _move_camera(client: viser.ClientHandle, target: StartCamera) -> None:
        with client.atomic():
            client.camera.fov = target.fov_y
            client.camera.position = tuple(target.position)
            client.camera.look_at = tuple(target.look_at)
            client.camera.up_direction = tuple(target.up)

    def _pause(self) -> None:
        if self.player.playing:
            self.player.pause()  # shows the frame again: sliders (and cameras) follow in show_frame
            self.play.label, self.play.icon = "Play", viser.Icon.PLAYER_PLAY

    def _bind(self) -> None:
        state, player = self.state, self.player

        @self.server.on_client_connect
        async def _(client: viser.ClientHandle) -> None:
            @client.camera.on_update
            async def _(camera: viser.CameraHandle) -> None:
                state.set_view(camera.client.client_id, _view(camera))

            state.set_view(client.client_id, _view(client.camera), moving=False)

        @self.server.on_client_disconnect
        async def _(client: viser.ClientHandle) -> None:
            state.remove_client(client.client_id)

        @self.resolution.on_update
        async def _(event) -> None:
            state.set_side(int(event.target.value))

        @self.background.on_update
        async def _(event) -> None:
            state.set_background(event.target.value)

        @self.reset_camera.on_click
        async def _(event) -> None:
            if event.client is not None:
                self._move_camera(event.client, self.start)

        @self.snapshot.on_click
        async def _(event) -> None:
            if event.client_id is not None:
                state.request_snapshot(event.client_id)

        @self.sequence.on_update
        async def _(event) -> None:
            if event.client is None:
                return
            self._pause()
            self.frame.max = max(len(player.sequences[event.target.value]) - 1, 1)
            player.select(event.target.value)

        @self.frame.on_update
        async def _(event) -> None:
            if event.client is None:
                return
            index = int(event.target.value)
            self._pause()
            player.show(index)

        @self.play.on_click
        async def _(event) -> None:
            if player.playing:
                self._pause()
            else:
                player.play()
                self.play.label, self.play.icon = "Pause", viser.Icon.PLAYER_PAUSE

        @self.follow.on_update
        async def _(event) -> None:
            if event.client is not None:
                player.set_follow(bool(event.target.value))

        @self.fps.on_update
        async def _(event) -> None:
            player.fps = float(event.target.value)

        @self.neutral.on_click
        async def _(event) -> None:
            self._pause()
            state.set_coefficients(state.neutral())
            self.sync_sliders()

        def slider_handler(index: int):
            async def handler(event) -> None:
                if event.client is None:
                    return
                value = float(event.target.value)
                self._pause()  # (resets the sliders to the paused frame's expression)
                state.set_coefficient(index, value)
                self.sliders[index].value = value
            return handler

        for index, slider in self.sliders.items():
            slider.on_update(slider_handler(index))
