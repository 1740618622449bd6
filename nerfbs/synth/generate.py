"""``nerfbs synth``: a procedural talking head written in the NeRFBlendShape layout.

K expression coefficients in [0, 1] with ARKit-like names each drive a local change of the head
(``synth_head``: jaw, lips, lids, gaze, brows, cheeks, nose, tongue); they follow smooth "talking"
trajectories (syllable-rate jaw, blinks, drifting expressions) and the head moves (yaw about +/-20 deg,
pitch +/-10 deg, some roll and translation) in front of a fixed selfie camera. The head is fixed in
the renderer's world and the camera moves around it, so each frame stores the camera-to-world with
the head motion inverted into it. ori_imgs carry a torso below the neck; head_imgs replace everything
but the head by the background; parsing marks the head pure blue, the torso red, the rest white.
Deterministic for a seed on a given device.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import torch

from nerfbs.config import SYNTH
from nerfbs.data.camera import project
from nerfbs.errors import UserError
from nerfbs.data.writer import SubjectWriter
from nerfbs.synth.head import CONTROL_INDEX, CONTROLS, DESIGN_SCALE, make_rig
from nerfbs.synth.landmarks import landmarks_3d
from nerfbs.synth.raytrace import TraceSettings, background, render_heads, torso, trace

FPS = 25.0
CAMERA_DISTANCE = 0.3  # world units from the head at the default focal length
FOCAL_PER_PIXEL = 1.9  # default focal length / image size (29.5 degrees vertical): the head fills ~60% of the frame
PIVOT = (0.0, -0.8, -0.1)  # design-space point the head turns about (the neck)

# ARKit blendshape names, most visible first: K < 52 keeps the first K, K > 52 adds mixed extras.
ARKIT_BY_PRIORITY = [
    "jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "browInnerUp", "mouthSmileLeft", "mouthSmileRight",
    "browOuterUpLeft", "browOuterUpRight", "browDownLeft", "browDownRight", "mouthPucker", "mouthFunnel",
    "cheekPuff", "eyeWideLeft", "eyeWideRight", "eyeSquintLeft", "eyeSquintRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "mouthLowerDownLeft", "mouthLowerDownRight", "jawLeft", "jawRight", "mouthLeft", "mouthRight",
    "noseSneerLeft", "noseSneerRight", "cheekSquintLeft", "cheekSquintRight", "eyeLookUpLeft",
    "eyeLookUpRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthPressLeft", "mouthPressRight", "mouthDimpleLeft", "mouthDimpleRight",
    "tongueOut", "jawForward", "mouthClose",
]
_EFFECTS = {  # name -> {control: weight}
    "jawOpen": {"jaw_open": 1}, "jawForward": {"jaw_fwd": 1}, "jawLeft": {"jaw_side": 1},
    "jawRight": {"jaw_side": -1}, "mouthClose": {"mouth_close": 1}, "mouthFunnel": {"funnel": 1},
    "mouthPucker": {"pucker": 1}, "mouthLeft": {"mouth_shift": 1}, "mouthRight": {"mouth_shift": -1},
    "mouthRollLower": {"roll_lower": 1}, "mouthRollUpper": {"roll_upper": 1},
    "mouthShrugLower": {"shrug_lower": 1}, "mouthShrugUpper": {"shrug_upper": 1},
    "browInnerUp": {"brow_inner_up": 1}, "cheekPuff": {"cheek_puff": 1}, "tongueOut": {"tongue_out": 1},
    "eyeLookInLeft": {"gaze_x_L": -1}, "eyeLookOutLeft": {"gaze_x_L": 1},
    "eyeLookInRight": {"gaze_x_R": 1}, "eyeLookOutRight": {"gaze_x_R": -1},
}
for _side in ("Left", "Right"):
    _s = _side[0]
    _EFFECTS.update({
        f"eyeBlink{_side}": {f"blink_{_s}": 1}, f"eyeSquint{_side}": {f"squint_{_s}": 1},
        f"eyeWide{_side}": {f"wide_{_s}": 1}, f"eyeLookUp{_side}": {f"gaze_y_{_s}": 1},
        f"eyeLookDown{_side}": {f"gaze_y_{_s}": -1}, f"mouthSmile{_side}": {f"smile_{_s}": 1},
        f"mouthFrown{_side}": {f"frown_{_s}": 1}, f"mouthDimple{_side}": {f"dimple_{_s}": 1, f"width_{_s}": 0.4},
        f"mouthStretch{_side}": {f"width_{_s}": 1}, f"mouthPress{_side}": {f"press_{_s}": 1},
        f"mouthLowerDown{_side}": {f"lower_down_{_s}": 1}, f"mouthUpperUp{_side}": {f"upper_up_{_s}": 1},
        f"browDown{_side}": {f"brow_down_{_s}": 1}, f"browOuterUp{_side}": {f"brow_outer_up_{_s}": 1},
        f"cheekSquint{_side}": {f"cheek_raise_{_s}": 1}, f"noseSneer{_side}": {f"sneer_{_s}": 1},
    })


def coefficient_names(k: int) -> list[str]:
    """Names of K coefficients: ARKit names by visibility, then ``extra<i>`` beyond 52."""
    return ARKIT_BY_PRIORITY[:k] + [f"extra{i}" for i in range(max(0, k - len(ARKIT_BY_PRIORITY)))]


def control_matrix(names: list[str], seed: int) -> torch.Tensor:
    """[K, C] weights: controls = coefficients @ W. Extras mix two random controls (seeded)."""
    w = torch.zeros(len(names), len(CONTROLS), dtype=torch.float64)
    gen = np.random.default_rng(seed + 101)
    for i, name in enumerate(names):
        effect = _EFFECTS.get(name)
        if effect is None:
            a, b = gen.choice(len(CONTROLS), size=2, replace=False)
            effect = {CONTROLS[a]: 0.7, CONTROLS[b]: 0.7}
        for control, weight in effect.items():
            w[i, CONTROL_INDEX[control]] = weight
    return w


# ---------------------------------------------------------------------------------------- trajectories
def _smooth(gen: np.random.Generator, t: np.ndarray, fmin: float, fmax: float, n: int = 4) -> np.ndarray:
    """A smooth random signal in about [-1, 1] (sum of n sinusoids, frequencies in cycles per frame)."""
    f = gen.uniform(fmin, fmax, n)
    a = gen.uniform(0.5, 1.0, n)
    phase = gen.uniform(0, 2 * math.pi, n)
    return (a[:, None] * np.sin(2 * math.pi * f[:, None] * t[None] + phase[:, None])).sum(0) / a.sum() * 1.6


def _blinks(gen: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Blink curves for both eyes [n]: raised-cosine closings every ~2-4 s, some winks."""
    left, right = np.zeros(n), np.zeros(n)
    t = gen.uniform(5, 40)
    while t < n:
        length = gen.uniform(5, 8)
        k = np.arange(n)
        shape = np.where(np.abs(k - t) < length / 2, 0.5 + 0.5 * np.cos(2 * math.pi * (k - t) / length), 0.0)
        wink = gen.random()
        left = np.maximum(left, shape * (0.0 if wink < 0.08 else 1.0))
        right = np.maximum(right, shape * (0.0 if 0.08 <= wink < 0.16 else 1.0))
        t += gen.uniform(0.08, 0.16) * n if n < 60 else gen.uniform(50, 100)
    return left, right


