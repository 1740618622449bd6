"""Cameras that were never in the dataset: the original's novel-view swing and a turntable orbit.

All poses are renderer camera-to-world matrices (x right, y down, z forward; ../shared/FORMAT.md). The
head sits at the world origin, the centre of the scene box, as in the format. The subject's own cameras
give the rest: the world's up direction (their mean up vector, ``-P[:3, 1]``), the frontal direction
(their mean position) and the distance (their median distance to the origin).

The original renders each held-out frame a second time (``<i>_nvs.png``) from a camera at that distance
swinging about the up axis from +15 to -15 degrees over 100 frames (a sawtooth), always looking at the
head; ``nvs_poses`` reproduces it. ``orbit_poses`` turns the same camera all the way round.
Nothing here is differentiated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NVS_DEGREES = 15.0  # the original's swing: +15 to -15 degrees ...
NVS_CYCLE = 100  # ... over this many frames, then again


@dataclass(frozen=True)
class Rig:
    """Where novel cameras sit: unit ``up`` [3] and ``front`` [3] (orthogonal, world) and ``distance``."""

    up: torch.Tensor
    front: torch.Tensor
    distance: float


def rig_from_poses(poses: torch.Tensor) -> Rig:
    """The subject's camera rig from its poses [N, 4, 4] (renderer camera-to-world)."""
    if poses.dim() != 3 or tuple(poses.shape[1:]) != (4, 4) or poses.shape[0] == 0:
        raise ValueError(f"rig_from_poses: poses must be [N, 4, 4] with N >= 1, got {tuple(poses.shape)}")
    p = poses.double().cpu()
    up = -p[:, :3, 1].mean(0)
    up = up / up.norm().clamp_min(1e-12)
    positions = p[:, :3, 3]
    front = positions.mean(0)
    front = front - (front @ up) * up  # the frontal direction, level with the head
    if float(front.norm()) < 1e-9:  # cameras all above / below the head: any horizontal direction
        helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        if abs(float(helper @ up)) > 0.9:
            helper = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        front = helper - (helper @ up) * up
    front = front / front.norm()
    return Rig(up=up, front=front, distance=float(positions.norm(dim=-1).median()))


def rotation_about(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N, 3, 3] by ``angle`` [N] radians about the unit ``axis`` [3] (Rodrigues)."""
    a = axis.to(torch.float64)
    k = torch.zeros(3, 3, dtype=torch.float64)
    k[0, 1], k[0, 2], k[1, 0], k[1, 2], k[2, 0], k[2, 1] = -a[2], a[1], a[2], -a[0], -a[1], a[0]
    s, c = torch.sin(angle.double())[:, None, None], torch.cos(angle.double())[:, None, None]
    return torch.eye(3, dtype=torch.float64) + s * k + (1 - c) * (k @ k)


def look_at(positions: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Renderer camera-to-world poses [N, 4, 4] at ``positions`` [N, 3] looking at the origin, ``up`` [3] up."""
    forward = -positions / positions.norm(dim=-1, keepdim=True)
    right = torch.linalg.cross(forward, up.expand_as(forward))
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(forward, right)
    poses = torch.zeros(positions.shape[0], 4, 4, dtype=positions.dtype)
    poses[:, :3, 0], poses[:, :3, 1], poses[:, :3, 2], poses[:, :3, 3] = right, down, forward, positions
    poses[:, 3, 3] = 1.0
    return poses


def swing_poses(rig: Rig, degrees: torch.Tensor) -> torch.Tensor:
    """Poses [N, 4, 4] float32 of the rig's frontal camera turned by ``degrees`` [N] about the up axis."""
    rot = rotation_about(rig.up, torch.deg2rad(degrees.double()))  # [N, 3, 3]
    positions = rot @ (rig.front * rig.distance)  # [N, 3]
    return look_at(positions, rig.up).float()


def nvs_poses(rig: Rig, count: int) -> torch.Tensor:
    """The original's novel-view twins of ``count`` consecutive frames: [count, 4, 4] float32."""
    i = torch.arange(count, dtype=torch.float64)
    return swing_poses(rig, NVS_DEGREES - 2.0 * NVS_DEGREES * (i % NVS_CYCLE) / NVS_CYCLE)


def orbit_poses(rig: Rig, count: int, degrees: float = 360.0) -> torch.Tensor:
    """A turntable of ``count`` poses [count, 4, 4] float32, ``degrees`` of turn in all, starting frontal
    (a full turn does not repeat its first pose)."""
    if count < 1:
        raise ValueError(f"orbit_poses: count must be >= 1, got {count}")
    i = torch.arange(count, dtype=torch.float64)
    step = degrees / count if math.isclose(abs(degrees) % 360.0, 0.0) else degrees / max(count - 1, 1)
    return swing_poses(rig, i * step)
