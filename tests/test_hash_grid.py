"""The Taichi blended hash encoder against its torch twin and against hand-computed table rows."""
import pytest
import torch

from taichi_kernels import hash_grid, runtime
from taichi_kernels.grid_layout import GridConfig
from taichi_kernels.reference import hash_grid as reference

# Level 0 dense (res 5, 6^3 = 216 <= 256 entries), levels 1-2 hashed (256 entries each).
MIXED = GridConfig(num_bases=3, num_levels=3, features_per_level=2, base_resolution=5, finest_resolution=20, log2_table_size=8)
# Every level dense.
DENSE = GridConfig(num_bases=2, num_levels=2, features_per_level=2, base_resolution=4, finest_resolution=8, log2_table_size=12)
# Every level hashed.
HASHED = GridConfig(num_bases=2, num_levels=2, features_per_level=3, base_resolution=8, finest_resolution=16, log2_table_size=5)
# Four features per level, as the default grid: the inference lookup can gather 1, 2 or 4 of them per thread.
FOUR_FEATURES = GridConfig(num_bases=3, num_levels=3, features_per_level=4, base_resolution=5, finest_resolution=20,
                           log2_table_size=8)
# For the float64 gradcheck: one dense level (64 entries), one hashed level (64 entries).
TINY = GridConfig(num_bases=2, num_levels=2, features_per_level=2, base_resolution=3, finest_resolution=6, log2_table_size=6)


