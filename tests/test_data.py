"""The subject loader and the ray sampler, on a tiny synthetic subject."""
import json
import logging
import shutil

import cv2
import numpy as np
import pytest
import torch

from nerfbs.data import subject as data
from nerfbs.data.camera import renderer_from_stored
from nerfbs.data.rays import RaySampler
from nerfbs.data.subject import load_subject, resolve_subject_path
from nerfbs.errors import UserError
from nerfbs.synth.generate import synthesize

FRAMES, SIZE, K, TEST_LAST = 16, 40, 12, 5


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("subj") / "s", frames=FRAMES, size=SIZE, coeffs=K, seed=3,
                      device="cpu")


@pytest.fixture(scope="module")
def subject(subject_dir):
    return load_subject(subject_dir, test_last=TEST_LAST, device="cpu")


@pytest.fixture
def copy(subject_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(subject_dir, dst)
    for f in dst.glob("m*_*.txt"):
        f.unlink()
    return dst


def _meta(root):
    return json.loads((root / "transforms.json").read_text())


def test_values_shapes_and_split(subject, subject_dir):
    s, meta = subject, _meta(subject_dir)
    n_train = FRAMES - TEST_LAST
    assert (s.height, s.width, s.num_frames, s.num_train, s.num_coeffs) == (SIZE, SIZE, FRAMES, n_train, K)
    assert (s.fx, s.fy, s.cx, s.cy) == (meta["fx"], meta["fy"], meta["cx"], meta["cy"])
    assert s.img_ids == sorted(f["img_id"] for f in meta["frames"])
    assert s.train_indices.tolist() == list(range(n_train))
    assert s.test_indices.tolist() == list(range(n_train, FRAMES))
    assert s.poses.shape == (FRAMES, 4, 4) and s.poses.dtype == torch.float32
    stored = np.array([f["transform_matrix"] for f in meta["frames"]])
    np.testing.assert_allclose(s.poses.numpy(), renderer_from_stored(stored), atol=1e-6)
    assert s.coeff_names == meta["exp_names"]
    assert s.images.shape == (n_train, SIZE, SIZE, 3) and s.images.dtype == torch.uint8
    assert s.masks.shape == (n_train, SIZE, SIZE) and s.masks.dtype == torch.bool
    assert s.background.shape == (SIZE, SIZE, 3) and s.background.dtype == torch.uint8
    for rects in (s.face_rects, s.mouth_rects, s.eye_rects):
        assert rects.shape == (FRAMES, 4) and rects.dtype == torch.int32
        x0, y0, x1, y1 = rects.unbind(-1)
        assert bool(((0 <= x0) & (x0 < x1) & (x1 <= SIZE) & (0 <= y0) & (y0 < y1) & (y1 <= SIZE)).all())
    assert bool((s.mouth_rects[:, 1] > s.eye_rects[:, 1]).all())  # the mouth lies below the eyes


def test_coefficients_are_clamped_to_the_training_range(subject, subject_dir):
    raw = np.array([f["exp_ori"] for f in _meta(subject_dir)["frames"]], dtype=np.float32)
    lo, hi = raw[: FRAMES - TEST_LAST].min(0), raw[: FRAMES - TEST_LAST].max(0)
    c = subject.coeffs.numpy()
    assert c.shape == (FRAMES, K + 1) and (c[:, 0] == 1).all()
    np.testing.assert_array_equal(c[:, 1:], np.clip(raw, lo, hi))
    np.testing.assert_array_equal(subject.coeff_min.numpy(), lo)
    np.testing.assert_array_equal(subject.coeff_max.numpy(), hi)
    assert (raw[FRAMES - TEST_LAST:] != c[FRAMES - TEST_LAST:, 1:]).any()  # the tail left the range somewhere
    np.testing.assert_allclose(np.loadtxt(subject_dir / f"min_{K}.txt"), lo)
    np.testing.assert_allclose(np.loadtxt(subject_dir / f"max_{K}.txt"), hi)


def test_min_max_written_only_when_absent_or_stale(copy):
    load_subject(copy, test_last=TEST_LAST, device="cpu")
    before = {p.name: p.stat().st_mtime_ns for p in copy.rglob("*")}
    load_subject(copy, test_last=TEST_LAST, device="cpu")
    assert {p.name: p.stat().st_mtime_ns for p in copy.rglob("*")} == before
    load_subject(copy, test_last=TEST_LAST + 3, device="cpu")
    after = {p.name: p.stat().st_mtime_ns for p in copy.rglob("*")}
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed <= {f"min_{K}.txt", f"max_{K}.txt"} and set(after) == set(before)


def test_frames_match_the_files(subject, subject_dir):
    for i in (0, FRAMES - 1):  # a training frame (held) and a test frame (read lazily)
        rgb, mask = subject.frame(i)
        img_id = subject.img_ids[i]
        expected = cv2.imread(str(subject_dir / "head_imgs" / f"{img_id}.jpg"))[..., ::-1]
        parsing = cv2.imread(str(subject_dir / "parsing" / f"{img_id}.png"))
        np.testing.assert_array_equal(rgb.numpy(), expected)
        np.testing.assert_array_equal(mask.numpy(), (parsing == [255, 0, 0]).all(-1))
        assert mask.any() and not mask.all()


def test_streaming_matches_memory(subject, subject_dir):
    streamed = load_subject(subject_dir, test_last=TEST_LAST, device="cpu", stream_from_disk=True)
    assert streamed.images is None and streamed.masks is None
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = RaySampler(subject).sample(torch.tensor([2, 7]), 64, generator=gen_a)
    b = RaySampler(streamed).sample(torch.tensor([2, 7]), 64, generator=gen_b)
    torch.testing.assert_close(a.rgb, b.rgb)
    torch.testing.assert_close(a.directions, b.directions)


def test_progress_is_reported(subject_dir):
    calls = []
    load_subject(subject_dir, test_last=TEST_LAST, device="cpu", progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1]
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_sampler_batch(subject):
    sampler = RaySampler(subject)
    frames = torch.tensor([1, 4, 9])
    r = 200
    batch = sampler.sample(frames, r, face_fraction=0.9, generator=torch.Generator().manual_seed(0))
    assert batch.origins.shape == batch.directions.shape == batch.rgb.shape == batch.background.shape == (3 * r, 3)
    assert batch.frame_slot.dtype == torch.int32 and batch.frame_slot.tolist() == sum([[b] * r for b in range(3)], [])
    torch.testing.assert_close(batch.directions.norm(dim=-1), torch.ones(3 * r))
    u, v = batch.pixels.unbind(-1)
    fi = frames[batch.frame_slot.long()]
    torch.testing.assert_close(batch.rgb, subject.images[fi, v, u].float() / 255)
    torch.testing.assert_close(batch.mask, subject.masks[fi, v, u].float())
    torch.testing.assert_close(batch.background, subject.background[v, u].float() / 255)
    torch.testing.assert_close(batch.origins, subject.poses[fi, :3, 3])
    rect = subject.face_rects[fi]
    inside = (u >= rect[:, 0]) & (u < rect[:, 2]) & (v >= rect[:, 1]) & (v < rect[:, 3])
    per_image = inside.view(3, r).float().mean(1)
    assert bool((per_image >= 0.9).all())
    assert bool(inside.view(3, r)[:, : round(0.9 * r)].all())
    assert 0 < batch.mask.mean() < 1


def test_sampler_puts_the_mouth_share_inside_the_mouth_rectangle(subject):
    frames, r = torch.tensor([2, 7]), 100
    batch = RaySampler(subject).sample(frames, r, face_fraction=0.9, mouth_fraction=0.3,
                                       generator=torch.Generator().manual_seed(1))
    u, v = batch.pixels.unbind(-1)
    fi = frames[batch.frame_slot.long()]
    mouth, face = subject.mouth_rects[fi], subject.face_rects[fi]
    in_mouth = ((u >= mouth[:, 0]) & (u < mouth[:, 2]) & (v >= mouth[:, 1]) & (v < mouth[:, 3])).view(2, r)
    in_face = ((u >= face[:, 0]) & (u < face[:, 2]) & (v >= face[:, 1]) & (v < face[:, 3])).view(2, r)
    assert bool(in_mouth[:, :30].all()) and bool(in_face[:, :90].all())
    assert float(in_mouth[:, 30:].float().mean()) < 0.5  # the rest is not drawn from the mouth alone


def test_patches(subject):
    sampler = RaySampler(subject)
    for rect_name, rects in (("mouth", subject.mouth_rects), ("face", subject.face_rects)):
        patch = sampler.sample_patch(FRAMES - 2, rect_name, size=16, generator=torch.Generator().manual_seed(2))
        assert len(patch) == 256 and patch.image_shape == (16, 16)
        u, v = patch.pixels.unbind(-1)
        assert u.min() >= 0 and v.min() >= 0 and u.max() < SIZE and v.max() < SIZE
        assert (u.view(16, 16)[:, 1:] - u.view(16, 16)[:, :-1] == 1).all()  # rows, then columns
        x0, y0, x1, y1 = rects[FRAMES - 2].tolist()
        assert u.max() >= x0 and u.min() < x1 and v.max() >= y0 and v.min() < y1  # overlaps the rectangle


def test_ray_through_a_landmark_hits_the_head(subject):
    mask = subject.frame(0)[1]
    for k in (1, 4, 0, 17):  # nose tip, nose, upper and lower lip: visible from the front
        x, y = subject.landmarks[0, k].round().long().tolist()
        assert mask[y, x] == 1, k


def test_missing_head_image_is_skipped(copy, caplog):
    (copy / "head_imgs" / "3.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="nerfbs.data.subject"):
        s = load_subject(copy, test_last=TEST_LAST, device="cpu")
    assert s.num_frames == FRAMES - 1 and 3 not in s.img_ids
    assert any("3.jpg" in r.getMessage() for r in caplog.records)


def _expect(root, match, **kwargs):
    with pytest.raises(UserError) as err:
        load_subject(root, device="cpu", **{"test_last": TEST_LAST, **kwargs})
    message = str(err.value)
    assert "\n" not in message and match in message, message
    return message


def _edit_meta(root, fn):
    meta = _meta(root)
    fn(meta)
    (root / "transforms.json").write_text(json.dumps(meta))


def test_bad_inputs_give_one_line_errors(copy):
    _expect(copy, "frame", test_last=FRAMES)
    _edit_meta(copy, lambda m: m["frames"][4].update(exp_ori=m["frames"][4]["exp_ori"][:-1]))
    assert "frame 4" in _expect(copy, "transforms.json")
    _edit_meta(copy, lambda m: m["frames"][4].update(exp_ori=m["frames"][5]["exp_ori"],
                                                     transform_matrix=[[1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    assert "frame 4" in _expect(copy, "not 4x4")
    _edit_meta(copy, lambda m: m["frames"][4].update(transform_matrix=m["frames"][5]["transform_matrix"]))
    (copy / "head_imgs" / "2.jpg").write_bytes(b"not a jpeg")
    assert "frame 2" in _expect(copy, "2.jpg")
    cv2.imwrite(str(copy / "head_imgs" / "2.jpg"), np.zeros((SIZE, SIZE + 2, 3), np.uint8))
    assert "frame 2" in _expect(copy, "2.jpg")
    cv2.imwrite(str(copy / "head_imgs" / "2.jpg"), np.zeros((SIZE, SIZE, 3), np.uint8))
    cv2.imwrite(str(copy / "parsing" / "6.png"), np.full((SIZE, SIZE, 3), 255, np.uint8))
    assert "frame 6" in _expect(copy, "6.png")
    (copy / "transforms.json").unlink()
    _expect(copy, "transforms.json")


def test_frames_that_do_not_fit_name_the_stream_option(copy, monkeypatch):
    monkeypatch.setattr(data, "_available_bytes", lambda device: 1000)
    _expect(copy, "--stream")
    assert load_subject(copy, test_last=TEST_LAST, device="cpu", stream_from_disk=True).num_frames == FRAMES


def test_resolve_subject_path(tmp_path, monkeypatch, subject_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dataset" / "id9").mkdir(parents=True)
    assert resolve_subject_path("id9").resolve() == (tmp_path / "dataset" / "id9").resolve()
    assert resolve_subject_path(subject_dir) == subject_dir
    with pytest.raises(UserError, match="nope"):
        resolve_subject_path("nope")


def test_training_draws_match_the_checked_ones(subject):
    """The training loop's sync-free path (``train_frames``) draws exactly what the checked path draws."""
    sampler = RaySampler(subject)
    frames = torch.tensor([1, 4])
    checked = sampler.sample(frames, 64, generator=torch.Generator().manual_seed(3))
    trusted = sampler.sample(frames, 64, generator=torch.Generator().manual_seed(3), train_frames=True)
    patch = sampler.sample_patch(4, "mouth", size=16, generator=torch.Generator().manual_seed(4))
    trusted_patch = sampler.sample_patch(torch.tensor(4), "mouth", size=16, generator=torch.Generator().manual_seed(4),
                                         train_frames=True)
    for a, b in ((checked, trusted), (patch, trusted_patch)):
        torch.testing.assert_close(a.pixels, b.pixels)
        torch.testing.assert_close(a.rgb, b.rgb)
        torch.testing.assert_close(a.origins, b.origins)
    with pytest.raises(ValueError, match="frame indices"):
        sampler.sample(torch.tensor([FRAMES]), 8)
    with pytest.raises(ValueError, match="frame indices"):
        sampler.sample_patch(-1, "mouth", size=16)


def _bilinear(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """Plain bilinear read of an [H, W, C] float64 image at (x, y), clamped at the far edges."""
    h, w = image.shape[:2]
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    top = (1 - fx) * image[y0, x0] + fx * image[y0, x1]
    bottom = (1 - fx) * image[y1, x0] + fx * image[y1, x1]
    return (1 - fy) * top + fy * bottom


def test_subpixel_rays_read_their_targets_bilinearly(subject):
    sampler = RaySampler(subject)
    frames = torch.tensor([2, 6])
    centred = sampler.sample(frames, 300, generator=torch.Generator().manual_seed(5))
    batch = sampler.sample(frames, 300, generator=torch.Generator().manual_seed(5), subpixel=True)
    torch.testing.assert_close(batch.pixels, centred.pixels)  # the same pixels, then shifted inside them
    assert not torch.allclose(batch.directions, centred.directions)
    # each ray passes through its pixel's square: recover the point from the direction
    pose = subject.poses[frames[batch.frame_slot.long()]]
    cam = torch.einsum("rji,rj->ri", pose[:, :3, :3], batch.directions)  # camera-space direction
    x = subject.fx * cam[:, 0] / cam[:, 2] + subject.cx
    y = subject.fy * cam[:, 1] / cam[:, 2] + subject.cy
    shift = torch.stack([x, y], -1) - batch.pixels.float()
    assert float(shift.abs().max()) <= 0.5 + 1e-3 and float(shift.abs().mean()) > 0.1
    images = subject.images.double().numpy() / 255
    back = subject.background.double().numpy() / 255
    masks = subject.masks.double().numpy()
    for i in range(0, len(batch), 37):
        f = int(frames[int(batch.frame_slot[i])])
        px, py = float(x[i]), float(y[i])
        px, py = min(max(px, 0.0), subject.width - 1), min(max(py, 0.0), subject.height - 1)
        np.testing.assert_allclose(batch.rgb[i].numpy(), _bilinear(images[f], px, py), atol=2e-3)
        np.testing.assert_allclose(batch.background[i].numpy(), _bilinear(back, px, py), atol=2e-3)
        np.testing.assert_allclose(float(batch.mask[i]), _bilinear(masks[f][..., None], px, py)[0], atol=2e-3)
