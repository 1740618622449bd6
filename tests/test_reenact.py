"""Reenactment and editing: frame choice, --set and --drive parsing and clamping, the novel cameras, and on the
tiny synthetic avatar: moving the jaw coefficient changes only pixels around the mouth, and a batch of frames
with different coefficients renders as the frames one by one.

The tiny avatar is trained for a few CPU steps only, too few for its jaw basis to matter. The edit test
therefore sets that basis table by hand: zero everywhere except the entries of the finest dense hash level
that points within 3 mm of the mouth touch, which get a feature vector that raises the density there (the
mouth's 3D position is triangulated from the landmarks of all frames). Moving the jaw coefficient then
changes the field only near the mouth, and the test checks that the render changes only inside the mouth
rectangle dilated by that region's projected size.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nerfbs.export import expressions as reenact
from nerfbs.export import views
from nerfbs.data.camera import project
from nerfbs.errors import UserError
from tiny import invoke, localised_jaw_checkpoint, read_rgb

NAMES = ["jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "browInnerUp"]


# ---------------------------------------------------------------------------------------------- frame choice
def test_select_frames():
    assert reenact.select_frames("test", 10, 8) == [8, 9]
    assert reenact.select_frames("train", 10, 8) == list(range(8))
    assert reenact.select_frames("all", 10, 8) == list(range(10))
    assert reenact.select_frames("2:5", 10, 8) == [2, 3, 4]
    assert reenact.select_frames(":2", 10, 8) == [0, 1]
    assert reenact.select_frames("-3:", 10, 8) == [7, 8, 9]
    assert reenact.select_frames("-1", 10, 8) == [9]
    for bad in ("5:5", "12", "x", "1:2:3"):
        with pytest.raises(UserError, match="--frames"):
            reenact.select_frames(bad, 10, 8)


def test_ping_pong_walks_back_instead_of_jumping():
    assert reenact.ping_pong([5, 6, 7], 7) == [5, 6, 7, 6, 5, 6, 7]
    assert reenact.ping_pong([4], 3) == [4, 4, 4]


# -------------------------------------------------------------------------------------------------------- --set
def test_parse_settings_by_index_and_name():
    assert reenact.parse_settings(["0=0.5", "browInnerUp=1", "eyeblinkleft=-0.25"], NAMES, 4) == {0: 0.5, 3: 1.0, 1: -0.25}
    assert reenact.parse_settings(["2=0.1", "2=0.3"], None, 4) == {2: 0.3}  # the last one wins


@pytest.mark.parametrize("item, names, match", [
    ("jawOpn=1", NAMES, "jawOpn.*jawOpen"),
    ("mouthSmile=1", NAMES, "valid names include jawOpen"),
    ("4=1", NAMES, "0 to 3"),
    ("-1=1", NAMES, "0 to 3"),
    ("jawOpen=wide", NAMES, "not a number"),
    ("jawOpen=nan", NAMES, "finite"),
    ("jawOpen", NAMES, "INDEX=VALUE"),
    ("jawOpen=1", None, "no coefficient names"),
])
def test_parse_settings_refuses(item, names, match):
    with pytest.raises(UserError, match=match):
        reenact.parse_settings([item], names, 4)


def test_apply_settings_clamps_into_the_trained_range():
    rows = torch.tensor([[1.0, 0.1, 0.2, 0.3, 0.4], [1.0, 0.5, 0.6, 0.7, 0.8]])
    lo, hi = torch.zeros(4), torch.tensor([0.9, 0.9, 0.5, 0.9])
    out, notes = reenact.apply_settings(rows, {0: 0.25, 2: 0.8}, lo, hi)
    assert torch.equal(out[:, 1], torch.full((2,), 0.25)) and torch.equal(out[:, 3], torch.full((2,), 0.5))
    assert torch.equal(out[:, [0, 2, 4]], rows[:, [0, 2, 4]]) and torch.equal(rows[0, 1], torch.tensor(0.1))
    assert len(notes) == 1 and "coefficient 2 = 0.8" in notes[0]


# ------------------------------------------------------------------------------------------------------ --drive
def _write_driver(folder, coeffs, names=None, ranges=None):
    folder.mkdir(parents=True, exist_ok=True)
    frames = [{"img_id": i, "transform_matrix": np.eye(4).tolist(), "exp_ori": list(map(float, c))}
              for i, c in reversed(list(enumerate(coeffs)))]  # stored out of order: read back by img_id
    meta = {"frames": frames, **({"exp_names": names} if names else {})}
    (folder / "transforms.json").write_text(json.dumps(meta))
    if ranges is not None:
        k = len(coeffs[0])
        np.savetxt(folder / f"min_{k}.txt", ranges[0])
        np.savetxt(folder / f"max_{k}.txt", ranges[1])
    return folder / "transforms.json"


def test_driver_rows_clamp_by_the_drivers_range_then_the_avatars(tmp_path):
    coeffs = [[0.0, 0.1, 0.9], [0.5, 0.2, 0.1], [1.0, 0.3, 0.5]]
    path = _write_driver(tmp_path / "d", coeffs, ranges=([0.1, 0.0, 0.0], [0.8, 1.0, 1.0]))
    driver = reenact.read_driver(path.parent)  # a folder works too
    np.testing.assert_allclose(driver.coeffs, coeffs)
    lo, hi = torch.zeros(3), torch.tensor([1.0, 1.0, 0.6])
    rows = reenact.driver_rows(driver, lo, hi, None)
    expected = torch.tensor([[1, 0.1, 0.1, 0.6], [1, 0.5, 0.2, 0.1], [1, 0.8, 0.3, 0.5]])
    torch.testing.assert_close(rows, expected)
    relative = reenact.driver_rows(driver, lo, hi, None, relative_to=torch.tensor([0.2, 0.2, 0.2]))
    # first training frame + (driver_t - driver_0), on the driver-clamped values, then the avatar's range
    expected = torch.tensor([[1, 0.2, 0.2, 0.2], [1, 0.6, 0.3, 0.0], [1, 0.9, 0.4, 0.0]])
    torch.testing.assert_close(relative, expected)
    without_files = reenact.read_driver(_write_driver(tmp_path / "e", coeffs))
    np.testing.assert_allclose(without_files.lo, [0.0, 0.1, 0.1]) and np.testing.assert_allclose(without_files.hi, [1.0, 0.3, 0.9])


def test_driver_names_reorder_and_mismatches_refuse(tmp_path):
    driver = reenact.read_driver(_write_driver(tmp_path / "d", [[0.1, 0.2, 0.3]], names=["b", "c", "a"]))
    lo, hi = torch.zeros(3), torch.ones(3)
    torch.testing.assert_close(reenact.driver_rows(driver, lo, hi, ["a", "b", "c"]), torch.tensor([[1, 0.3, 0.1, 0.2]]))
    with pytest.raises(UserError, match="exp_names differ"):
        reenact.driver_rows(driver, lo, hi, ["a", "b", "x"])
    with pytest.raises(UserError, match="3 expression coefficients.*trained with 4"):
        reenact.driver_rows(driver, torch.zeros(4), torch.ones(4), None)
    with pytest.raises(UserError, match="not found"):
        reenact.read_driver(tmp_path / "nowhere.json")


# ------------------------------------------------------------------------------------------------------ cameras
def _poses_around(angles_deg, distance=0.3):
    rig = views.Rig(up=torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
                    front=torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), distance=distance)
    return views.swing_poses(rig, torch.tensor(angles_deg, dtype=torch.float64))


def test_novel_cameras_look_at_the_head_and_swing_15_degrees():
    poses = _poses_around([-10.0, 0.0, 10.0])
    rig = views.rig_from_poses(poses)
    torch.testing.assert_close(rig.up, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(rig.front, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-6, rtol=0)
    assert rig.distance == pytest.approx(0.3, rel=1e-6)
    twins = views.nvs_poses(rig, 150).double()
    rot, pos = twins[:, :3, :3], twins[:, :3, 3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64).expand(150, 3, 3), atol=1e-5, rtol=0)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(150, dtype=torch.float64), atol=1e-5)
    torch.testing.assert_close(rot[:, :, 2], -pos / pos.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0)  # looks at 0
    angle = torch.rad2deg(torch.atan2(pos[:, 0], pos[:, 2]))
    expected = 15.0 - 30.0 * (torch.arange(150) % 100) / 100.0
    torch.testing.assert_close(angle, expected.double(), atol=1e-4, rtol=0)
    # a camera of the rig sees the origin at the principal point
    uv, depth = project(torch.zeros(1, 3, dtype=torch.float64), twins[37], 100.0, 100.0, 32.0, 32.0)
    torch.testing.assert_close(uv, torch.tensor([[32.0, 32.0]], dtype=torch.float64), atol=1e-4, rtol=0)
    assert float(depth) == pytest.approx(0.3, rel=1e-5)


def test_orbit_turns_all_the_way_round():
    rig = views.rig_from_poses(_poses_around([0.0]))
    orbit = views.orbit_poses(rig, 8).double()
    angle = torch.rad2deg(torch.atan2(orbit[:, 0, 3], orbit[:, 2, 3])) % 360
    torch.testing.assert_close(angle, torch.arange(8, dtype=torch.float64) * 45, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------- the jaw edit on the avatar
def test_moving_the_jaw_coefficient_changes_only_the_mouth(tiny_run, tmp_path):
    ws = tmp_path / "edited" / "checkpoints"
    ws.mkdir(parents=True)
    ckpt = ws / "jaw.pth"
    mouth, reach, avatar = localised_jaw_checkpoint(tiny_run, ckpt)
    s = avatar.subject
    frame = int(s.test_indices[0])
    lo, hi = float(avatar.coeff_min[0]), float(avatar.coeff_max[0])
    for name, value in (("closed", lo), ("open", hi)):
        result = invoke("render", ckpt, "--frames", frame, "--no-nvs", "--set", f"jawOpen={value}", "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
    closed, opened = (read_rgb(tmp_path / n / "0000.png").astype(int) for n in ("closed", "open"))
    changed = np.abs(opened - closed).max(-1) > 2  # [H, W]
    assert changed.sum() >= 3, "opening the jaw changed nothing"

    # the edited region, seen from this frame: within `reach` of the mouth point, so within
    # reach * f / (depth - reach) pixels of the mouth point's projection
    uv, depth = project(mouth[None].double(), s.poses[frame].double(), s.fx, s.fy, s.cx, s.cy)
    margin = math.ceil(reach * s.fx / (float(depth) - reach)) + 1
    x0, y0, x1, y1 = s.mouth_rects[frame].tolist()
    assert x0 - margin <= float(uv[0, 0]) <= x1 + margin and y0 - margin <= float(uv[0, 1]) <= y1 + margin
    allowed = np.zeros_like(changed)
    allowed[max(y0 - margin, 0):y1 + margin, max(x0 - margin, 0):x1 + margin] = True
    assert allowed.mean() < 0.25, "the dilated mouth region covers too much of the image to test anything"
    ys, xs = np.nonzero(changed & ~allowed)
    assert ys.size == 0, f"pixels outside the mouth changed: {list(zip(xs[:5], ys[:5]))}"

    # a batch whose frames have different coefficients renders as those frames one by one
    driver = tmp_path / "driver"
    _write_driver(driver, [[v, 0.0, 0.0, 0.0] for v in (lo, hi, hi, lo, hi)], names=None)
    for batch in (1, 4):
        result = invoke("render", ckpt, "--frames", frame, "--drive", driver / "transforms.json", "--batch", batch,
                        "--no-nvs", "--out", tmp_path / f"drive{batch}")
        assert result.exit_code == 0, result.output
    singles = [read_rgb(tmp_path / "drive1" / f"{i:04d}.png").astype(int) for i in range(5)]
    batched = [read_rgb(tmp_path / "drive4" / f"{i:04d}.png").astype(int) for i in range(5)]
    for a, b in zip(singles, batched):
        assert np.abs(a - b).max() <= 1
    assert np.abs(singles[0] - singles[1]).max() > 2 and np.abs(singles[1] - singles[2]).max() <= 1
    assert np.abs(singles[0] - closed).max() <= 2 and np.abs(singles[1] - opened).max() <= 2


def test_drive_relative_renders_one_frame_per_driving_frame(tiny_run, tmp_path):
    out = tmp_path / "rel"
    result = invoke("render", tiny_run.checkpoint, "--drive", tiny_run.subject / "transforms.json", "--drive-relative",
                    "--frames", "test", "--out", out, "--batch", 8)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "render.json").read_text())
    assert len(manifest["frames"]) == 10 and len(list(out.glob("*.png"))) == 20
    assert [f["pose_frame"] for f in manifest["frames"]][:4] == [8, 9, 8, 9]
