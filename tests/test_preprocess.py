"""`nerfbs preprocess` on a short real clip: the landmarker bundle and a talking-head video, found through
$NERFBS_TEST_ASSETS (tests/assets.py). Without them these tests skip, naming the file; under CI=true they fail.
"""
import json
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import torch

from nerfbs.data.camera import project
from nerfbs.data.subject import load_subject
from nerfbs.errors import UserError
from nerfbs.preprocess.pipeline import HEAD_CENTRE, HEAD_SCALE, preprocess_video
from nerfbs.preprocess.tracking import canonical_face, one_euro, read_frames, resolve_landmarker, smooth_rigid
from assets import asset

CLIP_FRAMES, CLIP_SIZE, SIZE = 24, 256, 128


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, quality=9, macro_block_size=1)
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()
    return path


@pytest.fixture(scope="module")
def landmarker() -> Path:
    return asset("models/face_landmarker_v2_with_blendshapes.task")


@pytest.fixture(scope="module")
def segmenter() -> Path:
    return asset("models/selfie_segmentation.tflite")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    video = asset("videos/talk_speech_katie.mp4")
    frames = [cv2.resize(rgb, (CLIP_SIZE, CLIP_SIZE), interpolation=cv2.INTER_AREA)
              for _, rgb in read_frames(video, CLIP_FRAMES)]
    return _write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames)


