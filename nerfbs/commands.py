"""What the CLI's long-running commands do, with their console output (progress bars, tables).

cli.py parses options into a Config and calls one function here; the library modules stay silent."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nerfbs.config import Config
from nerfbs.train.workspace import Workspace

log = logging.getLogger(__name__)
console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """A rich progress bar; yields ``update(done, total=None, **figures)``."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[figures]}")]
    with Progress(*columns, console=console, transient=False, refresh_per_second=4) as bar:
        task = bar.add_task(description, total=total, figures="")

        def update(done: int, total_: int | None = None, **figures) -> None:
            text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
            bar.update(task, completed=done, total=total_ if total_ is not None else bar.tasks[0].total, figures=text)

        yield update


def _lpips_loader(device):
    def load(needed: bool):
        from nerfbs.train.perceptual import load_lpips

        return load_lpips(device, allow_missing=not needed)

    return load


def train_and_report(config: Config, workspace_dir: Path, *, resume: bool, print_table: bool = True) -> dict:
    """``nerfbs train``: load, train with a live progress bar, evaluate the held-out frames, print a table
    (unless the caller prints it later: ``nerfbs demo`` ends with it)."""
    from nerfbs.train import checkpoint as ckpt
    from nerfbs.train import loop as train
    from taichi_kernels import runtime

    device = runtime.torch_device()
    ws = Workspace(Path(workspace_dir))
    train.check_workspace(ws, resume=resume)
    payload = ckpt.load_checkpoint(ws.latest, map_location=device) if resume else None
    console.print(f"nerfbs train: {config.data.subject} on {device.type} -> {ws.root}")
    with progress_bar("loading frames") as update:
        run = train.prepare_run(config, ws, device, resume_from=payload, lpips_loader=_lpips_loader(device),
                                progress=lambda done, total: update(done, total))
    cfg = run.config.train
    subject = run.subject
    console.print(f"subject {subject.name}: {subject.num_train} training / {len(subject.test_indices)} held-out frames, "
                  f"{subject.width}x{subject.height}, {subject.num_coeffs} coefficients"
                  + (f"; resuming at step {run.step}" if resume else ""))
    total = cfg.steps
    with progress_bar("training", total=total) as update:
        def on_step(step: int, figures: dict) -> None:
            if step % 10 == 0 or "val_psnr" in figures:
                shown = {"loss": figures["loss"], "psnr": figures["psnr"], "ms": figures["ms_per_step"],
                         "spr": figures["samples_per_ray"], "occ%": 100.0 * figures["occupancy"]}
                if "val_psnr" in figures:
                    shown["val"] = figures["val_psnr"]
                done = step if cfg.minutes <= 0 else max(step, int(total * train.training_fraction(cfg, step, run.elapsed)))
                update(done, **shown)

        try:
            train.train(run, on_step=on_step)
        except KeyboardInterrupt:
            console.print(f"interrupted: saved {ws.latest} (resume with --resume)")
            raise
    console.print(f"trained {run.step} steps in {run.elapsed / 60:.1f} min; checkpoint {ws.latest}")
    return evaluate_run(run, ws.root / "eval", print_table=print_table)


def evaluate_run(run, out_dir: Path, *, print_table: bool = True) -> dict:
    """Score every held-out frame of a training run and print the table."""
    from nerfbs.evaluate import report as evaluate
    from nerfbs.render.image import render_with_truth

    from nerfbs.train.perceptual import load_lpips

    frames = [int(i) for i in run.subject.test_indices]
    lpips_model = run.lpips if run.lpips is not None else load_lpips(run.device, allow_missing=True)
    t0 = time.perf_counter()
    with progress_bar("evaluating held-out frames", total=len(frames)) as update:
        result, worst = evaluate.evaluate_frames(
            lambda f: render_with_truth(run.field, run.grid, run.config.render, run.subject, f),
            frames, run.subject.face_rects, run.subject.mouth_rects, lpips_model,
            progress=lambda done, total: update(done, total), keep_worst=4,
            originals=lambda f: (run.subject.original(f), run.subject.landmarks[f].numpy()))
    paths = evaluate.write_report(result, out_dir, worst)
    if print_table:
        console.print(result.markdown())
    console.print(f"evaluated {len(frames)} frames in {time.perf_counter() - t0:.1f} s: {paths['markdown']}")
    return result.to_json()


def evaluate_refined_poses(avatar, out_dir: Path, steps: int) -> dict:
    """``nerfbs eval --refine-poses N``: score every held-out frame again, each rendered from its camera refined
    on its own image for N steps with the field frozen (``nerfbs.evaluate.refine``); print the table and write
    the report (each row also holds the frame's correction) to ``out_dir``."""
    from nerfbs.evaluate import report as evaluate
    from nerfbs.evaluate.refine import PoseFit, refine_frame

    frames = [int(i) for i in avatar.subject.test_indices]
    fit = PoseFit(steps=steps)
    corrections: dict[int, dict] = {}

    def render(frame: int):
        refined = refine_frame(avatar.field, avatar.grid, avatar.config.render, avatar.subject, frame, fit)
        corrections[frame] = {"rotation_deg": refined.rotation_deg, "translation": refined.translation}
        return refined.prediction, refined.truth

    t0 = time.perf_counter()
    with progress_bar(f"refining held-out poses ({steps} steps each)", total=len(frames)) as update:
        result, worst = evaluate.evaluate_frames(render, frames, avatar.subject.face_rects, avatar.subject.mouth_rects,
                                                 avatar.lpips, progress=lambda done, total: update(done, total),
                                                 keep_worst=4)
    for row in result.rows:
        row["pose_correction"] = corrections[row["frame"]]
    paths = evaluate.write_report(result, out_dir, worst)
    mean_deg = sum(c["rotation_deg"] for c in corrections.values()) / max(len(corrections), 1)
    console.print(f"With test-time pose refinement (the field frozen, each held-out camera fitted to its own image "
                  f"for {steps} steps; mean rotation {mean_deg:.2f} degrees); the figures above use the tracked "
                  "cameras:")
    console.print(result.markdown())
    console.print(f"evaluated {len(frames)} frames in {time.perf_counter() - t0:.1f} s: {paths['markdown']}")
    return result.to_json()
