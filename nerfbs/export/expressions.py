"""Where a render's expression coefficients come from: the avatar's own frames, another sequence
(reenactment, ``--drive``), and fixed values (semantic editing, ``--set``).

Coefficient vectors here are [K] in the format's order (``exp_ori[i]`` is coefficient i, counted from
0); the model's rows [K + 1] put the neutral 1.0 first. Every vector that reaches the model is clamped
into the avatar's training range, as the original clamps at test time.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from nerfbs.errors import UserError

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^\s*(-?\d*)\s*:\s*(-?\d*)\s*$")


# ------------------------------------------------------------------------------------------- frame choice
def select_frames(spec: str, num_frames: int, num_train: int) -> list[int]:
    """Frame indices (0-based, in img_id order) named by ``test``, ``train``, ``all``, ``i``, or a slice
    ``a:b`` (b exclusive; either end may be left out or negative, as in Python)."""
    spec = spec.strip().lower()
    named = {"test": range(num_train, num_frames), "train": range(num_train), "all": range(num_frames)}
    if spec in named:
        chosen = list(named[spec])
    elif spec.lstrip("-").isdigit():
        i = int(spec)
        if not -num_frames <= i < num_frames:
            raise UserError(f"--frames {spec}: the subject has frames 0 to {num_frames - 1} — pick one of those")
        chosen = [i % num_frames]
    else:
        m = _RANGE.match(spec)
        if not m:
            raise UserError(f"--frames {spec}: not understood — use test, train, all, an index or a range a:b")
        a = int(m.group(1)) if m.group(1) not in ("", "-") else None
        b = int(m.group(2)) if m.group(2) not in ("", "-") else None
        chosen = list(range(num_frames))[a:b]
    if not chosen:
        raise UserError(f"--frames {spec}: selects no frame (the subject has {num_frames}, {num_train} for "
                        "training) — choose a non-empty range")
    return chosen


def ping_pong(items: Sequence[int], count: int) -> list[int]:
    """``count`` items walked forth and back over ``items`` (no jump when a short list is reused)."""
    n = len(items)
    if n == 1:
        return [items[0]] * count
    period = 2 * (n - 1)
    return [items[t % period if t % period < n else period - t % period] for t in range(count)]


# ------------------------------------------------------------------------------------------------- --set
def parse_settings(items: Sequence[str], names: Optional[Sequence[str]], num_coeffs: int) -> dict[int, float]:
    """``--set`` items ``INDEX=VALUE`` (INDEX counts exp_ori from 0) or ``NAME=VALUE`` (the subject's
    exp_names) -> {coefficient index: value}. A later item for the same coefficient wins."""
    out: dict[int, float] = {}
    lookup = {n: i for i, n in enumerate(names or [])}
    folded = {n.lower(): i for n, i in lookup.items()}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise UserError(f"--set {item}: expected INDEX=VALUE or NAME=VALUE, e.g. --set 0=0.8 or --set jawOpen=0.8")
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"--set {item}: {value!r} is not a number — give a value such as 0.8") from None
        if not math.isfinite(number):
            raise UserError(f"--set {item}: the value must be finite")
        if key.lstrip("-").isdigit():
            index = int(key)
            if not 0 <= index < num_coeffs:
                raise UserError(f"--set {item}: index {index} is out of range — coefficients are numbered 0 to "
                                f"{num_coeffs - 1} (exp_ori order)")
        elif key in lookup or key.lower() in folded:
            index = lookup.get(key, folded.get(key.lower()))
        elif not lookup:
            raise UserError(f"--set {item}: this avatar's data has no coefficient names (no exp_names in "
                            f"transforms.json) — use an index 0 to {num_coeffs - 1}")
        else:
            close = [n for n in lookup if key.lower() in n.lower() or n.lower() in key.lower()]
            shown = ", ".join((close or list(lookup))[:6])
            raise UserError(f"--set {item}: no coefficient named {key!r} — valid names include {shown} "
                            f"(or use an index 0 to {num_coeffs - 1})")
        out[index] = number
    return out


def apply_settings(rows: torch.Tensor, settings: dict[int, float], lo: torch.Tensor, hi: torch.Tensor
                   ) -> tuple[torch.Tensor, list[str]]:
    """Model rows [V, K+1] with coefficient i fixed to settings[i] (clamped into [lo[i], hi[i]], the
    avatar's training range); also notes for the values that had to be clamped."""
    rows = rows.clone()
    notes = []
    for i, value in sorted(settings.items()):
        low, high = float(lo[i]), float(hi[i])
        clamped = min(max(value, low), high)
        if clamped != value:
            notes.append(f"coefficient {i} = {value:g} lies outside the trained range [{low:.3g}, {high:.3g}]: "
                         f"using {clamped:.3g}")
        rows[:, i + 1] = clamped
    return rows, notes


# ----------------------------------------------------------------------------------------------- --drive
@dataclass
class Driver:
    """Another sequence's coefficients: raw [T, K] in img_id order, its clamping range [K] and names."""

    path: Path
    coeffs: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    names: Optional[list[str]]

    @property
    def clamped(self) -> np.ndarray:
        """The driving coefficients [F, K] clamped into the avatar's training range."""
        return np.clip(self.coeffs, self.lo, self.hi)


def read_driver(path: str | Path) -> Driver:
    """Read ``transforms.json`` (or the folder holding it) of the driving sequence. Its own clamping range
    is the ``min_<K>.txt`` / ``max_<K>.txt`` beside it when present (the original writes them from its
    training frames), else the range over all its frames. Images are not needed."""
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    if not path.is_file():
        raise UserError(f"--drive {path}: not found — give the driving sequence's transforms.json")
    try:
        meta = json.loads(path.read_text())
        frames = sorted(meta["frames"], key=lambda f: int(f["img_id"]))
        coeffs = np.array([np.asarray(f["exp_ori"], dtype=np.float32).reshape(-1) for f in frames], dtype=np.float32)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--drive {path}: not a NeRFBlendShape transforms.json with frames of exp_ori ({err}) "
                        "— see FORMAT.md") from None
    if coeffs.ndim != 2 or coeffs.shape[0] == 0:
        raise UserError(f"--drive {path}: no frames, or frames with differing coefficient counts — see FORMAT.md")
    k = coeffs.shape[1]
    lo, hi = coeffs.min(0), coeffs.max(0)
    stored = [path.parent / f"min_{k}.txt", path.parent / f"max_{k}.txt"]
    if all(p.is_file() for p in stored):
        try:
            lo, hi = (np.loadtxt(p, dtype=np.float32).reshape(-1) for p in stored)
        except ValueError:
            raise UserError(f"--drive {stored[0]}: unreadable — delete min_{k}.txt and max_{k}.txt") from None
        if lo.size != k or hi.size != k:
            raise UserError(f"--drive {stored[0]}: holds {lo.size} values for {k} coefficients — delete "
                            f"min_{k}.txt and max_{k}.txt")
    names = meta.get("exp_names")
    names = list(names) if isinstance(names, list) and len(names) == k else None
    return Driver(path=path, coeffs=coeffs, lo=lo, hi=hi, names=names)