def coefficient_tracks(names: list[str], frames: int, seed: int) -> np.ndarray:
    """Coefficients [frames, K] in [0, 1]: a talking jaw, blinks, paired sides moving together."""
    gen = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float64)
    out = np.zeros((frames, len(names)))
    shared: dict[str, np.ndarray] = {}
    blink_l, blink_r = _blinks(gen, frames)
    gaze_x, gaze_y = _smooth(gen, t, 0.005, 0.03), _smooth(gen, t, 0.005, 0.03)
    rate = 3.5 / FPS * (1 + 0.3 * _smooth(gen, t, 0.005, 0.02))
    syllables = 0.5 - 0.5 * np.cos(2 * math.pi * np.cumsum(rate))
    speaking = np.clip(0.7 + 0.8 * _smooth(gen, t, 0.004, 0.015), 0, 1)
    for i, name in enumerate(names):
        base = name.removesuffix("Left").removesuffix("Right")
        if name == "jawOpen":
            c = speaking * syllables ** 1.3 * 0.9
        elif name == "eyeBlinkLeft":
            c = blink_l
        elif name == "eyeBlinkRight":
            c = blink_r
        elif base.startswith("eyeLook"):
            g = gaze_y if base in ("eyeLookUp", "eyeLookDown") else gaze_x
            sign = {"eyeLookUp": 1, "eyeLookDown": -1, "eyeLookOut": 1, "eyeLookIn": -1}[base]
            if base in ("eyeLookOut", "eyeLookIn") and name.endswith("Right"):
                sign = -sign  # both eyes look the same way
            c = np.clip(sign * g * 1.2, 0, 1)
        elif name == "tongueOut":
            c = np.clip(2.5 * _smooth(gen, t, 0.005, 0.02) - 1.6, 0, 1)
        else:
            if base not in shared:
                shared[base] = _smooth(gen, t, 0.004, 0.03)
            own = _smooth(gen, t, 0.004, 0.03)
            c = np.clip(1.1 * (0.7 * shared[base] + 0.3 * own) - 0.15, 0, 1)
        out[:, i] = c
    return out.astype(np.float32)


