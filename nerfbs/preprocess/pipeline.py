"""``nerfbs preprocess``: a talking-head video to a subject in the NeRFBlendShape layout (FORMAT.md).

1. Track: MediaPipe's Face Landmarker on every decoded frame (478 landmarks, 52 blendshapes, the head
   pose as a 4x4 matrix); frames without a face are dropped and counted.
2. Fit the rigid head over the whole video (``nerfbs.preprocess.head_fit``): the focal length (unless
   ``fov_degrees`` is given), a personal rigid landmark shape and every frame's pose, bundle-adjusted to
   the landmarks that expressions do not move, from MediaPipe's poses; the poses then get a short
   zero-lag Gaussian window. The landmarks get a forward-backward One-Euro filter (its cutoff rises with
   speed, so fast mouth motion passes). Blendshapes stay raw.
3. Frame: one fixed square crop around every frame's projected head region, resized to ``size``; the
   crop's intrinsics follow from the video's focal length. The head is fixed in world space:
   world = HEAD_SCALE * (canonical face point in cm - HEAD_CENTRE), inside the default scene cube
   [-0.06, 0.06]^3; the moving camera is written with ``stored_from_renderer``. tracking.json beside
   transforms.json keeps the focal length and each frame's rigid-landmark reprojection error.
4. Mask and background: MediaPipe's person segmenter on every crop, made a head by the tracked geometry
   and smoothed over time (``nerfbs.preprocess.masks``); the subject is written by ``SubjectWriter``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from nerfbs.config import PREPROCESS
from nerfbs.errors import UserError
from nerfbs.data.writer import SubjectWriter
from nerfbs.preprocess.head_fit import HeadFit, fit_head, rigid_reprojection, write_tracking_json
from nerfbs.preprocess.masks import (Camera, background_excluded, estimate_background, fit_clothes, head_confidence,
                                    head_mask, neck_points, project, skull_points)
from nerfbs.preprocess.segmentation import Segmenter, resolve_segmenter, zero_phase_smooth
from nerfbs.preprocess.tracking import (Progress, Track, canonical_face, probe_video, read_frames, resolve_landmarker,
                                        track_video, zero_lag_one_euro)

log = logging.getLogger(__name__)

HEAD_SCALE = 0.0042  # world units per cm: the ~22 cm from chin to crown become ~0.09
HEAD_CENTRE = np.array([0.0, 2.0, -2.5])  # cm in the canonical face frame: the world origin
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0])
LANDMARK_MIN_CUTOFF_HZ = 2.0
LANDMARK_BETA = 0.05  # per (pixel / second): at 300 px/s the cutoff is 17 Hz
CROP_MARGIN = 1.08  # the crop's side over the head region's extent
BACKGROUND_SAMPLES = 60  # frames the background median is taken over
PREVIEW_FRAMES = 6


@dataclass
class PreprocessReport:
    """What ``preprocess_video`` wrote."""

    subject: Path
    frames_written: int
    frames_decoded: int
    frames_dropped: int  # decoded frames where no face was found
    crop: tuple[int, int, int]  # x0, y0, side in the video's pixels
    background_inpainted: float  # fraction of bc.jpg that was never seen and was inpainted
    preview: Path | None
    fit: HeadFit  # focal length / field of view (estimated or given) and the fitted head
    reprojection_median_px: float  # rigid landmarks' reprojection error: the median frame's mean, subject pixels
    reprojection_worst_px: float  # ... and the worst frame's
    reprojection_worst_img_id: int


@dataclass(frozen=True)
class Crop:
    """A square window [x0, x0 + side) x [y0, y0 + side) of the video frame, resized to ``size``."""

    x0: int
    y0: int
    side: int
    size: int

    @property
    def zoom(self) -> float:
        """Scale from video pixels to crop pixels: size / side."""
        return self.size / self.side

    def to_crop(self, pixels: np.ndarray) -> np.ndarray:
        """Video pixel-centre coordinates [..., 2] -> crop pixel-centre coordinates."""
        return (pixels + 0.5 - np.array([self.x0, self.y0])) * self.zoom - 0.5

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """The crop of a video frame [H, W, 3] uint8 -> [size, size, 3] uint8 (area resampling when shrinking, cubic
        when enlarging)."""
        window = rgb[self.y0:self.y0 + self.side, self.x0:self.x0 + self.side]
        interp = cv2.INTER_AREA if self.side > self.size else cv2.INTER_CUBIC
        return cv2.resize(np.ascontiguousarray(window), (self.size, self.size), interpolation=interp)


def video_camera(width: int, height: int, fov_degrees: float) -> Camera:
    """Intrinsics of the whole video frame for a vertical field of view (``size`` is unused: 0)."""
    f = (height / 2) / np.tan(np.radians(fov_degrees) / 2)
    return Camera(fx=f, fy=f, cx=width / 2 - 0.5, cy=height / 2 - 0.5, size=0)


def crop_camera(video: Camera, crop: Crop) -> Camera:
    """The crop's intrinsics: the video camera's focal lengths scaled by the zoom, its principal point moved into the
    crop."""
    cx, cy = crop.to_crop(np.array([video.cx, video.cy]))
    return Camera(fx=video.fx * crop.zoom, fy=video.fy * crop.zoom, cx=float(cx), cy=float(cy), size=crop.size)


def choose_crop(matrices: np.ndarray, cam: Camera, width: int, height: int, size: int) -> Crop:
    """One square crop holding every frame's projected head region (skull and neck), inside the frame."""
    pts = np.concatenate([skull_points(), neck_points()])
    uv = np.concatenate([project(pts, m, cam) for m in matrices])
    lo, hi = np.percentile(uv, 0.5, axis=0), np.percentile(uv, 99.5, axis=0)
    side = int(np.ceil(max(hi - lo) * CROP_MARGIN))
    side = max(16, min(side, width, height))
    centre = (lo + hi) / 2
    x0 = int(np.clip(round(centre[0] - side / 2), 0, width - side))
    y0 = int(np.clip(round(centre[1] - side / 2), 0, height - side))
    return Crop(x0, y0, side, size)


