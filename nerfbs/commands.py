"""What ``nerfbs train`` and ``nerfbs eval`` do: load, train, score the held-out frames.

cli.py parses options into a Config and calls one function here. These functions print nothing: they
report through the ``Reporter`` they are given (``nerfbs/progress.py``) and return what they made.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from nerfbs.config import Config, model_preset_name
from nerfbs.evaluate.report import Evaluation
from nerfbs.progress import SILENT, Reporter
from nerfbs.train.workspace import Workspace


@dataclass
class TrainOutcome:
    """A finished ``train_and_evaluate``: the steps this session trained (``first_step`` to ``last_step``), its
    training minutes, the held-out evaluation and where its report was written."""

    workspace: Workspace
    first_step: int
    last_step: int
    minutes: float
    evaluation: Evaluation
    report_paths: dict[str, Path]

    def summary(self) -> str:
        """One line: the steps trained in this session and the checkpoint."""
        span = (f"{self.last_step} steps" if self.first_step == 0
                else f"steps {self.first_step} to {self.last_step} ({self.last_step - self.first_step} this session)")
        return f"trained {span} in {self.minutes:.1f} min; checkpoint {self.workspace.latest}"


def _lpips_loader(device):
    def load(needed: bool):
        from nerfbs.train.perceptual import load_lpips

        return load_lpips(device, allow_missing=not needed)

    return load


def training_figures(step: int, figures: dict) -> dict:
    """The figures a training progress line shows: step, loss, PSNR of the step's rays, the last held-out
    PSNR (``val``), ms per step, samples marched per ray and the occupied share of the grid in %."""
    shown = {"step": step, "loss": figures["loss"], "psnr": figures["psnr"]}
    if "val_psnr" in figures:
        shown["val"] = figures["val_psnr"]
    shown.update({"ms/step": figures["ms_per_step"], "spr": figures["samples_per_ray"],
                  "occ%": 100.0 * figures["occupancy"]})
    return shown


def train_and_evaluate(config: Config, workspace_dir: Path, *, resume: bool, report: Reporter = SILENT,
                       model_note: str = "") -> TrainOutcome:
    """``nerfbs train``: load the subject, train (progress through ``report``), evaluate the held-out frames.

    The first message names the subject, the device and the field's preset (``model_note`` says how it was
    chosen, e.g. "auto"); a resumed run keeps its saved config but for the step and time budget."""
    from nerfbs.train import checkpoint as ckpt
    from nerfbs.train import loop as train
    from taichi_kernels import runtime

    device = runtime.torch_device()
    ws = Workspace(Path(workspace_dir))
    train.check_workspace(ws, resume=resume)
    payload = ckpt.load_checkpoint(ws.latest, map_location=device) if resume else None
    model = model_preset_name(payload["config"] if payload else config)
    note = "as saved" if payload else model_note
    report.message(f"nerfbs train: {config.data.subject} on {device.type}, model {model}"
                   + (f" ({note})" if note else "") + f" -> {ws.root}")
    with report.stage("loading training frames") as update:
        run = train.prepare_run(config, ws, device, resume_from=payload, lpips_loader=_lpips_loader(device),
                                progress=lambda done, total: update(done, total))
    cfg = run.config.train
    subject = run.subject
    first_step = run.step
    report.message(f"subject {subject.name}: {subject.num_train} training / {len(subject.test_indices)} held-out "
                   f"frames, {subject.width}x{subject.height}, {subject.num_coeffs} coefficients"
                   + (f"; resuming at step {run.step}" if resume else ""))
    report.message(expression_coverage_line(subject))
    total = cfg.steps
    last_val: dict = {}
    with report.stage("training", total=total) as update:
        def on_step(step: int, figures: dict) -> None:
            if "val_psnr" in figures:
                last_val["val_psnr"] = figures["val_psnr"]
            done = step if cfg.minutes <= 0 else max(step, int(total * train.training_fraction(cfg, step, run.elapsed)))
            update(done, **training_figures(step, {**last_val, **figures}))

        train.train(run, on_step=on_step)
    from nerfbs.train.perceptual import load_lpips

    lpips_model = run.lpips if run.lpips is not None else load_lpips(run.device, allow_missing=True)
    evaluation, paths = evaluate_run(run.field, run.grid, run.config.render, run.subject, lpips_model, ws.root / "eval",
                                     report=report)
    return TrainOutcome(workspace=ws, first_step=first_step, last_step=run.step,
                        minutes=(run.elapsed - run.elapsed_before) / 60.0, evaluation=evaluation, report_paths=paths)


def expression_coverage_line(subject) -> str:
    """One line on how well the training frames' expressions cover the held-out frames' (``nerfbs.data.coverage``),
    with a warning when the held-out frames will likely come out blurred for lack of them."""
    from nerfbs.data.coverage import expression_coverage
    from nerfbs.data.subject import read_expressions

    names, raw = read_expressions(subject.root)
    coverage = expression_coverage(raw, subject.num_train, names)
    warning = (": expect those frames blurred (the avatar learns an expression from the frames that show it; film "
               "each expression you want it to make)") if coverage.worrying else ""
    return f"held-out expressions: {coverage.summary()}{warning}"


def evaluate_run(field, grid, render_config, subject, lpips_model, out_dir: Path, *,
                 report: Reporter = SILENT) -> tuple[Evaluation, dict[str, Path]]:
    """Score every held-out frame of ``subject`` rendered by ``field`` and ``grid`` under ``render_config`` (PSNR,
    SSIM, LPIPS when ``lpips_model`` is given, the face score) and write metrics.json, metrics.md, worst.png and
    the contact sheet contact.png to ``out_dir``."""
    from nerfbs.evaluate import report as evaluate
    from nerfbs.evaluate.sheet import ContactSheet
    from nerfbs.render.image import render_with_truth

    frames = [int(i) for i in subject.test_indices]
    sheet = ContactSheet(frames)
    t0 = time.perf_counter()
    with report.stage("evaluating held-out frames", total=len(frames)) as update:
        result, worst = evaluate.evaluate_frames(
            lambda f: render_with_truth(field, grid, render_config, subject, f),
            frames, subject.face_rects, subject.mouth_rects, lpips_model,
            progress=lambda done, total: update(done, total), keep_worst=4,
            originals=lambda f: (subject.original(f), subject.landmarks[f].numpy()), sheet=sheet)
    paths = evaluate.write_report(result, out_dir, worst, sheet)
    report.message(_evaluated_message(len(frames), time.perf_counter() - t0, paths))
    return result, paths


def _evaluated_message(frames: int, seconds: float, paths: dict[str, Path]) -> str:
    return (f"evaluated {frames} frames in {seconds:.1f} s: {paths['markdown']}"
            + (f"; contact sheet {paths['contact']}" if "contact" in paths else ""))


def evaluate_refined_poses(avatar, out_dir: Path, steps: int, *,
                           report: Reporter = SILENT) -> tuple[Evaluation, dict[str, Path], float]:
    """``nerfbs eval --refine-poses N``: score every held-out frame again, each rendered from its camera refined
    on its own image for N steps with the field frozen (``nerfbs.evaluate.refine``), and write the report (each
    row also holds the frame's correction) to ``out_dir``. Returns the evaluation, the report's paths and the
    mean rotation correction in degrees."""
    from nerfbs.evaluate import report as evaluate
    from nerfbs.evaluate.refine import PoseFit, refine_frame
    from nerfbs.evaluate.sheet import ContactSheet

    frames = [int(i) for i in avatar.subject.test_indices]
    sheet = ContactSheet(frames)
    fit = PoseFit(steps=steps)
    corrections: dict[int, dict] = {}

    def render(frame: int):
        refined = refine_frame(avatar.field, avatar.grid, avatar.config.render, avatar.subject, frame, fit)
        corrections[frame] = {"rotation_deg": refined.rotation_deg, "translation": refined.translation}
        return refined.prediction, refined.truth

    t0 = time.perf_counter()
    with report.stage(f"refining held-out poses ({steps} steps each)", total=len(frames)) as update:
        result, worst = evaluate.evaluate_frames(render, frames, avatar.subject.face_rects, avatar.subject.mouth_rects,
                                                 avatar.lpips, progress=lambda done, total: update(done, total),
                                                 keep_worst=4,
                                                 originals=lambda f: (avatar.subject.original(f),
                                                                      avatar.subject.landmarks[f].numpy()),
                                                 sheet=sheet)
    for row in result.rows:
        row["pose_correction"] = corrections[row["frame"]]
    paths = evaluate.write_report(result, out_dir, worst, sheet)
    report.message(_evaluated_message(len(frames), time.perf_counter() - t0, paths))
    mean_deg = sum(c["rotation_deg"] for c in corrections.values()) / max(len(corrections), 1)
    return result, paths, mean_deg
