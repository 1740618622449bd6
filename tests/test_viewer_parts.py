"""The viewer's parts without a web server: camera conversion, region groups, the newest-state record, the
one render thread (never more than the newest state waiting), the player and the dataset backdrop."""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from nerfbs.viewer import camera as vcam
from nerfbs.viewer.frames import Sequence, backdrop
from nerfbs.viewer.loop import MOVING_MIN_SIDE, RenderLoop
from nerfbs.viewer.player import Player
from nerfbs.viewer.regions import group_coefficients
from nerfbs.viewer.state import ViewerState


def _random_rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


# ---------------------------------------------------------------------------------------------------- camera
@pytest.mark.parametrize("seed", range(6))
def test_quaternions_round_trip_and_match_viser(seed):
    rot = _random_rotation(seed)
    wxyz = vcam.wxyz_from_rotation(rot)
    assert wxyz[0] >= 0 and np.isclose(np.linalg.norm(wxyz), 1.0)
    np.testing.assert_allclose(vcam.rotation_from_wxyz(wxyz), rot, atol=1e-10)
    viser_tf = pytest.importorskip("viser.transforms")
    np.testing.assert_allclose(viser_tf.SO3(wxyz).as_matrix(), rot, atol=1e-10)  # viser reads it the same way


def test_intrinsics_keep_the_field_of_view_and_aspect():
    cam = vcam.intrinsics_for(0.6, 1.6, 512)
    assert (cam.height, cam.width) == (320, 512)
    assert math.isclose(vcam.fov_y_of(cam), 0.6, rel_tol=1e-12)
    assert (cam.cx, cam.cy) == (256, 160) and cam.fx == cam.fy
    tall = vcam.intrinsics_for(0.6, 0.5, 200)
    assert (tall.height, tall.width) == (200, 100)
    with pytest.raises(ValueError):
        vcam.intrinsics_for(4.0, 1.0, 64)


def test_the_start_camera_is_the_dataset_camera():
    pose = np.eye(4)
    pose[:3, :3] = _random_rotation(3)
    pose[:3, 3] = -0.3 * pose[:3, 2] + 0.01 * pose[:3, 0]  # looks (almost) at the origin from 0.3 away
    start = vcam.start_camera(pose, 0.5, np.array([0.0, 1.0, 0.0]))
    np.testing.assert_allclose(start.position, pose[:3, 3])
    forward = (start.look_at - start.position) / np.linalg.norm(start.look_at - start.position)
    np.testing.assert_allclose(forward, pose[:3, 2], atol=1e-12)
    assert np.linalg.norm(start.look_at) < 0.011  # the point of the axis nearest the head
    np.testing.assert_allclose(start.up, -pose[:3, 1])
    assert math.isclose(start.fov_y, 0.5, rel_tol=1e-12)


# --------------------------------------------------------------------------------------------------- regions
def test_sliders_are_grouped_by_face_region():
    names = ["jawOpen", "eyeBlinkLeft", "browInnerUp", "mouthSmileLeft", "cheekPuff", "noseSneerLeft", "EyeWideRight",
             "extra0"]
    groups = dict(group_coefficients(names, len(names)))
    assert list(groups) == ["Brows", "Eyes", "Cheeks", "Nose", "Jaw", "Mouth", "Other"]
    assert groups["Eyes"] == [(1, "eyeBlinkLeft"), (6, "EyeWideRight")]
    assert groups["Jaw"] == [(0, "jawOpen")] and groups["Other"] == [(7, "extra0")]
    assert group_coefficients(None, 3) == [("Coefficients", [(0, "0"), (1, "1"), (2, "2")])]
    assert group_coefficients(["a", "b"], 3) == [("Coefficients", [(0, "0"), (1, "1"), (2, "2")])]  # names mismatch


# ----------------------------------------------------------------------------------------------------- state
def _state(**kw) -> ViewerState:
    return ViewerState(np.zeros(3), np.array([1.0, 0.5, 1.0]), np.array([0.2, 0.2, 0.2]), side=64, **kw)


def _view(x: float = 0.0, aspect: float = 1.0) -> vcam.View:
    pose = np.eye(4)
    pose[0, 3] = x
    return vcam.View(pose=pose, fov_y=0.5, aspect=aspect)


def test_state_clamps_into_the_training_range():
    state = _state()
    _, notes = state.set_coefficient(1, 0.9)
    assert state.coefficients()[1] == pytest.approx(0.5) and "outside the trained range" in notes[0]
    state.set_coefficients([-1.0, 0.25, 2.0])
    np.testing.assert_allclose(state.coefficients(), [0.0, 0.25, 1.0])
    np.testing.assert_allclose(state.neutral(), [0.0, 0.0, 0.0])
    with pytest.raises(IndexError):
        state.set_coefficient(3, 0.0)
    with pytest.raises(ValueError):
        state.set_background("green")


def test_a_moving_camera_gets_a_quick_frame_then_the_full_one_at_rest():
    state = _state(rest_seconds=0.3)
    state.set_view(1, _view())
    first = state.next_request(timeout=1.0)
    assert first is not None and not first.full
    state.served(first)
    assert state.next_request(timeout=0.05) is None  # still moving: nothing new to render yet
    start = time.monotonic()
    rested = state.next_request(timeout=2.0)
    assert rested is not None and rested.full and rested.key == first.key
    assert time.monotonic() - start > 0.1
    state.served(rested)
    assert state.next_request(timeout=0.05) is None  # shown at full resolution: nothing left to do

    version, _ = state.set_coefficient(0, 0.7)  # an expression change at rest renders at full resolution
    request = state.next_request(timeout=1.0)
    assert request.full and request.key[0] == version and request.coeffs[0] == pytest.approx(0.7)


