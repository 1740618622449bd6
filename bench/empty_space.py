"""Issue 15 on the GPU: today's recipe and renderer beside the empty-space fix, one subject and variant per call.

``run`` trains --minutes of the default recipe with a variant's settings (LPIPS off, as bench/quality.py; the
first step's kernel compilation not counted), then measures on the held-out frames: PSNR, samples per ray
of the inference renderer, and 512x512 frames per second (PNG writing excluded, pixels copied to the host
as uint8, as ``nerfbs render`` does), batched (8 frames per call) and one frame at a time, with the new
inference loop (today's loop is measured by ``nerfbs render`` in a checkout of the commit before it).
``table`` merges the JSON files of several runs into one table. Runs trained side by side on one GPU measure
their render speed afterwards, one at a time: ``run --no-render`` keeps the checkpoint, and ``render`` loads it and
adds the render figures to the run's JSON.

    python bench/empty_space.py run --subject SUBJECT --variant today --minutes 5 --test-last 60 --out today.json
    python bench/empty_space.py run --subject SUBJECT --variant fix --minutes 5 --test-last 60 --out fix.json
    python bench/empty_space.py table today.json fix.json --out table.json
    python bench/empty_space.py run ... --no-render --out a.json && python bench/empty_space.py render a.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import apply_overrides, render, score_held_out  # noqa: E402
from nerfbs.evaluate import report as evaluate  # noqa: E402
from nerfbs.export.avatar import load_avatar  # noqa: E402
from nerfbs.field import FrozenField  # noqa: E402
from nerfbs.config import SMALL_MODEL, SMALL_RENDER, Config, DataConfig, TrainConfig  # noqa: E402
from nerfbs.render.image import render_images  # noqa: E402
from nerfbs.train import loop as train  # noqa: E402
from nerfbs.train.workspace import Workspace  # noqa: E402
from taichi_kernels import runtime  # noqa: E402

# Every setting issue 15 touches, spelled out in each variant, so that a variant means the same whatever the
# defaults are.
_TODAY = {"train.distortion_weight": "0", "train.occupancy_mask_carving": "0", "render.skip_hidden_samples": "0"}
VARIANTS = {
    "today": _TODAY,
    "carve": {**_TODAY, "train.occupancy_mask_carving": "1"},
    "skip": {**_TODAY, "render.skip_hidden_samples": "1"},
    "distortion": {**_TODAY, "train.distortion_weight": "0.01"},
    "fix": {"train.distortion_weight": "0.01", "train.occupancy_mask_carving": "1", "render.skip_hidden_samples": "1"},
}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _to_host(images) -> np.ndarray:
    return (images.rgb.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def frames_per_second(model, frames: list[int], batch: int, samples_per_round: int | None = None,
                      repeats: int = 1) -> dict:
    """Render the frames ``repeats`` times in batches of ``batch`` after one warm-up batch; frames/s and the
    median milliseconds per call. Pixels reach the host as uint8."""
    s = model.subject
    background = s.background.float() / 255.0
    poses, coeffs = s.poses[frames], s.coeffs[frames]

    def call(i: int) -> None:
        j = slice(i, i + batch)
        _to_host(render_images(model.field, model.grid, model.config.render, poses[j], s.intrinsics, coeffs[j],
                               background, samples_per_round=samples_per_round))

    call(0)
    times, count = [], 0
    for _ in range(repeats):
        for i in range(0, len(frames), batch):
            sync()
            t0 = time.perf_counter()
            call(i)
            sync()
            times.append(time.perf_counter() - t0)
            count += len(frames[i:i + batch])
    return {"fps": count / sum(times), "median_ms_per_call": 1000 * statistics.median(times), "frames": count,
            "batch": batch}


def render_figures(model, frames: list[int], repeats: int) -> dict:
    """Samples per ray of the held-out renders and frames/s, batched and one frame at a time."""
    s = model.subject
    stats: dict = {}
    background = s.background.float() / 255.0
    for i in range(0, len(frames), 8):
        j = frames[i:i + 8]
        part: dict = {}
        render_images(model.field, model.grid, model.config.render, s.poses[j], s.intrinsics, s.coeffs[j], background,
                      stats=part)
        stats["samples"] = stats.get("samples", 0) + part["samples"]
        stats["rays"] = stats.get("rays", 0) + part["ray_samples"].numel()
        stats["marching_rays"] = stats.get("marching_rays", 0) + int((part["ray_samples"] > 0).sum())
        stats["rounds"] = stats.get("rounds", 0) + part["rounds"]
    out = {"samples_per_pixel": stats["samples"] / max(stats["rays"], 1),
           "samples_per_marching_ray": stats["samples"] / max(stats["marching_rays"], 1),
           "rounds_per_batch_of_8": stats["rounds"] / max((len(frames) + 7) // 8, 1)}
    out["new_batch8"] = frames_per_second(model, frames, 8, repeats=repeats)
    for spr in (8, 16, 32):
        out[f"new_single_spr{spr}"] = frames_per_second(model, frames, 1, samples_per_round=spr, repeats=repeats)
    out["new_single_default"] = frames_per_second(model, frames, 1, repeats=repeats)
    return out


def run(args) -> None:
    device = runtime.torch_device()
    config = Config(data=DataConfig(subject=args.subject, test_last=args.test_last),
                    train=TrainConfig(steps=10 ** 9, minutes=args.minutes, validate_every=10 ** 9, checkpoint_every=10 ** 9,
                                      use_lpips=False))
    if args.model == "small":
        config = config.replace(model=SMALL_MODEL, render=SMALL_RENDER)
    config = apply_overrides(config, [f"{k}={v}" for k, v in VARIANTS[args.variant].items()] + args.set)
    ws = Workspace(Path(args.workspace or f"/tmp/nerfbs-empty-space/{Path(args.subject).name}-{args.variant}"))
    model = train.prepare_run(config, ws, device, resume_from=None, lpips_loader=lambda needed: None)
    first = {}

    def on_step(step: int, figures: dict) -> None:
        if step == 1:
            first["compile_s"] = figures["ms_per_step"] / 1000.0
            model.elapsed_before -= first["compile_s"]

    train.train(model, on_step=on_step, log_every=50)
    rows = [r for r in ws.read_metrics() if "samples_per_ray" in r]
    tail = rows[-max(len(rows) // 5, 1):]
    report = {"subject": args.subject, "variant": args.variant, "settings": VARIANTS[args.variant], "extra": args.set,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "steps": model.step,
              "train_seconds": model.elapsed, "compile_seconds": first.get("compile_s"),
              "steps_per_second": model.step / max(model.elapsed, 1e-9),
              "train_samples_per_ray": float(np.mean([r["samples_per_ray"] for r in tail])),
              "train_marched_per_ray": float(np.mean([r.get("marched_per_ray", r["samples_per_ray"]) for r in tail])),
              "occupied_share": float(np.mean([r["occupancy"] for r in tail])),
              "history": [{k: r[k] for k in ("step", "samples_per_ray", "occupancy") if k in r} for r in rows[::10]]}
    report["grid_density"] = grid_density_figures(model.grid)
    report["checkpoint"] = str(ws.latest)
    report["render_frames"] = args.render_frames
    report["repeats"] = args.repeats
    report["held_out"] = None
    _write_report(Path(args.out), report)  # the training figures, kept if the scoring below is cut short
    model.field.eval()
    report["held_out"] = {region: v for region, v in score_held_out(model).items()}
    if args.score_train:
        report["train_frames"] = score_training_frames(model, args.score_train)
    if args.render:
        frames = [int(i) for i in model.subject.test_indices][: args.render_frames or None]
        report["render"] = render_figures(model, frames, args.repeats)
    _write_report(Path(args.out), report)
    print_table([report])


def _write_report(path: Path, report: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=1))
    partial.replace(path)


def grid_density_figures(grid) -> dict:
    """How dense the occupied cells are (quantiles) and which share of them lies above a few densities: the
    cells where render.long_step_density = L turns long steps back into the original's."""
    occupied = grid.density[grid.density > grid.threshold].float().cpu()
    if occupied.numel() == 0:
        return {"threshold": grid.threshold}
    quantiles = torch.quantile(occupied, torch.tensor([0.1, 0.5, 0.9, 0.99]))  # at most 128^3 cells: within its limit
    return {"threshold": grid.threshold, "quantiles_10_50_90_99": [float(q) for q in quantiles],
            "share_above": {str(L): float((occupied > L).float().mean()) for L in (10, 50, 200, 1000, 5000)}}


