"""Face tracking for the video preprocessor: decode a video, run MediaPipe's Face Landmarker on every
frame, smooth the result over time.

The landmarker bundle (``face_landmarker_v2_with_blendshapes.task``) comes from ``--landmarker PATH``,
else the cache, else a checked download (``nerfbs.preprocess.models``). MediaPipe is an optional extra;
it is imported only when a video is tracked or segmented. Nothing here is differentiable.
"""
from __future__ import annotations

import io
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from nerfbs.errors import UserError
from nerfbs.preprocess.models import LANDMARKER, open_task, resolve_model

log = logging.getLogger(__name__)

Progress = Optional[Callable[[str, int, int], None]]  # (stage, done, total)

NUM_LANDMARKS = 478
MEDIAPIPE_FOV_DEGREES = 63.0  # vertical field of view MediaPipe's face geometry assumes for its matrix
INSTALL_HINT = ("install the preprocess extra: pip install -e '.[preprocess]' && "
                "pip install --no-deps mediapipe==1.2.2 (README.md, Install)")


# ------------------------------------------------------------------------------------------- the model
def resolve_landmarker(path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The landmarker bundle: ``path`` if given, else the cached copy, else a checked download into the cache
    (``nerfbs.preprocess.models.resolve_model``). Raises UserError naming where to put the file."""
    return resolve_model(LANDMARKER, path, download=download)


def canonical_face(landmarker: str | os.PathLike) -> np.ndarray:
    """MediaPipe's canonical face [468, 3] float64 (cm; x right, y up, z towards the viewer), read from
    the bundle's geometry metadata: the model whose pose the facial transformation matrix gives."""
    with zipfile.ZipFile(landmarker) as z:
        data = z.read("geometry_pipeline_metadata_landmarks.binarypb")
    mesh = _pb_fields(data)[1][0]  # GeometryPipelineMetadata.canonical_mesh
    floats = b"".join(_pb_fields(mesh)[3])  # Mesh3d.vertex_buffer: x, y, z, u, v per vertex
    return np.frombuffer(floats, "<f4").reshape(-1, 5)[:, :3].astype(np.float64)


def _pb_fields(buf: bytes) -> dict[int, list[bytes]]:
    """The length-delimited and 32-bit fields of one protobuf message, by field number (varints skipped)."""
    out: dict[int, list[bytes]] = {}
    stream = io.BytesIO(buf)

    def varint() -> int:
        shift = result = 0
        while True:
            byte = stream.read(1)[0]
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result

    while stream.tell() < len(buf):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 2:
            out.setdefault(field, []).append(stream.read(varint()))
        elif wire == 5:
            out.setdefault(field, []).append(stream.read(4))
        elif wire == 1:
            stream.read(8)
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return out


# ------------------------------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class VideoInfo:
    """A video's frame size (pixels), frame rate (frames per second) and estimated frame count."""

    width: int
    height: int
    fps: float
    frames: int  # an estimate from the container (duration x fps); 0 when unknown


def probe_video(video: str | os.PathLike) -> VideoInfo:
    """Size, frame rate and estimated frame count of a video (UserError when it cannot be decoded)."""
    import imageio_ffmpeg

    path = Path(video)
    if not path.is_file():
        raise UserError(f"{path}: video not found — give the path of a video file")
    try:
        gen = imageio_ffmpeg.read_frames(str(path))
        meta = next(gen)
        gen.close()
    except (OSError, RuntimeError, StopIteration) as err:
        raise UserError(f"{path}: cannot decode the video ({str(err).splitlines()[0] if str(err) else err}) "
                        "— convert it to mp4 (H.264)") from None
    width, height = meta["size"]
    fps = float(meta.get("fps") or 25.0)
    frames = int(round(float(meta.get("duration") or 0.0) * fps))
    return VideoInfo(int(width), int(height), fps, frames)


def read_frames(video: str | os.PathLike, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, RGB uint8 [H, W, 3]) for each decoded frame, at most ``max_frames``."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(video), pix_fmt="rgb24")
    try:
        meta = next(gen)
        width, height = meta["size"]
        for index, raw in enumerate(gen):
            if max_frames is not None and index >= max_frames:
                break
            yield index, np.frombuffer(raw, np.uint8).reshape(height, width, 3)
    finally:
        gen.close()


# ------------------------------------------------------------------------------------------- tracking
@dataclass
class Track:
    """What the landmarker found in a video. N frames with a face out of ``num_decoded``.

    frame_index [N] int64 (decoded frame numbers), landmarks [N, 478, 2] float64 pixel (x, y) of the full
    frame (pixel centres at integers), blendshapes [N, 52] float64 with ``blendshape_names``, matrices
    [N, 4, 4] float64 (MediaPipe's facial transformation: canonical face, cm -> OpenGL camera).
    """

    info: VideoInfo
    num_decoded: int
    frame_index: np.ndarray
    landmarks: np.ndarray
    blendshapes: np.ndarray
    blendshape_names: list[str]
    matrices: np.ndarray

    @property
    def num_dropped(self) -> int:
        """Decoded frames in which the landmarker found no face."""
        return self.num_decoded - len(self.frame_index)


def _import_mediapipe():
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision
    except ImportError as err:
        raise UserError(f"mediapipe: cannot import it ({err}) — {INSTALL_HINT}") from None
    return mp, BaseOptions, vision


def track_video(video: str | os.PathLike, landmarker: str | os.PathLike, *, max_frames: int | None = None,
                progress: Progress = None) -> Track:
    """Run the Face Landmarker (VIDEO mode, one face) over the video's frames.

    Frames without a face are left out of the track (``num_dropped`` counts them); a video without any
    face raises UserError.
    """
    mp, BaseOptions, vision = _import_mediapipe()
    info = probe_video(video)
    total = min(info.frames, max_frames) if max_frames else info.frames
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(landmarker)), running_mode=vision.RunningMode.VIDEO,
        num_faces=1, output_face_blendshapes=True, output_facial_transformation_matrixes=True)
    index, lms, shapes, mats, names = [], [], [], [], None
    decoded = 0
    scale = np.array([info.width, info.height], dtype=np.float64)
    with open_task(LANDMARKER, landmarker, lambda: vision.FaceLandmarker.create_from_options(options)) as detector:
        for i, rgb in read_frames(video, max_frames):
            decoded += 1
            stamp_ms = int(round(i * 1000.0 / info.fps))
            result = detector.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                        data=np.ascontiguousarray(rgb)), stamp_ms)
            if progress is not None:
                progress("tracking", decoded, max(total, decoded))
            if not result.face_landmarks:
                continue
            points = np.array([(p.x, p.y) for p in result.face_landmarks[0]], dtype=np.float64)
            if points.shape != (NUM_LANDMARKS, 2):
                continue
            categories = result.face_blendshapes[0]
            names = names or [c.category_name for c in categories]
            index.append(i)
            lms.append(points * scale - 0.5)  # normalised image coordinates -> pixel-centre coordinates
            shapes.append([c.score for c in categories])
            mats.append(np.array(result.facial_transformation_matrixes[0], dtype=np.float64))
    if decoded == 0:
        raise UserError(f"{video}: no frames could be decoded — check the file")
    if progress is not None:
        progress("tracking", decoded, decoded)
    if not index:
        raise UserError(f"{video}: no face found in any of its {decoded} frames — give a video of one face, "
                        "frontal and well lit")
    return Track(info=info, num_decoded=decoded, frame_index=np.array(index, dtype=np.int64),
                 landmarks=np.stack(lms), blendshapes=np.array(shapes, dtype=np.float64),
                 blendshape_names=list(names), matrices=np.stack(mats))


