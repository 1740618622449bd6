"""Held-out evaluation: PSNR, SSIM and LPIPS of rendered frames against head_imgs (already composited on
the dataset background), over the full frame and inside the face and mouth rectangles; and the face score
(``nerfbs.evaluate.face``): PSNR inside the landmarks' shrunk convex hull against the original frame, which
does not depend on the head masks."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nerfbs.evaluate import metrics
from nerfbs.evaluate.face import FACE_SHRINK, face_psnr
from nerfbs.evaluate.sheet import ContactSheet
from nerfbs.atomic import write_text
from nerfbs.images import error_grid, write_png

REGIONS = ("full", "face", "mouth", "face_hull")  # face_hull: the face score, PSNR only, against ori_imgs
LABELS = {"full": "full", "face": "face", "mouth": "mouth", "face_hull": "face hull vs ori_imgs"}
PSNR_CAP = 100.0  # identical images have infinite PSNR; reports (and JSON) cap it here


@dataclass
class Evaluation:
    """Per-frame rows and their means, per region."""

    rows: list[dict] = field(default_factory=list)

    def mean(self) -> dict[str, dict[str, float]]:
        """Per region, the mean PSNR (dB), SSIM and LPIPS over the frames that have each (None when none has)."""
        out: dict[str, dict[str, float]] = {}
        for region in REGIONS:
            out[region] = {}
            for name in ("psnr", "ssim", "lpips"):
                values = [r[region][name] for r in self.rows if r[region].get(name) is not None]
                out[region][name] = float(np.mean(values)) if values else None
        return out

    def to_json(self) -> dict:
        """The JSON report: frame count, per-region means and the per-frame rows."""
        return {"frames": len(self.rows), "mean": self.mean(), "per_frame": self.rows}

    def markdown(self) -> str:
        """The means as a Markdown table (one row per region) with a note on the face-hull score."""
        mean = self.mean()
        lines = [f"Held-out frames: {len(self.rows)}", "", "| region | PSNR (dB) | SSIM | LPIPS |", "| --- | ---: | ---: | ---: |"]
        for region in REGIONS:
            m = mean[region]
            fmt = lambda v, p: "n/a" if v is None else f"{v:.{p}f}"
            lines.append(f"| {LABELS[region]} | {fmt(m['psnr'], 2)} | {fmt(m['ssim'], 4)} | {fmt(m['lpips'], 4)} |")
        lines += ["", f"face hull vs ori_imgs: the render against the original frame inside the convex hull of the "
                      f"frame's landmarks, eroded by {FACE_SHRINK:.0%} of its size (independent of the head masks)."]
        return "\n".join(lines) + "\n"


def _rect(r) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in r)  # type: ignore[return-value]


def score_frame(pred: np.ndarray, truth: np.ndarray, face_rect, mouth_rect,
                lpips_model: torch.nn.Module | None, original: np.ndarray | None = None,
                landmarks: np.ndarray | None = None) -> dict:
    """Metrics of one frame (float [H, W, 3] images in [0, 1]) for each region; the face score ("face_hull")
    needs the original frame (uint8 or float [H, W, 3]) and its landmarks [478, 2], else it is None."""
    row = {}
    for region, rect in (("full", None), ("face", _rect(face_rect)), ("mouth", _rect(mouth_rect))):
        row[region] = {
            "psnr": min(metrics.psnr(pred, truth, rect=rect), PSNR_CAP),
            "ssim": metrics.ssim(pred, truth, rect=rect),
            "lpips": metrics.lpips_distance(lpips_model, pred, truth, rect=rect) if lpips_model is not None else None,
        }
    score = None if original is None or landmarks is None else face_psnr(pred, original, landmarks)
    row["face_hull"] = {"psnr": None if score is None else min(score, PSNR_CAP), "ssim": None, "lpips": None}
    return row


def evaluate_frames(render: Callable[[int], tuple[np.ndarray, np.ndarray]], frames: list[int], face_rects,
                    mouth_rects, lpips_model: torch.nn.Module | None,
                    progress: Callable[[int, int], None] | None = None,
                    keep_worst: int = 0, originals: Callable[[int], tuple] | None = None,
                    sheet: ContactSheet | None = None
                    ) -> tuple[Evaluation, list[tuple[float, int, np.ndarray, np.ndarray]]]:
    """Score ``render(frame) -> (prediction, truth)`` on each frame; also return the ``keep_worst`` frames with the
    lowest full-frame PSNR as (psnr, frame, prediction, truth). ``originals(frame) -> (original image or None,
    landmarks [478, 2])`` gives what the face score needs (without it the face score is n/a). ``sheet`` keeps the
    images of the frames it chose, as they are scored."""
    result = Evaluation()
    worst: list[tuple[float, int, np.ndarray, np.ndarray]] = []
    for i, frame in enumerate(frames):
        pred, truth = render(frame)
        original, landmarks = originals(frame) if originals is not None else (None, None)
        row = score_frame(pred, truth, face_rects[frame], mouth_rects[frame], lpips_model, original, landmarks)
        row["frame"] = int(frame)
        result.rows.append(row)
        if keep_worst:
            worst.append((row["full"]["psnr"], int(frame), pred, truth))
            worst = sorted(worst, key=lambda w: w[0])[:keep_worst]
        if sheet is not None:
            sheet.offer(frame, pred, truth, original, mouth_rects[frame], row["face_hull"]["psnr"])
        if progress is not None:
            progress(i + 1, len(frames))
    return result, worst


def write_report(evaluation: Evaluation, out_dir: Path, worst: list | None = None,
                 sheet: ContactSheet | None = None) -> dict[str, Path]:
    """metrics.json, metrics.md, (given worst frames) worst.png: prediction | truth | error rows, and (given a
    sheet that kept frames) contact.png (``nerfbs.evaluate.sheet``)."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "metrics.json", "markdown": out_dir / "metrics.md"}
    write_text(paths["json"], json.dumps(evaluation.to_json(), indent=2))
    write_text(paths["markdown"], evaluation.markdown())
    if worst:
        paths["worst"] = out_dir / "worst.png"
        write_png(paths["worst"], np.concatenate([error_grid(p, t) for _, _, p, t in worst], axis=0))
    contact = sheet.image() if sheet is not None else None
    if contact is not None:
        paths["contact"] = out_dir / "contact.png"
        write_png(paths["contact"], contact)
    return paths

