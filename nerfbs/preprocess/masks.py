"""Head masks and the static background for the video preprocessor.

A person segmenter (``nerfbs.preprocess.segmentation``) says, per pixel of the crop, how sure it is that the
pixel shows the person: face, hair, neck, clothes, and anyone else in view. The tracked geometry makes a head
of it: a skull ellipsoid, the space below it down to the collar line where long hair hangs (the skull's widest
ring lowered to the collar), and a neck cylinder, defined in MediaPipe's canonical face frame (cm; x right, y
up, z towards the viewer; the chin at y = -9.4, the forehead at y = 8.3, the nose tip at z = 7.6) and
projected into the crop, bound where the head can be, and the neck is cut at a fixed distance below the chin
(the "collar line"): the segmenter decides what is hair, the geometry only where the torso starts. Clothes
that reach higher than the collar line (a turtleneck, a raised collar) are told from the head by colour:
histograms of the head's colours (above the chin) and the torso's (below the collar line), gathered over the
video, give each pixel below the jaw a probability of being clothes. The head confidence (person confidence,
clothes removed, its edges snapped to the image's by a guided filter) is smoothed over time without lag
(``segmentation.zero_phase_smooth``), thresholded at 0.5, and only the region joined to the face's landmark
hull is kept (other people and stray blobs go). The background image is the per-pixel median over frames where
the pixel is surely not the person, holes filled by ``cv2.inpaint``. All arrays are numpy; nothing here is
differentiable.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from nerfbs.images import convex_hull_mask

SKULL_CENTRE = np.array([0.0, 2.5, -2.5])  # cm, canonical face frame
SKULL_RADII = np.array([11.5, 13.5, 12.5])  # cm: hair volume included
NECK_CENTRE_XZ = (0.0, -3.0)  # cm
NECK_RADIUS = 6.0  # cm
NECK_TOP = -3.0  # cm, y where the neck cylinder starts (inside the jaw)
COLLAR_Y = -15.0  # cm, y of the head/torso cut (5.6 cm below the chin)
HEAD_THRESHOLD = 0.5  # smoothed head confidence at the mask's edge
BACKGROUND_PERSON = 0.05  # person confidence above which a pixel is kept out of the background estimate
BACKGROUND_MARGIN = 0.02  # ... dilated by this share of the crop's side (soft hair edges)
CHIN, FOREHEAD = 152, 10  # landmark indices
BAND_ABOVE_CHIN = 0.2  # clothes may be cut from this share of the face's height above the chin downwards
CLOTHES_SURE = (0.75, 0.92)  # P(clothes | colour) from which the head confidence starts to fall, and is 0
HISTOGRAM_BINS = (4, 24, 24)  # CIELAB L, a, b
GUIDE_RADIUS = 1 / 64  # guided filter window radius, as a share of the crop's side (8 px at 512)
GUIDE_EPS = 1e-3  # guided filter regularisation (grey levels in [0, 1]): edges weaker than ~0.03 are smoothed
MIN_TORSO_SAMPLES = 2000  # fewer torso pixels over the sampled frames: no cut by colour


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


def hair_points() -> np.ndarray:
    """Points [M, 3] (cm) of the skull's widest horizontal ring and of the same ring lowered to the collar line:
    their hull with the skull holds hair that falls to the shoulders (cut at the collar line like the neck)."""
    x = SKULL_CENTRE[0] + SKULL_RADII[0] * np.cos(_CIRCLE)
    z = SKULL_CENTRE[2] + SKULL_RADII[2] * np.sin(_CIRCLE)
    return np.concatenate([np.stack([x, np.full_like(x, y), z], -1) for y in (SKULL_CENTRE[1], COLLAR_Y)])


def neck_points() -> np.ndarray:
    """Points [M, 3] (cm) on the neck cylinder between NECK_TOP and the collar."""
    x = NECK_CENTRE_XZ[0] + NECK_RADIUS * np.cos(_CIRCLE)
    z = NECK_CENTRE_XZ[1] + NECK_RADIUS * np.sin(_CIRCLE)
    return np.concatenate([np.stack([x, np.full_like(x, y), z], -1) for y in (NECK_TOP, COLLAR_Y)])


def _hull_mask(pixels: np.ndarray, size: int) -> np.ndarray:
    return convex_hull_mask(pixels, size, size)


def possible_head(head_to_camera: np.ndarray, cam: Camera) -> np.ndarray:
    """[S, S] bool: where the head (skull with hair, long hair and neck down to the collar) can be."""
    skull = _hull_mask(project(np.concatenate([skull_points(), hair_points()]), head_to_camera, cam), cam.size)
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




def background_excluded(person: np.ndarray) -> np.ndarray:
    """[S, S] bool: pixels kept out of the background estimate, given the frame's person confidence [S, S]
    (everything the segmenter might call person, widened by a margin for soft edges)."""
    size = person.shape[0]
    r = max(1, round(BACKGROUND_MARGIN * size))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate((person > BACKGROUND_PERSON).astype(np.uint8), kernel).astype(bool)


# ------------------------------------------------------------------------------------------- clothes
def below_jaw(landmarks: np.ndarray, size: int) -> np.ndarray:
    """[S, S] bool: pixels beyond the line across the face at BAND_ABOVE_CHIN of its height above the chin
    (perpendicular to the forehead-chin axis), outside the face's landmark hull: where clothes may be."""
    chin, top = landmarks[CHIN], landmarks[FOREHEAD]
    axis = chin - top
    height = max(float(np.linalg.norm(axis)), 1e-6)
    down = axis / height
    vv, uu = np.mgrid[0:size, 0:size].astype(np.float32)
    s = (uu - chin[0]) * down[0] + (vv - chin[1]) * down[1]
    return (s > -BAND_ABOVE_CHIN * height) & ~face_hull(landmarks, size)