def make_inputs(grid, n, frames, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    points = torch.rand(n, 3, generator=gen, dtype=dtype)
    frame_index = torch.randint(0, frames, (n,), generator=gen, dtype=torch.int32)
    coeffs = torch.randn(frames, grid.num_bases, generator=gen, dtype=dtype)
    tables = torch.randn(grid.num_bases, grid.table_entries, grid.features_per_level, generator=gen, dtype=dtype)
    return points, frame_index, coeffs, tables


def encode_and_grads(fn, points, frame_index, coeffs, tables, grid, cotangent):
    """fn's output and its gradients w.r.t. (points, coeffs, tables) for ``(out * cotangent).sum()``."""
    inputs = [t.detach().clone().requires_grad_() for t in (points, coeffs, tables)]
    out = fn(inputs[0], frame_index, inputs[1], inputs[2], grid)
    grads = torch.autograd.grad((out * cotangent).sum(), inputs)
    return out.detach(), grads


def assert_matches_twin(grid, points, frame_index, coeffs, tables, rtol):
    cotangent = torch.randn(points.shape[0], grid.output_dim, dtype=points.dtype, generator=torch.Generator().manual_seed(1))
    out, grads = encode_and_grads(hash_grid.blended_hash_encode, points, frame_index, coeffs, tables, grid, cotangent)
    want, want_grads = encode_and_grads(reference.blended_hash_encode, points, frame_index, coeffs, tables, grid, cotangent)
    assert out.shape == (points.shape[0], grid.output_dim)
    assert (out - want).abs().max() <= rtol * want.abs().max()
    for name, got, expected in zip(("points", "coeffs", "tables"), grads, want_grads):
        scale = expected.abs().max().clamp_min(1e-30)
        assert (got - expected).abs().max() <= rtol * 10 * scale, name


def test_forward_and_gradients_match_twin_float32():
    points, frame_index, coeffs, tables = make_inputs(MIXED, 400, frames=3)
    assert MIXED.level_dense == (True, False, False)
    assert_matches_twin(MIXED, points, frame_index, coeffs, tables, rtol=1e-5)


def test_inference_under_float16_autocast_gives_float16_features_close_to_the_twin():
    points, frame_index, coeffs, tables = make_inputs(MIXED, 400, frames=3)
    points[0] = torch.tensor([1.5, 0.5, 0.5])  # outside the box: zero features
    want = reference.blended_hash_encode(points.double(), frame_index, coeffs.double(), tables.double(), MIXED)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        out = hash_grid.blended_hash_encode(points, frame_index, coeffs, tables, MIXED)
    assert out.dtype == torch.float16 and out.shape == want.shape
    assert (out.double() - want).abs().max() <= 2e-3 * want.abs().max()  # float16 tables: ~3 digits
    assert (out[0] == 0).all()
    with torch.autocast("cpu", dtype=torch.float16):  # autograd on: the float32 path, differentiable
        assert hash_grid.blended_hash_encode(points, frame_index, coeffs, tables.requires_grad_(), MIXED).dtype == torch.float32


@pytest.mark.parametrize("grid,per_thread", [(MIXED, 1), (MIXED, 2), (FOUR_FEATURES, 1), (FOUR_FEATURES, 2),
                                             (FOUR_FEATURES, 4)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_lookup_in_tables_blended_once_matches_the_twin(dtype, grid, per_thread, monkeypatch):
    # the inference lookup's thread layouts
    monkeypatch.setitem(hash_grid.LOOKUP_FEATURES_PER_THREAD, runtime.ensure_initialized(), per_thread)
    points, frame_index, coeffs, tables = make_inputs(grid, 400, frames=3, dtype=torch.float64)
    points[0] = torch.tensor([1.5, 0.5, 0.5], dtype=torch.float64)  # outside the box: zero features
    want = reference.blended_hash_encode(points, frame_index, coeffs, tables, grid)
    real = torch.float64 if dtype == torch.float64 else torch.float32
    blended = hash_grid.blend_tables(coeffs.to(real), tables.to(real), dtype)
    out = hash_grid.lookup_blended(points.to(real), frame_index, blended, grid)
    assert blended.shape == (3, grid.table_entries, grid.features_per_level) and out.dtype == dtype
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    assert (out.double() - want).abs().max() <= tolerance * want.abs().max()
    assert (out[0] == 0).all() and want.abs().max() > 0
    with pytest.raises(ValueError, match="points must be"):
        hash_grid.lookup_blended(points.to(real).half(), frame_index, blended, grid)
    with pytest.raises(ValueError, match="blended must be"):
        hash_grid.lookup_blended(points.to(real), frame_index, blended[:, :-1], grid)


def test_one_thread_per_sample_backward_variant_matches_twin():
    points, frame_index, coeffs, tables = make_inputs(MIXED, 200, frames=2)
    fn = hash_grid._function(MIXED, torch.float32, "cpu", warp_merge=True, pair_x=False)
    cotangent = torch.randn(200, MIXED.output_dim)
    _, grads = encode_and_grads(lambda p, f, c, t, g: fn.apply(p, f, c, t), points, frame_index, coeffs, tables, MIXED, cotangent)
    _, want = encode_and_grads(reference.blended_hash_encode, points, frame_index, coeffs, tables, MIXED, cotangent)
    for got, expected in zip(grads, want):
        assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_float64_matches_twin_and_passes_gradcheck():
    points, frame_index, coeffs, tables = make_inputs(TINY, 6, frames=2, dtype=torch.float64, seed=3)
    assert TINY.level_dense == (True, False)
    assert_matches_twin(TINY, points, frame_index, coeffs, tables, rtol=1e-12)

    def fn(p, c, t):
        return hash_grid.blended_hash_encode(p, frame_index, c, t, TINY)

    inputs = tuple(t.clone().requires_grad_() for t in (points, coeffs, tables))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_points_outside_the_box_get_zero_features_and_gradients():
    points, frame_index, coeffs, tables = make_inputs(MIXED, 64, frames=2)
    outside = torch.tensor([[-0.01, 0.5, 0.5], [0.5, 1.01, 0.5], [0.3, 0.3, 2.0], [-1.0, -1.0, -1.0]])
    points[:4] = outside
    cotangent = torch.randn(64, MIXED.output_dim)
    out, (g_points, _, g_tables) = encode_and_grads(hash_grid.blended_hash_encode, points, frame_index, coeffs, tables, MIXED, cotangent)
    assert torch.all(out[:4] == 0)
    assert torch.all(g_points[:4] == 0)
    assert out[4:].abs().sum() > 0
    # The outside points contribute nothing to the table gradient.
    _, (_, _, g_tables_inside) = encode_and_grads(
        hash_grid.blended_hash_encode, points[4:], frame_index[4:], coeffs, tables, MIXED, cotangent[4:]
    )
    torch.testing.assert_close(g_tables, g_tables_inside, rtol=1e-5, atol=1e-6)
    assert_matches_twin(MIXED, points, frame_index, coeffs, tables, rtol=1e-5)


def test_points_exactly_on_cell_borders_and_box_faces():
    # Level 0 of MIXED has scale 4, so x = (m - 0.5) / 4 lands exactly on integer cell borders.
    borders = torch.tensor([0.125, 0.375, 0.625, 0.875, 0.0, 1.0], dtype=torch.float64)
    grid_points = torch.cartesian_prod(borders, borders, borders)  # [216, 3]
    assert MIXED.level_scales[0] == 4.0
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        points = grid_points.to(dtype)
        _, frame_index, coeffs, tables = make_inputs(MIXED, points.shape[0], frames=2, dtype=dtype)
        assert_matches_twin(MIXED, points, frame_index, coeffs, tables, rtol=rtol)


def hand_lookup(table, corner, row_of):
    """Trilinear lookup at pos = corner + 0.25 per axis, reading rows given by ``row_of(corner)``."""
    want = torch.zeros(table.shape[1], dtype=torch.float64)
    for bits in range(8):
        offs = [(bits >> d) & 1 for d in range(3)]
        weight = 1.0
        for o in offs:
            weight *= 0.25 if o else 0.75
        want += weight * table[row_of([corner[d] + offs[d] for d in range(3)])].double()
    return want


def lookup_level0(grid, corner, basis, tables):
    """Level-0 features at pos = corner + 0.25, with the one-hot blend that selects ``basis``."""
    scale = grid.level_scales[0]
    point = torch.tensor([[(c - 0.25) / scale for c in corner]], dtype=torch.float64)
    coeffs = torch.zeros(1, grid.num_bases, dtype=torch.float64)
    coeffs[0, basis] = 1.0
    out = hash_grid.blended_hash_encode(point, torch.zeros(1, dtype=torch.int32), coeffs, tables.double(), grid)
    return out[0, : grid.features_per_level]


def test_dense_level_reads_row_major_rows():
    grid = DENSE
    assert all(grid.level_dense)
    points, frame_index, coeffs, tables = make_inputs(grid, 300, frames=2, dtype=torch.float64)
    assert_matches_twin(grid, points, frame_index, coeffs, tables, rtol=1e-12)
    stride = grid.level_resolutions[0] + 1
    corner = (1, 2, 3)
    want = hand_lookup(tables[0], corner, lambda c: c[0] + stride * (c[1] + stride * c[2]))
    torch.testing.assert_close(lookup_level0(grid, corner, 0, tables), want, rtol=1e-12, atol=1e-12)


def test_hashed_level_reads_hashed_rows():
    grid = HASHED
    assert not any(grid.level_dense)
    points, frame_index, coeffs, tables = make_inputs(grid, 300, frames=2)
    assert_matches_twin(grid, points, frame_index, coeffs, tables, rtol=1e-5)
    size = grid.level_sizes[0]
    corner = (5, 2, 6)
    want = hand_lookup(tables[1], corner, lambda c: (c[0] ^ (c[1] * 2654435761 % 2**32) ^ (c[2] * 805459861 % 2**32)) % size)
    torch.testing.assert_close(lookup_level0(grid, corner, 1, tables), want, rtol=1e-12, atol=1e-12)


def test_single_basis():
    grid = GridConfig(num_bases=1, num_levels=2, features_per_level=2, base_resolution=4, finest_resolution=16, log2_table_size=6)
    points, frame_index, coeffs, tables = make_inputs(grid, 200, frames=2)
    assert_matches_twin(grid, points, frame_index, coeffs, tables, rtol=1e-5)


def test_interleaved_frames_equal_one_frame_at_a_time():
    points, frame_index, coeffs, tables = make_inputs(MIXED, 300, frames=4)
    frame_index = torch.arange(300, dtype=torch.int32) % 4
    out = hash_grid.blended_hash_encode(points, frame_index, coeffs, tables, MIXED)
    for f in range(4):
        rows = frame_index == f
        alone = hash_grid.blended_hash_encode(points[rows], torch.zeros(int(rows.sum()), dtype=torch.int32), coeffs[f : f + 1], tables, MIXED)
        torch.testing.assert_close(out[rows], alone, rtol=1e-5, atol=1e-6)  # the blend matmul may round differently
    assert_matches_twin(MIXED, points, frame_index, coeffs, tables, rtol=1e-5)


def test_empty_batch():
    points, frame_index, coeffs, tables = make_inputs(MIXED, 0, frames=2)
    inputs = [t.clone().requires_grad_() for t in (points, coeffs, tables)]
    out = hash_grid.blended_hash_encode(inputs[0], frame_index, inputs[1], inputs[2], MIXED)
    assert out.shape == (0, MIXED.output_dim)
    grads = torch.autograd.grad(out.sum(), inputs)
    assert [g.shape for g in grads] == [t.shape for t in inputs]
    assert all(torch.all(g == 0) for g in grads)


def test_module_accumulates_the_table_gradient_once():
    torch.manual_seed(0)
    module = hash_grid.BlendedHashGrid(MIXED, init_scale=0.5)
    assert module.tables.shape == (MIXED.num_bases, MIXED.table_entries, MIXED.features_per_level)
    assert module.tables.abs().max() <= 0.5
    points, frame_index, coeffs, _ = make_inputs(MIXED, 100, frames=2)
    out = module(points, frame_index, coeffs)
    cotangent = torch.randn_like(out)
    (expected,) = torch.autograd.grad((module(points, frame_index, coeffs) * cotangent).sum(), [module.tables])
    (out * cotangent).sum().backward()
    torch.testing.assert_close(module.tables.grad, expected)


def test_inputs_get_no_grad_side_effects():
    points, frame_index, coeffs, tables = make_inputs(MIXED, 50, frames=2)
    inputs = [t.requires_grad_() for t in (points, coeffs, tables)]
    out = hash_grid.blended_hash_encode(points, frame_index, coeffs, tables, MIXED)
    torch.autograd.grad(out.sum(), inputs)
    assert all(t.grad is None for t in inputs)


def test_default_grid_smoke():
    grid = GridConfig()
    assert grid.num_bases == 47 and grid.output_dim == 64
    module = hash_grid.BlendedHashGrid(grid)
    points, frame_index, coeffs, _ = make_inputs(grid, 256, frames=2)
    with torch.no_grad():
        out = module(points, frame_index, coeffs)
        want = reference.blended_hash_encode(points, frame_index, coeffs, module.tables, grid)
    assert (out - want).abs().max() <= 1e-5 * want.abs().max()
    out = module(points, frame_index, coeffs)
    out.square().sum().backward()
    assert module.tables.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p, f, c, t: (p[:, :2], f, c, t), "points must be"),
        (lambda p, f, c, t: (p.double(), f, c, t), "use one float type"),
        (lambda p, f, c, t: (p.half(), f, c.half(), t.half()), "float32 or float64"),
        (lambda p, f, c, t: (p, f.long(), c, t), "int32"),
        (lambda p, f, c, t: (p, f[:-1], c, t), "frame_index must be"),
        (lambda p, f, c, t: (p, f, c[:, :-1], t), "coeffs must be"),
        (lambda p, f, c, t: (p, f, c, t[:, :-1]), "tables must be"),
        (lambda p, f, c, t: (p.numpy(), f, c, t), "torch.Tensor"),
    ],
)
def test_bad_inputs_are_refused(change, match):
    args = change(*make_inputs(MIXED, 10, frames=2))
    with pytest.raises(ValueError, match=match):
        hash_grid.blended_hash_encode(*args, MIXED)
