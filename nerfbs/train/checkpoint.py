"""Checkpoints: one dict with a format tag and version, the config, the step, the model, occupancy and
optimizer state, the expression statistics and the training frames' pose corrections; written atomically,
loaded strictly.

Version 2 added ``poses`` (the ``PoseCorrection`` state, or None when pose refinement was off). Version 1
checkpoints still load: they were trained without pose refinement, so their ``poses`` reads as None and their
config's ``train.pose_refinement`` as False (a resumed run continues without it)."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import dataclasses

import torch

from nerfbs.atomic import atomic_path
from nerfbs.config import Config
from nerfbs.errors import UserError

FORMAT_TAG = "nerfbs-checkpoint"
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_KEYS_V1 = {"format", "version", "config", "step", "model", "occupancy", "optimizer", "scaler", "expressions", "rng"}
_KEYS = _KEYS_V1 | {"poses"}


def save_checkpoint(path: str | Path, *, config: Config, step: int, model: dict, occupancy: dict,
                    optimizer: dict | None, scaler: dict | None, expressions: dict, rng: dict | None,
                    poses: dict | None = None) -> Path:
    """Write a checkpoint whole or not at all. ``expressions`` holds ``num_coeffs``, ``coeff_min``,
    ``coeff_max`` and ``coeff_names`` (the tracked coefficients' statistics the model depends on); ``poses`` the
    training frames' ``PoseCorrection`` state (``rotation``, ``translation`` [num_train, 3]) or None."""
    payload = {"format": FORMAT_TAG, "version": FORMAT_VERSION, "config": config.to_dict(), "step": int(step),
               "model": model, "occupancy": occupancy, "optimizer": optimizer, "scaler": scaler,
               "expressions": expressions, "rng": rng, "poses": poses}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _first_sentence(err: Exception, limit: int = 100) -> str:
    """The first sentence of an error's message, cut at a word (with an ellipsis) when longer than ``limit``."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    text = text.split(". ")[0].rstrip(".")
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + "…"
    return text


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; ``config`` comes back as a ``Config``, ``poses`` as None or the pose
    corrections' state (version 1 files: None, see the module docstring). Every problem is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint — pass the path of a .pth file written by `nerfbs train`")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable checkpoint (corrupt or truncated: {_first_sentence(err)}) "
                        "— use another checkpoint, e.g. checkpoints/latest.pth") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise UserError(f"{path}: not a nerfbs checkpoint — pass a file written by `nerfbs train`")
    version = payload.get("version")
    if version not in _READABLE_VERSIONS:
        raise UserError(f"{path}: checkpoint format version {version} is not supported by this nerfbs (it reads "
                        f"versions {', '.join(map(str, _READABLE_VERSIONS))}) — retrain or use a matching nerfbs")
    missing = (_KEYS if version == FORMAT_VERSION else _KEYS_V1) - set(payload)
    if missing:
        raise UserError(f"{path}: checkpoint lacks {sorted(missing)} — it is damaged; use another checkpoint")
    try:
        config = Config.from_dict(payload["config"])
    except (ValueError, TypeError) as err:
        raise UserError(f"{path}: its config does not fit this nerfbs ({err}) — retrain with this version") from None
    if version == 1:
        config = config.replace(train=dataclasses.replace(config.train, pose_refinement=False))
        payload["poses"] = None
    payload["config"] = config
    return payload


def load_state_strict(module: torch.nn.Module, state: dict, *, what: str, path: str | Path) -> None:
    """load_state_dict(strict=True) with a one-line message naming the keys or shapes that disagree."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}")
        if shapes:
            parts.append("shape mismatch " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                       for k in shapes[:3]))
        raise UserError(f"{path}: the {what} state does not match this configuration ({'; '.join(parts)}) "
                        "— the checkpoint comes from another config")
    module.load_state_dict(state, strict=True)


def check_coefficient_count(payload: dict, num_coeffs: int, *, path: str | Path, subject: str) -> None:
    """Refuse a checkpoint trained with another number of expression coefficients, by name."""
    trained = int(payload["expressions"]["num_coeffs"])
    if trained != num_coeffs:
        raise UserError(f"{path}: trained with {trained} expression coefficients, but {subject} has {num_coeffs} "
                        "— use a checkpoint of this subject (or a subject tracked with the same coefficient set)")


def pose_state(payload: dict, num_train: int, *, path: str | Path) -> dict | None:
    """The checkpoint's pose corrections (``rotation``, ``translation`` [num_train, 3]) or None, refused with a
    one-line message when they do not cover the subject's ``num_train`` training frames."""
    poses = payload["poses"]
    if poses is None:
        return None
    if set(poses) != {"rotation", "translation"} or any(
            tuple(poses[k].shape) != (num_train, 3) for k in ("rotation", "translation")):
        shapes = {k: tuple(v.shape) for k, v in poses.items()}
        raise UserError(f"{path}: its pose corrections {shapes} do not fit the subject's {num_train} training frames "
                        "— the dataset or --test-last changed since training; use the subject it was trained on")
    return poses
