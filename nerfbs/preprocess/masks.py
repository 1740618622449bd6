"""Head masks and the static background for the video preprocessor.

The head's extent comes from the tracked pose: a skull ellipsoid and a neck cylinder, defined in
MediaPipe's canonical face frame (cm; x right, y up, z towards the viewer; the chin at y = -9.4, the
forehead at y = 8.3, the nose tip at z = 7.6) and projected into the crop. Outside them is surely not
head; the neck is cut at a fixed distance below the chin (the "collar"). Inside them, GrabCut decides,
seeded by the face's landmark hull (surely head) and by the difference to the background image, which
is the per-pixel median over frames where that pixel is outside the person, holes filled by
``cv2.inpaint``. All arrays are numpy; nothing here is differentiable.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SKULL_CENTRE = np.array([0.0, 2.5, -2.5])  # cm, canonical face frame
SKULL_RADII = np.array([11.5, 13.5, 12.5])  # cm: hair volume included
PERSON_MARGIN = 1.3  # the skull scaled by this is kept out of the background estimate
NECK_CENTRE_XZ = (0.0, -3.0)  # cm
NECK_RADIUS = 6.0  # cm
NECK_TOP = -3.0  # cm, y where the neck cylinder starts (inside the jaw)
COLLAR_Y = -15.0  # cm, y of the head/torso cut (5.6 cm below the chin)
DIFF_THRESHOLD = 24.0  # 8-bit colour distance above which a pixel differs from the background
GRABCUT_SIDE = 224  # GrabCut runs on the head's box scaled to at most this side
GRABCUT_ITERATIONS = 3


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics of the crop (pixel centres at integers) and its size."""

    fx: float
    fy: float
    cx: float
    cy: float
    size: int


def project(points: np.ndarray, head_to_camera: np.ndarray, cam: Camera) -> np.ndarray:
    """Pixels [N, 2] (u, v) of canonical-frame points [N, 3] (cm) seen through ``head_to_camera`` [4, 4]
    (MediaPipe's matrix: OpenGL camera, looking down -z)."""
    p = points @ head_to_camera[:3, :3].T + head_to_camera[:3, 3]
    depth = np.maximum(-p[:, 2], 1e-3)
    return np.stack([cam.cx + cam.fx * p[:, 0] / depth, cam.cy - cam.fy * p[:, 1] / depth], -1)


def _sphere(n: int = 12) -> np.ndarray:
    """Points [n * 2n, 3] on the unit sphere."""
    theta, phi = np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, 2 * n, endpoint=False))
    return np.stack([np.sin(theta) * np.cos(phi), np.cos(theta), np.sin(theta) * np.sin(phi)], -1).reshape(-1, 3)


_UNIT_SPHERE = _sphere()
_CIRCLE = np.linspace(0, 2 * np.pi, 24, endpoint=False)


def skull_points(scale: float = 1.0) -> np.ndarray:
    """Points [M, 3] (cm) on the skull ellipsoid (hair included), its radii times ``scale``."""
    return SKULL_CENTRE + _UNIT_SPHERE * SKULL_RADII * scale


def neck_points() -> np.ndarray:
    """Points [M, 3] (cm) on the neck cylinder between NECK_TOP and the collar."""
    x = NECK_CENTRE_XZ[0] + NECK_RADIUS * np.cos(_CIRCLE)
    z = NECK_CENTRE_XZ[1] + NECK_RADIUS * np.sin(_CIRCLE)
    return np.concatenate([np.stack([x, np.full_like(x, y), z], -1) for y in (NECK_TOP, COLLAR_Y)])


