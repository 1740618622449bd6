"""Starting and stopping ``nerfbs view``: the avatar, the web server, the render thread and the player.

viser is an optional dependency (the ``view`` extra); without it ``open_viewer`` raises a UserError naming
the install command. viser's own console messages are kept off the console, which belongs to the CLI.
"""
from __future__ import annotations

import contextlib
import errno
import io
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from nerfbs.errors import UserError
from nerfbs.export import views
from nerfbs.export.avatar import Avatar, load_avatar
from nerfbs.viewer.camera import fov_y_of, start_camera
from nerfbs.viewer.frames import FrameRenderer, sequences
from nerfbs.viewer.loop import RenderLoop
from nerfbs.viewer.player import Player
from nerfbs.viewer.state import ViewerState

INSTALL_HINT = "pip install -e '.[view]' (or: pip install viser)"
GPU_SIDE = 512  # default longest image side (pixels) when rendering on a GPU ...
CPU_SIDE = 128  # ... and on the CPU


def default_side(avatar: Avatar) -> int:
    """The default longest image side: ``GPU_SIDE`` on CUDA, ``CPU_SIDE`` on the CPU."""
    return GPU_SIDE if avatar.device.type == "cuda" else CPU_SIDE


def import_viser() -> Any:
    """The viser module, or a UserError naming the install command."""
    try:
        import viser
    except ImportError:
        raise UserError(f"nerfbs view needs the viser package, which is not installed — {INSTALL_HINT}") from None
    return viser


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep viser's status prints (it writes through rich to stdout) off the CLI's console."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def check_port(host: str, port: int) -> None:
    """UserError unless a server can listen on ``host``:``port`` (port 0: any free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UserError(f"--host {host}: not an address of this machine ({err.strerror}) — try 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own socket: TIME_WAIT is free
        try:
            sock.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(f"--port {port}: already in use on {host} (another viewer?) — pick a free one, "
                                f"e.g. --port {port + 1}") from None
            raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror})") from None


@dataclass
class Viewer:
    """A running viewer: its ``url`` and the parts, for tests and benchmarks. ``stop`` ends it all."""

    url: str
    port: int
    avatar: Avatar
    state: ViewerState
    player: Player
    loop: RenderLoop
    server: Any
    gui: Any

    def wait(self) -> None:
        """Block until interrupted (Ctrl-C raises KeyboardInterrupt here)."""
        while True:
            time.sleep(1.0)

    def stop(self) -> None:
        """Stop playing, rendering and serving (idempotent)."""
        self.player.stop()
        self.loop.stop()
        with _quiet():
            self.server.stop()

    def __enter__(self) -> "Viewer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def open_viewer(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8080, side: int = 0,
                drive: Optional[str | Path] = None, drive_relative: bool = False,
                subject: Optional[str | Path] = None, avatar: Optional[Avatar] = None) -> Viewer:
    """Load the avatar of ``checkpoint`` (or take ``avatar``) and serve the viewer on ``host``:``port``
    (0: a free port). ``side``: the longest image side at rest (0: ``default_side``); ``drive`` /
    ``drive_relative``: a driving sequence, as ``nerfbs render --drive``; ``subject``: the avatar's subject
    folder if it moved. Every bad input is a UserError; returns once the server listens."""
    viser = import_viser()
    from nerfbs.viewer.gui import ViewerGui

    check_port(host, port)
    avatar = avatar if avatar is not None else load_avatar(checkpoint, subject_dir=subject)
    side = side or default_side(avatar)
    if not 16 <= side <= 4096:
        raise UserError(f"--resolution {side}: use 16 to 4096 pixels (0: the default)")
    played = sequences(avatar, drive, drive_relative)
    first = next(iter(played.values()))
    s = avatar.subject
    state = ViewerState(avatar.coeff_min.cpu().numpy(), avatar.coeff_max.cpu().numpy(), first.coeffs[0], side=side)
    renderer = FrameRenderer(avatar)
    fov_y = fov_y_of(s.intrinsics)
    renderer.warm_up(first.poses[0], first.coeffs[0])  # Taichi compiles on the main thread only
    start = start_camera(first.poses[0], fov_y, views.rig_from_poses(s.poses).up.numpy())

    with _quiet():
        server = viser.ViserServer(host=host, port=port, label="nerfbs view", verbose=False)
    bound = server.get_port()
    if port and bound != port:  # viser moves on to the next port when the one asked for is taken
        with _quiet():
            server.stop()
        raise UserError(f"--port {port}: already in use on {host} (another viewer?) — pick a free one")
    player = Player(state, played, fov_y)
    gui = ViewerGui(server, state, player, names=avatar.coeff_names, lo=avatar.coeff_min.cpu().numpy(),
                    hi=avatar.coeff_max.cpu().numpy(), start=start, stats=lambda: loop.stats(),
                    snapshot_dir=avatar.workspace / "view", snapshot_stem=Path(avatar.checkpoint).stem,
                    title=f"**{s.name}** · `{Path(avatar.checkpoint).name}` · step {avatar.step} · {avatar.device.type}")
    player.on_frame = gui.show_frame
    loop = RenderLoop(state, renderer, gui.send, snapshot=gui.save_snapshot, error=gui.report_error).start()
    player.show(0)
    shown = "localhost" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
    return Viewer(url=f"http://{shown}:{bound}", port=bound, avatar=avatar, state=state, player=player, loop=loop,
                  server=server, gui=gui)

