"""The whole-video head fit (``nerfbs.preprocess.bundle_adjust`` / ``head_fit``) on landmarks projected by a
known camera: it recovers the focal length, the poses and the personal shape through noise and outliers,
keeps a given focal length, fixes the gauge, and reports reprojection errors per frame. No MediaPipe here:
the rigid shape is a made-up face (a smooth surface of the right size), so these run without ../shared.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nerfbs.errors import UserError
from nerfbs.preprocess.bundle_adjust import (
    BundleSettings,
    align_similarity,
    bundle_adjust,
    exp_so3,
    log_so3,
    rotation_angle_degrees,
)
from nerfbs.preprocess.head_fit import (
    RIGID_LANDMARKS,
    HeadFit,
    fit_head,
    focal_from_fov,
    fov_from_focal,
    rigid_reprojection,
    triangulate,
    write_tracking_json,
)

SIZE = 512


def _face(n: int, rng: np.random.Generator) -> np.ndarray:
    """n points [n, 3] (cm) on a face-like surface: a bulging ellipse 15 cm wide, a nose ridge 3 cm out."""
    x = rng.uniform(-7, 7, n)
    y = rng.uniform(-3, 8, n)
    z = 3 * np.sqrt(np.clip(1 - (x / 8) ** 2, 0, 1)) + 3 * np.exp(-(x / 1.2) ** 2) * (y < 3.5)
    return np.stack([x, y, z], -1)


def _rotations(frames: int, yaw: float, pitch: float) -> np.ndarray:
    """Head-to-camera rotations [F, 3, 3] (OpenCV camera) of a head turning about the vertical and nodding."""
    t = np.arange(frames)
    w = np.stack([np.radians(pitch) * np.sin(2 * np.pi * t / 37), np.radians(yaw) * np.sin(2 * np.pi * t / 53),
                  np.radians(4) * np.sin(2 * np.pi * t / 29)], -1)
    return exp_so3(torch.from_numpy(w)).numpy() @ np.diag([1.0, -1.0, -1.0])  # the face looks at the camera


def _scene(frames=80, points=40, fov=50.0, noise=0.3, outliers=0.02, seed=0):
    rng = np.random.default_rng(seed)
    shape = _face(points, rng)
    focal = focal_from_fov(SIZE, fov)
    rot = _rotations(frames, 25, 10)
    distance = 24 * focal / SIZE * 1.6  # the 24 cm head spans ~60 % of the frame
    trans = np.stack([np.sin(np.arange(frames) / 9), np.cos(np.arange(frames) / 7), distance + np.zeros(frames)], -1)
    cam = shape @ rot.transpose(0, 2, 1) + trans[:, None]
    uv = focal * cam[..., :2] / cam[..., 2:] + (SIZE - 1) / 2
    obs = uv + rng.normal(0, noise, uv.shape)
    bad = rng.random(obs.shape[:2]) < outliers
    obs[bad] += rng.normal(0, 25, (int(bad.sum()), 2))  # a few landmarks far off
    return {"shape": shape, "focal": focal, "rot": rot, "trans": trans, "obs": obs, "bad": bad, "rng": rng}


def _aligned_rotation_errors(est: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-frame angles (degrees) between est_i and true_i B, B the best common rotation of the head frame."""
    u, _, vt = np.linalg.svd(np.einsum("nji,njk->ik", true, est))
    return rotation_angle_degrees(est, true @ (u @ vt))


