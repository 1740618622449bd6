"""A tiny synthetic avatar shared by the tests (synthesised and trained once per session through the CLI),
and helpers to run the CLI.

The run patches ``nerfbs.config.Config`` (which ``nerfbs train`` builds its config from) to give a tiny hash
grid, MLPs and occupancy grid, and passes ``--model original`` so that the command keeps them (``small``, which
``--model auto`` picks on a CPU, is larger than these tests need)."""
from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import nerfbs.train.checkpoint  # noqa: F401  (imported before the patch below, so it binds the real Config)
import nerfbs.commands  # noqa: F401
import nerfbs.config
import nerfbs.train.loop  # noqa: F401
from cli import app
from nerfbs.config import Config, ModelConfig, RenderConfig
from taichi_kernels.grid_layout import GridConfig

runner = CliRunner()

TINY_STEPS = 150
TINY_VALIDATE_EVERY = 75
TINY_TEST_LAST = 2
# Four dense levels (the finest, 48^3, fits 2^17 entries): test_reenact localises a basis edit on them.
TINY_MODEL = ModelConfig(grid=GridConfig(num_levels=4, features_per_level=2, base_resolution=8, finest_resolution=48,
                                         log2_table_size=17),
                         density_hidden=16, density_layers=1, geo_features=15, color_hidden=16, color_layers=1,
                         sh_degree=2)
TINY_RENDER = RenderConfig(grid_resolution=16)


@dataclasses.dataclass(frozen=True)
class TinyConfig(Config):
    """The config `nerfbs train` builds, with the tiny model and occupancy grid as defaults."""

    model: ModelConfig = TINY_MODEL
    render: RenderConfig = TINY_RENDER


def invoke(*args: str):
    """Run the CLI; fail the test with its output when it crashes with a traceback."""
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def one_line_error(result) -> str:
    """The CLI's message for a refused input: exit code 2 and a single line starting with 'error:'."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@functools.cache
def build_tiny_run(root: Path) -> SimpleNamespace:
    """Synthesise a 10-frame 64x64 subject with 4 coefficients and train it for a few steps, both via the CLI."""
    subject = root / "subject"
    result = invoke("synth", subject, "--frames", 10, "--size", 64, "--coeffs", 4, "--seed", 0)
    assert result.exit_code == 0, result.output

    workspace = root / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nerfbs.config, "Config", TinyConfig)
        result = invoke("train", subject, "--workspace", workspace, "--model", "original", "--steps", TINY_STEPS,
                        "--test-last", TINY_TEST_LAST,
                        "--no-lpips", "--lr", "0.02", "--rays-per-image", 512,
                        "--validate-every", TINY_VALIDATE_EVERY, "--checkpoint-every", 1000)
    assert result.exit_code == 0, result.output
    return SimpleNamespace(subject=subject, workspace=workspace, checkpoint=workspace / "checkpoints" / "latest.pth",
                           train_output=result.output)


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image[..., [2, 1, 0, 3]] if image.shape[-1] == 4 else image[..., ::-1]


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return math.inf if mse == 0 else -10 * math.log10(mse)
