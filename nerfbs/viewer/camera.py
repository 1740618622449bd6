"""The browser's camera in the renderer's terms, and the subject's camera in the browser's.

viser reports a camera as the rotation ``wxyz`` (a unit quaternion) and ``position`` of its
camera-to-world transform in OpenCV's convention (x right, y down, z forward), which is the renderer's
(../shared/FORMAT.md), plus a vertical field of view and the canvas' aspect ratio. The viewer's world is
the renderer's world unchanged, so a viser camera is a renderer pose as it stands. Nothing here is
differentiated; poses are float64 numpy arrays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nerfbs.data.camera import Intrinsics

MIN_SIDE = 16  # pixels: the shortest side an image is ever rendered at


@dataclass(frozen=True, eq=False)
class View:
    """What one browser looks at: ``pose`` [4, 4] renderer camera-to-world, the vertical field of view
    ``fov_y`` (radians) and the canvas' ``aspect`` ratio (width / height)."""

    pose: np.ndarray
    fov_y: float
    aspect: float


def rotation_from_wxyz(wxyz) -> np.ndarray:
    """The rotation matrix [3, 3] of the quaternion (w, x, y, z) (normalised first)."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def wxyz_from_rotation(rot: np.ndarray) -> np.ndarray:
    """The unit quaternion (w, x, y, z) [4] of a rotation matrix [3, 3] (w >= 0)."""
    m = np.asarray(rot, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i], q[1 + j], q[1 + k] = 0.25 * s, (m[j, i] + m[i, j]) / s, (m[k, i] + m[i, k]) / s
    q = np.array(q)
    return (q if q[0] >= 0 else -q) / np.linalg.norm(q)


def pose_from_camera(wxyz, position) -> np.ndarray:
    """Renderer camera-to-world [4, 4] of a viser camera (rotation ``wxyz``, ``position`` [3])."""
    pose = np.eye(4)
    pose[:3, :3] = rotation_from_wxyz(wxyz)
    pose[:3, 3] = np.asarray(position, dtype=np.float64)
    return pose


def image_size(aspect: float, side: int) -> tuple[int, int]:
    """(height, width) of an image of ``aspect`` (width / height) whose longer side is ``side`` pixels."""
    if not aspect > 0 or side < 1:
        raise ValueError(f"image_size: aspect must be > 0 and side >= 1, got {aspect}, {side}")
    if aspect >= 1:
        return max(MIN_SIDE, round(side / aspect)), side
    return side, max(MIN_SIDE, round(side * aspect))


def intrinsics_for(fov_y: float, aspect: float, side: int) -> Intrinsics:
    """A centred pinhole camera of vertical field of view ``fov_y`` (radians) rendering an image of
    ``aspect`` with longer side ``side``: square pixels, the principal point at the image centre (the
    format's convention, cx = W / 2, as the synthetic and published subjects have it)."""
    if not 0 < fov_y < math.pi:
        raise ValueError(f"intrinsics_for: fov_y must lie in (0, pi), got {fov_y}")
    height, width = image_size(aspect, side)
    f = 0.5 * height / math.tan(0.5 * fov_y)
    return Intrinsics(height, width, f, f, width / 2, height / 2)


def fov_y_of(camera: Intrinsics) -> float:
    """The vertical field of view (radians) of a dataset camera."""
    return 2.0 * math.atan(0.5 * camera.height / camera.fy)


@dataclass(frozen=True)
class StartCamera:
    """Where a new browser's camera starts, in viser's terms: ``position``, ``look_at`` (the point the orbit
    turns about), the camera's ``up`` and ``fov_y`` (radians); and the scene's up direction ``scene_up``."""

    position: np.ndarray
    look_at: np.ndarray
    up: np.ndarray
    fov_y: float
    scene_up: np.ndarray


def start_camera(pose: np.ndarray, fov_y: float, scene_up: np.ndarray) -> StartCamera:
    """The browser camera equal to a dataset camera (``pose`` [4, 4], vertical field of view ``fov_y``): it
    looks along the pose's z axis with the pose's up (-y), orbiting the point of its optical axis nearest the
    head (the origin); ``scene_up`` [3] (the subject's cameras' mean up, ``export.views.rig_from_poses``)
    orients the scene."""
    pose = np.asarray(pose, dtype=np.float64)
    position, forward = pose[:3, 3], pose[:3, 2]
    depth = max(float(-position @ forward), 1e-3 * float(np.linalg.norm(position)) + 1e-9)
    return StartCamera(position=position.copy(), look_at=position + depth * forward, up=-pose[:3, 1].copy(),
                       fov_y=float(fov_y), scene_up=np.asarray(scene_up, dtype=np.float64))