def test_bundle_adjustment_recovers_focal_length_poses_and_shape():
    s = _scene()
    rng = s["rng"]
    start_focal = focal_from_fov(SIZE, 63.0)  # MediaPipe's assumed lens: 25 % off
    start_rot = exp_so3(torch.from_numpy(rng.normal(0, np.radians(2), (len(s["rot"]), 3)))).numpy() @ s["rot"]
    start_trans = s["trans"] * start_focal / s["focal"] + rng.normal(0, 0.5, s["trans"].shape)
    prior_shape = s["shape"] + rng.normal(0, 0.5, s["shape"].shape)  # the "canonical" face is not this one
    res = bundle_adjust(s["obs"], start_rot, start_trans, prior_shape, start_focal, ((SIZE - 1) / 2,) * 2,
                        settings=BundleSettings(noise_px=0.3))
    assert abs(res.focal / s["focal"] - 1) < 0.03, f"focal {res.focal:.1f} px, truth {s['focal']:.1f} px"
    assert 0 < res.focal_sigma < 0.05 * res.focal
    assert abs(res.focal - s["focal"]) < 4 * res.focal_sigma, "the formal uncertainty must cover the error"
    err = _aligned_rotation_errors(res.rotations, s["rot"])
    assert err.mean() < 0.2 and err.max() < 0.6, f"rotation error {err.mean():.2f} / {err.max():.2f} degrees"
    assert np.median(res.errors[~s["bad"]]) < 0.5, "inliers must be fitted to the noise level"
    assert res.weights[s["bad"]].mean() < 0.1 < res.weights[~s["bad"]].mean(), "outliers must be down-weighted"
    # the shape is the truth up to the gauge: a similarity onto the prior's centroid, size and orientation
    sc, q, c = align_similarity(s["shape"], prior_shape)
    truth_in_gauge = sc * (s["shape"] - s["shape"].mean(0)) @ q.T + c
    assert np.abs(res.shape - truth_in_gauge).max() < 0.3
    assert np.allclose(res.shape.mean(0), prior_shape.mean(0), atol=1e-6)
    rms = lambda a: np.sqrt(((a - a.mean(0)) ** 2).sum(1).mean())
    assert rms(res.shape) == pytest.approx(rms(prior_shape), rel=1e-6)


def test_a_given_focal_length_is_kept_and_the_rotation_prior_pulls():
    s = _scene(frames=40, outliers=0.0)
    wrong = s["focal"] * 1.3
    res = bundle_adjust(s["obs"], s["rot"], s["trans"], s["shape"], wrong, ((SIZE - 1) / 2,) * 2, fix_focal=True)
    assert res.focal == wrong and math.isnan(res.focal_sigma)
    tilted = exp_so3(torch.tensor([0.0, math.radians(3), 0.0], dtype=torch.float64)).numpy() @ s["rot"]
    free = bundle_adjust(s["obs"], s["rot"], s["trans"], s["shape"], s["focal"], ((SIZE - 1) / 2,) * 2,
                         fix_focal=True, rotation_prior=tilted, settings=BundleSettings(rotation_sigma_deg=100))
    held = bundle_adjust(s["obs"], s["rot"], s["trans"], s["shape"], s["focal"], ((SIZE - 1) / 2,) * 2,
                         fix_focal=True, rotation_prior=tilted, settings=BundleSettings(rotation_sigma_deg=0.01))
    assert rotation_angle_degrees(free.rotations, s["rot"]).mean() < 0.5
    assert rotation_angle_degrees(held.rotations, tilted).mean() < 0.1


def test_so3_maps_and_triangulation():
    w = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.0, 1e-9], [2.0, 1.0, -0.5]], dtype=torch.float64)
    assert torch.allclose(log_so3(exp_so3(w)), w, atol=1e-9)
    s = _scene(frames=20, noise=0.0, outliers=0.0)
    points, errors = triangulate(s["rot"], s["trans"], s["focal"], ((SIZE - 1) / 2,) * 2, s["obs"])
    assert np.abs(points - s["shape"]).max() < 1e-6 and errors.max() < 1e-6


