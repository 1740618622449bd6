"""``nerfbs view`` on the tiny avatar, with a websocket client speaking viser's protocol as the browser does:
the first frame is the dataset camera's render, the jawOpen slider changes the mouth and nothing else, a
camera moved sideways shifts the silhouette, and the panel's other controls (resolution, snapshot, frame,
play) do what they say. Bad inputs end in one line; Ctrl-C ends the command cleanly.

The avatar is the tiny run with its jaw basis set by hand near the mouth (``tiny.localised_jaw_checkpoint``:
a few training steps leave the jaw basis too weak to test)."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("viser")

from nerfbs.data.camera import project  # noqa: E402
from nerfbs.export.job import to_pixels  # noqa: E402
from nerfbs.render.image import render_image, render_subject_frame  # noqa: E402
from nerfbs.viewer.loop import MOVING_FPS  # noqa: E402
from nerfbs.viewer.server import open_viewer  # noqa: E402
from nerfbs.viewer.state import REST_SECONDS  # noqa: E402
from tiny import invoke, localised_jaw_checkpoint, one_line_error  # noqa: E402
from viser_client import ViserTestClient  # noqa: E402

SIDE = 64  # the tiny subject's size: the viewer's frame at the start camera is the dataset frame


@pytest.fixture(scope="module")
def jaw_avatar(tiny_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("viewer") / "checkpoints"
    folder.mkdir()
    mouth, reach, _ = localised_jaw_checkpoint(tiny_run, folder / "jaw.pth")
    return folder / "jaw.pth", mouth, reach


@pytest.fixture(scope="module")
def viewer(jaw_avatar):
    with open_viewer(jaw_avatar[0], port=0, side=SIDE) as running:
        yield running


def _shown(viewer, client: ViserTestClient, sent_before: int, changed=lambda: True, timeout: float = 60.0,
           quiet: float = 0.5) -> np.ndarray:
    """The last image once the viewer has taken a change (``changed()``), shown it at full resolution, and the
    client has received the frames sent since ``sent_before`` (the loop's frame count when it connected): every one
    of them, or, since viser's message buffer keeps only the newest of the background images queued before a flush,
    fewer, with neither a frame sent nor an image received for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    seen, since = None, time.monotonic()
    while time.monotonic() < deadline:
        counts = (viewer.loop.stats().frames - sent_before, len(client.images))
        if counts != seen:
            seen, since = counts, time.monotonic()
        if changed() and viewer.state.idle() and 0 < counts[1] <= counts[0]:
            if counts[1] == counts[0] or time.monotonic() - since > quiet:
                return client.images[-1]
        time.sleep(0.02)
    raise TimeoutError(f"the viewer did not settle ({len(client.images)} images, {viewer.loop.stats()})")


def _start(client: ViserTestClient, viewer, size: int = SIDE) -> np.ndarray:
    start = viewer.gui.start
    pose = viewer.player.sequence.poses[0]
    client.camera(pose, start.fov_y, size, size, start.look_at)
    return pose


def test_a_browser_sees_the_avatar_and_moves_the_jaw_and_the_camera(viewer, jaw_avatar):
    ckpt, mouth, reach = jaw_avatar
    avatar, s = viewer.avatar, viewer.avatar.subject
    frame = int(s.test_indices[0])
    sent_before = viewer.loop.stats().frames
    with ViserTestClient(viewer.url) as client:
        pose = _start(client, viewer)
        first = _shown(viewer, client, sent_before, lambda: bool(viewer.state.clients()))

        # the start: the first held-out frame from its own camera, as `nerfbs render` draws it
        truth = render_subject_frame(avatar.field, avatar.grid, avatar.config.render, s, frame)
        assert first.shape == (SIDE, SIDE, 3)
        rgb = (truth.rgb[0].clamp(0, 1) * 255).round().cpu().numpy()
        assert np.abs(first.astype(float) - rgb).mean() < 4.0  # JPEG's loss only
        np.testing.assert_allclose(pose, s.poses[frame].double().cpu().numpy(), atol=1e-6)

        # transparent background: lossless PNG frames with the opacity as alpha, the same pixels exactly
        client.set_gui("Background", "transparent")
        clear = _shown(viewer, client, sent_before, lambda: viewer.state.background == "transparent")
        alone = render_image(avatar.field, avatar.grid, avatar.config.render, s.poses[frame], s.intrinsics,
                             s.coeffs[frame], torch.zeros(SIDE, SIDE, 3))
        expected = to_pixels(alone.rgb[0], alone.opacity[0], True).cpu().numpy().astype(int)
        assert clear.shape == (SIDE, SIDE, 4) and np.abs(clear.astype(int) - expected).max() <= 1

        lo, hi = float(avatar.coeff_min[0]), float(avatar.coeff_max[0])
        client.set_gui("jawOpen", lo)
        closed = _shown(viewer, client, sent_before, lambda: abs(viewer.state.coefficients()[0] - lo) < 1e-4)
        client.set_gui("jawOpen", hi)
        opened = _shown(viewer, client, sent_before, lambda: abs(viewer.state.coefficients()[0] - hi) < 1e-4)
        closed, opened = closed.astype(int), opened.astype(int)

        # the jaw changes the mouth and nothing else (the region the edit reaches, seen from this camera)
        changed = np.abs(opened - closed).max(-1) > 2
        assert changed.sum() >= 3, "opening the jaw changed nothing"
        uv, depth = project(mouth[None].double(), s.poses[frame].double().cpu(), s.fx, s.fy, s.cx, s.cy)
        margin = math.ceil(reach * s.fx / (float(depth) - reach)) + 1
        x0, y0, x1, y1 = s.mouth_rects[frame].tolist()
        allowed = np.zeros_like(changed)
        allowed[max(y0 - margin, 0):y1 + margin, max(x0 - margin, 0):x1 + margin] = True
        assert not (changed & ~allowed).any(), "the jaw changed pixels away from the mouth"

        # the camera moves 1.5 cm to its right: the head moves left in the image, by f * shift / depth
        shift = 0.015
        moved = pose.copy()
        moved[:3, 3] += shift * pose[:3, 0]
        count = len(client.images)
        # (a busy CPU must not take the first frame for one at rest, and a 64x64 frame renders fast enough to
        # be drawn at full size while moving: ask for 1000 frames/s while moving, which no side gives)
        viewer.state.rest_seconds, viewer.loop.moving_fps = 1.5, 1000.0
        client.camera(moved, viewer.gui.start.fov_y, SIDE, SIDE, viewer.gui.start.look_at + shift * pose[:3, 0])
        after = _shown(viewer, client, sent_before,  # the full-resolution frame once the camera rests
                       lambda: np.allclose(viewer.state.view(viewer.state.clients()[0]).pose, moved, atol=1e-6))
        viewer.state.rest_seconds, viewer.loop.moving_fps = REST_SECONDS, MOVING_FPS
        assert client.images[count].shape[0] < SIDE, "no quick low-resolution frame while moving"
        expected = s.fx * shift / float(-pose[:3, 3] @ pose[:3, 2])

        def centre_x(image):
            alpha = image[..., 3].astype(float)
            return (alpha * np.arange(image.shape[1])).sum() / alpha.sum()

        moved_by = centre_x(after) - centre_x(opened)
        assert -1.4 * expected < moved_by < -0.6 * expected, (moved_by, expected)


def test_the_panel_controls(viewer, jaw_avatar):
    ckpt = jaw_avatar[0]
    sent_before = viewer.loop.stats().frames
    with ViserTestClient(viewer.url) as client:
        _start(client, viewer, size=96)
        _shown(viewer, client, sent_before, lambda: bool(viewer.state.clients()))
        client.set_gui("Resolution", "128")
        big = _shown(viewer, client, sent_before, lambda: viewer.state.side == 128)
        assert big.shape[:2] == (128, 128)

        # snapshot: a PNG of this view at full resolution, and a notification naming it
        client.set_gui("Snapshot", True)
        deadline = time.monotonic() + 30
        folder = ckpt.parent.parent / "view"
        while time.monotonic() < deadline and not list(folder.glob("*.png")):
            time.sleep(0.1)
        shots = list(folder.glob("*.png"))
        assert len(shots) == 1 and shots[0].name.startswith("jaw_")
        import cv2

        assert cv2.imread(str(shots[0])).shape[:2] == (128, 128)
        time.sleep(0.5)
        notes = [m for m in client.messages if m["type"] == "NotificationShowMessage"]
        assert notes and str(shots[0]) in notes[-1]["props"]["body"]

        # a frame of the sequence: its tracked expression
        seq = viewer.player.sequence
        client.set_gui("Frame", 1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and viewer.player.index != 1:
            time.sleep(0.05)
        np.testing.assert_allclose(viewer.state.coefficients(), seq.coeffs[1], atol=1e-6)
        time.sleep(0.5)  # followed: the browser's camera is moved to the frame's
        moves = [m for m in client.messages if m["type"] == "SetCameraPositionMessage"]
        assert moves and np.allclose(moves[-1]["position"], seq.poses[1][:3, 3], atol=1e-6)
        client.set_gui("Neutral", True)
        time.sleep(0.5)
        np.testing.assert_allclose(viewer.state.coefficients(), viewer.state.neutral())

        # play: the frame advances by itself; pressed again, it stops
        client.set_gui("Playback fps", 10.0)
        client.set_gui("Play", True)
        time.sleep(1.0)
        assert viewer.player.playing
        client.set_gui("Play", True)
        time.sleep(0.3)
        assert not viewer.player.playing
        frame_uuid = client.gui_uuid("Frame")
        moves = [m for m in client.messages if m["type"] == "GuiUpdateMessage" and m["uuid"] == frame_uuid]
        assert len(moves) >= 3  # the frame slider followed the playback
        client.set_gui("Resolution", str(SIDE))
        _shown(viewer, client, sent_before, lambda: viewer.state.side == SIDE)


def test_a_driving_sequence_plays_as_render_drive(viewer, tmp_path):
    from nerfbs.viewer.frames import sequences

    avatar = viewer.avatar
    k = avatar.num_coeffs
    driver = tmp_path / "driver" / "transforms.json"
    driver.parent.mkdir()
    coeffs = [[0.0] * k, [5.0] * k, [-5.0] * k]  # out of every range: clamped
    driver.write_text(json.dumps({"frames": [{"img_id": i, "exp_ori": c} for i, c in enumerate(coeffs)],
                                  "exp_names": avatar.coeff_names}))
    played = sequences(avatar, drive=driver)
    assert list(played) == ["held-out", "training", "driven"]
    driven = played["driven"]
    assert len(driven) == 3 and driven.labels == ["driver frame 0", "driver frame 1", "driver frame 2"]
    lo, hi = avatar.coeff_min.cpu().numpy(), avatar.coeff_max.cpu().numpy()
    assert (driven.coeffs >= lo - 1e-6).all() and (driven.coeffs <= hi + 1e-6).all()
    held_out = [int(i) for i in avatar.subject.test_indices]
    np.testing.assert_allclose(driven.poses[0], avatar.subject.poses[held_out[0]].double().cpu().numpy(), atol=1e-6)


# ------------------------------------------------------------------------------------------------- the command
def test_bad_view_inputs_are_one_line_errors(tiny_run, tmp_path, monkeypatch):
    assert "no such checkpoint" in one_line_error(invoke("view", tmp_path / "nope.pth", "--port", 0))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a checkpoint" * 10)
    assert "not a readable checkpoint" in one_line_error(invoke("view", corrupt, "--port", 0))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = one_line_error(invoke("view", tiny_run.checkpoint, "--port", port))
    assert f"--port {port}" in message and "in use" in message
    assert "--host" in one_line_error(invoke("view", tiny_run.checkpoint, "--host", "no-such-host.invalid", "--port", 0))
    driver = tmp_path / "driver" / "transforms.json"
    driver.parent.mkdir()
    driver.write_text(json.dumps({"frames": [{"img_id": 0, "exp_ori": [0.1] * 6}]}))
    message = one_line_error(invoke("view", tiny_run.checkpoint, "--drive", driver, "--port", 0))
    assert "6 expression coefficients" in message and "trained with 4" in message
    monkeypatch.setitem(sys.modules, "viser", None)  # as if it were not installed
    assert "pip install" in one_line_error(invoke("view", tiny_run.checkpoint, "--port", 0))


def test_view_prints_the_url_serves_the_page_and_stops_on_ctrl_c(tiny_run):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    # SIGINT back to its default in the child: a test run started in the background (``pytest &``) ignores it, and
    # Python keeps an ignored SIGINT ignored, so Ctrl-C would never reach the viewer.
    proc = subprocess.Popen([sys.executable, str(root / "cli.py"), "view", str(tiny_run.checkpoint), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = [proc.stdout.readline()]  # (Taichi prints a banner first)
        while lines[-1] and "http://" not in lines[-1]:
            lines.append(proc.stdout.readline())
        line = lines[-1]
        assert "http://127.0.0.1:" in line, "".join(lines)
        url = line[line.index("http://"):].split()[0]
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "<html" in page.lower()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)  # a loaded 2-core machine may take a while to stop
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped" in out
