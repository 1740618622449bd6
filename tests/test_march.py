import dataclasses
import math

import pytest
import torch

from nerfbs.config import RenderConfig
from taichi_kernels import composite as comp
from taichi_kernels import inference, march
from taichi_kernels.occupancy import OccupancyGrid
from taichi_kernels.reference import inference as ref_inference
from taichi_kernels.reference import march as ref
from taichi_kernels.samples import FieldLogits, MarchParams

BOUND = 0.06


def _params(**overrides) -> MarchParams:
    """The original recipe's marching parameters (from ``RenderConfig``, as nerfbs builds them: one-cell steps
    everywhere) over the test's box; the long steps' tests set step_scale and long_step_density."""
    original = RenderConfig(bound=BOUND, step_scale=1.0, long_step_density=0.0)
    return dataclasses.replace(MarchParams.from_render_config(original), **overrides)


def _blobs(points, frame_index, coeffs):
    """A few Gaussian blobs: an irregular occupied region."""
    centres = torch.tensor([[0.0, 0.0, 0.0], [0.025, -0.02, 0.01], [-0.03, 0.02, -0.015]])
    d2 = ((points[:, None, :] - centres[None]) ** 2).sum(-1)
    return 50.0 * torch.exp(-d2 / (2 * 0.012 ** 2)).sum(1)


def _sphere_grid(radius, resolution=32):
    grid = OccupancyGrid(bound=BOUND, resolution=resolution)
    grid.update(lambda p, f, c: 100.0 * (p.norm(dim=1) < radius).float(), torch.ones(1, 1), step=0,
                generator=torch.Generator().manual_seed(0))
    return grid