def _bins(rgb: np.ndarray) -> np.ndarray:
    """Histogram bin index [...] int64 of RGB uint8 pixels [..., 3]: CIELAB with coarse lightness and fine
    chroma, so that a shadow on the skin changes the bin less than another material does."""
    lab = cv2.cvtColor(np.ascontiguousarray(rgb.reshape(-1, 1, 3)), cv2.COLOR_RGB2LAB).reshape(rgb.shape)
    idx = lab.astype(np.int64) * np.array(HISTOGRAM_BINS) // 256
    return (idx[..., 0] * HISTOGRAM_BINS[1] + idx[..., 1]) * HISTOGRAM_BINS[2] + idx[..., 2]


def _histogram(pixels: np.ndarray) -> np.ndarray:
    """[bins] float64 colour frequencies of RGB uint8 pixels [N, 3] (``_bins``), summing to 1."""
    counts = np.bincount(_bins(pixels), minlength=int(np.prod(HISTOGRAM_BINS))).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


@dataclass(frozen=True)
class ClothesModel:
    """Colour histograms (``_bins``) of the head (face and hair above the chin) and the torso (below the
    collar line), gathered over frames of one video."""

    head: np.ndarray
    torso: np.ndarray

    def probability(self, rgb: np.ndarray) -> np.ndarray:
        """[H, W] float32: P(torso | colour) of each pixel of rgb [H, W, 3] uint8 with equal priors; 0.5
        for colours seen in neither."""
        idx = _bins(rgb)
        t, h = self.torso[idx], self.head[idx]
        return ((t + 1e-6) / (t + h + 2e-6)).astype(np.float32)


