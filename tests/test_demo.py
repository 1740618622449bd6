"""`nerfbs demo` with tiny settings through typer's runner, and the demo's configs."""
from __future__ import annotations

import json

import imageio.v2 as imageio
import torch

from nerfbs.config import Config
from nerfbs.demo import SWEEP_STEPS, demo_config, demo_subject
from tiny import invoke, one_line_error


def test_demo_runs_end_to_end_with_tiny_settings(tmp_path):
    out = tmp_path / "demo_run"
    result = invoke("demo", "--out", out, "--minutes", 1, "--frames", 6, "--size", 32, "--steps", 3)
    assert result.exit_code == 0, result.output
    assert result.output.count("| full |") == 1 and "demo.mp4" in result.output  # the table once, at the end
    metrics = json.loads((out / "run" / "eval" / "metrics.json").read_text())
    assert metrics["frames"] == 1 and metrics["mean"]["full"]["psnr"] > 5
    assert (out / "run" / "checkpoints" / "latest.pth").is_file()
    assert len(list((out / "render" / "sequence").glob("*.png"))) == 6  # training and held-out frames
    assert len(list((out / "render" / "sweep_jaw").glob("*.png"))) == SWEEP_STEPS
    sweep = json.loads((out / "render" / "sweep_jaw" / "render.json").read_text())["frames"]
    jaw = [f["sweep"]["jawOpen"] for f in sweep]
    assert jaw == sorted(jaw) and jaw[0] < jaw[-1]  # rising through the trained range
    with imageio.get_reader(out / "demo.mp4", format="FFMPEG") as reader:
        frames = [f for f in reader]
    sweep_frames = 2 * 2 * (SWEEP_STEPS - 1)  # forth and back, twice
    assert len(frames) == 2 * 6 + sweep_frames
    assert frames[0].shape == (256, 512, 3)  # render beside truth, scaled up 8x from 32x32
    assert (out / "novel_view.mp4").is_file()
    next_line = next(line for line in result.output.splitlines() if line.startswith("Next: nerfbs render"))
    value = float(next_line.split("--set jawOpen=")[1].split()[0])
    trained = json.loads((out / "subject" / "transforms.json").read_text())["frames"][:5]  # the training frames
    top = max(f["exp_ori"][0] for f in trained)
    assert 0 < value <= top, (value, top)  # inside the trained range: not clamped

    again = invoke("demo", "--out", out, "--minutes", 1, "--frames", 6, "--size", 32, "--steps", 3)
    assert "already exists" in one_line_error(again)


def test_demo_configs_are_valid_and_round_trip():
    for device in ("cpu", "cuda"):
        config = demo_config(torch.device(device))
        assert Config.from_dict(config.to_dict()) == config
        subject = demo_subject(torch.device(device))
        assert 1 <= subject.test_last < subject.frames
    assert demo_config(torch.device("cuda")).model == Config().model  # the original recipe on a GPU
    assert demo_config(torch.device("cpu")).train.validate_every <= 200  # several points on the held-out curve
