"""Head masks of the video preprocessor: the segmenter's resolution and errors, the head cut from a person
confidence map by the tracked geometry, clothes removal, and lag-free temporal smoothing."""
import dataclasses

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from assets import asset
from nerfbs.errors import UserError
from nerfbs.preprocess import masks
from nerfbs.preprocess.masks import Camera, below_collar, fit_clothes, head_confidence, head_mask, project
from nerfbs.preprocess.models import SEGMENTER, resolve_model
from nerfbs.preprocess.segmentation import resolve_segmenter, temporal_weights, zero_phase_smooth

SIZE = 256
CAM = Camera(fx=300.0, fy=300.0, cx=SIZE / 2 - 0.5, cy=SIZE / 2 - 0.5, size=SIZE)


# ------------------------------------------------------------------------------------------- the model file
def test_missing_segmenter_says_where_to_put_it(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="segmenter model not found"):
        resolve_segmenter(tmp_path / "absent.tflite")
    monkeypatch.setenv("NERFBS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"cache/selfie_segmentation\.tflite.*--segmenter PATH") as err:
        resolve_segmenter(None, download=False)
    assert "\n" not in str(err.value)


def test_download_is_checked_against_the_sha256(tmp_path, monkeypatch):
    segmenter_file = asset("models/selfie_segmentation.tflite")
    monkeypatch.setenv("NERFBS_CACHE", str(tmp_path / "cache"))
    good = dataclasses.replace(SEGMENTER, url=segmenter_file.resolve().as_uri())
    path = resolve_model(good)
    assert path == tmp_path / "cache" / "selfie_segmentation.tflite"
    assert path.read_bytes() == segmenter_file.read_bytes()
    bad_file = tmp_path / "other.tflite"
    bad_file.write_bytes(b"not the model")
    bad = dataclasses.replace(SEGMENTER, name="other.tflite", url=bad_file.as_uri())
    with pytest.raises(UserError, match="sha256"):
        resolve_model(bad)
    assert not (tmp_path / "cache" / "other.tflite").exists()


def test_a_bad_segmenter_file_is_a_one_line_error(tmp_path):
    pytest.importorskip("mediapipe", reason="mediapipe (the preprocess extra) is not installed")
    from nerfbs.preprocess.segmentation import Segmenter

    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(UserError, match=r"broken\.tflite: MediaPipe cannot load this segmenter model") as err:
        Segmenter(bad)
    assert "\n" not in str(err.value)


def test_cli_reports_a_missing_segmenter_in_one_line(tmp_path):
    import cli

    video = tmp_path / "clip.mp4"
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(str(video), (32, 32), fps=25, macro_block_size=1)
    writer.send(None)
    writer.send(np.zeros((32, 32, 3), np.uint8))
    writer.close()
    landmarker = tmp_path / "landmarker.task"
    landmarker.write_bytes(b"unused: the segmenter is resolved before tracking")
    result = CliRunner().invoke(cli.app, ["preprocess", str(video), str(tmp_path / "out"), "--landmarker",
                                          str(landmarker), "--segmenter", str(tmp_path / "absent.tflite")])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "absent.tflite: segmenter model not found" in lines[0], result.output


# ------------------------------------------------------------------------------------------- a synthetic frame
def _pose(yaw_degrees: float = 0.0, x_cm: float = 0.0) -> np.ndarray:
    """MediaPipe-style head-to-camera matrix (OpenGL camera): the head 70 cm in front, turned by ``yaw``."""
    a = np.radians(yaw_degrees)
    m = np.eye(4)
    m[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    m[:3, 3] = (x_cm, 2.0, -70.0)
    return m


def _landmarks(pose: np.ndarray) -> np.ndarray:
    """478 points on the face (an ellipse 13 x 17.7 cm on the canonical face's front), with the chin (152)
    at the bottom and the forehead (10) at the top, as crop pixels."""
    rng = np.random.default_rng(0)
    r, phi = np.sqrt(rng.uniform(0, 1, 478)), rng.uniform(0, 2 * np.pi, 478)
    pts = np.stack([6.5 * r * np.cos(phi), -0.55 + 8.85 * r * np.sin(phi), np.full(478, 4.5)], -1)
    pts[152], pts[10] = (0.0, -9.4, 4.5), (0.0, 8.3, 4.5)
    return project(pts, pose, CAM)


def _blob(centre, radii) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (int(radii[0]), int(radii[1])), 0, 0, 360, 1, -1)
    return mask.astype(bool)


def _scene(pose: np.ndarray, turtleneck: bool = False, long_hair: bool = False):
    """(rgb, person confidence, landmarks): a head with hair on a grey wall, a torso below filling the
    crop's bottom (blue, reaching up to the chin when ``turtleneck``, else skin with a low blue neckline),
    and a second person at the left edge. ``long_hair`` hangs on both sides of the neck down to just above
    the collar line."""
    lms = _landmarks(pose)
    chin = lms[152]
    head = _blob(project(np.array([[0.0, 2.5, 0.0]]), pose, CAM)[0], (52, 66))
    neck = np.zeros((SIZE, SIZE), bool)
    neck[int(chin[1]) - 10:, int(chin[0]) - 22:int(chin[0]) + 23] = True
    torso = np.zeros((SIZE, SIZE), bool)
    top = int(chin[1]) + (4 if turtleneck else 40)
    torso[top:, 30:SIZE - 30] = True
    other = _blob((12, 150), (14, 60))
    if long_hair:
        rows = np.arange(SIZE)[:, None]
        above_collar = rows < np.argmax(below_collar(pose, CAM), axis=0)[None, :] - 3
        beside_neck = (np.abs(np.arange(SIZE) - chin[0]) > 20) & (np.abs(np.arange(SIZE) - chin[0]) < 38)
        head |= above_collar & beside_neck[None, :] & (rows > chin[1] - 40)
    rgb = np.full((SIZE, SIZE, 3), 128, np.uint8)
    rgb[head] = (70, 45, 30)  # hair
    rgb[masks.face_hull(lms, SIZE) | neck] = (215, 160, 135)  # skin
    rgb[torso] = (40, 60, 170)  # clothes
    rgb[other] = (200, 150, 120)
    person = (head | neck | torso | other).astype(np.float32)
    person = cv2.GaussianBlur(person, (0, 0), 1.5)  # a soft edge, as the segmenter's
    return rgb, person, lms


@pytest.mark.parametrize("yaw", [0.0, 20.0])
def test_mask_cuts_the_collar_and_drops_other_people(yaw):
    pose = _pose(yaw)
    rgb, person, lms = _scene(pose)
    conf = head_confidence(person, rgb, lms, pose, CAM, None)
    mask = head_mask(conf, lms, pose, CAM)
    collar = below_collar(pose, CAM)
    assert not (mask & collar).any(), "nothing below the collar line is head"
    assert (person[collar] > 0.5).sum() > 1000, "the test's torso must reach below the collar line"
    assert not mask[:, :40].any(), "the other person (not joined to the face) is dropped"
    hull = masks.face_hull(lms, SIZE)
    assert mask[hull].mean() > 0.99, "the face is head"
    hair = (rgb == (70, 45, 30)).all(-1) & masks.possible_head(pose, CAM)
    assert mask[hair].mean() > 0.95, "the hair is head"
    neck = (rgb == (215, 160, 135)).all(-1) & ~hull & ~collar & masks.possible_head(pose, CAM)
    assert neck.sum() > 300 and mask[neck].mean() > 0.95, "skin of the neck above the collar line is head"


@pytest.mark.parametrize("yaw", [0.0, 20.0])
def test_long_hair_down_to_the_collar_line_is_head(yaw):
    pose = _pose(yaw)
    rgb, person, lms = _scene(pose, long_hair=True)
    mask = head_mask(head_confidence(person, rgb, lms, pose, CAM, None), lms, pose, CAM)
    hair = (rgb == (70, 45, 30)).all(-1)
    below_chin = hair & (np.arange(SIZE)[:, None] > lms[152][1] + 5)
    assert below_chin.sum() > 300, "the test's hair must hang below the chin"
    assert mask[below_chin].mean() > 0.95, "hair beside the neck, above the collar line, is head"
    assert not (mask & below_collar(pose, CAM)).any(), "and the collar line still cuts"


def test_clothes_above_the_collar_line_are_cut_by_colour():
    poses = [_pose(yaw, x) for yaw, x in ((-10, -1.0), (0, 0.0), (10, 1.0))]
    scenes = [_scene(p, turtleneck=True) for p in poses]
    clothes = fit_clothes([s[0] for s in scenes], [s[1] for s in scenes], np.stack([s[2] for s in scenes]),
                          np.stack(poses), CAM)
    assert clothes is not None
    rgb, person, lms = scenes[1]
    blue = (rgb == (40, 60, 170)).all(-1)
    assert (blue & ~below_collar(poses[1], CAM)).sum() > 500, "the turtleneck must rise above the collar line"
    without = head_mask(head_confidence(person, rgb, lms, poses[1], CAM, None), lms, poses[1], CAM)
    with_model = head_mask(head_confidence(person, rgb, lms, poses[1], CAM, clothes), lms, poses[1], CAM)
    assert (without & blue).sum() > 500, "geometry alone keeps the turtleneck above the collar line"
    assert (with_model & blue).sum() < 0.03 * (without & blue).sum(), "the colour model removes it"
    skin = (rgb == (215, 160, 135)).all(-1)
    assert with_model[skin & without].mean() > 0.97, "and keeps the skin"


def test_clothes_model_needs_a_torso_below_the_collar_line():
    pose = _pose()
    rgb, person, lms = _scene(pose)
    person[below_collar(pose, CAM)] = 0.0
    assert fit_clothes([rgb], [person], lms[None], pose[None], CAM) is None


# ------------------------------------------------------------------------------------------- time
def test_temporal_smoothing_keeps_a_step_in_place():
    frames = [(i, np.full((2, 2), float(i >= 7), np.float32)) for i in range(15)]
    out = list(zero_phase_smooth(frames))
    assert [i for i, _ in out] == list(range(15)), "every frame comes out, in order"
    values = np.array([m[0, 0] for _, m in out])
    assert (values[:7] < 0.5).all() and (values[7:] >= 0.5).all(), values
    assert np.allclose(values[7] + values[6], 1.0, atol=1e-6), "symmetric about the step: no lag"
    assert values[2] == 0.0 and values[12] == 1.0


def test_temporal_smoothing_keeps_a_moving_edge_where_it_is():
    width, speed = 120, 3.0  # an edge moving 3 px per frame
    xs = np.arange(width)
    frames = [(i, (xs[None, :] < 20 + speed * i).astype(np.float32).repeat(2, 0)) for i in range(25)]
    for i, m in zero_phase_smooth(frames):
        edge = 20 + speed * i
        crossing = int(np.argmax(m[0] < 0.5))  # first pixel below 0.5
        assert abs(crossing - np.ceil(edge)) <= 1, f"frame {i}: edge at {crossing}, truth {edge}"


def test_temporal_smoothing_of_short_and_constant_streams():
    assert list(zero_phase_smooth([])) == []
    one = list(zero_phase_smooth([("a", np.ones((3, 3)))]))
    assert len(one) == 1 and one[0][0] == "a" and np.allclose(one[0][1], 1.0)
    const = [(i, np.full((2, 2), 0.3)) for i in range(4)]
    assert all(np.allclose(m, 0.3) for _, m in zero_phase_smooth(const))
    w = temporal_weights()
    assert np.isclose(w.sum(), 1.0) and np.allclose(w, w[::-1])


def test_guided_filter_keeps_constants_and_image_edges():
    guide = np.zeros((40, 40), np.float32)
    guide[:, 20:] = 1.0
    assert np.allclose(masks.guided_filter(guide, np.full_like(guide, 0.7), 4, 1e-3), 0.7, atol=1e-5)
    blurred = cv2.GaussianBlur(guide, (0, 0), 3.0)  # a soft confidence edge at the image's edge
    out = masks.guided_filter(guide, blurred, 4, 1e-3)
    assert out[:, 17].max() < blurred[:, 17].min() and out[:, 22].min() > blurred[:, 22].max()
    assert ((out >= 0.5) == (guide >= 0.5)).all()
