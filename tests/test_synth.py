"""The synthetic talking head: determinism, layout, masks, landmarks and what each coefficient does."""
import json

import cv2
import numpy as np
import pytest
import torch

from nerfbs.data.subject import load_subject
from nerfbs.errors import UserError
from nerfbs.synth.generate import (ARKIT_BY_PRIORITY, coefficient_names, coefficient_tracks, head_motion, make_scene,
                          render_frames, synthesize, tracked_coefficient_tracks, write_preview)

FRAMES, SIZE = 12, 48


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth") / "s", frames=FRAMES, size=SIZE, coeffs=52, seed=5,
                      device="cpu")


def test_layout_is_complete(subject_dir):
    meta = json.loads((subject_dir / "transforms.json").read_text())
    assert (meta["h"], meta["w"]) == (SIZE, SIZE) and len(meta["frames"]) == FRAMES
    assert meta["exp_names"] == ARKIT_BY_PRIORITY
    for f in meta["frames"]:
        i = f["img_id"]
        assert len(f["exp_ori"]) == 52 and np.array(f["transform_matrix"]).shape == (4, 4)
        assert min(f["exp_ori"]) >= 0 and max(f["exp_ori"]) <= 1
        for path in (f"head_imgs/{i}.jpg", f"ori_imgs/{i}.jpg", f"parsing/{i}.png"):
            assert cv2.imread(str(subject_dir / path)).shape == (SIZE, SIZE, 3)
        assert np.loadtxt(subject_dir / f"ori_imgs/{i}.lms").shape == (478, 2)
    assert cv2.imread(str(subject_dir / "bc.jpg")).shape == (SIZE, SIZE, 3)


def test_deterministic_for_a_seed(subject_dir, tmp_path):
    again = synthesize(tmp_path / "again", frames=FRAMES, size=SIZE, coeffs=52, seed=5, device="cpu")
    assert (again / "transforms.json").read_text() == (subject_dir / "transforms.json").read_text()
    for name in ("parsing/7.png", "head_imgs/7.jpg", "ori_imgs/7.lms"):
        assert (again / name).read_bytes() == (subject_dir / name).read_bytes()
    other = coefficient_tracks(coefficient_names(52), FRAMES, seed=6)
    assert not np.array_equal(other, coefficient_tracks(coefficient_names(52), FRAMES, seed=5))


def test_refuses_a_non_empty_folder(subject_dir):
    with pytest.raises(UserError, match="not empty"):
        synthesize(subject_dir, frames=2, size=32)


def tracked_transforms(names: list[str], exp: list[list[float]]) -> str:
    """A transforms.json text of a tracked subject with these coefficient names and per-frame coefficients."""
    frames = [{"img_id": i, "transform_matrix": np.eye(4).tolist(), "exp_ori": e} for i, e in enumerate(exp)]
    return json.dumps({"h": 32, "w": 32, "fx": 30, "fy": 30, "cx": 16, "cy": 16, "exp_names": names,
                       "frames": frames[::-1]})  # stored out of img_id order


def test_tracked_tracks_are_looked_up_by_name_and_resampled(tmp_path):
    names = ["mouthSmileLeft", "_neutral", "jawOpen"]  # stored order differs from the synthetic order
    exp = [[0.2, 0.9, 0.0], [0.6, 0.9, 1.4], [0.4, 0.9, 0.5]]
    (tmp_path / "transforms.json").write_text(tracked_transforms(names, exp))
    tracks = tracked_coefficient_tracks(tmp_path, ["jawOpen", "mouthSmileLeft"], 5)
    assert tracks.shape == (5, 2) and tracks.dtype == np.float32
    assert np.allclose(tracks[:, 0], [0.0, 0.5, 1.0, 0.75, 0.5])  # 1.4 clipped to 1; halfway points interpolated
    assert np.allclose(tracks[:, 1], [0.2, 0.4, 0.6, 0.5, 0.4])
    with pytest.raises(UserError, match="no coefficient named eyeBlinkLeft"):
        tracked_coefficient_tracks(tmp_path, ["eyeBlinkLeft"], 5)
    with pytest.raises(UserError, match="not found"):
        tracked_coefficient_tracks(tmp_path / "missing", ["jawOpen"], 5)