def fit_clothes(frames: list[np.ndarray], persons: list[np.ndarray], landmarks: np.ndarray,
                matrices: np.ndarray, cam: Camera) -> ClothesModel | None:
    """The head and torso colour histograms of ``frames`` (RGB [S, S, 3] uint8) with their person
    confidences [S, S], landmarks [K, 478, 2] and poses [K, 4, 4]; None when the torso is (nearly) never
    in view below the collar line."""
    head, torso = [], []
    for rgb, person, lms, m in zip(frames, persons, landmarks, matrices):
        sure = person > 0.9
        collar = below_collar(m, cam)
        head.append(rgb[sure & ~below_jaw(lms, cam.size) & ~collar])
        torso.append(rgb[sure & collar & ~possible_head(m, cam)])
    torso_px = np.concatenate(torso) if torso else np.zeros((0, 3), np.uint8)
    if len(torso_px) < MIN_TORSO_SAMPLES:
        return None
    return ClothesModel(head=_histogram(np.concatenate(head)), torso=_histogram(torso_px))


# ------------------------------------------------------------------------------------------- masks
def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter (2010): src [H, W] float32 filtered to follow the edges of guide [H, W]
    float32 (grey levels in [0, 1]); in each (2 radius + 1)^2 window the output is a linear function of the
    guide, fitted to src by least squares with ridge ``eps``. Returns [H, W] float32."""
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide), box(src)
    a = (box(guide * src) - mean_i * mean_p) / (box(guide * guide) - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def head_confidence(person: np.ndarray, rgb: np.ndarray, landmarks: np.ndarray, head_to_camera: np.ndarray,
                    cam: Camera, clothes: ClothesModel | None) -> np.ndarray:
    """[S, S] float32 in [0, 1]: how sure a pixel shows the head: the person confidence [S, S], lowered to 0
    on clothes, its edges snapped to the image's by a guided filter (the segmenter sees the crop at 256 px).

    Clothes are found with two thresholds on P(clothes | colour) (``CLOTHES_SURE``, as a hysteresis): the
    regions below the jaw where it exceeds the lower one, that hold a pixel above the upper one and reach
    below the collar line (clothes come up from the torso; a shadow on the neck does not). Without a
    ``clothes`` model no clothes are removed.
    """
    conf = person.astype(np.float32)
    if clothes is not None:
        lo, hi = CLOTHES_SURE
        p = clothes.probability(rgb)
        band = below_jaw(landmarks, cam.size)
        weak = (p > lo) & band
        seeds = (p > hi) & band & below_collar(head_to_camera, cam)
        found = _components_touching(weak, seeds)
        conf *= np.where(found, np.clip((hi - p) / (hi - lo), 0.0, 1.0), 1.0).astype(np.float32)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    radius = max(1, round(GUIDE_RADIUS * cam.size))
    return np.clip(guided_filter(grey, conf, radius, GUIDE_EPS), 0.0, 1.0)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """mask [H, W] bool with enclosed holes filled."""
    pad = np.pad(mask.astype(np.uint8), 1)
    flood = pad.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    return mask | (flood[1:-1, 1:-1] == 0)


def _components_touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The connected components (8-connected) of mask [H, W] bool that overlap seed [H, W] bool."""
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = np.unique(labels[seed & mask])
    return np.isin(labels, keep[keep > 0])


def head_mask(confidence: np.ndarray, landmarks: np.ndarray, head_to_camera: np.ndarray, cam: Camera
              ) -> np.ndarray:
    """[S, S] bool head mask (face, hair, ears, neck above the collar line) of one crop.

    ``confidence`` [S, S] the frame's head confidence (``head_confidence``, smoothed over time); landmarks
    [478, 2] crop pixels; ``head_to_camera`` [4, 4] the frame's pose. The mask is where the confidence
    reaches HEAD_THRESHOLD inside the possible head, above the collar line, joined to the face's landmark
    hull (which is always head), enclosed holes filled.
    """
    possible = possible_head(head_to_camera, cam) & ~below_collar(head_to_camera, cam)
    sure = cv2.erode(face_hull(landmarks, cam.size).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    sure &= possible
    mask = (confidence >= HEAD_THRESHOLD) & possible
    mask = _components_touching(mask | sure, sure)
    return _fill_holes(mask) & possible
