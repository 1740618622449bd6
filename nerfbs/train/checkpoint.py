"""Checkpoints: one dict with a format tag and version, the config, the step, the model, occupancy and
optimizer state and the expression statistics; written atomically, loaded strictly."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from nerfbs.atomic import atomic_path
from nerfbs.config import Config
from nerfbs.errors import UserError

FORMAT_TAG = "nerfbs-checkpoint"
FORMAT_VERSION = 1
_KEYS = {"format", "version", "config", "step", "model", "occupancy", "optimizer", "scaler", "expressions", "rng"}


def save_checkpoint(path: str | Path, *, config: Config, step: int, model: dict, occupancy: dict,
                    optimizer: dict | None, scaler: dict | None, expressions: dict, rng: dict | None) -> Path:
    """Write a checkpoint whole or not at all. ``expressions`` holds ``num_coeffs``, ``coeff_min``,
    ``coeff_max`` and ``coeff_names`` (the tracked coefficients' statistics the model depends on)."""
    payload = {"format": FORMAT_TAG, "version": FORMAT_VERSION, "config": config.to_dict(), "step": int(step),
               "model": model, "occupancy": occupancy, "optimizer": optimizer, "scaler": scaler,
               "expressions": expressions, "rng": rng}
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
    """Read and validate a checkpoint; ``config`` comes back as a ``Config``. Every problem is a UserError."""
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
    if payload.get("version") != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format version {payload.get('version')} is not supported by this "
                        f"nerfbs (it reads version {FORMAT_VERSION}) — retrain or use a matching nerfbs")
    missing = _KEYS - set(payload)
    if missing:
        raise UserError(f"{path}: checkpoint lacks {sorted(missing)} — it is damaged; use another checkpoint")
    try:
        payload["config"] = Config.from_dict(payload["config"])
    except (ValueError, TypeError) as err:
        raise UserError(f"{path}: its config does not fit this nerfbs ({err}) — retrain with this version") from None
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
