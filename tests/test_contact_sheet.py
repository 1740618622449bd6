"""The contact sheet (nerfbs.evaluate.sheet): contact.png beside metrics.json, one row per chosen held-out frame."""
import numpy as np
import pytest

from nerfbs.evaluate import report
from nerfbs.evaluate.sheet import LABEL_HEIGHT, MAX_WIDTH, SHEET_FRAMES, ContactSheet, mouth_crop, spread
from nerfbs.images import error_heatmap, to_uint8


def test_sheet_frames_spread_over_the_held_out_range():
    held_out = list(range(40, 100))
    chosen = spread(held_out)
    assert chosen == [40, 52, 64, 75, 87, 99]
    gaps = np.diff(chosen)
    assert len(chosen) == SHEET_FRAMES and gaps.max() - gaps.min() <= 1
    assert spread([7, 8, 9]) == [7, 8, 9], "fewer frames than rows: all of them"
    assert spread([5]) == [5]


def _fake_subject(n: int, size: int = 32, seed: int = 0):
    """n frames: predictions, truths and originals of random colours, a mouth rectangle per frame."""
    rng = np.random.default_rng(seed)
    preds = rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)
    truths = rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)
    originals = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    mouths = np.array([[10 + i % 3, 20, 20 + i % 3, 24] for i in range(n)])
    return preds, truths, originals, mouths


def test_evaluation_renders_each_frame_once_and_the_sheet_draws_its_frames():
    n, size = 20, 32
    preds, truths, originals, mouths = _fake_subject(n, size)
    lms = np.array([(4.0, 4.0), (28.0, 4.0), (28.0, 28.0), (4.0, 28.0)])
    rendered = []

    def render(f):
        rendered.append(f)
        return preds[f], truths[f]

    sheet = ContactSheet(list(range(n)))
    result, _ = report.evaluate_frames(render, list(range(n)), mouths, mouths, None,
                                       originals=lambda f: (originals[f], lms), sheet=sheet)
    assert rendered == list(range(n))
    assert sorted(sheet.rows) == sheet.frames == spread(list(range(n)))
    image = sheet.image()
    assert image.dtype == np.uint8 and image.shape[0] == SHEET_FRAMES * (LABEL_HEIGHT + size)
    for k, f in enumerate(sheet.frames):
        top = k * (LABEL_HEIGHT + size) + LABEL_HEIGHT
        row = image[top:top + size]
        np.testing.assert_array_equal(row[:, :size], to_uint8(preds[f]))
        np.testing.assert_array_equal(row[:, size:2 * size], originals[f])
        np.testing.assert_array_equal(row[:, 2 * size:3 * size], error_heatmap(preds[f], originals[f] / 255.0))
        assert np.abs(row[:, :size].astype(int) - row[:, size:2 * size]).mean() > 20
        # the mouth of the render, twice zoomed (nearest), centred in its panel
        x0, y0, x1, y1 = mouth_crop(mouths[f], size, size)
        zoomed = np.repeat(np.repeat(to_uint8(preds[f][y0:y1, x0:x1]), 2, 0), 2, 1)
        panel_w = (image.shape[1] - 3 * size) // 2
        panel = row[:, 3 * size:3 * size + panel_w]
        t, left = (size - zoomed.shape[0]) // 2, (panel_w - zoomed.shape[1]) // 2
        np.testing.assert_array_equal(panel[t:t + zoomed.shape[0], left:left + zoomed.shape[1]], zoomed)
        assert result.rows[f]["face_hull"]["psnr"] == pytest.approx(sheet.rows[f].score)
        assert sheet.rows[f].label().startswith(f"frame {f}  face ")


def test_a_sheet_of_few_frames_without_originals_falls_back_to_the_truth():
    preds, truths, _, mouths = _fake_subject(3)
    sheet = ContactSheet([0, 1, 2])
    report.evaluate_frames(lambda f: (preds[f], truths[f]), [0, 1, 2], mouths, mouths, None, sheet=sheet)
    image = sheet.image()
    assert image.shape[0] == 3 * (LABEL_HEIGHT + 32)
    np.testing.assert_array_equal(image[LABEL_HEIGHT:LABEL_HEIGHT + 32, 32:64], to_uint8(truths[0]))
    assert sheet.rows[0].label() == "frame 0  face n/a  (vs head_imgs)"


def test_wide_frames_are_scaled_down_to_the_sheet_width():
    size = 900
    sheet = ContactSheet([3])
    image = np.full((size, size, 3), 0.5, np.float32)
    sheet.offer(3, image, image, None, (400, 600, 500, 640), 30.0)
    assert sheet.image().shape[1] <= MAX_WIDTH and sheet.image().shape[0] < LABEL_HEIGHT + size
    assert ContactSheet([1, 2]).image() is None


def test_eval_writes_the_contact_sheet(tiny_run, tmp_path):
    from nerfbs.export.avatar import load_avatar
    from nerfbs.render.image import render_with_truth
    from tiny import TINY_TEST_LAST, invoke, read_rgb

    assert (tiny_run.workspace / "eval" / "contact.png").is_file(), "train's evaluation writes one too"
    out = tmp_path / "eval"
    result = invoke("eval", tiny_run.checkpoint, "--out", out)
    assert result.exit_code == 0 and "contact.png" in result.output
    sheet = read_rgb(out / "contact.png")
    avatar = load_avatar(tiny_run.checkpoint)
    s = avatar.subject
    assert len(s.test_indices) == TINY_TEST_LAST < SHEET_FRAMES
    h, w = s.height, s.width
    assert sheet.shape[0] == TINY_TEST_LAST * (LABEL_HEIGHT + h), "one row per held-out frame"
    for k, f in enumerate(int(i) for i in s.test_indices):
        row = sheet[k * (LABEL_HEIGHT + h) + LABEL_HEIGHT:(k + 1) * (LABEL_HEIGHT + h)]
        pred, _ = render_with_truth(avatar.field, avatar.grid, avatar.config.render, s, f)
        assert np.abs(row[:, :w].astype(int) - to_uint8(pred)).max() <= 1, "the render"
        np.testing.assert_array_equal(row[:, w:2 * w], s.original(f), "the original frame (ori_imgs)")
        assert np.abs(row[:, :w].astype(int) - row[:, w:2 * w]).mean() > 1.0, "render and original differ"
