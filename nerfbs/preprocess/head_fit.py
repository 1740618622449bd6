"""Rigid head tracking over a whole video: MediaPipe's per-frame head matrices and landmarks in; one
focal length, a personal rigid landmark shape and bundle-adjusted, smoothed head poses out
(``nerfbs.preprocess.bundle_adjust``); and the rigid landmarks' reprojection figures that tell how well
those poses register the frames.

Only landmarks on parts of the face that no expression moves enter the fit (``RIGID_LANDMARKS``).
Poses are MediaPipe's convention throughout: a 4x4 matrix from the canonical face (cm; x right, y up,
z towards the viewer) to an OpenGL camera (looking down -z). All arrays are numpy float64.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from nerfbs.atomic import write_text
from nerfbs.preprocess.bundle_adjust import BundleSettings, bundle_adjust, project, projection_jacobian
from nerfbs.preprocess.tracking import MEDIAPIPE_FOV_DEGREES, smooth_rigid

# MediaPipe face-mesh indices of points that expressions do not move (pairs: subject's right, left).
# Left out on purpose: lips and mouth corners, the jaw and chin, the face oval below the temples
# (a silhouette when the head turns), brows (46..107, 276..336), eyelids (the eye contours but the
# corners), irises, the nostril wings (48/278, 98/327, 129/358: they flare and sneer), the nose tip and
# what is under it (1, 4, 45/275, 2, 19, 94: they follow the upper lip in speech), the glabella (8, 9:
# frowns), the outer eye corners themselves (33/263: squints and blinks drag them) and the cheeks.
# On d10 and katie (docs/PERF.md, session 6) each of these has a rigid-fit residual at most ~1.5x the best.
RIGID_LANDMARKS = (
    168, 6, 197, 195, 5,  # nose: root, bridge and the top of the tip, on the midline
    122, 351, 196, 419, 3, 248, 188, 412, 174, 399, 51, 281,  # nose: the sides of the bridge
    133, 362, 243, 463, 244, 464,  # inner eye corners and the points just medial of them
    130, 359, 226, 446, 113, 342,  # just lateral of the outer eye corners
    10, 151, 108, 337, 69, 299, 104, 333, 109, 338, 67, 297,  # forehead: midline, above the brows, hairline
    54, 284, 103, 332, 71, 301, 68, 298, 21, 251, 156, 383, 139, 368,  # temples, lateral of the brows
)
PROFILE_FOVS = (15.0, 20.0, 26.0, 33.0, 42.0, 53.0, 66.0, 84.0)  # vertical fovs the focal length is profiled at
FOCAL_PRIOR_SIGMA = 0.5  # prior on log f about MediaPipe's 63 degrees: a factor 1.65 is one sigma
# MediaPipe's landmarks do not show a lens's perspective faithfully: on synthetic heads filmed at 25 and 60
# degrees the profile's minimum sat near 55 degrees for both (docs/PERF.md, session 6). This systematic
# error (in log f) is added to the statistical one in the reported uncertainty.
FOCAL_SYSTEMATIC_SIGMA = 0.4
ROTATION_SIGMA_DEG = 0.5  # prior on each frame's rotation about MediaPipe's (smoothed by PRIOR_SIGMA_S)
PRIOR_SIGMA_S = 0.2  # Gaussian window on MediaPipe's rotations before they serve as the prior, seconds
POSE_SIGMA_S = 0.04  # zero-phase Gaussian window on the fitted poses, seconds (about one frame)
NOISE_FRACTION = 0.005  # expected landmark error as a fraction of the rigid landmarks' extent in the image
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def focal_from_fov(height: int, fov_degrees: float) -> float:
    """Focal length in pixels of an image ``height`` pixels high with a vertical field of view in degrees."""
    return (height / 2) / math.tan(math.radians(fov_degrees) / 2)


def fov_from_focal(height: int, focal: float) -> float:
    """Vertical field of view in degrees of an image ``height`` pixels high seen with focal length ``focal``."""
    return math.degrees(2 * math.atan((height / 2) / focal))


@dataclass
class HeadFit:
    """The rigid head of a video of N frames.

    matrices [N, 4, 4]: head poses (canonical face, cm -> OpenGL camera), fitted and smoothed;
    shape [L, 3] cm: the personal positions of ``RIGID_LANDMARKS`` in the canonical face frame;
    focal (pixels of the video) and fov_degrees (vertical), with their 1-sigma uncertainties (nan when
    given; see ``estimate_focal``); ``estimated``: whether the focal length was fitted (else it was given).
    """

    matrices: np.ndarray
    shape: np.ndarray
    focal: float
    focal_sigma: float
    fov_degrees: float
    fov_sigma_degrees: float
    estimated: bool
    iterations: int


def _start(matrices: np.ndarray, focal: float, height: int) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's head poses as OpenCV rotations [N, 3, 3] and translations [N, 3] (cm), the translations
    scaled from its 63-degree lens to ``focal`` (the head keeps its image size)."""
    ratio = focal / focal_from_fov(height, MEDIAPIPE_FOV_DEGREES)
    return OPENGL_TO_OPENCV @ matrices[:, :3, :3], (matrices[:, :3, 3] * ratio) @ OPENGL_TO_OPENCV