def score_training_frames(model, count: int) -> dict:
    """The scores of ``count`` training frames spread over the sequence (seen by their refined cameras): beside
    the held-out scores they say whether the field cannot fit the frames or cannot generalise to new ones."""
    n = model.subject.num_train
    frames = sorted({int(round(i * (n - 1) / max(count - 1, 1))) for i in range(count)})
    result, _ = evaluate.evaluate_frames(
        lambda f: render(model, f), frames, model.subject.face_rects, model.subject.mouth_rects, None,
        originals=lambda f: (model.subject.original(f), model.subject.landmarks[f].numpy()))
    return result.mean()


def render_checkpoint(args) -> None:
    """Add the render figures of a ``run --no-render``'s checkpoint to its JSON (one process on the GPU)."""
    report = json.loads(Path(args.report).read_text())
    FrozenField.PRODUCT_COLUMNS = args.product_columns or FrozenField.PRODUCT_COLUMNS
    FrozenField.FUSED_MLP = FrozenField.FUSED_MLP and not args.products
    avatar = load_avatar(report["checkpoint"], runtime.torch_device(), subject_dir=report["subject"])
    avatar.field.eval()
    frames = [int(i) for i in avatar.subject.test_indices][: report.get("render_frames") or None]
    key = "render" + (f"_columns{args.product_columns}" if args.product_columns else "") + (
        "_products" if args.products else "")
    report[key] = render_figures(avatar, frames, report.get("repeats", 1))
    if FrozenField.FUSED_MLP:
        report[key]["kernel_vs_products"] = kernel_against_products(avatar, frames[:8])
    _write_report(Path(args.report), report)
    print_table([report], key)


