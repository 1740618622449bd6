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


@app.command()
@_one_line_errors
def train() -> None:
    """Train an avatar from a subject folder (not yet available)."""
    _not_yet("train")


@app.command()
@_one_line_errors
def render() -> None:
    """Render frames from a trained checkpoint (not yet available)."""
    _not_yet("render")


@app.command("export-video")
@_one_line_errors
def export_video() -> None:
    """Turn a folder of rendered frames into an mp4 (not yet available)."""
    _not_yet("export-video")


if __name__ == "__main__":
    app()