def estimate_focal(obs: np.ndarray, matrices: np.ndarray, shape0: np.ndarray, width: int, height: int,
                   settings: BundleSettings) -> tuple[float, float, dict[float, float]]:
    """The focal length (pixels) that best explains the rigid landmarks obs [N, L, 2], its 1-sigma and the
    profile behind them ({vertical fov in degrees: cost}).

    The bundle adjustment runs with the focal length held at each of ``PROFILE_FOVS`` (from MediaPipe's
    poses, without the rotation prior: only the landmarks' geometry speaks); a weak prior on log f about
    MediaPipe's 63 degrees (``FOCAL_PRIOR_SIGMA``) is added, and a parabola in log f through the lowest
    point and its neighbours gives the estimate and its curvature. The 1-sigma comes from that curvature
    with the cost scaled by the residuals' variance and by their correlation from frame to frame (an AR(1)
    factor (1 + rho) / (1 - rho)), so a flat profile reports a large uncertainty, not a false precision;
    ``FOCAL_SYSTEMATIC_SIGMA`` is added to it.
    """
    settings = dataclasses.replace(settings, tolerance=1e-6)
    centre = ((width - 1) / 2, (height - 1) / 2)
    log_prior = math.log(focal_from_fov(height, MEDIAPIPE_FOV_DEGREES))
    logs, costs, results = [], [], []
    for fov in PROFILE_FOVS:
        focal = focal_from_fov(height, fov)
        rot, trans = _start(matrices, focal, height)
        res = bundle_adjust(obs, rot, trans, shape0, focal, centre, fix_focal=True, settings=settings)
        logs.append(math.log(focal))
        costs.append(res.cost + 0.5 * ((logs[-1] - log_prior) / FOCAL_PRIOR_SIGMA) ** 2)
        results.append(res)
    k = int(np.clip(np.argmin(costs), 1, len(costs) - 2))
    x, y = np.array(logs[k - 1:k + 2]), np.array(costs[k - 1:k + 2])
    a, b, _ = np.polyfit(x, y, 2)
    best = results[int(np.argmin(costs))]
    inliers = best.weights > 0.5
    r = best.residuals
    var = float((r[inliers] ** 2).mean()) / settings.noise_px ** 2  # per coordinate, in sigma^2
    rho = float(np.clip((r[1:] * r[:-1])[inliers[1:] & inliers[:-1]].sum() /
                        max((r[inliers] ** 2).sum(), 1e-30), 0.0, 0.95))
    scale = max(1.0, var) * (1 + rho) / (1 - rho)
    if a <= 0:  # no curvature: the landmarks say nothing about the lens; the prior alone
        return math.exp(log_prior), math.exp(log_prior) * FOCAL_PRIOR_SIGMA, dict(zip(PROFILE_FOVS, costs))
    log_f = float(np.clip(-b / (2 * a), x.min(), x.max()))
    sigma = math.hypot(math.sqrt(scale / (2 * a)), FOCAL_SYSTEMATIC_SIGMA)
    return math.exp(log_f), math.exp(log_f) * sigma, dict(zip(PROFILE_FOVS, costs))