def kernel_against_products(avatar, frames: list[int]) -> dict:
    """The frames rendered with the MLPs' kernel against their products (FrozenField.FUSED_MLP): PSNR (dB), the
    largest difference and the share of differing pixel values; only whether the kernel ran where it does not."""
    s = avatar.subject
    images = []
    kernel_ran = avatar.field.frozen(s.coeffs[frames[:1]], torch.float16).fused is not None
    if not kernel_ran:  # a CPU or an older GPU: both renders would be the products
        return {"kernel_ran": False}
    for fused in (False, True):
        FrozenField.FUSED_MLP = fused
        images.append(render_images(avatar.field, avatar.grid, avatar.config.render, s.poses[frames], s.intrinsics,
                                    s.coeffs[frames], s.background.float() / 255.0).rgb.clamp(0, 1))
    difference = (images[0] - images[1]).abs()
    return {"psnr": 10 * math.log10(1 / max((difference ** 2).mean().item(), 1e-12)),
            "largest_difference": difference.max().item(), "differing_share": (difference > 0).float().mean().item(),
            "kernel_ran": True}


def evaluate_checkpoint(args) -> None:
    """`nerfbs eval`'s report (metrics, worst frames, contact sheet) of a run's checkpoint into ``args.out``,
    without LPIPS and without the CLI (the GPU machine has no typer)."""
    from nerfbs.commands import evaluate_run

    report = json.loads(Path(args.report).read_text())
    avatar = load_avatar(report["checkpoint"], runtime.torch_device(), subject_dir=report["subject"])
    avatar.field.eval()
    evaluate_run(avatar.field, avatar.grid, avatar.config.render, avatar.subject, None, Path(args.out))