def test_snapshots_come_first_and_a_played_camera_overrides_every_browser():
    state = _state()
    state.set_view(1, _view(0.0, aspect=2.0), moving=False)
    state.set_view(2, _view(0.1), moving=False)
    state.request_snapshot(2)
    request = state.next_request(timeout=1.0)
    assert request.client == 2 and request.snapshot and request.full
    state.served(request)
    pose = np.eye(4)
    pose[2, 3] = -0.3
    state.set_frame([0.1, 0.1, 0.1], pose, 0.7)
    seen = {}
    for _ in range(2):
        r = state.next_request(timeout=1.0)
        seen[r.client] = r
        state.served(r)
    assert set(seen) == {1, 2}
    for client, aspect in ((1, 2.0), (2, 1.0)):
        np.testing.assert_allclose(seen[client].view.pose, pose)
        assert seen[client].view.fov_y == 0.7 and seen[client].view.aspect == aspect  # each browser's own canvas
    state.set_override(None)
    r = state.next_request(timeout=1.0)
    np.testing.assert_allclose(r.view.pose, state.view(r.client).pose)


# ------------------------------------------------------------------------------------------------------ loop
def test_the_render_loop_renders_only_the_newest_state():
    state = _state()
    rendered, sent = [], []
    lock = threading.Lock()

    def render(pose, camera, coeffs, background):
        time.sleep(0.1)  # a slow renderer
        with lock:
            rendered.append(float(coeffs[0]))
        return np.zeros((camera.height, camera.width, 3), np.uint8)

    loop = RenderLoop(state, render, lambda request, image: sent.append((request.key, image.shape))).start()
    try:
        state.set_view(1, _view(), moving=False)
        values = np.linspace(0.0, 1.0, 40)
        for v in values:  # 40 slider moves in about 0.4 s: about 4 renders' time
            state.set_coefficient(0, float(v))
            time.sleep(0.01)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and (not rendered or rendered[-1] != 1.0):
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        loop.stop()
    assert rendered[-1] == 1.0  # the last state was shown ...
    assert len(rendered) <= 10  # ... without rendering the 40 states in between
    assert len(sent) == len(rendered) and all(shape == (64, 64, 3) for _, shape in sent)
    stats = loop.stats()
    assert stats.frames == len(sent) and stats.size == (64, 64) and stats.render_ms >= 100


def test_the_moving_resolution_follows_the_measured_throughput():
    loop = RenderLoop(_state(), lambda *a: None, lambda *a: None, moving_fps=10.0)
    assert loop.moving_side(512, 1.0) == 256  # before any measurement: half
    loop._pixels_per_second = 512 * 512 * 10.0  # renders the full size 10 times a second
    assert loop.moving_side(512, 1.0) == 512
    loop._pixels_per_second = 256 * 256 * 10.0
    assert loop.moving_side(512, 1.0) == 256
    loop._pixels_per_second = 10.0
    assert loop.moving_side(512, 1.0) == MOVING_MIN_SIDE


# ---------------------------------------------------------------------------------------------------- player
def test_the_player_plays_frames_with_their_cameras_in_time():
    state = _state()
    state.set_view(1, _view(0.5), moving=False)
    poses = np.stack([np.eye(4)] * 4)
    poses[:, 2, 3] = [-0.1, -0.2, -0.3, -0.4]
    seq = Sequence("held-out", poses, np.linspace(0, 1, 12, dtype=np.float32).reshape(4, 3), [f"frame {i}" for i in range(4)])
    shown = []
    player = Player(state, {"held-out": seq}, 0.6, on_frame=lambda name, i: shown.append((i, player.playing)), fps=20.0)
    player.show(2)  # paused: the frame's expression from the browser's own camera
    r = state.next_request(timeout=1.0)
    np.testing.assert_allclose(r.view.pose, _view(0.5).pose)
    np.testing.assert_allclose(r.coeffs, np.clip(seq.coeffs[2], 0, [1.0, 0.5, 1.0]))
    state.served(r)
    player.play()
    time.sleep(0.5)
    playing_requests = state.next_request(timeout=1.0)
    player.pause()
    player.stop()
    frames = [i for i, playing in shown if playing]
    assert 4 <= len(frames) <= 14 and frames[:3] == [3, 0, 1]  # about 20 a second, looping
    assert shown[-1] == (frames[-1], False)  # paused: the last frame shown again, from the browsers' cameras
    assert any(np.allclose(playing_requests.view.pose, p) for p in poses)  # played from the frames' own cameras
    assert playing_requests.view.fov_y == 0.6
    r = state.next_request(timeout=1.0)
    np.testing.assert_allclose(r.view.pose, _view(0.5).pose)
    player.set_follow(False)
    player.play()
    time.sleep(0.2)
    r = state.next_request(timeout=1.0)
    player.stop()
    np.testing.assert_allclose(r.view.pose, _view(0.5).pose)  # not followed: the browser's camera throughout


# -------------------------------------------------------------------------------------------------- backdrop
def test_the_backdrop_keeps_the_dataset_view_in_the_middle():
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    wide = backdrop(image, 64, 100)
    assert wide.shape == (64, 100, 3)
    np.testing.assert_array_equal(wide[:, 18:82], image)
    np.testing.assert_array_equal(wide[:, 0], image[:, 0])  # edges repeated
    narrow = backdrop(image, 64, 32)
    np.testing.assert_array_equal(narrow, image[:, 16:48])