def test_synth_cli_takes_the_tracks_from_a_tracked_subject(tmp_path):
    from tiny import invoke, one_line_error

    names = coefficient_names(2)
    (tmp_path / "tracked").mkdir()
    (tmp_path / "tracked" / "transforms.json").write_text(tracked_transforms(names[::-1], [[0.1, 0.8], [0.3, 0.4]]))
    result = invoke("synth", tmp_path / "s", "--frames", 3, "--size", 32, "--coeffs", 2,
                    "--tracks-from", tmp_path / "tracked")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "s" / "transforms.json").read_text())
    assert np.allclose([f["exp_ori"] for f in meta["frames"]], [[0.8, 0.1], [0.6, 0.2], [0.4, 0.3]])
    error = one_line_error(invoke("synth", tmp_path / "t", "--coeffs", 3, "--tracks-from", tmp_path / "tracked"))
    assert "no coefficient named" in error and "transforms.json" in error
    assert not (tmp_path / "t").exists()


def test_given_tracks_drive_the_subject(tmp_path):
    tracks = np.array([[0.0, 1.0], [0.5, 0.25], [1.0, 0.0]], dtype=np.float32)
    out = synthesize(tmp_path / "s", frames=3, size=32, coeffs=2, device="cpu", tracks=tracks)
    meta = json.loads((out / "transforms.json").read_text())
    assert np.allclose([f["exp_ori"] for f in meta["frames"]], tracks)
    with pytest.raises(UserError, match="shape"):
        synthesize(tmp_path / "t", frames=4, size=32, coeffs=2, device="cpu", tracks=tracks)


def test_loader_pose_renders_the_parsing_mask(subject_dir):
    """Re-render frames with the poses the loader recovers: the head mask equals the stored parsing."""
    subject = load_subject(subject_dir, test_last=2, device="cpu")
    scene = make_scene(FRAMES, SIZE, 52, seed=5, device="cpu")
    idx = [0, 5, FRAMES - 1]
    coeffs = np.array([json.loads((subject_dir / "transforms.json").read_text())["frames"][i]["exp_ori"] for i in idx],
                      dtype=np.float32)
    frames = render_frames(scene, idx, poses=subject.poses[idx].double().numpy(), coefficients=coeffs)
    for j, i in enumerate(idx):
        parsing = cv2.imread(str(subject_dir / "parsing" / f"{i}.png"))
        blue = (parsing == [255, 0, 0]).all(-1)
        np.testing.assert_array_equal(frames.mask[j], blue)
        np.testing.assert_array_equal(subject.frame(i)[1].numpy(), blue)
        np.testing.assert_allclose(frames.landmarks[j], np.loadtxt(subject_dir / f"ori_imgs/{i}.lms"), atol=0.05)