# ------------------------------------------------------------------------------------------- smoothing
def one_euro(x: np.ndarray, t: np.ndarray, min_cutoff: float, beta: float, d_cutoff: float = 1.0) -> np.ndarray:
    """One-Euro filter (Casiez et al. 2012) along axis 0: x [T, ...] sampled at times t [T] seconds.

    The cutoff rises with the signal's speed (``min_cutoff + beta * |dx/dt|``, Hz): slow jitter is
    removed, fast motion passes with little lag.
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    if len(x) == 0:
        return out

    def alpha(cutoff, dt):
        tau = 1.0 / (2.0 * np.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    out[0] = x[0]
    dx = np.zeros_like(x[0])
    for k in range(1, len(x)):
        dt = max(float(t[k] - t[k - 1]), 1e-6)
        dx = dx + alpha(d_cutoff, dt) * ((x[k] - out[k - 1]) / dt - dx)
        a = alpha(min_cutoff + beta * np.abs(dx), dt)
        out[k] = out[k - 1] + a * (x[k] - out[k - 1])
    return out


def zero_lag_one_euro(x: np.ndarray, t: np.ndarray, min_cutoff: float, beta: float) -> np.ndarray:
    """The mean of a forward and a backward One-Euro pass: offline smoothing without the causal lag."""
    forward = one_euro(x, t, min_cutoff, beta)
    backward = one_euro(x[::-1], -t[::-1], min_cutoff, beta)[::-1]
    return 0.5 * (forward + backward)


def _quat_from_matrix(r: np.ndarray) -> np.ndarray:
    """Unit quaternions [N, 4] (w, x, y, z) of rotation matrices [N, 3, 3]."""
    q = np.empty((len(r), 4))
    for n, m in enumerate(r):
        w = np.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
        x = np.sqrt(max(0.0, 1.0 + m[0, 0] - m[1, 1] - m[2, 2])) / 2
        y = np.sqrt(max(0.0, 1.0 - m[0, 0] + m[1, 1] - m[2, 2])) / 2
        z = np.sqrt(max(0.0, 1.0 - m[0, 0] - m[1, 1] + m[2, 2])) / 2
        q[n] = (w, np.copysign(x, m[2, 1] - m[1, 2]), np.copysign(y, m[0, 2] - m[2, 0]),
                np.copysign(z, m[1, 0] - m[0, 1]))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _matrix_from_quat(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], 1)


def smooth_rigid(matrices: np.ndarray, t: np.ndarray, sigma_s: float) -> np.ndarray:
    """Rigid transforms [N, 4, 4] smoothed with a Gaussian window of ``sigma_s`` seconds (zero lag):
    quaternions (signs aligned to their neighbours) and translations averaged, then renormalised."""
    n = len(matrices)
    if n < 3 or sigma_s <= 0:
        return matrices.copy()
    q = _quat_from_matrix(matrices[:, :3, :3])
    for k in range(1, n):
        if np.dot(q[k], q[k - 1]) < 0:
            q[k] = -q[k]
    out = np.tile(np.eye(4), (n, 1, 1))
    lo = np.searchsorted(t, t - 3 * sigma_s)
    hi = np.searchsorted(t, t + 3 * sigma_s, side="right")
    for k in range(n):
        w = np.exp(-0.5 * ((t[lo[k]:hi[k]] - t[k]) / sigma_s) ** 2)
        w /= w.sum()
        out[k, :3, :3] = _matrix_from_quat((w @ q[lo[k]:hi[k]])[None])[0]
        out[k, :3, 3] = w @ matrices[lo[k]:hi[k], :3, 3]
    return out

