"""The ``nerfbs`` command line: parses options into configs, calls one nerfbs function per command,
and owns the console (progress bars, tables, one-line errors)."""
from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from nerfbs.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
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
        except KeyboardInterrupt:
            typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130)

    return wrapper


def _not_yet(name: str) -> None:
    typer.secho(f"`nerfbs {name}` is not yet available in this version.", err=True)
    raise typer.Exit(3)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log library messages.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _check_range(name: str, value: float, low: float, high: float | None = None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UserError(f"{name} must be {bound}, got {value}")


@app.command()
@_one_line_errors
def train(
    subject: str = typer.Argument(..., help="Subject folder, or a name under ./dataset/."),
    test_last: int = typer.Option(500, help="Hold out the last N frames for testing."),
    workspace: Optional[Path] = typer.Option(None, help="Output folder [default: runs/<subject name>]."),
    steps: int = typer.Option(30000, help="Training steps."),
    minutes: float = typer.Option(0.0, help="Wall-clock budget in minutes (0: none); ends training when reached."),
    resume: bool = typer.Option(False, help="Continue the run saved in the workspace."),
    rays_per_image: int = typer.Option(1024, help="Rays per training image."),
    images_per_step: int = typer.Option(2, help="Training images per step."),
    lr: float = typer.Option(1e-3, help="Initial learning rate."),
    lpips: bool = typer.Option(True, help="Perceptual loss from step --lpips-from (needs the VGG weights)."),
    lpips_from: int = typer.Option(20000, help="Step from which the perceptual loss applies."),
    mask_loss: bool = typer.Option(True, help="Opacity-vs-head-mask loss in the first 4,000 steps."),
    face_sampling: bool = typer.Option(True, help="Sample 90% of rays inside the face rectangle."),
    table_l1: bool = typer.Option(True, help="L1 penalty on the non-neutral tables."),
    mixed_precision: bool = typer.Option(True, help="fp16 MLPs on CUDA."),
    neutral_only: bool = typer.Option(False, help="Ablation: fix every frame's coefficients at neutral."),
    stream: bool = typer.Option(False, help="Read training frames from disk instead of keeping them in memory."),
    validate_every: int = typer.Option(1000, help="Render a held-out frame every N steps."),
    checkpoint_every: int = typer.Option(5000, help="Keep a checkpoint every N steps."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Train an avatar from a subject folder."""
    from nerfbs.config import Config, DataConfig, TrainConfig
    from nerfbs.data import resolve_subject_path
    from nerfbs import commands

    _check_range("--test-last", test_last, 1)
    _check_range("--steps", steps, 1)
    _check_range("--minutes", minutes, 0)
    _check_range("--rays-per-image", rays_per_image, 16, 1 << 20)
    _check_range("--images-per-step", images_per_step, 1, 64)
    _check_range("--lr", lr, 1e-8, 1.0)
    _check_range("--validate-every", validate_every, 1)
    _check_range("--checkpoint-every", checkpoint_every, 1)
    path = resolve_subject_path(subject)
    defaults = TrainConfig()
    config = Config(
        data=DataConfig(subject=str(path), test_last=test_last, stream_from_disk=stream, neutral_only=neutral_only),
        train=TrainConfig(steps=steps, minutes=minutes, rays_per_image=rays_per_image, images_per_step=images_per_step,
                          lr=lr, use_lpips=lpips, lpips_from_step=lpips_from,
                          mask_loss_steps=defaults.mask_loss_steps if mask_loss else 0,
                          face_ray_fraction=defaults.face_ray_fraction if face_sampling else 0.0,
                          table_l1_weight=defaults.table_l1_weight if table_l1 else 0.0,
                          mixed_precision=mixed_precision, validate_every=validate_every,
                          checkpoint_every=checkpoint_every, seed=seed))
    commands.train_and_report(config, workspace or Path("runs") / path.name, resume=resume)


@app.command()
@_one_line_errors
def render() -> None:
    """Render frames from a trained checkpoint (not yet available)."""
    _not_yet("render")


@app.command("export-video")
@_one_line_errors
def export_video(
    frames_dir: Path = typer.Argument(..., help="Folder of numbered frames (0000.png, 0001.png, ...)."),
    output: Path = typer.Option(..., "--output", "-o", help="The mp4 to write."),
    fps: float = typer.Option(25.0, help="Frames per second."),
    side_by_side: Optional[Path] = typer.Option(None, help="Second folder of frames, shown to the right."),
) -> None:
    """Turn a folder of rendered frames into an H.264 mp4 (frames in numeric order; *_nvs.png twins skipped)."""
    from nerfbs.commands import progress_bar
    from nerfbs.video import export_video as encode

    _check_range("--fps", fps, 0.01, 1000)
    with progress_bar("encoding") as update:
        count, (height, width) = encode(frames_dir, output, fps=fps, side_by_side=side_by_side, progress=update)
    typer.echo(f"wrote {count} frames ({width}x{height}, {fps:g} fps) to {output}")


@app.command()
@_one_line_errors
def synth(
    out: Path = typer.Argument(..., help="New subject folder to write."),
    frames: int = typer.Option(600, help="Number of frames."),
    size: int = typer.Option(512, help="Image width and height in pixels."),
    coeffs: int = typer.Option(46, help="Expression coefficients per frame (ARKit-like names; 52 gives all of them)."),
    seed: int = typer.Option(0, help="Random seed: the same seed writes the same subject."),
    preview: bool = typer.Option(False, help="Also write OUT/preview.png, a contact sheet of a few frames."),
) -> None:
    """Write a procedural talking head in the NeRFBlendShape dataset layout."""
    import time

    from nerfbs.commands import progress_bar
    from nerfbs.synth import synthesize, write_preview

    start = time.perf_counter()
    with progress_bar("rendering", total=frames) as update:
        path = synthesize(out, frames=frames, size=size, coeffs=coeffs, seed=seed, progress=update)
    typer.echo(f"wrote {frames} frames ({size}x{size}, {coeffs} coefficients) to {path} "
               f"in {time.perf_counter() - start:.1f} s")
    if preview:
        typer.echo(f"preview: {write_preview(path, path / 'preview.png')}")


if __name__ == "__main__":
    app()
