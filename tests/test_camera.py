"""Pose conversion of the layout and pixel rays (FORMAT.md)."""
import numpy as np
import pytest
import torch

from nerfbs.data.camera import Intrinsics, image_rays, pixel_rays, project, renderer_from_stored, stored_from_renderer


def _original_conversion(pose: np.ndarray, scale: float = 0.33) -> np.ndarray:
    """The original loader's conversion, written out as FORMAT.md states it (rows y, z, x; flip y, z)."""
    return np.array([
        [pose[1, 0], -pose[1, 1], -pose[1, 2], pose[1, 3] * scale],
        [pose[2, 0], -pose[2, 1], -pose[2, 2], pose[2, 3] * scale],
        [pose[0, 0], -pose[0, 1], -pose[0, 2], pose[0, 3] * scale],
        [0, 0, 0, 1],
    ])


def _random_poses(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    poses = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        if np.linalg.det(q) < 0:
            q[:, 0] *= -1
        poses[i, :3, :3] = q
        poses[i, :3, 3] = rng.normal(size=3) * 0.3
    return poses


def test_round_trip_and_the_original_conversion():
    poses = _random_poses(8)
    for p in poses:
        stored = stored_from_renderer(p)
        np.testing.assert_allclose(renderer_from_stored(stored), p, atol=1e-12)
        np.testing.assert_allclose(_original_conversion(stored), p, atol=1e-12)
        np.testing.assert_allclose(stored_from_renderer(renderer_from_stored(stored)), stored, atol=1e-12)
    batch = torch.from_numpy(poses)
    torch.testing.assert_close(renderer_from_stored(stored_from_renderer(batch, 0.5), 0.5), batch)


def test_conversion_keeps_a_rotation():
    p = renderer_from_stored(_random_poses(1, seed=3)[0])
    np.testing.assert_allclose(p[:3, :3] @ p[:3, :3].T, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(p[:3, :3]) - 1) < 1e-9


def test_pixel_rays_follow_the_format():
    poses = torch.from_numpy(_random_poses(3, seed=1))
    fx, fy, cx, cy = 300.0, 280.0, 31.5, 40.0
    u = torch.tensor([0.0, 31.5, 63.0, 10.0], dtype=torch.float64)
    v = torch.tensor([0.0, 40.0, 63.0, 50.0], dtype=torch.float64)
    idx = torch.tensor([0, 1, 2, 2])
    o, d = pixel_rays(poses, fx, fy, cx, cy, u, v, idx)
    torch.testing.assert_close(o, poses[idx, :3, 3])
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(4, dtype=torch.float64))
    cam = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], -1)
    expected = torch.einsum("rij,rj->ri", poses[idx, :3, :3], cam)
    torch.testing.assert_close(d, expected / expected.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(d[1], poses[1, :3, 2])  # the principal point looks along the camera's z
    uv, depth = project(o[3:] + 0.7 * d[3:], poses[2], fx, fy, cx, cy)
    torch.testing.assert_close(uv[0], torch.stack([u[3], v[3]]))
    assert depth.item() > 0


def test_image_rays_are_image_then_row_major():
    poses = torch.from_numpy(_random_poses(2, seed=2)).float()
    o, d, index = image_rays(poses, Intrinsics(12, 16, 50.0, 50.0, 8.0, 6.0))
    assert o.shape == d.shape == (2 * 12 * 16, 3) and index.dtype == torch.int32
    assert index[:12 * 16].eq(0).all() and index[12 * 16:].eq(1).all()
    _, d_px = pixel_rays(poses, 50.0, 50.0, 8.0, 6.0, torch.tensor([5.0]), torch.tensor([7.0]), torch.tensor([1]))
    torch.testing.assert_close(d[12 * 16 + 7 * 16 + 5], d_px[0])


def test_intrinsics_resized_scale_with_the_image():
    half = Intrinsics(12, 16, 50.0, 40.0, 8.0, 6.0).resized(6, 8)
    assert half == Intrinsics(6, 8, 25.0, 20.0, 4.0, 3.0)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="4, 4"):
        renderer_from_stored(np.eye(3))
    with pytest.raises(ValueError, match="alike"):
        pixel_rays(torch.eye(4)[None], 1, 1, 0, 0, torch.zeros(3), torch.zeros(2), torch.zeros(3, dtype=torch.long))