def tracked_coefficient_tracks(subject_dir: str | os.PathLike, names: list[str], frames: int) -> np.ndarray:
    """Coefficients [frames, len(names)] in [0, 1] taken by name from a tracked subject (``nerfbs preprocess``
    writes MediaPipe's ARKit names as ``exp_names`` in transforms.json), linearly resampled in time to ``frames``.
    A real face moves its coefficients together: few independent directions, unlike ``coefficient_tracks``."""
    from nerfbs.data.subject import read_expressions

    have, exp = read_expressions(subject_dir)
    have = have if have is not None and len(have) == exp.shape[1] else []
    missing = [n for n in names if n not in have]
    if missing:
        raise UserError(f"{Path(subject_dir) / 'transforms.json'}: no coefficient named {missing[0]} in its exp_names "
                        "— a subject tracked by nerfbs preprocess has all 52 ARKit names")
    columns = np.clip(exp[:, [have.index(n) for n in names]], 0.0, 1.0)
    src, dst = np.linspace(0.0, 1.0, len(columns)), np.linspace(0.0, 1.0, frames)
    out = np.zeros((max(frames, 0), len(names)), dtype=np.float32)
    for k in range(len(names)):
        out[:, k] = np.interp(dst, src, columns[:, k])
    return out


def head_motion(frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Head rotations [frames, 3, 3] and translations [frames, 3] (world units) in the camera's world."""
    gen = np.random.default_rng(seed + 1)
    t = np.arange(frames, dtype=np.float64)

    def track(amplitude: float) -> np.ndarray:
        s = _smooth(gen, t, 0.002, 0.012)
        return amplitude * s / max(np.abs(s).max(), 1e-9)

    yaw, pitch, roll = np.radians(track(20)), np.radians(track(10)), np.radians(track(6))
    trans = np.stack([track(0.004), track(0.003), track(0.004)], -1)
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    one, zero = np.ones(frames), np.zeros(frames)
    ry = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1), np.stack([-sy, zero, cy], -1)], 1)
    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, -sp], -1), np.stack([zero, sp, cp], -1)], 1)
    rz = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1), np.stack([zero, zero, one], -1)], 1)
    return rz @ ry @ rx, trans


def camera_poses(rotations: np.ndarray, translations: np.ndarray, distance: float = CAMERA_DISTANCE) -> np.ndarray:
    """Renderer camera-to-world [F, 4, 4] in the head's frame: the rest camera ``distance`` world units in front
    of the head, with the head motion inverted."""
    rest = np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])  # x right, y down (image), looking along -z
    position = np.array([0.0, -0.05 * DESIGN_SCALE, distance])
    pivot = np.array(PIVOT) * DESIGN_SCALE
    rt = np.transpose(rotations, (0, 2, 1))
    poses = np.tile(np.eye(4), (len(rotations), 1, 1))
    poses[:, :3, :3] = rt @ rest
    poses[:, :3, 3] = np.einsum("fij,fj->fi", rt, position - pivot - translations) + pivot
    return poses


# ----------------------------------------------------------------------------------------------- render
def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


@dataclass
class Scene:
    """Everything a frame's rendering needs: tracks, cameras, intrinsics and the static background."""

    names: list[str]
    coefficients: np.ndarray  # [F, K] float32 in [0, 1]
    control_weights: torch.Tensor  # [K, C] float64
    poses: np.ndarray  # [F, 4, 4] renderer camera-to-world
    translations: np.ndarray  # [F, 3] head translation in the camera's world
    size: int
    focal: float
    distance: float  # world units from the camera to the head at rest
    background: torch.Tensor  # [H, W, 3] float in [0, 1] on the device
    neck_v: float  # collar height of the torso at rest (pixels)
    device: torch.device


@dataclass
class Frames:
    """Rendered frames: uint8 RGB [B, H, W, 3] images, head masks [B, H, W] bool, landmarks [B, 478, 2]."""

    ori: np.ndarray
    head: np.ndarray
    parsing: np.ndarray
    mask: np.ndarray
    landmarks: np.ndarray


