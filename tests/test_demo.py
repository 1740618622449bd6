"""`nerfbs demo` with tiny settings through typer's runner, and the demo's configs."""
from __future__ import annotations

import json

import imageio.v2 as imageio
import torch

from nerfbs.config import Config
from nerfbs.demo import demo_config, demo_subject
from tiny import invoke, one_line_error


def test_demo_runs_end_to_end_with_tiny_settings(tmp_path):
    out = tmp_path / "demo_run"
    result = invoke("demo", "--out", out, "--minutes", 1, "--frames", 6, "--size", 32, "--steps", 3)
    assert result.exit_code == 0, result.output
    assert result.output.count("| full |") == 1 and "demo.mp4" in result.output  # the table once, at the end
    metrics = json.loads((out / "run" / "eval" / "metrics.json").read_text())
    assert metrics["frames"] == 1 and metrics["mean"]["full"]["psnr"] > 5
    assert (out / "run" / "checkpoints" / "latest.pth").is_file()
    assert sorted(p.name for p in (out / "render").glob("*.png")) == ["0000.png", "0000_nvs.png"]
    with imageio.get_reader(out / "demo.mp4", format="FFMPEG") as reader:
        frames = [f for f in reader]
    assert len(frames) == 1 and frames[0].shape == (32, 64, 3)  # render beside truth
    assert (out / "novel_view.mp4").is_file()

    again = invoke("demo", "--out", out, "--minutes", 1, "--frames", 6, "--size", 32, "--steps", 3)
    assert "already exists" in one_line_error(again)


def test_demo_configs_are_valid_and_round_trip():
    for device in ("cpu", "cuda"):
        config = demo_config(torch.device(device))
        assert Config.from_dict(config.to_dict()) == config
        subject = demo_subject(torch.device(device))
        assert 1 <= subject.test_last < subject.frames
    assert demo_config(torch.device("cuda")).model == Config().model  # the original recipe on a GPU