def _hull_mask(pixels: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    hull = cv2.convexHull(np.round(pixels * 4).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=2)
    return mask.astype(bool)


def possible_head(head_to_camera: np.ndarray, cam: Camera) -> np.ndarray:
    """[S, S] bool: where the head (skull with hair, neck down to the collar) can be."""
    skull = _hull_mask(project(skull_points(), head_to_camera, cam), cam.size)
    neck = _hull_mask(project(neck_points(), head_to_camera, cam), cam.size)
    return skull | neck


def below_collar(head_to_camera: np.ndarray, cam: Camera) -> np.ndarray:
    """[S, S] bool: pixels on the torso's side of the collar line (the cut through the neck)."""
    a, b = project(np.array([[-20.0, COLLAR_Y, NECK_CENTRE_XZ[1]], [20.0, COLLAR_Y, NECK_CENTRE_XZ[1]]]),
                   head_to_camera, cam)
    down = project(np.array([[0.0, COLLAR_Y - 10.0, NECK_CENTRE_XZ[1]]]), head_to_camera, cam)[0]
    vv, uu = np.mgrid[0:cam.size, 0:cam.size].astype(np.float64)
    normal = np.array([-(b - a)[1], (b - a)[0]])
    if np.dot(normal, down - a) < 0:
        normal = -normal
    return (uu - a[0]) * normal[0] + (vv - a[1]) * normal[1] > 0


def person_prior(head_to_camera: np.ndarray, cam: Camera) -> np.ndarray:
    """[S, S] bool: pixels that may show the person (head, neck, and a torso widening below the collar);
    the background is estimated only where this is False."""
    head = _hull_mask(project(skull_points(PERSON_MARGIN), head_to_camera, cam), cam.size)
    head |= _hull_mask(project(neck_points(), head_to_camera, cam), cam.size)
    c = project(np.array([[0.0, COLLAR_Y, NECK_CENTRE_XZ[1]]]), head_to_camera, cam)[0]
    chin = project(np.array([[0.0, -9.4, 4.3]]), head_to_camera, cam)[0]
    face = np.linalg.norm(project(np.array([[0.0, 8.3, 4.5]]), head_to_camera, cam)[0] - chin)
    vv, uu = np.mgrid[0:cam.size, 0:cam.size].astype(np.float64)
    below = vv - (chin[1] + c[1]) / 2
    torso = (below > 0) & (np.abs(uu - c[0]) < 0.45 * face + 1.5 * below)
    return head | torso


def face_hull(landmarks: np.ndarray, size: int) -> np.ndarray:
    """[S, S] bool: the convex hull of the face landmarks [478, 2] (surely head)."""
    return _hull_mask(landmarks, size)


# ------------------------------------------------------------------------------------------- background
def estimate_background(frames: list[np.ndarray], excluded: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Background RGB [S, S, 3] uint8: the per-pixel median over ``frames`` (RGB [S, S, 3]) where the
    pixel is not ``excluded`` ([S, S] bool); pixels never visible are inpainted (Telea). Also returns
    where it was seen ([S, S] bool)."""
    stack = np.stack(frames).astype(np.float32)  # [K, S, S, 3]
    hidden = np.stack(excluded)  # [K, S, S]
    stack[hidden] = np.nan
    seen = ~hidden.all(0)
    median = np.zeros(stack.shape[1:], np.float32)
    if seen.any():
        median[seen] = np.nanmedian(stack[:, seen], axis=0)
    background = np.clip(median + 0.5, 0, 255).astype(np.uint8)
    holes = (~seen).astype(np.uint8)
    if holes.any() and seen.any():
        background = cv2.inpaint(background, holes, 7, cv2.INPAINT_TELEA)
    return background, seen


# ------------------------------------------------------------------------------------------- masks
def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """mask [H, W] bool with enclosed holes filled."""
    pad = np.pad(mask.astype(np.uint8), 1)
    flood = pad.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    return (mask | (flood[1:-1, 1:-1] == 0))


def _component_touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The connected components of mask [H, W] bool that overlap seed [H, W] bool."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = np.unique(labels[seed & mask])
    keep = keep[keep > 0]
    return np.isin(labels, keep) if count > 1 else mask


def head_mask(rgb: np.ndarray, landmarks: np.ndarray, head_to_camera: np.ndarray, cam: Camera,
              background: np.ndarray | None, seen: np.ndarray | None = None) -> np.ndarray:
    """[S, S] bool head mask (face, hair, ears, neck above the collar) of one crop rgb [S, S, 3] uint8.

    landmarks [478, 2] crop pixels; ``head_to_camera`` [4, 4] the frame's pose; ``background`` [S, S, 3]
    uint8 or None (then GrabCut works from colour alone), trusted only where ``seen`` [S, S] bool (default:
    everywhere); elsewhere GrabCut decides from colour.
    """
    size = cam.size
    possible = possible_head(head_to_camera, cam) & ~below_collar(head_to_camera, cam)
    face = face_hull(landmarks, size)
    sure = cv2.erode(face.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & possible
    gc = np.full((size, size), cv2.GC_BGD, np.uint8)
    if background is not None:
        blur = lambda a: cv2.GaussianBlur(a, (5, 5), 0).astype(np.float32)  # noqa: E731
        same = np.abs(blur(rgb) - blur(background)).max(-1) <= DIFF_THRESHOLD
        if seen is not None:
            same &= seen
        gc[possible] = np.where(same[possible], cv2.GC_PR_BGD, cv2.GC_PR_FGD)
    else:
        gc[possible] = cv2.GC_PR_FGD
    gc[sure] = cv2.GC_FGD
    ys, xs = np.nonzero(cv2.dilate(possible.astype(np.uint8), np.ones((15, 15), np.uint8)))
    if len(ys) == 0:
        return face
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    scale = min(1.0, GRABCUT_SIDE / max(y1 - y0, x1 - x0))
    small = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    roi = cv2.resize(np.ascontiguousarray(rgb[y0:y1, x0:x1]), small, interpolation=cv2.INTER_AREA)
    roi_gc = cv2.resize(gc[y0:y1, x0:x1], small, interpolation=cv2.INTER_NEAREST)
    if (roi_gc == cv2.GC_FGD).any() and ((roi_gc == cv2.GC_BGD) | (roi_gc == cv2.GC_PR_BGD)).any():
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(cv2.cvtColor(roi, cv2.COLOR_RGB2BGR), roi_gc, None, bgd, fgd, GRABCUT_ITERATIONS,
                    cv2.GC_INIT_WITH_MASK)
    fg = ((roi_gc == cv2.GC_FGD) | (roi_gc == cv2.GC_PR_FGD)).astype(np.float32)
    full = np.zeros((size, size), bool)
    full[y0:y1, x0:x1] = cv2.resize(fg, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) > 0.5
    mask = cv2.morphologyEx(full.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
    mask = _component_touching(mask & possible, sure) | sure
    return _fill_holes(mask) & possible