def focal_length(size: int, fov_degrees: float | None = None) -> float:
    """Focal length in pixels of a size x size image with a vertical field of view ``fov_degrees``
    (None: ``FOCAL_PER_PIXEL`` x size, 29.5 degrees)."""
    if fov_degrees is None:
        return FOCAL_PER_PIXEL * size
    if not 5.0 <= fov_degrees <= 120.0:
        raise UserError(f"--fov {fov_degrees}: outside [5, 120] degrees — give a vertical field of view in degrees")
    return (size / 2) / math.tan(math.radians(fov_degrees) / 2)


def make_scene(frames: int, size: int, coeffs: int, seed: int, device: str | torch.device | None = None,
               tracks: Optional[np.ndarray] = None, fov_degrees: float | None = None) -> Scene:
    """The scene of a subject; ``tracks`` [frames, coeffs] replaces the generated coefficient tracks.
    ``fov_degrees`` (vertical) sets the lens; the camera moves back or in so that the head keeps its size
    in the frame."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = coefficient_names(coeffs)
    if tracks is not None and np.shape(tracks) != (frames, coeffs):
        raise UserError(f"coefficient tracks of shape {np.shape(tracks)} given for {frames} frames x {coeffs} coefficients")
    rotations, translations = head_motion(frames, seed)
    focal = focal_length(size, fov_degrees)
    distance = CAMERA_DISTANCE * focal / (FOCAL_PER_PIXEL * size)
    rest = torch.from_numpy(camera_poses(np.eye(3)[None], np.zeros((1, 3)), distance)[0])
    neck_uv, _ = project(torch.tensor([[0.0, -1.0, 0.3]], dtype=torch.float64) * DESIGN_SCALE, rest,
                         focal, focal, size / 2, size / 2)
    coefficients = coefficient_tracks(names, frames, seed) if tracks is None else np.asarray(tracks, np.float32)
    return Scene(names=names, coefficients=coefficients,
                 control_weights=control_matrix(names, seed), poses=camera_poses(rotations, translations, distance),
                 translations=translations, size=size, focal=focal, distance=distance,
                 background=background(size, size, seed, dev),
                 neck_v=float(neck_uv[0, 1]), device=dev)


def render_frames(scene: Scene, index: Sequence[int], *, poses: Optional[np.ndarray] = None,
                  coefficients: Optional[np.ndarray] = None, settings: TraceSettings = TraceSettings()) -> Frames:
    """Render the scene's frames ``index`` (optionally with other poses [B, 4, 4] / coefficients [B, K])."""
    dev, size, f = scene.device, scene.size, scene.focal
    c = size / 2
    index = list(index)
    pose = torch.from_numpy(scene.poses[index] if poses is None else np.asarray(poses)).to(dev, torch.float32)
    coef = torch.from_numpy(scene.coefficients[index] if coefficients is None else np.asarray(coefficients))
    rig = make_rig((coef.double() @ scene.control_weights).to(dev, torch.float32))
    layers = render_heads(pose, rig, f, f, c, c, size, size, settings)
    shift = torch.from_numpy(scene.translations[index] / scene.distance * f).to(dev, torch.float32)
    body, body_cover = torso(size, size, shift[:, 0], -shift[:, 1], scene.neck_v)
    bg, a = scene.background, layers.head_alpha[..., None]
    ori = (bg * (1 - a) + layers.head * a) * (1 - body_cover[..., None]) + body * body_cover[..., None]
    mask = layers.head_mask & (body_cover < 0.5)
    head = torch.where(mask[..., None], ori, bg)
    parsing = torch.ones_like(ori)
    parsing = torch.where((body_cover >= 0.5)[..., None], torch.tensor([1.0, 0, 0], device=dev), parsing)
    parsing = torch.where(mask[..., None], torch.tensor([0, 0, 1.0], device=dev), parsing)
    lms3 = landmarks_3d(rig, lambda o, d, g: _surface(o, d, g, 1.0 / f, settings)) * DESIGN_SCALE
    uv = torch.stack([project(lms3[j].double(), pose[j].double(), f, f, c, c)[0] for j in range(len(index))])
    return Frames(ori=_to_uint8(ori), head=_to_uint8(head), parsing=_to_uint8(parsing), mask=mask.cpu().numpy(),
                  landmarks=uv.cpu().numpy())