def _psnrs(scores: dict | None) -> str:
    """'full / face / mouth / face score' PSNRs of a scores dict, '-' where missing."""
    if not scores:
        return "-"
    return " / ".join(f"{scores[k]['psnr']:.2f}" if scores.get(k) and scores[k].get("psnr") is not None else "-"
                      for k in ("full", "face", "mouth", "face_hull"))


def _row(r: dict, render_key: str = "render") -> list[str]:
    rd = r.get(render_key)
    speed = ["-"] * 4 if rd is None else [
        f"{rd['samples_per_pixel']:.1f} / {rd['samples_per_marching_ray']:.1f}", f"{rd['new_batch8']['fps']:.0f}",
        f"{rd['new_single_default']['fps']:.0f}", " ".join(f"{rd[f'new_single_spr{k}']['fps']:.0f}" for k in (8, 16, 32))]
    return [Path(r["subject"]).name, r["variant"] + "".join(f" {e}" for e in r.get("extra", [])), str(r["steps"]),
            f"{r['steps_per_second']:.1f}", f"{r['train_samples_per_ray']:.1f} / {r['train_marched_per_ray']:.1f}",
            f"{100 * r['occupied_share']:.1f}", _psnrs(r["held_out"]), _psnrs(r.get("train_frames")), *speed]


def print_table(reports: list[dict], render_key: str = "render") -> None:
    """A markdown table of the reports, their render figures read from ``render_key``."""
    head = ["subject", "variant", "steps", "steps/s", "train samples/ray (grad / marched)", "occupied %",
            "held-out full / face / mouth / face score", "training frames: the same",
            "render samples/pixel (/ marching ray)", "fps batch 8", "fps single", "single fps spr 8 16 32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_row(r, render_key)) + " |" for r in reports]
    print("\n".join(lines), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--subject", required=True)
    r.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    r.add_argument("--minutes", type=float, default=5.0)
    r.add_argument("--test-last", type=int, default=60)
    r.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    r.add_argument("--repeats", type=int, default=1, help="passes over the held-out frames per frames/s figure")
    r.add_argument("--render-frames", type=int, default=0, help="held-out frames rendered for the speed figures (0: all)")
    r.add_argument("--model", default="original", choices=("original", "small"), help="small: a CPU check")
    r.add_argument("--workspace", default="")
    r.add_argument("--out", required=True)
    r.add_argument("--render", action=argparse.BooleanOptionalAction, default=True,
                   help="measure the render figures now (--no-render: later, with the render command)")
    r.add_argument("--score-train", type=int, default=0, metavar="N", help="also score N training frames")
    d = sub.add_parser("render")
    d.add_argument("report", help="the JSON of a run --no-render (its checkpoint is read, its figures added)")
    d.add_argument("--product-columns", type=int, default=0, metavar="N",
                   help="the last layers' products of N columns each (FrozenField.PRODUCT_COLUMNS); the figures go "
                        "under render_columnsN")
    d.add_argument("--products", action="store_true",
                   help="the MLPs as cuBLAS products, not in one kernel (FrozenField.FUSED_MLP off); the figures go "
                        "under render_products. With the kernel, its images against the products' are added "
                        "(kernel_vs_products)")
    e = sub.add_parser("eval")
    e.add_argument("report", help="the JSON of a run (its checkpoint is evaluated)")
    e.add_argument("--out", required=True, help="the report folder")
    t = sub.add_parser("table")
    t.add_argument("reports", nargs="+")
    t.add_argument("--out", default="")
    args = ap.parse_args()
    if args.command == "run":
        run(args)
    elif args.command == "render":
        render_checkpoint(args)
    elif args.command == "eval":
        evaluate_checkpoint(args)
    else:
        reports = [json.loads(Path(p).read_text()) for p in args.reports]
        print_table(reports)
        if args.out:
            Path(args.out).write_text(json.dumps([{k: v for k, v in r.items() if k != "history"} for r in reports], indent=1))


if __name__ == "__main__":
    main()
