"""Training end to end on a tiny synthetic subject (CPU): learning happens, resume is exact, and bad input
ends in one line."""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch

from nerfbs.train import loop as train
from nerfbs.train.checkpoint import load_checkpoint
from nerfbs.config import SMALL_RENDER, Config, DataConfig, TrainConfig
from nerfbs.export.avatar import load_avatar
from nerfbs.data.subject import load_subject
from nerfbs.train.workspace import Workspace
from taichi_kernels.samples import MarchParams
from tiny import TINY_MODEL, TINY_RENDER, TINY_STEPS, invoke, one_line_error


def test_loss_falls_and_held_out_psnr_beats_the_background(tiny_run):
    rows = [json.loads(line) for line in (tiny_run.workspace / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.7 * losses[0]
    final = json.loads((tiny_run.workspace / "eval" / "metrics.json").read_text())["mean"]["full"]["psnr"]
    subject = load_subject(tiny_run.subject, test_last=2)
    background = subject.background.float().numpy() / 255
    baseline = []
    for i in subject.test_indices.tolist():
        truth = subject.frame(i)[0].float().numpy() / 255
        baseline.append(-10 * math.log10(np.mean((background - truth) ** 2)))
    assert final > np.mean(baseline) + 3.0, (final, baseline)
    for key in ("step", "loss", "psnr", "ms_per_step", "samples_per_ray", "occupancy"):
        assert key in rows[-1]
    assert (tiny_run.workspace / "curves.png").stat().st_size > 0


def _config(subject, steps: int) -> Config:
    return Config(data=DataConfig(subject=str(subject), test_last=2), model=TINY_MODEL, render=TINY_RENDER,
                  train=TrainConfig(steps=steps, use_lpips=False, rays_per_image=128, validate_every=10 ** 6,
                                    checkpoint_every=10 ** 6, occupancy_update_every=4))


def test_resume_continues_from_the_saved_step_with_identical_optimizer_state(tiny_run, tmp_path):
    ws = Workspace(tmp_path / "run")
    no_lpips = lambda needed: None  # noqa: E731
    first = train.prepare_run(_config(tiny_run.subject, 6), ws, torch.device("cpu"), resume_from=None,
                              lpips_loader=no_lpips)
    train.train(first)
    saved = first.optimizer.state_dict()
    resumed = train.prepare_run(_config(tiny_run.subject, 9), ws, torch.device("cpu"), resume_from=load_checkpoint(ws.latest),
                                lpips_loader=no_lpips)
    assert resumed.step == 6 and resumed.config.train.steps == 9
    state = resumed.optimizer.state_dict()["state"]
    assert state.keys() == saved["state"].keys()
    for key, value in saved["state"].items():
        for name, tensor in value.items():
            assert torch.equal(state[key][name], tensor), (key, name)
    for a, b in zip(first.field.parameters(), resumed.field.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(first.grid.density, resumed.grid.density)
    assert torch.equal(first.generator.get_state(), resumed.generator.get_state())
    train.train(resumed)
    assert resumed.step == 9
    steps = [json.loads(line)["step"] for line in ws.metrics.read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 9


def test_bad_training_input_is_one_line(tiny_run, tmp_path):
    message = one_line_error(invoke("train", tmp_path / "nowhere", "--steps", 5))
    assert "nowhere: no such subject folder" in message and "dataset/" not in message
    assert "./dataset/nowhere" in one_line_error(invoke("train", "nowhere", "--steps", 5))
    assert "--steps must be at least 1" in one_line_error(invoke("train", tiny_run.subject, "--steps", 0))
    assert "--rays-per-image" in one_line_error(invoke("train", tiny_run.subject, "--rays-per-image", 2))
    assert "--step-scale must be between 1.0 and 16.0" in one_line_error(invoke("train", tiny_run.subject, "--step-scale", 40))
    assert "nothing to resume" in one_line_error(invoke("train", tiny_run.subject, "--resume",
                                                        "--workspace", tmp_path / "empty"))
    ws = tmp_path / "corrupt"
    (ws / "checkpoints").mkdir(parents=True)
    (ws / "checkpoints" / "latest.pth").write_bytes(b"not a checkpoint at all")
    message = one_line_error(invoke("train", tiny_run.subject, "--resume", "--workspace", ws))
    assert "latest.pth: not a readable checkpoint" in message
    message = one_line_error(invoke("train", tiny_run.subject, "--workspace", tiny_run.workspace, "--test-last", 2))
    assert "already holds a run" in message
    assert "--model huge: use auto, original, small" in one_line_error(invoke("train", tiny_run.subject, "--model", "huge"))


def test_model_auto_trains_the_cpu_sized_field_on_a_cpu_and_says_so(tiny_run, tmp_path):
    ws = tmp_path / "small"
    result = invoke("train", tiny_run.subject, "--steps", 3, "--test-last", 2, "--no-lpips", "--workspace", ws)
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("nerfbs train: ") and "on cpu, model small (auto on cpu)" in first, first
    saved = json.loads((ws / "config.json").read_text())
    assert saved["model"]["grid"]["num_levels"] == 8 and saved["render"]["grid_resolution"] == 32


def test_progress_in_a_log_has_a_line_per_tenth_with_step_loss_psnr_and_speed(tiny_run):
    """CliRunner's output is not a terminal: `nerfbs train ... > log.txt` gets these plain lines."""
    lines = [line for line in tiny_run.train_output.splitlines() if line.startswith("training ")]
    steps = [int(re.search(r"\bstep (\d+)", line).group(1)) for line in lines]
    assert steps[-1] == TINY_STEPS and steps[0] <= TINY_STEPS // 10, lines
    assert all(b - a <= TINY_STEPS // 10 for a, b in zip(steps, steps[1:])), steps
    assert all(re.search(r"loss [\d.e-]+  psnr [\d.]+ .*ms/step [\d.]+", line) for line in lines), lines
    assert "\x1b" not in tiny_run.train_output and "━" not in tiny_run.train_output
    loading = [line for line in tiny_run.train_output.splitlines() if line.startswith("loading training frames")]
    assert loading[-1].startswith("loading training frames  8/8 (100%)"), loading  # 10 frames, 2 held out


def test_resume_says_which_steps_it_trained_and_ctrl_c_says_it_once(tiny_run, tmp_path, monkeypatch):
    ws = tmp_path / "resumed"
    shutil.copytree(tiny_run.workspace, ws)
    result = invoke("train", tiny_run.subject, "--resume", "--workspace", ws, "--steps", TINY_STEPS + 2)
    assert result.exit_code == 0, result.output
    assert "(as saved)" in result.output.splitlines()[0]
    summary = re.search(rf"trained steps {TINY_STEPS} to {TINY_STEPS + 2} \(2 this session\) in ([\d.]+) min",
                        result.output)
    assert summary and 0 <= float(summary.group(1)) < 5, result.output  # this session only

    real_step = train.train_step

    def interrupted_at_the_second_step(run):
        if run.step == TINY_STEPS + 3:
            raise KeyboardInterrupt
        return real_step(run)

    monkeypatch.setattr(train, "train_step", interrupted_at_the_second_step)
    result = invoke("train", tiny_run.subject, "--resume", "--workspace", ws, "--steps", TINY_STEPS + 10)
    assert result.exit_code == 130, result.output
    assert result.output.count("interrupted") == 1, result.output
    assert f"interrupted at step {TINY_STEPS + 3}: saved {ws / 'checkpoints' / 'latest.pth'}" in result.output
    assert load_checkpoint(ws / "checkpoints" / "latest.pth")["step"] == TINY_STEPS + 3


def test_distortion_and_subpixel_options_reach_the_step(tiny_run, tmp_path):
    ws = tmp_path / "distortion"
    result = invoke("train", tiny_run.subject, "--model", "small", "--steps", 3, "--test-last", 2, "--no-lpips",
                    "--distortion", 0.5, "--subpixel-rays", "--workspace", ws)
    assert result.exit_code == 0, result.output
    saved = json.loads((ws / "config.json").read_text())["train"]
    assert saved["distortion_weight"] == 0.5 and saved["subpixel_rays"] is True
    rows = [json.loads(line) for line in (ws / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(row["distortion"] > 0 for row in rows if "distortion" in row)
    assert any("distortion" in row for row in rows)


def test_distortion_steps_end_the_distortion_loss(tiny_run, tmp_path):
    from nerfbs.config import TrainConfig
    from nerfbs.train.loop import _distortion_applies

    always, first_two = TrainConfig(distortion_weight=1.0), TrainConfig(distortion_weight=1.0, distortion_steps=2)
    assert [_distortion_applies(always, s) for s in range(4)] == [True] * 4
    assert [_distortion_applies(first_two, s) for s in range(4)] == [True, True, False, False]
    assert not _distortion_applies(TrainConfig(distortion_steps=2), 0)  # no weight, no loss
    ws = tmp_path / "distortion_steps"
    result = invoke("train", tiny_run.subject, "--model", "small", "--steps", 3, "--test-last", 2, "--no-lpips",
                    "--distortion", 0.5, "--distortion-steps", 2, "--workspace", ws)
    assert result.exit_code == 0, result.output
    assert "held-out expressions: " in result.output
    assert json.loads((ws / "config.json").read_text())["train"]["distortion_steps"] == 2
    rows = [json.loads(line) for line in (ws / "metrics.jsonl").read_text().splitlines()]
    last = max(rows, key=lambda row: row["step"])
    assert last["step"] == 3 and "distortion" not in last  # the third step (index 2) is past the two
    result = invoke("train", tiny_run.subject, "--distortion-steps", -1, "--workspace", tmp_path / "bad")
    assert result.exit_code != 0 and "--distortion-steps" in result.output


def test_step_scale_option_overrides_the_model_s_and_reaches_its_marching(tiny_run, tmp_path):
    ws = tmp_path / "long-steps"
    result = invoke("train", tiny_run.subject, "--model", "small", "--steps", 2, "--test-last", 2, "--no-lpips",
                    "--step-scale", 2, "--workspace", ws)
    assert result.exit_code == 0, result.output
    assert SMALL_RENDER.step_scale == 4.0 and json.loads((ws / "config.json").read_text())["render"]["step_scale"] == 2.0
    params = MarchParams.from_render_config(load_avatar(ws / "checkpoints" / "latest.pth").config.render)
    assert params.long_max_step == pytest.approx(2 * SMALL_RENDER.max_step)
    assert params.long_step_growth == pytest.approx(2 * SMALL_RENDER.step_growth)