def renderer_pose(head_to_camera: np.ndarray) -> np.ndarray:
    """The renderer's camera-to-world [4, 4] (OpenCV camera, head-fixed world) of a MediaPipe matrix."""
    rot, t = head_to_camera[:3, :3], head_to_camera[:3, 3]
    pose = np.eye(4)
    pose[:3, :3] = rot.T @ OPENGL_TO_OPENCV
    pose[:3, 3] = HEAD_SCALE * (-rot.T @ t - HEAD_CENTRE)
    return pose


def smooth_landmarks(track: Track) -> np.ndarray:
    """Smoothed landmarks [N, 478, 2] (video pixels)."""
    t = track.frame_index / track.info.fps
    flat = track.landmarks.reshape(len(t), -1)
    return zero_lag_one_euro(flat, t, LANDMARK_MIN_CUTOFF_HZ, LANDMARK_BETA).reshape(track.landmarks.shape)


def _frames_by_index(video, indices: np.ndarray, max_frames: int | None):
    """(position in ``indices``, RGB) for the decoded frames whose index is in ``indices`` (sorted)."""
    wanted = {int(i): k for k, i in enumerate(indices)}
    for i, rgb in read_frames(video, max_frames):
        if i in wanted:
            yield wanted[i], rgb
        if i >= indices[-1]:
            break


