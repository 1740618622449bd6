import math

import pytest
import torch

from nerfbs.data.camera import Intrinsics, image_rays
from nerfbs.export.views import look_at
from nerfbs.render.carve import cell_centres, silhouette_cells
from taichi_kernels.occupancy import OccupancyGrid

BOUND, RES, RADIUS, DIST = 0.06, 32, 0.03, 0.3
CAMERA = Intrinsics(height=48, width=48, fx=120.0, fy=120.0, cx=23.5, cy=23.5)


def _ring_poses(count: int) -> torch.Tensor:
    """Cameras on a horizontal ring (y = 0) at distance DIST, looking at the origin, y up."""
    a = torch.linspace(0, 2 * math.pi, count + 1)[:-1]
    positions = torch.stack((DIST * torch.sin(a), torch.zeros_like(a), DIST * torch.cos(a)), 1)
    return look_at(positions, torch.tensor([0.0, 1.0, 0.0])).float()


def _sphere_masks(poses: torch.Tensor, radius: float = RADIUS) -> torch.Tensor:
    """[N, H, W] bool: pixels whose ray meets the sphere of ``radius`` at the origin."""
    origins, directions, _ = image_rays(poses, CAMERA)
    closest = origins - (origins * directions).sum(1, keepdim=True) * directions
    return (closest.norm(dim=1) < radius).reshape(poses.shape[0], CAMERA.height, CAMERA.width)


def test_silhouette_cells_keep_the_object_and_carve_what_no_view_sees_inside():
    poses = _ring_poses(12)
    masks = _sphere_masks(poses)
    centre = poses[0, :3, :3].T @ (torch.zeros(3) - poses[0, :3, 3])
    assert torch.allclose(centre, torch.tensor([0.0, 0.0, DIST]), atol=1e-5)  # look_at: the origin lies ahead
    kept = silhouette_cells(RES, BOUND, CAMERA, zip(poses, masks))
    centres = cell_centres(RES, BOUND, torch.device("cpu"))
    r = centres.norm(dim=1)
    assert kept[r < RADIUS + 0.5 * math.sqrt(3) * 2 * BOUND / RES].all()  # every cell the sphere touches
    assert not kept[centres[:, 1].abs() > 0.055].any()  # above and below the sphere (and its dilated silhouettes)
    # union over views: a cell beside the sphere lies in front of it for the camera looking along its axis
    beside = (centres[:, 1].abs() < 0.01) & (r > 0.045) & (r < 0.055)
    assert beside.any() and kept[beside].all()
    assert 0.1 < kept.float().mean() < 0.9


def test_one_frame_enough_to_keep_and_unseen_cells_are_carved():
    poses = _ring_poses(4)
    masks = _sphere_masks(poses)
    shifted = masks.clone()
    shifted[1] = _sphere_masks(poses[1:2], radius=0.045)[0]  # one frame with a larger silhouette
    base = silhouette_cells(RES, BOUND, CAMERA, zip(poses, masks))
    more = silhouette_cells(RES, BOUND, CAMERA, zip(poses, shifted))
    assert (base <= more).all() and more.sum() > base.sum()
    narrow = Intrinsics(height=48, width=48, fx=2000.0, fy=2000.0, cx=23.5, cy=23.5)  # sees the centre only
    full = torch.ones(4, 48, 48, dtype=torch.bool)
    seen = silhouette_cells(RES, BOUND, narrow, zip(poses, full))
    assert 0 < seen.float().mean() < 0.2
    with pytest.raises(ValueError, match="match"):
        silhouette_cells(RES, BOUND, CAMERA, zip(poses, full[:, :40]))


def test_restricted_grid_never_evaluates_or_occupies_disallowed_cells():
    grid = OccupancyGrid(bound=BOUND, resolution=16)
    centres = cell_centres(16, BOUND, torch.device("cpu"))
    allowed = centres[:, 0] > 0
    grid.restrict(allowed)
    assert torch.equal(grid.occupied(), allowed)  # before the first update: every allowed cell
    evaluated = []

    def density(points, frame_index, coeffs):
        evaluated.append(points)
        return torch.full((points.shape[0],), 100.0)

    for step in (0, 300):
        grid.update(density, torch.ones(2, 1), step=step, warmup_steps=256, generator=torch.Generator().manual_seed(0))
        points = torch.cat(evaluated)
        assert (points[:, 0] > -1e-6).all()  # only cells of the allowed half were evaluated
        assert torch.equal(grid.occupied(), allowed) and (grid.density[~allowed] == 0).all()
        evaluated.clear()
    assert set(grid.state_dict()) == {"density", "bitfield", "mean"}  # the restriction is not saved
    with pytest.raises(ValueError, match="bool"):
        grid.restrict(allowed.float())
