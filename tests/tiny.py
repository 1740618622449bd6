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
import torch
from typer.testing import CliRunner

import nerfbs.train.checkpoint  # noqa: F401  (imported before the patch below, so it binds the real Config)
import nerfbs.commands  # noqa: F401
import nerfbs.config
import nerfbs.train.loop  # noqa: F401
from cli import app
from nerfbs.config import Config, ModelConfig, RenderConfig
from nerfbs.data.camera import pixel_rays
from nerfbs.data.subject import MOUTH_POINTS
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
    """Synthesise a 10-frame 64x64 subject with 4 coefficients and train it for a few steps with pose refinement,
    both via the CLI."""
    subject = root / "subject"
    result = invoke("synth", subject, "--frames", 10, "--size", 64, "--coeffs", 4, "--seed", 0)
    assert result.exit_code == 0, result.output

    workspace = root / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nerfbs.config, "Config", TinyConfig)
        result = invoke("train", subject, "--workspace", workspace, "--model", "original", "--steps", TINY_STEPS,
                        "--test-last", TINY_TEST_LAST,
                        "--no-lpips", "--lr", "0.02", "--rays-per-image", 512, "--pose-refinement",
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


def mouth_point(subject) -> torch.Tensor:
    """The mouth's 3D position [3]: least squares meeting point of the rays through every frame's mouth centre."""
    centre = subject.landmarks[:, list(MOUTH_POINTS)].mean(1).double()  # [N, 2]
    n = centre.shape[0]
    o, d = pixel_rays(subject.poses.cpu().double(), subject.fx, subject.fy, subject.cx, subject.cy,
                      centre[:, 0], centre[:, 1], torch.arange(n))
    a = torch.eye(3, dtype=torch.float64) - d[:, :, None] * d[:, None, :]  # [N, 3, 3] projectors off each ray
    lhs = a.sum(0) + 1e-3 * n * torch.eye(3, dtype=torch.float64)  # a little pull towards the origin (the head)
    return torch.linalg.solve(lhs, (a @ o[:, :, None]).sum(0)).squeeze(1)


def localised_jaw_checkpoint(run, out_path, radius=0.003):
    """A copy of the run's checkpoint whose jaw table (basis 1) is zero except near the mouth; returns the
    mouth point [3] and the radius [world units] of the region whose field the jaw coefficient now changes."""
    from nerfbs.export.avatar import load_avatar
    from taichi_kernels.hash_grid import blended_hash_encode

    avatar = load_avatar(run.checkpoint)
    field, grid_cfg, bound = avatar.field, avatar.field.config.grid, avatar.config.render.bound
    level = max(i for i, dense in enumerate(grid_cfg.level_dense) if dense)
    first, last = grid_cfg.level_offsets[level], grid_cfg.level_offsets[level + 1]
    mouth = mouth_point(avatar.subject).float()
    gen = torch.Generator().manual_seed(0)
    ball = torch.randn(400, 3, generator=gen)
    ball = ball / ball.norm(dim=-1, keepdim=True) * radius * torch.rand(400, 1, generator=gen) ** (1 / 3)
    unit = (mouth + ball + bound) / (2 * bound)
    tables = field.encoder.tables.detach().clone().requires_grad_(True)
    k = tables.shape[0]
    features = blended_hash_encode(unit, torch.zeros(400, dtype=torch.int32), torch.ones(1, k), tables, grid_cfg)
    (grad,) = torch.autograd.grad(features.sum(), tables)
    touched = torch.nonzero(grad[1].abs().sum(-1) > 0).squeeze(1)
    touched = touched[(touched >= first) & (touched < last)]
    assert touched.numel() > 0

    # the feature direction (at the chosen level) that raises the density most; the MLP has no biases, so
    # the density's pre-activation grows linearly with the vector's length
    c = grid_cfg.features_per_level
    directions = torch.randn(64, c, generator=gen)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    probe = torch.zeros(64, grid_cfg.output_dim)
    probe[:, level * c:(level + 1) * c] = directions
    with torch.no_grad():
        rise = field.density_net(probe)[:, 0]
    best = int(rise.argmax())
    assert float(rise[best]) > 0
    span = float(avatar.coeff_max[0] - avatar.coeff_min[0])
    assert span > 0.05, "the synthetic subject's jaw barely moves"
    vector = directions[best] * (300.0 / float(rise[best]) / span)  # density ~ +300 when the jaw opens fully

    state = {key: value.clone() for key, value in field.state_dict().items()}
    state["encoder.tables"][1] = 0.0
    state["encoder.tables"][1, touched] = vector
    payload = torch.load(run.checkpoint, weights_only=True)
    payload["model"] = state
    payload["occupancy"]["bitfield"].fill_(255)  # march everywhere: the edit may add density in empty cells
    torch.save(payload, out_path)
    cell = 2 * bound / grid_cfg.level_scales[level]
    return mouth, radius + 2 * math.sqrt(3) * cell, avatar
