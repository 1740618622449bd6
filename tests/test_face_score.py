"""The face score (nerfbs.evaluate.face): PSNR inside the landmarks' shrunk convex hull against ori_imgs."""
import json
import math

import numpy as np
import pytest

from nerfbs.evaluate import report
from nerfbs.evaluate.face import FACE_SHRINK, face_psnr, face_region


def _square_landmarks(lo: float, hi: float, n: int = 478, seed: int = 0) -> np.ndarray:
    """n points whose convex hull is the square [lo, hi]^2: its corners and random points inside."""
    pts = np.random.default_rng(seed).uniform(lo + 1, hi - 1, (n, 2))
    pts[:4] = [(lo, lo), (hi, lo), (hi, hi), (lo, hi)]
    return pts


def test_face_score_equals_a_hand_computed_psnr_over_the_shrunk_hull():
    rng = np.random.default_rng(1)
    size, lo, hi = 64, 10.0, 59.0
    lms = _square_landmarks(lo, hi)
    original = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    pred = np.clip(original / 255.0 + rng.normal(0, 0.05, original.shape), 0, 1)
    r = round(FACE_SHRINK * (hi - lo))  # 2 px: the square loses r pixels on each side
    assert r == 2
    a, b = int(lo) + r, int(hi) - r  # pixel centres lo..hi are inside the hull
    diff = pred[a:b + 1, a:b + 1] - original[a:b + 1, a:b + 1] / 255.0
    expected = -10 * math.log10(float(np.mean(diff ** 2)))
    assert face_psnr(pred, original, lms) == pytest.approx(expected, abs=1e-9)
    region = face_region(lms, size, size)
    assert region.sum() == (b - a + 1) ** 2 and region[a:b + 1, a:b + 1].all()


def test_face_score_ignores_everything_outside_the_face():
    size = 48
    lms = _square_landmarks(12.0, 36.0)
    original = np.full((size, size, 3), 0.5)
    pred = original.copy()
    pred[16:33, 16:33] += 0.1  # inside the shrunk hull: 20 dB
    outside = ~face_region(lms, size, size)
    pred[outside] = np.random.default_rng(2).uniform(0, 1, (outside.sum(), 3))  # background, hair, mask edge
    assert face_psnr(pred, original, lms) < 30
    region = face_region(lms, size, size)
    assert face_psnr(pred, original, lms) == pytest.approx(
        -10 * math.log10(float(np.mean((pred[region] - original[region]) ** 2))), abs=1e-9)
    tiny = np.array([(5.0, 5.0), (6.0, 5.0), (6.0, 6.0), (5.0, 6.0)])
    assert face_psnr(pred, original, tiny, shrink=2.0) is None, "an empty region has no score"


def test_evaluation_reports_the_face_score_or_na():
    size = 32
    lms = _square_landmarks(6.0, 26.0)
    rng = np.random.default_rng(3)
    truth = rng.uniform(0, 1, (size, size, 3))
    original = (rng.uniform(0, 1, (size, size, 3)) * 255).astype(np.uint8)
    pred = np.clip(original / 255.0 + 0.02, 0, 1)
    rect = np.array([[0, 0, size, size]])
    with_face, _ = report.evaluate_frames(lambda f: (pred, truth), [0], rect, rect, None,
                                         originals=lambda f: (original, lms))
    row = with_face.rows[0]["face_hull"]
    assert row["psnr"] == pytest.approx(face_psnr(pred, original, lms)) and row["ssim"] is None
    assert with_face.mean()["face_hull"]["psnr"] == pytest.approx(row["psnr"])
    assert "| face hull vs ori_imgs | " in with_face.markdown()
    without, _ = report.evaluate_frames(lambda f: (pred, truth), [0], rect, rect, None)
    assert without.mean()["face_hull"]["psnr"] is None
    assert "| face hull vs ori_imgs | n/a |" in without.markdown()
    missing, _ = report.evaluate_frames(lambda f: (pred, truth), [0], rect, rect, None,
                                        originals=lambda f: (None, lms))
    assert missing.rows[0]["face_hull"]["psnr"] is None


def test_train_and_eval_report_the_face_score(tiny_run, tmp_path):
    from nerfbs.export.avatar import load_avatar
    from nerfbs.render.image import render_with_truth
    from tiny import invoke

    trained = json.loads((tiny_run.workspace / "eval" / "metrics.json").read_text())
    assert trained["mean"]["face_hull"]["psnr"] > 5
    assert "face hull vs ori_imgs" in tiny_run.train_output
    out = tmp_path / "eval"
    assert invoke("eval", tiny_run.checkpoint, "--out", out).exit_code == 0
    evaluated = json.loads((out / "metrics.json").read_text())
    assert "| face hull vs ori_imgs |" in (out / "metrics.md").read_text()
    avatar = load_avatar(tiny_run.checkpoint)
    for row in evaluated["per_frame"]:
        f = row["frame"]
        pred, _ = render_with_truth(avatar.field, avatar.grid, avatar.config.render, avatar.subject, f)
        original = avatar.subject.original(f)
        assert original.shape == pred.shape and original.dtype == np.uint8
        expected = face_psnr(pred, original, avatar.subject.landmarks[f].numpy())
        assert row["face_hull"]["psnr"] == pytest.approx(expected, abs=1e-4)