def synthesize(out_dir: str | os.PathLike, *, frames: int = SYNTH.frames, size: int = SYNTH.size,
               coeffs: int = SYNTH.coeffs, seed: int = SYNTH.seed,
               device: str | torch.device | None = None,
               progress: Optional[Callable[[int, int], None]] = None, tracks: Optional[np.ndarray] = None,
               fov_degrees: float | None = None) -> Path:
    """Write a synthetic subject of ``frames`` size x size frames with ``coeffs`` coefficients to out_dir;
    ``tracks`` [frames, coeffs] (in [0, 1], named as ``coefficient_names``) drive the head instead of the
    generated talking tracks; ``fov_degrees`` is the vertical field of view (None: 29.5 degrees)."""
    out = Path(out_dir)
    if frames < 1 or size < 16 or coeffs < 1:
        raise UserError(f"{out}: need --frames >= 1, --size >= 16 and --coeffs >= 1")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty — choose a new folder or remove it")
    scene = make_scene(frames, size, coeffs, seed, device, tracks, fov_degrees)
    per_batch = max(1, (4_000_000 if scene.device.type == "cuda" else 300_000) // (size * size // 2))
    c = size / 2
    with SubjectWriter(out, height=size, width=size, fx=scene.focal, fy=scene.focal, cx=c, cy=c,
                       exp_names=scene.names) as writer:
        writer.write_background(_to_uint8(scene.background))
        for start in range(0, frames, per_batch):
            index = range(start, min(frames, start + per_batch))
            r = render_frames(scene, index)
            for j, i in enumerate(index):
                writer.add_frame(i, ori=r.ori[j], head=r.head[j], parsing=r.parsing[j], landmarks=r.landmarks[j],
                                 coeffs=scene.coefficients[i], renderer_pose=scene.poses[i])
            if progress is not None:
                progress(index.stop, frames)
    return out


def _surface(o: torch.Tensor, d: torch.Tensor, rig, pix: float, settings: TraceSettings) -> torch.Tensor:
    """Surface points [N, 3] (or closest approaches) of design rays o, d [N, 3]."""
    _, t, _ = trace(o, d, rig, pix, settings)
    return o + t[:, None] * d


# ---------------------------------------------------------------------------------------------- preview
FORMAT_POINTS = (57, 287, 0, 17, 130, 359, 27, 257, 23, 253)


def write_preview(subject_dir: str | os.PathLike, out_png: str | os.PathLike, *, frames: int = 6,
                  tile: int = 256) -> Path:
    """A contact sheet of ``frames`` evenly spaced frames: ori image with landmarks and the face (green),
    mouth (red) and eye (yellow) rectangles, head image, parsing. Returns the PNG's path."""
    from nerfbs.atomic import atomic_path
    from nerfbs.data.subject import load_subject

    subject = load_subject(subject_dir, test_last=0, device="cpu")
    n = subject.num_frames
    picks = sorted({round(i * (n - 1) / max(1, frames - 1)) for i in range(min(frames, n))})
    columns = []
    for i in picks:
        img_id = subject.img_ids[i]
        ori = cv2.imread(str(subject.root / "ori_imgs" / f"{img_id}.jpg"))
        head = cv2.imread(str(subject.root / "head_imgs" / f"{img_id}.jpg"))
        parsing = cv2.imread(str(subject.root / "parsing" / f"{img_id}.png"))
        scale = tile / subject.width
        ori, head, parsing = (cv2.resize(x, (tile, tile), interpolation=cv2.INTER_AREA) for x in (ori, head, parsing))
        lms = subject.landmarks[i].numpy() * scale
        for k, (x, y) in enumerate(lms):
            if k not in FORMAT_POINTS:
                cv2.circle(ori, (int(round(x)), int(round(y))), 1, (80, 220, 80), -1)
        for k in FORMAT_POINTS:
            cv2.circle(ori, (int(round(lms[k, 0])), int(round(lms[k, 1]))), 2, (0, 0, 255), -1)
        for rects, colour in ((subject.face_rects, (0, 200, 0)), (subject.mouth_rects, (0, 0, 255)),
                              (subject.eye_rects, (0, 220, 220))):
            x0, y0, x1, y1 = (int(round(v * scale)) for v in rects[i].tolist())
            cv2.rectangle(ori, (x0, y0), (x1 - 1, y1 - 1), colour, 1)
        cv2.putText(ori, f"{img_id}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
        columns.append(np.concatenate([ori, head, parsing], 0))
    sheet = np.concatenate(columns, 1)
    out = Path(out_png)
    with atomic_path(out) as tmp:
        cv2.imwrite(str(tmp), sheet)
    return out

