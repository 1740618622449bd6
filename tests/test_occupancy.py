import math

import pytest
import torch

from taichi_kernels import occupancy
from taichi_kernels.occupancy import OccupancyGrid
from taichi_kernels.reference import occupancy as ref

BOUND, RES, RADIUS = 0.06, 32, 0.03


def _centres(res=RES):
    i = torch.arange(res ** 3)
    xyz = torch.stack((i % res, (i // res) % res, i // (res * res)), dim=1).float()
    return (xyz + 0.5) * (2 * BOUND / res) - BOUND


def _sphere(points, frame_index, coeffs):
    """Density 100 inside a sphere of radius 0.03 whose centre moves along x by coeffs[frame, 1] * 0.02."""
    shift = coeffs[frame_index.long(), 1] * 0.02
    centre = torch.stack((shift, torch.zeros_like(shift), torch.zeros_like(shift)), dim=1)
    return 100.0 * ((points - centre).norm(dim=1) < RADIUS).float()


def _updated(coeffs, **kw):
    grid = OccupancyGrid(bound=BOUND, resolution=RES)
    grid.update(_sphere, coeffs, step=0, generator=torch.Generator().manual_seed(0), **kw)
    return grid


def test_pack_bitfield_matches_twin_and_unpacks():
    density = torch.rand(4096, generator=torch.Generator().manual_seed(0))
    packed = occupancy.pack_bitfield(density, 0.3)
    assert torch.equal(packed, ref.pack_bitfield(density, 0.3))
    assert torch.equal(occupancy.unpack_bitfield(packed), density > 0.3)
    with pytest.raises(ValueError, match="multiple of 8"):
        occupancy.pack_bitfield(density[:7], 0.3)


def test_update_marks_the_cells_of_a_known_field():
    grid = _updated(torch.tensor([[1.0, 0.0]]))
    half_diag = math.sqrt(3) * BOUND / RES
    dist = _centres().norm(dim=1)
    occupied = grid.occupied()
    assert occupied[dist < RADIUS - half_diag].all()
    assert not occupied[dist > RADIUS + half_diag].any()
    volume = 4 / 3 * math.pi * RADIUS ** 3 / (2 * BOUND) ** 3
    assert grid.mean_density == pytest.approx(100 * volume, rel=0.1)
    assert grid.threshold == pytest.approx(min(grid.mean_density, 10.0))
    assert grid.occupancy_fraction == pytest.approx(float(occupied.float().mean()))


def test_max_over_coefficient_sets_covers_every_expression():
    coeffs = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    grid = _updated(coeffs, chunk=1000)  # small chunks: many callback calls
    dist_a = _centres().norm(dim=1)
    dist_b = (_centres() - torch.tensor([0.02, 0.0, 0.0])).norm(dim=1)
    inner = RADIUS - math.sqrt(3) * BOUND / RES
    occupied = grid.occupied()
    assert occupied[dist_a < inner].all() and occupied[dist_b < inner].all()
    assert grid.occupancy_fraction > _updated(coeffs[:1]).occupancy_fraction


def test_callback_sees_bounded_chunks_and_all_sets():
    seen = []

    def density(points, frame_index, coeffs):
        seen.append((points.shape[0], set(frame_index.tolist())))
        return torch.zeros(points.shape[0])

    OccupancyGrid(bound=BOUND, resolution=16).update(density, torch.ones(3, 2), step=0, chunk=999)
    assert max(n for n, _ in seen) <= 999
    assert sum(n for n, _ in seen) == 3 * 16 ** 3
    assert all(frames == {0, 1, 2} for _, frames in seen)


def test_decay_and_partial_updates_after_warmup():
    grid = _updated(torch.tensor([[1.0, 0.0]]))
    before = grid.density.clone()
    grid.update(lambda p, f, c: torch.zeros(p.shape[0]), torch.ones(1, 2), step=1)
    torch.testing.assert_close(grid.density, 0.9 * before)
    torch.testing.assert_close(grid.mean, 0.9 * before.mean())
    occupied_before = grid.occupied()
    decayed = grid.density.clone()
    grid.update(lambda p, f, c: torch.full((p.shape[0],), 200.0), torch.ones(1, 2), step=300, warmup_steps=256,
                generator=torch.Generator().manual_seed(1))
    refreshed = grid.density == 200.0
    assert (grid.density >= 0.9 * decayed - 1e-6).all()
    assert 0.15 < refreshed.float().mean() < 0.5  # a quarter uniformly, plus occupied cells
    assert refreshed[occupied_before].float().mean() > 0.9  # occupied cells are revisited
    assert torch.equal(grid.density[~refreshed], 0.9 * decayed[~refreshed])


def test_state_dict_round_trip():
    grid = _updated(torch.tensor([[1.0, 0.5]]))
    copy = OccupancyGrid(bound=BOUND, resolution=RES)
    copy.load_state_dict(grid.state_dict())
    assert torch.equal(copy.bitfield, grid.bitfield) and copy.threshold == grid.threshold
    assert set(grid.state_dict()) == {"density", "bitfield", "mean"}