def driver_rows(driver: Driver, lo: torch.Tensor, hi: torch.Tensor, names: Optional[Sequence[str]], *,
                relative_to: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Model rows [T, K+1] for the avatar (range lo, hi [K], coefficient ``names``) from the driver.

    The driver's coefficients are clamped into its own range; with ``relative_to`` (an avatar vector [K],
    its first training frame) the avatar gets ``relative_to + (driver_t - driver_0)``, so only the
    driver's changes travel, not its identity. Then everything is clamped into the avatar's range."""
    k = lo.shape[0]
    ours = driver.coeffs.shape[1]
    if ours != k:
        raise UserError(f"--drive {driver.path}: {ours} expression coefficients per frame, but the avatar was "
                        f"trained with {k} — drive with a sequence tracked with the same coefficient set")
    coeffs = driver.clamped
    if names and driver.names and list(names) != driver.names:
        if sorted(names) != sorted(driver.names):
            differ = sorted(set(driver.names) ^ set(names))[:4]
            raise UserError(f"--drive {driver.path}: its exp_names differ from the avatar's ({', '.join(differ)}) "
                            "— drive with a sequence tracked with the same coefficient set")
        order = [driver.names.index(n) for n in names]
        coeffs = coeffs[:, order]
        log.info("%s: coefficients reordered by name to the avatar's order", driver.path)
    values = torch.from_numpy(np.ascontiguousarray(coeffs)).to(lo.device, torch.float32)
    if relative_to is not None:
        values = relative_to.to(values) + (values - values[:1])
    values = torch.minimum(torch.maximum(values, lo.to(values)), hi.to(values))
    return torch.cat([torch.ones_like(values[:, :1]), values], 1)
