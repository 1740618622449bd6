"""Expression sweeps: one camera, a few named coefficients walked from the bottom to the top of the avatar's
trained range and back, everything else held at a calm frame's values."""
from __future__ import annotations

from typing import Sequence

from nerfbs.export.avatar import Avatar
from nerfbs.export.job import RenderJob, plan_render


def calmest_training_frame(avatar: Avatar) -> int:
    """The training frame whose coefficients lie closest to the bottom of the trained range (a rest face)."""
    s = avatar.subject
    rows = s.coeffs[: s.num_train, 1:]  # [T, K]
    span = (avatar.coeff_max - avatar.coeff_min).clamp_min(1e-6)
    return int(((rows - avatar.coeff_min) / span).sum(1).argmin())


def sweep_values(avatar: Avatar, index: int, fraction: float) -> float:
    """The value ``fraction`` (0 to 1) of the way through coefficient ``index``'s trained range."""
    lo, hi = float(avatar.coeff_min[index]), float(avatar.coeff_max[index])
    return lo + fraction * (hi - lo)


def sweep_job(avatar: Avatar, names: Sequence[str], steps: int, *, frame: int | None = None) -> RenderJob | None:
    """``steps`` views from ``frame``'s camera (default: ``calmest_training_frame``) in which the coefficients
    named in ``names`` rise together, evenly, from their trained minimum to their maximum, the others keeping
    ``frame``'s values (play it forth and back, ``expressions.ping_pong``, for a loop). None when the avatar has
    none of those names."""
    known = {n: i for i, n in enumerate(avatar.coeff_names or [])}
    indices = [known[n] for n in names if n in known]
    if not indices or steps < 2:
        return None
    frame = calmest_training_frame(avatar) if frame is None else frame
    base = plan_render(avatar, frames=str(frame), nvs=False)
    fractions = [t / (steps - 1) for t in range(steps)]
    rows = base.coeffs.repeat(steps, 1)  # [V, K+1]
    for v, f in enumerate(fractions):
        for i in indices:
            rows[v, i + 1] = sweep_values(avatar, i, f)
    sources = [{"frame": frame, "sweep": {n: round(sweep_values(avatar, known[n], f), 4) for n in names if n in known}}
               for f in fractions]
    return RenderJob(names=[f"{v:04d}" for v in range(steps)], poses=base.poses.repeat(steps, 1, 1), coeffs=rows,
                     camera=base.camera, background=base.background, sources=sources)