def test_head_image_is_background_outside_the_mask(subject_dir):
    bc = cv2.imread(str(subject_dir / "bc.jpg")).astype(int)
    head = cv2.imread(str(subject_dir / "head_imgs/3.jpg")).astype(int)
    ori = cv2.imread(str(subject_dir / "ori_imgs/3.jpg")).astype(int)
    blue = (cv2.imread(str(subject_dir / "parsing/3.png")) == [255, 0, 0]).all(-1)
    far = cv2.dilate(blue.astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
    assert np.abs(head - bc)[far].mean() < 3  # JPEG noise only
    assert np.abs(ori - bc)[far].mean() > 3  # the torso is in ori only
    parsing = cv2.imread(str(subject_dir / "parsing/3.png"))
    assert ((parsing == [0, 0, 255]).all(-1)).any()  # torso in red


def test_landmarks_sit_on_the_right_parts(subject_dir):
    for i in range(0, FRAMES, 3):
        lms = np.loadtxt(subject_dir / f"ori_imgs/{i}.lms")
        assert lms[57, 0] < lms[0, 0] < lms[287, 0]  # mouth corners either side of the lip centre
        assert lms[0, 1] < lms[17, 1]  # upper lip above the lower
        assert lms[130, 0] < lms[359, 0]  # right eye on image left
        assert lms[27, 1] < lms[23, 1] and lms[257, 1] < lms[253, 1]  # above / below the eyes
        assert max(lms[23, 1], lms[253, 1]) < lms[0, 1]  # eyes above the mouth
        assert lms[468, 0] < lms[473, 0]  # irises


def test_every_coefficient_changes_the_face_locally():
    """Each of the 52 coefficients at 1 (others 0) visibly changes part of the head, not all of it."""
    size = 96
    scene = make_scene(1, size, 52, seed=0, device="cpu")
    pose = np.repeat(scene.poses[:1], 53, 0)
    coeffs = np.vstack([np.zeros((1, 52)), np.eye(52)]).astype(np.float32)
    frames = render_frames(scene, [0] * 53, poses=pose, coefficients=coeffs)
    base = frames.ori[0].astype(float)
    head = frames.mask[0].sum()
    for k, name in enumerate(scene.names):
        diff = np.abs(frames.ori[k + 1].astype(float) - base).max(-1)
        changed = (diff > 12).sum()
        assert changed >= 3, f"{name} changes {changed} pixels"
        assert changed < 0.5 * head, f"{name} changes {changed} of {head} head pixels"


def test_motion_and_names():
    rot, trans = head_motion(300, seed=0)
    yaw = np.degrees(np.arctan2(rot[:, 0, 2], rot[:, 2, 2]))
    assert 15 < np.abs(yaw).max() < 25 and np.abs(trans).max() < 0.01
    assert coefficient_names(3) == ["jawOpen", "eyeBlinkLeft", "eyeBlinkRight"]
    assert coefficient_names(54)[-2:] == ["extra0", "extra1"]
    tracks = coefficient_tracks(coefficient_names(54), 300, seed=0)
    assert tracks.shape == (300, 54) and tracks.min() >= 0 and tracks.max() <= 1
    assert (tracks.max(0) > 0.2).mean() > 0.8  # almost every coefficient moves
    assert ((tracks > 0.2).sum(1) >= 3).mean() > 0.5  # several at once
    assert np.abs(np.diff(tracks[:, 0])).max() < 0.5  # smooth jaw


def test_preview(subject_dir, tmp_path):
    out = write_preview(subject_dir, tmp_path / "p.png", frames=3, tile=64)
    sheet = cv2.imread(str(out))
    assert sheet.shape == (3 * 64, 3 * 64, 3)


def _rig(**controls):
    from nerfbs.synth.head import CONTROL_INDEX, CONTROLS, make_rig

    c = torch.zeros(1, len(CONTROLS), dtype=torch.float64)
    for name, value in controls.items():
        c[0, CONTROL_INDEX[name]] = value
    return make_rig(c)


def test_one_sided_expressions_deform_the_lips_continuously():
    """A left-only control must not cut a step into the face at the midline."""
    from nerfbs.synth.head import MOUTH_Y, sdf

    rig = _rig(upper_up_L=1.0, lower_down_L=1.0, press_L=1.0, smile_L=1.0, width_L=1.0)
    y = torch.linspace(MOUTH_Y - 0.15, MOUTH_Y + 0.15, 61, dtype=torch.float64)
    z = torch.linspace(0.7, 0.95, 26, dtype=torch.float64)
    yy, zz = torch.meshgrid(y, z, indexing="ij")
    side = lambda x: torch.stack([torch.full_like(yy, x), yy, zz], -1).reshape(-1, 3)
    rig = rig.take(torch.zeros(yy.numel(), dtype=torch.long))
    step = (sdf(side(1e-6), rig) - sdf(side(-1e-6), rig)).abs().max()  # float64: a continuous sdf moves ~1e-5
    assert float(step) < 1e-4


def test_a_closed_mouth_has_no_cavity():
    """No sliver of the mouth cavity is carved (or painted dark) when the lips are together."""
    from nerfbs.synth.head import MOUTH_Y, parts

    x = torch.linspace(-0.4, 0.4, 81, dtype=torch.float64)
    y = torch.linspace(MOUTH_Y - 0.05, MOUTH_Y + 0.05, 41, dtype=torch.float64)
    z = torch.linspace(0.6, 1.0, 41, dtype=torch.float64)
    p = torch.stack(torch.meshgrid(x, y, z, indexing="ij"), -1).reshape(-1, 3)
    closed = parts(p, _rig(smile_L=1.0, pucker=0.5).take(torch.zeros(p.shape[0], dtype=torch.long)))
    assert float(closed["cavity"].min()) > 0.005 and float(closed["opening"].max()) <= 0
    opened = parts(p, _rig(jaw_open=1.0).take(torch.zeros(p.shape[0], dtype=torch.long)))
    assert float(opened["cavity"].min()) < 0  # an open mouth still has its cavity