def fit_head(matrices: np.ndarray, landmarks: np.ndarray, times: np.ndarray, canonical: np.ndarray, width: int,
             height: int, *, fov_degrees: float | None = None) -> HeadFit:
    """Bundle-adjust a video's rigid head from MediaPipe's matrices [N, 4, 4] (made for its 63-degree
    camera) and raw landmarks [N, 478, 2] (video pixels) at ``times`` [N] seconds, with MediaPipe's
    canonical face [468, 3] (cm) as the start and prior of the personal shape. ``fov_degrees`` (vertical)
    fixes the focal length; None estimates it (``estimate_focal``). Each frame's rotation is held near
    MediaPipe's, smoothed (``ROTATION_SIGMA_DEG``, ``PRIOR_SIGMA_S``): its matrix sees the whole face, while
    the rigid landmarks alone leave the depth of the face, and with it the size of turns and nods, nearly
    free (on synthetic heads they gave nods 30-40 % too small). The landmarks decide the rest: translations,
    the shape, and rotations within that prior. The poses are then smoothed with a zero-phase window."""
    obs = landmarks[:, RIGID_LANDMARKS]
    shape0 = canonical[list(RIGID_LANDMARKS)]
    extent = np.median(np.linalg.norm(obs.max(1) - obs.min(1), axis=-1))
    settings = BundleSettings(noise_px=max(0.1, NOISE_FRACTION * float(extent)), rotation_sigma_deg=ROTATION_SIGMA_DEG)
    focal_sigma = math.nan
    if fov_degrees is None:
        focal, focal_sigma, _ = estimate_focal(obs, matrices, shape0, width, height, settings)
    else:
        focal = focal_from_fov(height, fov_degrees)
    rotations, translations = _start(matrices, focal, height)
    prior = OPENGL_TO_OPENCV @ smooth_rigid(matrices, times, PRIOR_SIGMA_S)[:, :3, :3]
    result = bundle_adjust(obs, rotations, translations, shape0, focal, ((width - 1) / 2, (height - 1) / 2),
                           fix_focal=True, rotation_prior=prior, settings=settings)
    fitted = np.tile(np.eye(4), (len(obs), 1, 1))
    fitted[:, :3, :3] = OPENGL_TO_OPENCV @ result.rotations
    fitted[:, :3, 3] = result.translations @ OPENGL_TO_OPENCV
    smoothed = smooth_rigid(fitted, times, POSE_SIGMA_S)
    fov_sigma = math.nan
    if fov_degrees is None:  # the same relative spread, through fov(f)
        fov_sigma = abs(fov_from_focal(height, focal / math.exp(focal_sigma / focal)) -
                        fov_from_focal(height, focal * math.exp(focal_sigma / focal))) / 2
    return HeadFit(matrices=smoothed, shape=result.shape, focal=focal, focal_sigma=focal_sigma,
                   fov_degrees=fov_from_focal(height, focal), fov_sigma_degrees=fov_sigma,
                   estimated=fov_degrees is None, iterations=result.iterations)


