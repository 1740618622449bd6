"""How well the training frames' expressions cover the held-out frames' (a property of the data, not the model).

A blend-shape field learns each expression from the frames that show it. On real videos the held-out frames score
far below the training frames, and better cameras close little of the gap (docs/PERF.md, session 7: katie's
training frames 27.4 dB of face score, its held-out frames 20.5; refining each held-out camera on its own image
adds 0.6 dB). Its held-out frames show expressions the training frames do not: coefficients beyond the training
range (clamped to it when rendered) and expressions far from every training frame's. ``expression_coverage``
measures both, so a user learns why such frames come out blurred before the renders say so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# A held-out coefficient counts as beyond the training range when it leaves it by more than this (coefficients
# run over [0, 1]).
RANGE_TOLERANCE = 0.05
# Training frames this close in time are left out of each other's nearest-neighbour search: neighbouring frames
# of a video repeat an expression, which held-out frames cannot do.
NEIGHBOUR_GAP = 5


@dataclass(frozen=True)
class ExpressionCoverage:
    """beyond: (name, excess) of each coefficient whose held-out values leave the training range by more than the
    tolerance, the largest excess first; held_out_distance: median distance from a held-out frame's coefficients to
    the nearest training frame's; train_distance: the same between training frames at least ``NEIGHBOUR_GAP + 1``
    frames apart (None with too few training frames); num_coeffs: K."""

    beyond: list[tuple[str, float]]
    held_out_distance: float
    train_distance: Optional[float]
    num_coeffs: int

    @property
    def distance_ratio(self) -> Optional[float]:
        """held_out_distance / train_distance: about 1 when held-out expressions are as close to the training frames
        as those are to each other, more when they are new (None when undefined)."""
        if self.train_distance is None or self.train_distance <= 0:
            return None
        return self.held_out_distance / self.train_distance

    def summary(self, shown: int = 4) -> str:
        """One line for the console, e.g. ``3 of 52 coefficients beyond the training range (jawOpen +0.21, ...);
        held-out expressions 1.4x as far from the training frames as those are from each other``."""
        if self.beyond:
            names = ", ".join(f"{name} +{excess:.2f}" for name, excess in self.beyond[:shown])
            more = ", ..." if len(self.beyond) > shown else ""
            head = f"{len(self.beyond)} of {self.num_coeffs} coefficients beyond the training range ({names}{more})"
        else:
            head = f"all {self.num_coeffs} coefficients within the training range"
        ratio = self.distance_ratio
        if ratio is None:
            return head
        return (f"{head}; held-out expressions {ratio:.1f}x as far from the training frames as those are from each "
                "other")

    @property
    def worrying(self) -> bool:
        """True when held-out frames will likely come out blurred for lack of training expressions (anything beyond
        the range, or held-out expressions 1.25x as far as the training frames' own spacing)."""
        ratio = self.distance_ratio
        return bool(self.beyond) or (ratio is not None and ratio > 1.25)


def _nearest_distances(queries: np.ndarray, pool: np.ndarray, exclude_within: Optional[int] = None,
                       chunk: int = 512) -> np.ndarray:
    """For each row of queries [Q, K], the distance to the nearest row of pool [P, K]; with ``exclude_within``
    (queries being the pool itself), rows that many indices apart or fewer are skipped. Memory: chunk x P."""
    pool_sq = (pool * pool).sum(1)
    out = np.empty(len(queries))
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        d2 = np.maximum((q * q).sum(1)[:, None] + pool_sq[None, :] - 2.0 * q @ pool.T, 0.0)
        if exclude_within is not None:
            rows = np.arange(start, start + len(q))
            d2[np.abs(rows[:, None] - np.arange(len(pool))[None, :]) <= exclude_within] = np.inf
        out[start:start + len(q)] = np.sqrt(d2.min(axis=1))
    return out


def expression_coverage(coeffs: np.ndarray, num_train: int, names: Optional[Sequence[str]] = None, *,
                        tolerance: float = RANGE_TOLERANCE) -> ExpressionCoverage:
    """Coverage of frames [num_train, N) by frames [0, num_train) of raw coefficients ``coeffs`` [N, K] (as
    ``nerfbs.data.subject.read_expressions`` reads them, in frame order); ``names`` label the coefficients
    (indices when None)."""
    coeffs = np.asarray(coeffs, dtype=np.float64)
    if coeffs.ndim != 2 or not 0 < num_train < coeffs.shape[0]:
        raise ValueError(f"need coefficients [N, K] and 0 < num_train < N, got {coeffs.shape} and {num_train}")
    train, held_out = coeffs[:num_train], coeffs[num_train:]
    k = coeffs.shape[1]
    labels = list(names) if names is not None and len(names) == k else [str(i) for i in range(k)]
    excess = np.maximum(held_out.max(0) - train.max(0), train.min(0) - held_out.min(0))
    beyond = sorted(((labels[i], float(excess[i])) for i in range(k) if excess[i] > tolerance), key=lambda b: -b[1])
    held_out_distance = float(np.median(_nearest_distances(held_out, train)))
    train_distance = None
    if num_train > 2 * (NEIGHBOUR_GAP + 1):
        spacing = _nearest_distances(train, train, exclude_within=NEIGHBOUR_GAP)
        train_distance = float(np.median(spacing[np.isfinite(spacing)]))
    return ExpressionCoverage(beyond=beyond, held_out_distance=held_out_distance, train_distance=train_distance,
                              num_coeffs=k)
