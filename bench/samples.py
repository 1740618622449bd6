"""Where the samples go (issue 15): samples per ray in training and in held-out renders, where they lie along
the ray, how the occupancy grid evolves and what its threshold sees; pictures of a grid slice and of
per-pixel sample counts. CPU or GPU.

Either analyse a saved avatar, or train one first (the occupancy history is only known then):

    python bench/samples.py --checkpoint ws/checkpoints/latest.pth --out S.json --pictures DIR
    python bench/samples.py --subject SUBJECT --minutes 5 --out S.json --pictures DIR [--model small] \
        [--set train.mask_loss_steps=300 ...]

Prints a compact table; writes every figure to --out (JSON). See ``bench/sample_analysis.py`` for the
vocabulary (ray classes, before / surface / behind).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import sample_analysis as sa  # noqa: E402
from bench.quality import apply_overrides  # noqa: E402
from nerfbs.config import SMALL_MODEL, SMALL_RENDER, Config, DataConfig, TrainConfig  # noqa: E402
from nerfbs.render.image import render_with_truth  # noqa: E402
from nerfbs.train import loop as train  # noqa: E402
from nerfbs.train.workspace import Workspace  # noqa: E402
from taichi_kernels import runtime  # noqa: E402


def train_avatar(args, device: torch.device) -> tuple[train.TrainRun, dict]:
    """Train on --subject for --minutes / --steps, recording the grid after every refresh."""
    config = Config(data=DataConfig(subject=args.subject, test_last=args.test_last),
                    train=TrainConfig(steps=args.steps or 10 ** 9, minutes=args.minutes, validate_every=10 ** 9,
                                      checkpoint_every=10 ** 9, use_lpips=False))
    if args.model == "small":
        config = config.replace(model=SMALL_MODEL, render=SMALL_RENDER)
    config = apply_overrides(config, args.set)
    ws = Workspace(Path(args.workspace))
    run = train.prepare_run(config, ws, device, resume_from=None, lpips_loader=lambda needed: None)
    every = run.config.train.occupancy_update_every
    history: list[dict] = []
    compile_s = [0.0]

    def on_step(step: int, figures: dict) -> None:
        if step == 1:  # the first step compiles the kernels: not training time
            compile_s[0] = figures["ms_per_step"] / 1000.0
            run.elapsed_before -= compile_s[0]
        if (step - 1) % every == 0 and (step - 1) // every % args.history_every == 0:
            history.append({"step": step - 1, "elapsed_s": round(run.elapsed, 2),
                            "occupied": round(figures["occupancy"], 5), "mean_density": run.grid.mean_density,
                            "threshold": run.grid.threshold, "samples_per_ray": round(figures["samples_per_ray"], 2)})

    t0 = time.perf_counter()
    train.train(run, on_step=on_step, log_every=100)
    rows = [r for r in ws.read_metrics() if "samples_per_ray" in r]
    last = rows[-max(len(rows) // 5, 1):]  # the last fifth of the logged steps
    info = {"steps": run.step, "train_seconds": run.elapsed, "wall_seconds": time.perf_counter() - t0,
            "compile_seconds": compile_s[0], "steps_per_second": run.step / max(run.elapsed, 1e-9),
            "train_samples_per_ray_logged_last_fifth": float(np.mean([r["samples_per_ray"] for r in last])) if last else None,
            "history": history, "config": run.config.to_dict()}
    return run, info


def held_out(model, frames: list[int], pictures: Path | None, visibility: torch.Tensor | None) -> dict:
    """PSNR, needed / marched samples per pixel and per ray class over held-out ``frames``; pictures of the first."""
    psnr, rows = [], []
    for i, f in enumerate(frames):
        pred, truth = render_with_truth(model.field, model.grid, model.config.render, model.subject, f)
        psnr.append(-10.0 * np.log10(max(float(np.mean((pred - truth) ** 2)), 1e-10)))
        maps = sa.frame_samples(model, f, visibility)
        cls = maps["classes"]
        hit = maps["marched"] > 0
        row = {"frame": f, "psnr": psnr[-1], "needed_per_pixel": float(maps["needed"].mean()),
               "marched_per_pixel": float(maps["marched"].mean()),
               "needed_per_hit_pixel": float(maps["needed"][hit].mean()) if bool(hit.any()) else 0.0}
        for name, k in (("head", 0), ("person", 1), ("background", 2)):
            sel = cls == k
            row[f"needed_{name}"] = float(maps["needed"][sel].mean()) if bool(sel.any()) else 0.0
            row[f"marched_{name}"] = float(maps["marched"][sel].mean()) if bool(sel.any()) else 0.0
        rows.append(row)
        if pictures is not None and i < 2:
            from nerfbs.images import write_png
            write_png(pictures / f"samples_frame{f}.png", sa.samples_picture(pred, truth, maps))
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "frame"} if rows else {}
    return {"frames": frames, "mean": mean, "rows": rows}


def print_table(report: dict) -> None:
    tr, ho, g = report["training_rays"], report["held_out"]["mean"], report["grid"]
    n = max(tr["samples"], 1)
    pct = (lambda k: f"{100.0 * tr[k] / n:.0f}%")
    lines = [
        f"training rays: {tr['per_ray']:.1f} samples/ray (head {tr['per_ray_head']:.1f}, person {tr['per_ray_person']:.1f},"
        f" background {tr['per_ray_background']:.1f}); T>=1e-2: {tr['per_ray_T_above_1e-2']:.1f}/ray",
        f"  head before {pct('head_before')}, surface {pct('head_surface')}, behind {pct('head_behind')}, transparent "
        f"{pct('head_transparent')}; person {pct('person')}; background {pct('background')}",
        f"  T<1e-4 {pct('T_below_1e-4')}, T<1e-2 {pct('T_below_1e-2')}, weight<1e-4 {pct('weight_below_1e-4')}, "
        f"visible alpha<1e-2 {pct('alpha_below_1e-2_visible')}",
        f"held-out: PSNR {ho.get('psnr', float('nan')):.2f} dB, needed {ho.get('needed_per_pixel', 0):.1f}/pixel "
        f"({ho.get('needed_per_hit_pixel', 0):.1f} per pixel that marches), marched {ho.get('marched_per_pixel', 0):.1f}/pixel",
        f"  needed head {ho.get('needed_head', 0):.1f}, person {ho.get('needed_person', 0):.1f}, background "
        f"{ho.get('needed_background', 0):.1f}",
        f"grid {g['resolution']}^3: occupied {100 * g['occupied_share']:.1f}%, threshold {g['threshold']:.3g} (mean "
        f"{g['mean_density']:.3g}), never weighted {100 * g.get('occupied_never_weighted_share', float('nan')):.0f}% of occupied",
        f"  occupied density {g['occupied_density_hist']}",
        f"  alpha over max step {g['occupied_alpha_at_max_step_hist']}",
    ]
    if "training" in report:
        t = report["training"]
        lines.insert(0, f"trained {t['steps']} steps in {t['train_seconds']:.0f} s ({t['steps_per_second']:.1f} steps/s), "
                        f"logged samples/ray over the last fifth {t['train_samples_per_ray_logged_last_fifth']:.1f}")
    print("\n".join(lines), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--subject", default="")
    ap.add_argument("--test-last", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--model", default="original", choices=("original", "small"))
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--workspace", default="/tmp/nerfbs-samples")
    ap.add_argument("--history-every", type=int, default=1, help="record every Nth occupancy refresh")
    ap.add_argument("--train-frames", type=int, default=16, help="training frames whose rays are analysed")
    ap.add_argument("--held-out-frames", type=int, default=8)
    ap.add_argument("--pictures", default="", help="folder for the PNGs")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if bool(args.checkpoint) == bool(args.subject):
        ap.error("give exactly one of --checkpoint and --subject")
    device = runtime.torch_device()
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "args": vars(args)}
    if args.checkpoint:
        from nerfbs.export.avatar import load_avatar
        model = load_avatar(args.checkpoint, device)
    else:
        model, report["training"] = train_avatar(args, device)
        model.field.eval()
    pictures = Path(args.pictures) if args.pictures else None
    if pictures is not None:
        pictures.mkdir(parents=True, exist_ok=True)
    s = model.subject
    n = s.num_train
    train_frames = sorted({i * (n - 1) // max(args.train_frames - 1, 1) for i in range(args.train_frames)})
    test = [int(i) for i in s.test_indices]
    held = test[:: max(len(test) // max(args.held_out_frames, 1), 1)][: args.held_out_frames]
    visibility = torch.zeros(model.grid.num_cells, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    cfg = model.config.train
    report["composite_self_check"] = sa.composite_check(model, train_frames[0])
    report["training_rays"] = sa.training_rays(model, train_frames, cfg.rays_per_image, cfg.face_ray_fraction, generator,
                                               visibility)
    for f in train_frames:  # every pixel of the analysed training frames, for the visibility figure
        sa.frame_samples(model, f, visibility)
    report["held_out"] = held_out(model, held, pictures, None)
    report["grid"] = sa.grid_figures(model.grid, model.config.render, visibility)
    if pictures is not None:
        from nerfbs.images import write_png
        seen = visibility > 1e-3
        centre = None
        if bool(seen.any()):
            res = model.grid.resolution
            idx = torch.nonzero(seen).squeeze(1)
            xyz = torch.stack((idx % res, (idx // res) % res, idx // (res * res)), 1).float().mean(0)
            centre = (xyz + 0.5) * (2 * model.grid.bound / res) - model.grid.bound
        write_png(pictures / "grid_slices.png", sa.grid_picture(model.grid, visibility, centre))
    print_table(report)
    Path(args.out).write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