def _camera_rays(n, seed=0, spread=0.05):
    """Rays from ~0.2-0.4 away aimed near the box, plus rays that miss, axis-aligned rays, one inside the box."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    origins = -dirs * (0.2 + 0.2 * torch.rand(n, 1, generator=g))
    targets = spread * (torch.rand(n, 3, generator=g) - 0.5)
    directions = torch.nn.functional.normalize(targets - origins, dim=1)
    extra_o = torch.tensor([[0.0, 0.0, 0.3], [0.3, 0.0, 0.0], [0.0, 0.3, 0.0], [0.01, 0.01, 0.01], [0.0, 0.0, 0.3],
                            [0.2, 0.2, 0.2]])
    extra_d = torch.tensor([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.6, 0.0, 0.8], [0.0, 0.0, 1.0],
                            [0.0, 1.0, 0.0]])
    return torch.cat((origins, extra_o)), torch.cat((directions, extra_d))


def test_ray_aabb_matches_twin_and_handles_misses():
    origins, directions = _camera_rays(64)
    near, far = march.ray_aabb(origins, directions, BOUND, 0.05)
    rn, rf = ref.ray_aabb(origins, directions, BOUND, 0.05)
    torch.testing.assert_close(near, rn)
    torch.testing.assert_close(far, rf)
    assert torch.isfinite(near).all() and torch.isfinite(far).all() and (far >= near).all()
    assert near[-2] == far[-2] and near[-1] == far[-1]  # pointing away, passing beside the box
    assert near[-6] == pytest.approx(0.24) and far[-6] == pytest.approx(0.36)  # axis-aligned, zero components
    assert near[-3] == pytest.approx(0.05)  # starts inside the box: clamped to near_min
    n0, f0 = march.ray_aabb(origins[:0], directions[:0], BOUND, 0.05)
    assert n0.shape == (0,) and f0.shape == (0,)


@pytest.mark.parametrize("jitter", [False, True])
def test_training_samples_are_in_occupied_cells_and_ordered(jitter):
    grid = OccupancyGrid(bound=BOUND, resolution=32)
    grid.update(_blobs, torch.ones(1, 1), step=0, generator=torch.Generator().manual_seed(0))
    assert 0.01 < grid.occupancy_fraction < 0.5
    origins, directions = _camera_rays(200)
    params = _params()
    s = march.march_rays_train(origins, directions, grid, params, jitter=jitter,
                               generator=torch.Generator().manual_seed(1))
    m, rays = s.num_samples, origins.shape[0]
    assert m > 1000
    assert s.ray_counts.dtype == s.ray_offsets.dtype == s.ray_index.dtype == torch.int32
    assert int(s.ray_counts.sum()) == m
    assert torch.equal(s.ray_offsets, (torch.cumsum(s.ray_counts, 0) - s.ray_counts).to(torch.int32))
    assert torch.equal(s.ray_index.long(), torch.repeat_interleave(torch.arange(rays), s.ray_counts.long()))
    assert (s.ray_counts[-2:] == 0).all()  # missing rays
    ray = s.ray_index.long()
    torch.testing.assert_close(s.positions, origins[ray] + s.t[:, None] * directions[ray])
    assert torch.equal(s.directions, directions[ray])
    assert (s.positions.abs() <= BOUND + 1e-6).all()
    res = grid.resolution
    cell = torch.floor((s.positions + BOUND) * res / (2 * BOUND)).long().clamp(0, res - 1)
    assert grid.occupied()[cell[:, 0] + res * (cell[:, 1] + res * cell[:, 2])].all()
    same_ray = ray[1:] == ray[:-1]
    assert (s.t[1:][same_ray] > s.t[:-1][same_ray]).all()
    near, far = march.ray_aabb(origins, directions, BOUND, params.near_min)
    assert (s.t - 0.5 * s.dt >= near[ray] - 1e-6).all() and (s.t < far[ray]).all()
    assert (s.dt >= params.min_step * (1 - 1e-6)).all() and (s.dt <= params.max_step * (1 + 1e-6)).all()
    expected_dt = ((s.t - 0.5 * s.dt) * params.step_growth).clamp(params.min_step, params.max_step)
    torch.testing.assert_close(s.dt, expected_dt, atol=1e-7, rtol=1e-5)


def test_marching_matches_twin_and_respects_the_step_cap():
    grid = OccupancyGrid(bound=BOUND, resolution=32)
    grid.update(_blobs, torch.ones(1, 1), step=0, generator=torch.Generator().manual_seed(0))
    origins, directions = _camera_rays(100, seed=3)
    params = _params()
    s = march.march_rays_train(origins, directions, grid, params, jitter=False)
    r = ref.march_rays_train(origins, directions, grid, params, jitter=False)
    agree = s.ray_counts == r.ray_counts
    assert agree.float().mean() >= 0.95  # a rounding difference may flip one boundary decision
    if agree.all():
        torch.testing.assert_close(s.t, r.t, atol=1e-6, rtol=0)
    capped = march.march_rays_train(origins, directions, grid, _params(max_steps_per_ray=7),
                                    jitter=False)
    assert int(capped.ray_counts.max()) == 7
    torch.testing.assert_close(capped.ray_counts, s.ray_counts.clamp_max(7))


def _shell_grid(inner, outer, resolution=32):
    """A spherical shell about one cell thick: long steps must not jump over it."""
    grid = OccupancyGrid(bound=BOUND, resolution=resolution)
    grid.update(lambda p, f, c: 100.0 * ((p.norm(dim=1) > inner) & (p.norm(dim=1) < outer)).float(),
                torch.ones(1, 1), step=0, generator=torch.Generator().manual_seed(0))
    return grid


@pytest.mark.parametrize("jitter", [False, True])
def test_long_steps_match_twin_and_start_where_one_cell_steps_start(jitter):
    cell = 2 * BOUND / 31  # the original's largest step over a 32^3 grid
    grid = _shell_grid(0.03, 0.03 + 0.7 * cell)
    origins, directions = _camera_rays(300, seed=5, spread=0.1)
    one, long = _params(max_step=cell, step_growth=1.0), _params(max_step=cell, step_growth=1.0, step_scale=4)
    a = march.march_rays_train(origins, directions, grid, one, jitter=jitter, generator=torch.Generator().manual_seed(2))
    b = march.march_rays_train(origins, directions, grid, long, jitter=jitter, generator=torch.Generator().manual_seed(2))
    twin = ref.march_rays_train(origins, directions, grid, long, jitter=jitter, generator=torch.Generator().manual_seed(2))
    # Marching through empty space is the same at any step length: the same rays find the shell, at the same t.
    hit = a.ray_counts > 0
    assert hit.sum() > 100 and torch.equal(b.ray_counts > 0, hit)
    first_a, first_b = a.ray_offsets[hit].long(), b.ray_offsets[hit].long()
    torch.testing.assert_close(b.t[first_b] - 0.5 * b.dt[first_b], a.t[first_a] - 0.5 * a.dt[first_a], atol=1e-6, rtol=0)
    assert b.dt.max() > 2 * cell and b.num_samples < 0.6 * a.num_samples
    agree = b.ray_counts == twin.ray_counts  # a rounding difference may flip one boundary decision
    assert agree.float().mean() >= 0.95
    same_t = (b.t[torch.repeat_interleave(agree, b.ray_counts.long())]
              - twin.t[torch.repeat_interleave(agree, twin.ray_counts.long())]).abs() < 1e-6
    assert same_t.float().mean() >= 0.97


def _fog_and_solid(points, frame_index, coeffs):
    """A faint sphere (density 20) beside a dense one (density 1000)."""
    fog = (points - torch.tensor([-0.02, 0.0, 0.0])).norm(dim=1) < 0.018
    solid = (points - torch.tensor([0.022, 0.0, 0.0])).norm(dim=1) < 0.014
    return 20.0 * fog.float() + 1000.0 * solid.float()


@pytest.mark.parametrize("jitter", [False, True])
def test_long_steps_only_where_the_grid_is_faint(jitter):
    grid = OccupancyGrid(bound=BOUND, resolution=32)
    grid.update(_fog_and_solid, torch.ones(1, 1), step=0, generator=torch.Generator().manual_seed(0))
    cell = 2 * BOUND / 31
    origins, directions = _camera_rays(300, seed=7, spread=0.1)
    short, long = _params(max_step=cell, step_growth=1.0), _params(max_step=cell, step_growth=1.0, step_scale=4)
    mixed = dataclasses.replace(long, long_step_density=100.0)
    runs = {name: march.march_rays_train(origins, directions, grid, p, jitter=jitter,
                                         generator=torch.Generator().manual_seed(3))
            for name, p in (("short", short), ("long", long), ("mixed", mixed))}
    s = runs["mixed"]
    assert runs["long"].num_samples < s.num_samples < runs["short"].num_samples
    res = grid.resolution
    c = torch.floor((s.positions + BOUND) * res / (2 * BOUND)).long().clamp(0, res - 1)
    dense = grid.density[c[:, 0] + res * (c[:, 1] + res * c[:, 2])] > 100.0
    assert dense.sum() > 50 and (~dense).sum() > 40
    torch.testing.assert_close(s.dt[dense], torch.full_like(s.dt[dense], cell))  # short steps in the solid
    assert (s.dt[~dense] > 3 * cell).float().mean() > 0.5  # mostly long ones in the fog
    twin = ref.march_rays_train(origins, directions, grid, mixed, jitter=jitter,
                                generator=torch.Generator().manual_seed(3))
    agree = s.ray_counts == twin.ray_counts
    assert agree.float().mean() >= 0.95
    agree[-6:] = False  # the axis-aligned extra rays run along cell faces, where rounding decides the cell
    same_t = (s.t[torch.repeat_interleave(agree, s.ray_counts.long())]
              - twin.t[torch.repeat_interleave(agree, twin.ray_counts.long())]).abs() < 1e-6
    assert same_t.float().mean() >= 0.97


def test_inference_loop_takes_the_long_and_short_steps_of_training_marching():
    grid = OccupancyGrid(bound=BOUND, resolution=32)
    grid.update(_fog_and_solid, torch.ones(1, 1), step=0, generator=torch.Generator().manual_seed(0))
    origins, directions = _image_rays(16)
    frames = torch.zeros(origins.shape[0], dtype=torch.int32)
    background = torch.rand(origins.shape[0], 3, generator=torch.Generator().manual_seed(2))
    params = _params(max_step=2 * BOUND / 31, step_growth=1.0, step_scale=4, long_step_density=100.0, early_stop=1e-4)

    def field(positions, directions, frame_index):
        return _fog_and_solid(positions, frame_index, None), torch.sigmoid(positions * 40.0)

    s = march.march_rays_train(origins, directions, grid, params, jitter=False)
    assert s.dt.max() > 3 * params.max_step and s.dt.min() < 1.01 * params.max_step  # both kinds of step
    sig, rgb = field(s.positions, s.directions, frames[s.ray_index.long()])
    train = comp.composite(sig, rgb, s.t, s.dt, s.ray_offsets, s.ray_counts, background, early_stop=params.early_stop)
    infer = inference.render_rays_inference(origins, directions, frames, field, grid, params, background,
                                            samples_per_round=3)
    twin = ref_inference.render_rays_inference(origins, directions, frames, field, grid, params, background)
    for name, a, b, c in zip(("rgb", "opacity", "depth"), infer, train, twin):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-3, msg=name)


def test_empty_grid_and_empty_batches_give_no_samples():
    grid = OccupancyGrid(bound=BOUND, resolution=16)
    grid.update(lambda p, f, c: torch.zeros(p.shape[0]), torch.ones(1, 1), step=0)
    origins, directions = _camera_rays(20)
    params = _params()
    s = march.march_rays_train(origins, directions, grid, params, jitter=True)
    assert s.num_samples == 0 and (s.ray_counts == 0).all() and s.ray_offsets.shape == (origins.shape[0],)
    s0 = march.march_rays_train(origins[:0], directions[:0], grid, params, jitter=False)
    assert s0.num_samples == 0 and s0.ray_counts.shape == (0,) and s0.positions.shape == (0, 3)
    rgb, opacity, depth = inference.render_rays_inference(origins[:0], directions[:0], torch.zeros(0, dtype=torch.int32),
                                                      _sphere_field(10.0, 0.04), grid, params, torch.zeros(0, 3))
    assert rgb.shape == (0, 3) and opacity.shape == (0,) and depth.shape == (0,)


def _sphere_field(sigma, radius):
    def field(positions, directions, frame_index):
        inside = (positions.norm(dim=1) < radius).float()
        colour = torch.sigmoid(positions * 40.0 + frame_index[:, None].float())
        return sigma * inside, colour
    return field


def _image_rays(n, distance=0.3, half_width=0.05):
    """An n x n pinhole image of the box from +z."""
    u = torch.linspace(-half_width, half_width, n)
    y, x = torch.meshgrid(u, u, indexing="ij")
    origins = torch.tensor([0.0, 0.0, distance]).expand(n * n, 3).contiguous()
    targets = torch.stack((x.reshape(-1), y.reshape(-1), torch.zeros(n * n)), dim=1)
    return origins, torch.nn.functional.normalize(targets - origins, dim=1)


def test_constant_density_sphere_matches_closed_form_opacity():
    radius, sigma = 0.04, 10.0
    # Grid from a sphere dilated by a cell diagonal, so every cell the sphere touches is occupied.
    grid = _sphere_grid(radius + math.sqrt(3) * 2 * BOUND / 32)
    origins, directions = _image_rays(8)
    params = _params(min_step=2e-5, max_step=2e-5, max_steps_per_ray=8192)
    s = march.march_rays_train(origins, directions, grid, params, jitter=True,
                               generator=torch.Generator().manual_seed(0))
    field = _sphere_field(sigma, radius)
    sig, rgb = field(s.positions, s.directions, torch.zeros(s.num_samples, dtype=torch.int32))
    _, opacity, _ = comp.composite(sig, rgb, s.t, s.dt, s.ray_offsets, s.ray_counts, torch.zeros(origins.shape[0], 3))
    closest = origins - (origins * directions).sum(1, keepdim=True) * directions
    chord = 2 * (radius ** 2 - (closest ** 2).sum(1)).clamp_min(0).sqrt()
    expected = 1 - torch.exp(-sigma * chord)
    assert (chord > 0).sum() > 20 and (chord == 0).sum() > 5
    torch.testing.assert_close(opacity, expected, atol=1e-3, rtol=0)


def test_inference_loop_equals_training_path_without_jitter():
    radius = 0.04
    grid = _sphere_grid(radius + 0.004)
    origins, directions = _image_rays(16)
    frames = torch.arange(origins.shape[0], dtype=torch.int32) % 3
    background = torch.rand(origins.shape[0], 3, generator=torch.Generator().manual_seed(0))
    params = _params(early_stop=1e-4)  # training's threshold: rays that hit the dense sphere stop early
    field = _sphere_field(400.0, radius)  # dense: most rays that hit it stop early
    s = march.march_rays_train(origins, directions, grid, params, jitter=False)
    sig, rgb = field(s.positions, s.directions, frames[s.ray_index.long()])
    train = comp.composite(sig, rgb, s.t, s.dt, s.ray_offsets, s.ray_counts, background, early_stop=params.early_stop)
    stats = {}
    infer = inference.render_rays_inference(origins, directions, frames, field, grid, params, background,
                                        samples_per_round=4, stats=stats)
    twin = ref_inference.render_rays_inference(origins, directions, frames, field, grid, params, background)
    assert stats["rounds"] > 2 and stats["host_syncs"] == stats["rounds"] + 1
    assert stats["ray_samples"].shape == (origins.shape[0],) and int(stats["ray_samples"].sum()) == stats["samples"]
    assert (train[1] > 0.999).sum() > 20
    for name, a, b, c in zip(("rgb", "opacity", "depth"), infer, train, twin):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-3, msg=name)


def test_inference_loop_retires_rays_that_find_no_sample_in_the_round_they_march():
    # A ray whose march leaves the box without a sample is not carried into another round: with nothing occupied
    # the first launch ends the loop; with a small sphere, the rays that miss it and those that hit it render as
    # the twin's.
    origins, directions = _image_rays(12)
    frames = torch.zeros(origins.shape[0], dtype=torch.int32)
    background = torch.rand(origins.shape[0], 3, generator=torch.Generator().manual_seed(2))
    field = _sphere_field(400.0, 0.02)
    stats = {}
    empty = _sphere_grid(0.0)
    rgb, opacity, _ = inference.render_rays_inference(origins, directions, frames, field, empty, _params(), background,
                                                      stats=stats)
    assert stats["rounds"] == 0 and stats["host_syncs"] == 1 and stats["samples"] == 0
    torch.testing.assert_close(rgb, background)
    assert torch.equal(opacity, torch.zeros_like(opacity))
    grid = _sphere_grid(0.02)
    infer = inference.render_rays_inference(origins, directions, frames, field, grid, _params(), background,
                                            samples_per_round=1024, max_samples_per_round=1024, stats=stats)
    twin = ref_inference.render_rays_inference(origins, directions, frames, field, grid, _params(), background)
    assert stats["rounds"] == 1 and stats["host_syncs"] == 2  # one round marches every sample; nothing is left
    for name, a, b in zip(("rgb", "opacity", "depth"), infer, twin):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("per_round,cap", [(1, 1024), (3, 1024), (16, 1024), (64, 1024), (8, 5)])
def test_inference_loop_matches_twin_for_any_round_size_and_step_cap(per_round, cap):
    grid = _sphere_grid(0.044)
    origins, directions = _image_rays(12)
    origins, directions = torch.cat((origins, origins[:2])), torch.cat((directions, -directions[:2]))  # 2 misses
    frames = torch.arange(origins.shape[0], dtype=torch.int32) % 2
    background = torch.rand(origins.shape[0], 3, generator=torch.Generator().manual_seed(1))
    params = _params(early_stop=1e-2, max_steps_per_ray=cap)
    s = march.march_rays_train(origins, directions, grid, params, jitter=False)
    for sigma, stops in ((400.0, True), (5.0, False)):  # dense: rays stop early; faint: every marched sample is used
        field = _sphere_field(sigma, 0.04)
        stats = {}
        infer = inference.render_rays_inference(origins, directions, frames, field, grid, params, background,
                                                samples_per_round=per_round, max_samples_per_round=max(per_round, 8),
                                                stats=stats)
        twin = ref_inference.render_rays_inference(origins, directions, frames, field, grid, params, background)
        for name, a, b in zip(("rgb", "opacity", "depth"), infer, twin):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
        marched = stats["ray_samples"]
        assert int(marched.sum()) == stats["samples"] and stats["host_syncs"] == stats["rounds"] + 1
        assert (marched <= s.ray_counts).all() and (marched[-2:] == 0).all()
        if not stops:
            assert torch.equal(marched, s.ray_counts)
        elif cap > 100 and per_round <= 16:  # a long round overshoots the early stop
            assert int(marched.sum()) < 0.8 * s.num_samples


def _logit_field(dtype, column):
    """A field giving ``FieldLogits``: density logits in column ``column`` of 6-wide rows (the other columns
    hold values that would change the image if read) from softplus's pass-through (> 20) to densities too faint
    to see (< -15); colour logits in the first 3 of 8 columns. Column 3: one 4-wide row per sample holds both,
    the colour first (the fused MLP kernel's output, ``nerfbs.fused_mlp``)."""
    def field(positions, directions, frame_index):
        r = positions.norm(dim=1)
        # 3020 at the centre, 20 at r = 0.03, -15 at r = 0.045, -35 at r = 0.0535
        logit = torch.where(r < 0.03, 20.0 + 1e5 * (0.03 - r), 20.0 - 35.0 * (r - 0.03) / 0.015) + frame_index
        rows = torch.full((r.shape[0], 6), 9.0)
        rows[:, column] = logit
        colour = torch.full((r.shape[0], 8), -7.0)
        colour[:, :3] = positions * 300.0 + directions
        if column == 3:
            shared = torch.cat([colour[:, :3], logit[:, None]], 1).to(dtype)
            return FieldLogits(shared, 3, shared)
        return FieldLogits(rows.to(dtype), column, colour.to(dtype))
    return field


@pytest.mark.parametrize("dtype,column", [(torch.float32, 0), (torch.float32, 4), (torch.float16, 5), (torch.float16, 3)])
def test_inference_loop_applies_the_activations_of_field_logits(dtype, column):
    # The round kernel reads the density's column and the colour's first three columns, in any float type, and
    # activates them as torch does: the same image as the loop given the activated outputs, and as the twin.
    grid = _sphere_grid(0.05)
    origins, directions = _image_rays(16, half_width=0.06)
    frames = torch.arange(origins.shape[0], dtype=torch.int32) % 2
    background = torch.rand(origins.shape[0], 3, generator=torch.Generator().manual_seed(4))
    params = _params(early_stop=1e-3)
    logits = _logit_field(dtype, column)
    s = march.march_rays_train(origins, directions, grid, params, jitter=False)
    out = logits(s.positions, s.directions, frames[s.ray_index.long()])
    raw = out.density_rows[:, column].float()
    assert (raw > 20).sum() > 10 and (raw < -15).sum() > 10 and ((raw > -15) & (raw < 20)).sum() > 10

    def activated(positions, directions, frame_index):
        return logits(positions, directions, frame_index).activated()

    stats = {}
    got = inference.render_rays_inference(origins, directions, frames, logits, grid, params, background,
                                          samples_per_round=3, stats=stats)
    want = inference.render_rays_inference(origins, directions, frames, activated, grid, params, background,
                                           samples_per_round=3)
    twin = ref_inference.render_rays_inference(origins, directions, frames, logits, grid, params, background)
    assert stats["rounds"] > 2
    assert (want[1] > 0.99).sum() > 20 and (want[1] < 0.5).sum() > 5  # rays that stop in the field and rays that pass
    for name, a, b, c in zip(("rgb", "opacity", "depth"), got, want, twin):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-3, msg=name)


def test_mismatched_grid_is_refused():
    grid = OccupancyGrid(bound=0.1, resolution=8)
    origins, directions = _camera_rays(4)
    with pytest.raises(ValueError, match="bound"):
        march.march_rays_train(origins, directions, grid, _params(), jitter=False)
    with pytest.raises(ValueError, match="directions"):
        march.ray_aabb(origins, directions[:, :2], BOUND, 0.05)