def triangulate(rotations: np.ndarray, translations: np.ndarray, focal: float, centre: tuple[float, float],
                observed: np.ndarray, iterations: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The rigid points [L, 3] that N known OpenCV cameras (rotations [N, 3, 3], translations [N, 3];
    world-to-camera) see at observed [N, L, 2] pixels, by linear least squares refined by Gauss-Newton on
    the reprojection error; and each observation's reprojection error [N, L] in pixels."""
    rot = torch.as_tensor(rotations, dtype=torch.float64)
    trans = torch.as_tensor(translations, dtype=torch.float64)
    obs = torch.as_tensor(observed, dtype=torch.float64)
    c = torch.as_tensor(centre, dtype=torch.float64)
    xy = (obs - c) / focal  # [N, L, 2] normalised image coordinates
    # x' (r3 . P + t3) = r1 . P + t1 (and the same with y', r2, t2): rows [N, L, 2, 3] of A P = b
    a = xy[..., None] * rot[:, None, 2:3, :] - rot[:, None, :2, :]
    b = trans[:, None, :2] - xy * trans[:, None, 2:3]
    points = torch.linalg.solve(torch.einsum("nlai,nlaj->lij", a, a), torch.einsum("nlai,nla->li", a, b))
    for _ in range(iterations):
        uv, cam = project(rot, trans, points, focal, c)
        j = projection_jacobian(cam, focal) @ rot[:, None]  # [N, L, 2, 3]
        h = torch.einsum("nlai,nlaj->lij", j, j)
        points = points - torch.linalg.solve(h, torch.einsum("nlai,nla->li", j, uv - obs))
    uv, _ = project(rot, trans, points, focal, c)
    return points.numpy(), (uv - obs).norm(dim=-1).numpy()


def rigid_reprojection(poses: np.ndarray, fx: float, fy: float, cx: float, cy: float,
                       landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How well camera poses register a subject's frames: the best rigid points for those poses
    (triangulated from all frames) projected into every frame, pixels [N, L, 2], and their distances to
    the rigid landmarks [N, L] in pixels.

    poses [N, 4, 4]: renderer camera-to-world (OpenCV camera axes, any world); intrinsics in pixels;
    landmarks [N, 478, 2] pixel (x, y). Depends on nothing but these, so it compares any two trackers.
    When fy != fx the errors are measured with v stretched to fx (the subjects written here have fx = fy).
    """
    rot = np.transpose(poses[:, :3, :3], (0, 2, 1))  # world-to-camera
    trans = -np.einsum("nij,nj->ni", rot, poses[:, :3, 3])
    obs = landmarks[:, RIGID_LANDMARKS].astype(np.float64).copy()
    obs[..., 1] = cy + (obs[..., 1] - cy) * fx / fy  # one focal length: stretch v when fy != fx
    points, errors = triangulate(rot, trans, fx, (cx, cy), obs)
    cam = np.einsum("nij,lj->nli", rot, points) + trans[:, None]
    uv = np.stack([cx + fx * cam[..., 0] / cam[..., 2], cy + fy * cam[..., 1] / cam[..., 2]], -1)
    return uv, errors


def write_tracking_json(path: str | os.PathLike, fit: HeadFit, img_ids: np.ndarray, errors: np.ndarray,
                        crop: tuple[int, int, int, int]) -> None:
    """tracking.json: the lens (focal length in video pixels, vertical fov, formal 1-sigma, whether it was
    estimated), the crop (x0, y0, side in video pixels; size of the subject's images), the rigid landmarks
    and their personal shape (cm), and per frame (``img_ids`` [N]) the mean and largest rigid-landmark
    reprojection error (errors [N, L], subject pixels), with the median and worst frame."""
    per_frame = errors.mean(1)
    worst = int(per_frame.argmax())
    finite = (lambda x: None if not math.isfinite(x) else round(float(x), 4))
    data = {
        "format": "nerfbs-tracking", "version": 1,
        "focal_px": round(fit.focal, 4), "focal_sigma_px": finite(fit.focal_sigma),
        "fov_degrees": round(fit.fov_degrees, 4), "fov_sigma_degrees": finite(fit.fov_sigma_degrees),
        "focal_estimated": fit.estimated,
        "crop": dict(zip(("x0", "y0", "side", "size"), (int(v) for v in crop))),
        "rigid_landmarks": list(RIGID_LANDMARKS), "rigid_shape_cm": np.round(fit.shape, 4).tolist(),
        "reprojection_px": {"median": round(float(np.median(per_frame)), 4), "worst": round(float(per_frame[worst]), 4),
                            "worst_img_id": int(img_ids[worst]),
                            "what": "per frame, the mean distance (pixels of the subject's images) between the rigid "
                                    "landmarks and the best rigid points for the written poses, reprojected"},
        "frames": [{"img_id": int(i), "rigid_error_px": round(float(m), 4), "rigid_error_max_px": round(float(x), 4)}
                   for i, m, x in zip(img_ids, per_frame, errors.max(1))],
    }
    write_text(path, json.dumps(data, indent=1) + "\n")