def test_fit_head_estimates_the_lens_from_mediapipe_like_input():
    """fit_head takes MediaPipe's matrices (OpenGL camera, made for a 63-degree lens) and 478 landmarks."""
    rng = np.random.default_rng(3)
    canonical = _face(468, rng)
    fov = 40.0
    focal = focal_from_fov(SIZE, fov)
    frames = 60
    rot = _rotations(frames, 25, 10)
    trans = np.stack([np.zeros(frames), np.zeros(frames), np.full(frames, 24 * focal / SIZE * 1.6)], -1)
    personal = canonical + rng.normal(0, 0.3, canonical.shape)
    cam = personal @ rot.transpose(0, 2, 1) + trans[:, None]
    landmarks = np.zeros((frames, 478, 2))
    landmarks[:, :468] = focal * cam[..., :2] / cam[..., 2:] + (SIZE - 1) / 2 + rng.normal(0, 0.3, (frames, 468, 2))
    gl = np.diag([1.0, -1.0, -1.0])
    matrices = np.tile(np.eye(4), (frames, 1, 1))
    matrices[:, :3, :3] = gl @ rot
    matrices[:, :3, 3] = trans @ gl * focal_from_fov(SIZE, 63.0) / focal  # what a 63-degree lens implies
    times = np.arange(frames) / 25
    fit = fit_head(matrices, landmarks, times, canonical, SIZE, SIZE)
    assert fit.estimated and abs(fit.fov_degrees - fov) < 2.0, f"fov {fit.fov_degrees:.2f}, truth {fov}"
    assert fit.fov_sigma_degrees > 0 and fit.shape.shape == (len(RIGID_LANDMARKS), 3)
    given = fit_head(matrices, landmarks, times, canonical, SIZE, SIZE, fov_degrees=30.0)
    assert not given.estimated and given.fov_degrees == pytest.approx(30.0) and math.isnan(given.focal_sigma)
    assert fov_from_focal(SIZE, focal_from_fov(SIZE, 33.0)) == pytest.approx(33.0)


def test_reprojection_report_finds_the_misregistered_frame(tmp_path):
    s = _scene(frames=30, points=len(RIGID_LANDMARKS), noise=0.0, outliers=0.0)
    poses = np.tile(np.eye(4), (30, 1, 1))  # renderer camera-to-world: the inverse of head-to-camera
    poses[:, :3, :3] = s["rot"].transpose(0, 2, 1)
    poses[:, :3, 3] = -np.einsum("nji,nj->ni", s["rot"], s["trans"])
    landmarks = np.zeros((30, 478, 2))
    landmarks[:, list(RIGID_LANDMARKS)] = s["obs"]
    landmarks[7, list(RIGID_LANDMARKS)] += (3.0, 0.0)  # frame 7's landmarks are 3 px off its pose
    c = (SIZE - 1) / 2
    uv, errors = rigid_reprojection(poses, s["focal"], s["focal"], c, c, landmarks)
    per_frame = errors.mean(1)
    assert per_frame.argmax() == 7 and 2.0 < per_frame[7] < 3.1 and np.median(per_frame) < 0.2
    assert np.abs(uv - landmarks[:, list(RIGID_LANDMARKS)]).max() < 3.1
    fit = HeadFit(matrices=np.tile(np.eye(4), (30, 1, 1)), shape=s["shape"], focal=s["focal"], focal_sigma=3.0,
                  fov_degrees=50.0, fov_sigma_degrees=0.2, estimated=True, iterations=5)
    path = tmp_path / "tracking.json"
    write_tracking_json(path, fit, np.arange(100, 130), errors, (0, 0, SIZE, 256))
    data = json.loads(path.read_text())
    assert data["reprojection_px"]["worst_img_id"] == 107 and data["focal_estimated"] is True
    assert data["reprojection_px"]["median"] == pytest.approx(np.median(per_frame), abs=1e-3)
    assert [f["img_id"] for f in data["frames"]] == list(range(100, 130)) and data["crop"]["size"] == 256


def test_bad_inputs(tmp_path):
    s = _scene(frames=5, outliers=0.0)
    with pytest.raises(ValueError, match="rotations \\[N, 3, 3\\]"):
        bundle_adjust(s["obs"], s["rot"][:4], s["trans"], s["shape"], s["focal"], (0, 0))
    behind = s["trans"].copy()
    behind[:, 2] *= -1
    with pytest.raises(ValueError, match="behind the camera"):
        bundle_adjust(s["obs"], s["rot"], behind, s["shape"], s["focal"], (0, 0))
    from nerfbs.preprocess.pipeline import preprocess_video
    from nerfbs.synth.generate import focal_length

    with pytest.raises(UserError, match="--fov 5"):
        preprocess_video(tmp_path / "absent.mp4", tmp_path / "out", fov_degrees=5.0)
    with pytest.raises(UserError, match="--fov 170"):
        focal_length(64, 170.0)