def preprocess_video(video: str | os.PathLike, out: str | os.PathLike, *, size: int = PREPROCESS.size,
                     max_frames: int | None = None, landmarker: str | os.PathLike | None = None,
                     segmenter: str | os.PathLike | None = None, fov_degrees: float | None = None,
                     preview: bool = False,
                     progress: Progress = None) -> PreprocessReport:
    """Turn ``video`` into a subject folder ``out`` (FORMAT.md layout, exp_ori = 52 blendshapes with their
    names in transforms.json as ``exp_names``; tracking.json beside it). ``fov_degrees``: the video's
    vertical field of view, None to estimate it. Returns what was written.

    Raises UserError for a missing video, landmarker or segmenter, an undecodable video, or no face at all.
    """
    if size < 16:
        raise UserError(f"--size {size}: too small — use at least 16")
    if fov_degrees is not None and not 10.0 <= fov_degrees <= 120.0:
        raise UserError(f"--fov {fov_degrees}: outside [10, 120] degrees — give the video's vertical field of view")
    out = Path(out)
    if (out / "transforms.json").exists():
        raise UserError(f"{out}: already holds a subject (transforms.json) — choose another folder or delete it")
    probe_video(video)  # a bad video path fails before the model is looked for
    model = resolve_landmarker(landmarker)
    segmenter_model = resolve_segmenter(segmenter)
    track = track_video(video, model, max_frames=max_frames, progress=progress)
    info = track.info
    fit = fit_head(track.matrices, track.landmarks, track.frame_index / info.fps, canonical_face(model), info.width,
                   info.height, fov_degrees=fov_degrees)
    matrices, fov_degrees, landmarks = fit.matrices, fit.fov_degrees, smooth_landmarks(track)
    crop = choose_crop(matrices, video_camera(info.width, info.height, fov_degrees), info.width, info.height, size)
    cam = crop_camera(video_camera(info.width, info.height, fov_degrees), crop)
    crop_lms = crop.to_crop(landmarks)
    n = len(track.frame_index)
    rigid_uv, rigid_err = rigid_reprojection(np.stack([renderer_pose(m) for m in matrices]), cam.fx, cam.fy, cam.cx,
                                             cam.cy, crop_lms)
    frame_err = rigid_err.mean(1)  # [N] pixels of the subject's images
    worst = int(frame_err.argmax())

    with Segmenter(segmenter_model) as seg:
        sample = np.unique(np.linspace(0, n - 1, min(n, BACKGROUND_SAMPLES)).round().astype(int))
        frames, persons = [], []
        for done, (k, rgb) in enumerate(_frames_by_index(video, track.frame_index[sample], max_frames), 1):
            frames.append(crop.apply(rgb))
            persons.append(seg.person(frames[-1]))
            if progress is not None:
                progress("background", done, len(sample))
        background, seen = estimate_background(frames, [background_excluded(p) for p in persons])
        clothes = fit_clothes(frames, persons, crop_lms[sample], matrices[sample], cam)
        del frames, persons

        def confidences():
            for k, rgb in _frames_by_index(video, track.frame_index, max_frames):
                ori = crop.apply(rgb)
                yield (k, ori), head_confidence(seg.person(ori), ori, crop_lms[k], matrices[k], cam, clothes)

        picks = set(np.linspace(0, n - 1, min(n, PREVIEW_FRAMES)).round().astype(int).tolist()) if preview else set()
        tiles = []
        writer = SubjectWriter(out, height=size, width=size, fx=cam.fx, fy=cam.fy, cx=cam.cx, cy=cam.cy,
                               exp_names=track.blendshape_names)
        with writer:
            writer.write_background(background)
            for done, ((k, ori), confidence) in enumerate(zero_phase_smooth(confidences()), 1):
                mask = head_mask(confidence, crop_lms[k], matrices[k], cam)
                head = np.where(mask[..., None], ori, background)
                parsing = np.zeros_like(ori)
                parsing[mask] = (0, 0, 255)
                writer.add_frame(int(track.frame_index[k]), ori=ori, head=head, parsing=parsing,
                                 landmarks=crop_lms[k], coeffs=track.blendshapes[k],
                                 renderer_pose=renderer_pose(matrices[k]))
                if k in picks:
                    tiles.append(_preview_row(ori, mask, head, crop_lms[k], rigid_uv[k],
                                              f"#{track.frame_index[k]}: rigid {frame_err[k]:.2f} px"))
                if progress is not None:
                    progress("writing", done, n)
            write_tracking_json(out / "tracking.json", fit, track.frame_index, rigid_err,
                                (crop.x0, crop.y0, crop.side, size))
    preview_path = None
    if preview:
        from nerfbs.images import write_png

        preview_path = out / "preview.png"
        title = (f"fov {fit.fov_degrees:.1f} deg " + (f"+- {fit.fov_sigma_degrees:.1f} (estimated)" if fit.estimated
                                                       else "(given)") +
                 f"   rigid landmarks' reprojection: median {np.median(frame_err):.2f} px, worst "
                 f"{frame_err[worst]:.2f} px (#{track.frame_index[worst]})")
        write_png(preview_path, _contact_sheet(tiles, title))
    if track.num_dropped:
        log.warning("%s: no face in %d of %d frames; they were left out", video, track.num_dropped, track.num_decoded)
    return PreprocessReport(subject=out, frames_written=n, frames_decoded=track.num_decoded,
                            frames_dropped=track.num_dropped, crop=(crop.x0, crop.y0, crop.side),
                            background_inpainted=float(1.0 - seen.mean()), preview=preview_path, fit=fit,
                            reprojection_median_px=float(np.median(frame_err)),
                            reprojection_worst_px=float(frame_err[worst]),
                            reprojection_worst_img_id=int(track.frame_index[worst]))


# ------------------------------------------------------------------------------------------- preview
def _preview_row(ori: np.ndarray, mask: np.ndarray, head: np.ndarray, landmarks: np.ndarray, rigid: np.ndarray,
                 label: str) -> np.ndarray:
    """crop with landmarks (green) and the rigid landmarks reprojected through the pose (red) | mask outline
    over the crop | head image, side by side, 256 px high, ``label`` written on it."""
    dots = ori.copy()
    radius = max(1, ori.shape[0] // 256)
    for x, y in landmarks.round().astype(int):
        cv2.circle(dots, (int(x), int(y)), radius, (0, 255, 0), -1)
    for x, y in rigid.round().astype(int):
        cv2.circle(dots, (int(x), int(y)), radius, (255, 0, 0), -1)
    tinted = ori.copy()
    tinted[mask] = (0.55 * tinted[mask] + 0.45 * np.array([0, 0, 255])).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(tinted, contours, -1, (255, 255, 0), max(1, ori.shape[0] // 256))
    row = np.concatenate([dots, tinted, head], axis=1)
    scale = 256 / ori.shape[0]
    row = cv2.resize(row, (round(row.shape[1] * scale), 256), interpolation=cv2.INTER_AREA)
    (w, h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    row[:h + 8, :w + 8] //= 3  # a dark box under the label
    cv2.putText(row, label, (4, h + 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return row


def _contact_sheet(rows: list[np.ndarray], title: str) -> np.ndarray:
    """Rows stacked in two columns (white gutter) under a line of ``title``."""
    if len(rows) % 2:
        rows = rows + [np.full_like(rows[0], 255)]
    gutter = np.full((rows[0].shape[0], 8, 3), 255, np.uint8)
    pairs = [np.concatenate([rows[i], gutter, rows[i + 1]], axis=1) for i in range(0, len(rows), 2)]
    spacer = np.full((8, pairs[0].shape[1], 3), 255, np.uint8)
    header = np.full((24, pairs[0].shape[1], 3), 255, np.uint8)
    cv2.putText(header, title, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header] + [x for p in pairs for x in (p, spacer)][:-1], axis=0)