@pytest.fixture(scope="module")
def subject(clip, landmarker, segmenter, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preprocess")
    stages = []
    report = preprocess_video(clip, tmp / "subject", size=SIZE, landmarker=landmarker, segmenter=segmenter,
                              preview=True,
                              progress=lambda stage, done, total: stages.append((stage, done, total)))
    return report, stages


def test_subject_loads_with_names_and_landmarks(subject):
    report, _ = subject
    assert report.frames_written == CLIP_FRAMES and report.frames_dropped == 0
    s = load_subject(report.subject, test_last=4)
    assert (s.height, s.width, s.num_frames, s.num_train) == (SIZE, SIZE, CLIP_FRAMES, CLIP_FRAMES - 4)
    assert s.num_coeffs == 52 and len(s.coeff_names) == 52
    assert s.coeff_names[0] == "_neutral" and "jawOpen" in s.coeff_names
    lms = s.landmarks.numpy()
    assert lms.shape == (CLIP_FRAMES, 478, 2)
    assert (lms > 0).all() and (lms < SIZE - 1).all()
    meta = json.loads((report.subject / "transforms.json").read_text())
    assert meta["exp_names"] == s.coeff_names


def test_masks_cover_the_face_and_not_the_whole_crop(subject):
    report, _ = subject
    s = load_subject(report.subject, test_last=1)
    images, masks = s.frames(torch.arange(s.num_frames))
    for i in range(s.num_frames):
        mask = masks[i].numpy()
        assert 0.1 < mask.mean() < 0.8, f"frame {i}: head covers {mask.mean():.0%} of the crop"
        x0, y0, x1, y1 = (int(v) for v in np.r_[s.landmarks[i].numpy().min(0), s.landmarks[i].numpy().max(0)])
        inner = mask[y0 + (y1 - y0) // 4:y1 - (y1 - y0) // 4, x0 + (x1 - x0) // 4:x1 - (x1 - x0) // 4]
        assert inner.mean() > 0.98, f"frame {i}: the face centre is not all head"
        head = images[i].numpy().astype(int)
        bc = s.background.numpy().astype(int)
        assert np.abs(head[~mask] - bc[~mask]).mean() < 4, "non-head pixels must show bc.jpg"
    assert report.preview is not None and cv2.imread(str(report.preview)) is not None


def test_poses_project_the_canonical_face_onto_the_landmarks(subject, landmarker):
    report, _ = subject
    s = load_subject(report.subject, test_last=1)
    world = torch.from_numpy(HEAD_SCALE * (canonical_face(landmarker) - HEAD_CENTRE)).float()  # [468, 3]
    assert world.abs().max() < 0.06, "the face must sit inside the scene cube"
    for i in range(s.num_frames):
        uv, depth = project(world, s.poses[i], s.fx, s.fy, s.cx, s.cy)
        err = (uv - s.landmarks[i, :468]).norm(dim=-1).median()
        assert (depth > 0).all() and err < 0.03 * SIZE, f"frame {i}: median reprojection error {err:.1f} px"


def test_tracking_reports_the_lens_and_the_rigid_reprojection(subject):
    report, _ = subject
    fit = report.fit
    assert fit.estimated and 10 < fit.fov_degrees < 120 and fit.fov_sigma_degrees > 0
    data = json.loads((report.subject / "tracking.json").read_text())
    assert data["focal_estimated"] is True and data["fov_degrees"] == pytest.approx(fit.fov_degrees, abs=1e-3)
    assert len(data["frames"]) == CLIP_FRAMES and len(data["rigid_landmarks"]) == len(data["rigid_shape_cm"])
    errors = [f["rigid_error_px"] for f in data["frames"]]
    assert report.reprojection_worst_px == pytest.approx(max(errors), abs=1e-3)
    assert report.reprojection_median_px == pytest.approx(np.median(errors), abs=1e-3)
    assert report.reprojection_median_px < 0.01 * SIZE, "the rigid landmarks must be registered to about a pixel"
    meta = json.loads((report.subject / "transforms.json").read_text())
    side = data["crop"]["side"]
    assert meta["fy"] == pytest.approx(fit.focal * SIZE / side, rel=1e-6), "the subject's focal is the fitted one"


def test_a_given_field_of_view_overrides_the_estimate(clip, landmarker, segmenter, tmp_path):
    report = preprocess_video(clip, tmp_path / "given", size=SIZE, landmarker=landmarker, segmenter=segmenter,
                              fov_degrees=30.0)
    assert not report.fit.estimated and report.fit.fov_degrees == pytest.approx(30.0)
    meta = json.loads((report.subject / "transforms.json").read_text())
    focal = (CLIP_SIZE / 2) / np.tan(np.radians(30.0) / 2)
    assert meta["fy"] == pytest.approx(focal * SIZE / report.crop[2], rel=1e-6)
    assert json.loads((report.subject / "tracking.json").read_text())["focal_estimated"] is False


def test_progress_reports_every_stage(subject):
    _, stages = subject
    assert [st for st in ("tracking", "background", "writing") if any(s[0] == st for s in stages)] == \
           ["tracking", "background", "writing"]
    last = {}
    for stage, done, total in stages:
        last[stage] = (done, total)
    assert last["writing"] == (CLIP_FRAMES, CLIP_FRAMES)


def test_video_without_a_face_is_a_user_error(tmp_path, landmarker, segmenter):
    noise = np.random.default_rng(0).integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)
    clip = _write_video(tmp_path / "noise.mp4", list(noise))
    with pytest.raises(UserError, match="no face found in any of its 6 frames"):
        preprocess_video(clip, tmp_path / "out", size=64, landmarker=landmarker, segmenter=segmenter)
    assert not (tmp_path / "out" / "transforms.json").exists()


def test_missing_landmarker_says_where_to_put_it(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="landmarker model not found"):
        resolve_landmarker(tmp_path / "absent.task")
    monkeypatch.setenv("NERFBS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"cache/face_landmarker_v2_with_blendshapes\.task.*--landmarker"):
        resolve_landmarker(None, download=False)
    cached = tmp_path / "cache" / "face_landmarker_v2_with_blendshapes.task"
    cached.parent.mkdir()
    cached.write_bytes(b"a cached bundle")  # resolving checks presence, not content
    assert resolve_landmarker(None, download=False) == cached


def test_one_euro_removes_jitter_and_follows_fast_motion():
    t = np.arange(200) / 30.0
    rng = np.random.default_rng(0)
    still = 100 + rng.normal(0, 1.0, 200)
    assert np.std(one_euro(still, t, 2.0, 0.05)[20:]) < 0.5 * np.std(still)
    step = np.where(t > 3, 40.0, 0.0)  # a jaw that opens 40 px in one frame
    out = one_euro(step, t, 2.0, 0.05)
    assert out[t > 3][2] > 30, "fast motion must pass within a few frames"


def test_smooth_rigid_keeps_a_constant_pose_and_reduces_jitter():
    t = np.arange(30) / 25.0
    base = np.eye(4)
    base[:3, 3] = (1.0, -2.0, -26.0)
    same = np.repeat(base[None], 30, 0)
    assert np.allclose(smooth_rigid(same, t, 0.04), same, atol=1e-9)
    rng = np.random.default_rng(1)
    noisy = same.copy()
    for m in noisy:
        angle = rng.normal(0, 0.02)
        m[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    smooth = smooth_rigid(noisy, t, 0.04)
    assert np.allclose(np.einsum("nij,nkj->nik", smooth[:, :3, :3], smooth[:, :3, :3]), np.eye(3), atol=1e-9)
    assert np.abs(smooth[:, 0, 1]).mean() < np.abs(noisy[:, 0, 1]).mean()
