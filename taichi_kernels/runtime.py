"""The one owner of ``ti.init``.

``ensure_initialized()`` picks Taichi's backend once per process: CUDA when torch sees a GPU, else
Taichi's CPU backend. ``NERFBS_ARCH=cpu|cuda`` (or the ``arch`` argument) overrides the choice.
Every public kernel wrapper calls it before its first launch, so nothing runs before init and
nothing initialises at import time.
"""
from __future__ import annotations

import logging
import os

import taichi as ti
import torch

log = logging.getLogger(__name__)

ARCH_ENV = "NERFBS_ARCH"
_VALID = ("cpu", "cuda")

# Taichi's own CUDA memory pool: torch owns the big tensors (they reach kernels as ndarrays with
# no copy), Taichi only needs room for its runtime and small fields.
_CUDA_POOL_GB = 0.25

_state: dict[str, str] = {}


class ArchError(RuntimeError):
    """The requested compute backend cannot be used on this machine."""


def requested_arch(arch: str | None = None) -> str:
    """The backend to use: the argument, else ``$NERFBS_ARCH``, else cuda if torch sees a GPU."""
    choice = (arch or os.environ.get(ARCH_ENV) or "").strip().lower()
    if not choice or choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice not in _VALID:
        raise ArchError(f"{ARCH_ENV}={choice!r} is not a backend: use one of {', '.join(_VALID)} (or unset it)")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ArchError("CUDA was requested but torch sees no GPU: unset NERFBS_ARCH or use NERFBS_ARCH=cpu")
    return choice


def ensure_initialized(arch: str | None = None) -> str:
    """Initialise Taichi once and return the backend in use ("cpu" or "cuda").

    Calling again is free. Asking for a different backend after initialisation is an error,
    since Taichi cannot switch backends inside one process.
    """
    if "arch" in _state:
        if arch is not None and requested_arch(arch) != _state["arch"]:
            raise ArchError(f"Taichi already runs on {_state['arch']}; cannot switch to {arch} in this process")
        return _state["arch"]
    chosen = requested_arch(arch)
    if chosen == "cuda":
        ti.init(arch=ti.cuda, device_memory_GB=_CUDA_POOL_GB, offline_cache=True, log_level=ti.WARN)
    else:
        ti.init(arch=ti.cpu, offline_cache=True, log_level=ti.WARN, cpu_max_num_threads=os.cpu_count() or 1)
        # Taichi's kernels use every core; torch's own thread pool beside them only fights for the same
        # cores (measured on 2 cores: a small training step 850 ms -> 85 ms with one torch thread).
        torch.set_num_threads(1)
    _state["arch"] = chosen
    log.info("taichi initialised on %s", chosen)
    return chosen


def current_arch() -> str | None:
    """The backend Taichi runs on, or None before initialisation."""
    return _state.get("arch")


def torch_device() -> torch.device:
    """The torch device matching Taichi's backend (initialising Taichi if needed)."""
    return torch.device("cuda" if ensure_initialized() == "cuda" else "cpu")


def check_device(name: str, tensor: torch.Tensor) -> None:
    """Raise if ``tensor`` does not live where Taichi's kernels can read it without a copy."""
    want = ensure_initialized()
    if tensor.device.type != want:
        raise ValueError(f"{name} is on {tensor.device}, but Taichi runs on {want}: move it with .to('{want}')")
