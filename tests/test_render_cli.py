"""`nerfbs train / render / eval / export-video / synth` through typer's runner on a tiny synthetic avatar:
render reproduces training's validation image, batches of frames equal single frames, eval matches a direct
computation, and bad inputs end in one line and a non-zero exit code.

The session's tiny avatar (``tiny_run``) is synthesised and trained here through the CLI; ``nerfbs train``
has no options for the model's size, so the run patches ``nerfbs.config.Config`` (which the command builds
its config from) to give a small hash grid, MLPs and occupancy grid: the default recipe needs minutes on a CPU.
"""
from __future__ import annotations

import json
import math

import imageio.v2 as imageio
import numpy as np
import pytest

from tiny import TINY_STEPS, TINY_TEST_LAST, invoke, one_line_error, psnr_u8, read_rgb

# ------------------------------------------------------------------------------------------------------- train
def test_train_cli_wrote_a_run(tiny_run):
    ws = tiny_run.workspace
    assert tiny_run.checkpoint.is_file()
    assert (ws / "validation" / f"step_{TINY_STEPS:07d}.png").is_file()
    assert json.loads((ws / "eval" / "metrics.json").read_text())["frames"] == TINY_TEST_LAST
    assert "PSNR" in tiny_run.train_output


# ------------------------------------------------------------------------------------------------------ render
def test_render_reproduces_the_training_validation_image(tiny_run, tmp_path):
    out = tmp_path / "render"
    result = invoke("render", tiny_run.checkpoint, "--frames", "test", "--no-nvs", "--out", out, "--batch", 1)
    assert result.exit_code == 0, result.output
    assert "frames/s" in result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["0000.png", "0001.png"]
    # the last validation (step TINY_STEPS) renders the first held-out frame: prediction | truth | error
    grid = read_rgb(tiny_run.workspace / "validation" / f"step_{TINY_STEPS:07d}.png")
    rendered = read_rgb(out / "0000.png")
    h, w = rendered.shape[:2]
    validation, truth = grid[:, :w], grid[:, w:2 * w]
    assert np.abs(rendered.astype(int) - validation.astype(int)).max() <= 1
    assert psnr_u8(rendered, validation) > 50
    background = read_rgb(tiny_run.subject / "bc.jpg")
    assert np.abs(rendered.astype(int) - background.astype(int)).mean() > 2, "the avatar renders nothing: a vacuous test"
    assert psnr_u8(rendered, truth) > 12


def test_a_batch_of_frames_renders_each_frame_as_alone(tiny_run, tmp_path):
    single, batched = tmp_path / "single", tmp_path / "batched"
    assert invoke("render", tiny_run.checkpoint, "--frames", "5:8", "--out", single, "--batch", 1).exit_code == 0
    assert invoke("render", tiny_run.checkpoint, "--frames", "5:8", "--out", batched, "--batch", 4).exit_code == 0
    names = sorted(p.name for p in single.glob("*.png"))
    assert names == ["0000.png", "0000_nvs.png", "0001.png", "0001_nvs.png", "0002.png", "0002_nvs.png"]
    for name in names:
        a, b = read_rgb(single / name), read_rgb(batched / name)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, name
    frames = [read_rgb(single / f"{i:04d}.png").astype(int) for i in range(3)]
    assert np.abs(frames[0] - frames[2]).max() > 0  # other poses and coefficients: other images
    assert np.abs(frames[0] - read_rgb(single / "0000_nvs.png").astype(int)).max() > 10
    manifest = json.loads((single / "render.json").read_text())
    assert [f["frame"] for f in manifest["frames"]] == [5, 6, 7]


def test_render_alpha_scale_orbit_and_default_folder(tiny_run, tmp_path):
    out = tmp_path / "alpha"
    assert invoke("render", tiny_run.checkpoint, "--frames", "0:2", "--background", "alpha", "--scale", "0.5",
                  "--out", out).exit_code == 0
    rgba = read_rgb(out / "0000.png")
    assert rgba.shape == (32, 32, 4)
    assert rgba[..., 3].min() < 10 and rgba[..., 3].max() > 100  # transparent around the head, opaque on it
    assert invoke("render", tiny_run.checkpoint, "--frames", "0", "--background", "white", "--no-nvs",
                  "--out", tmp_path / "white").exit_code == 0
    white = read_rgb(tmp_path / "white" / "0000.png")
    assert (white[0, 0] >= 250).all()  # a corner far from the head shows the white background

    result = invoke("render", tiny_run.checkpoint, "--frames", "0:4", "--camera", "orbit")
    assert result.exit_code == 0, result.output
    default = tiny_run.workspace / "render" / "latest"
    assert sorted(p.name for p in default.glob("*.png")) == [f"{i:04d}.png" for i in range(4)]  # no nvs twin of an orbit
    views = [read_rgb(default / f"{i:04d}.png").astype(int) for i in range(4)]
    assert all(np.abs(views[0] - v).max() > 10 for v in views[1:])


# -------------------------------------------------------------------------------------------------------- eval
def test_eval_matches_a_direct_computation(tiny_run, tmp_path):
    from nerfbs.export.avatar import load_avatar
    from nerfbs.render.image import render_with_truth

    out = tmp_path / "eval"
    result = invoke("eval", tiny_run.checkpoint, "--out", out)
    assert result.exit_code == 0, result.output
    assert "held-out expressions: " in result.output and "coefficients" in result.output
    report = json.loads((out / "metrics.json").read_text())
    assert (out / "metrics.md").is_file() and (out / "worst.png").is_file()
    assert "| full |" in (out / "metrics.md").read_text()
    avatar = load_avatar(tiny_run.checkpoint)
    frames = [int(i) for i in avatar.subject.test_indices]
    assert [row["frame"] for row in report["per_frame"]] == frames
    psnrs = []
    for row in report["per_frame"]:
        pred, truth = render_with_truth(avatar.field, avatar.grid, avatar.config.render, avatar.subject,
                                        row["frame"])
        x0, y0, x1, y1 = avatar.subject.mouth_rects[row["frame"]].tolist()
        for region, (p, t) in {"full": (pred, truth), "mouth": (pred[y0:y1, x0:x1], truth[y0:y1, x0:x1])}.items():
            expected = -10 * math.log10(float(np.mean((p.astype(np.float64) - t.astype(np.float64)) ** 2)))
            assert row[region]["psnr"] == pytest.approx(expected, abs=1e-4)
        psnrs.append(row["full"]["psnr"])
    assert report["mean"]["full"]["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-9)


# ------------------------------------------------------------------------------------------------ export-video
def test_export_video_of_a_render(tiny_run, tmp_path):
    frames = tmp_path / "frames"
    assert invoke("render", tiny_run.checkpoint, "--frames", "0:3", "--out", frames).exit_code == 0
    video = tmp_path / "render.mp4"
    result = invoke("export-video", frames, "-o", video, "--fps", 10, "--side-by-side", frames)
    assert result.exit_code == 0, result.output
    with imageio.get_reader(video, format="FFMPEG") as reader:
        back = [f for f in reader]
    assert len(back) == 3 and back[0].shape == (64, 128, 3)


# ------------------------------------------------------------------------------------------------- bad inputs
def test_missing_and_corrupt_checkpoints_are_one_line_errors(tmp_path):
    for command in ("render", "eval"):
        assert "no such checkpoint" in one_line_error(invoke(command, tmp_path / "nope.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a checkpoint" * 10)
    assert "not a readable checkpoint" in one_line_error(invoke("render", corrupt))


def test_bad_render_options_are_one_line_errors(tiny_run, tmp_path):
    ckpt = tiny_run.checkpoint
    message = one_line_error(invoke("render", ckpt, "--set", "jawOpn=0.5", "--out", tmp_path / "x"))
    assert "jawOpn" in message and "jawOpen" in message
    assert "0 to 3" in one_line_error(invoke("render", ckpt, "--set", "7=0.5"))
    assert "not understood" in one_line_error(invoke("render", ckpt, "--frames", "first"))
    assert "dataset, white, alpha" in one_line_error(invoke("render", ckpt, "--background", "green"))
    driver = tmp_path / "driver" / "transforms.json"
    driver.parent.mkdir()
    driver.write_text(json.dumps({"frames": [{"img_id": 0, "exp_ori": [0.1] * 6}]}))
    message = one_line_error(invoke("render", ckpt, "--drive", driver))
    assert "6 expression coefficients" in message and "trained with 4" in message


def test_a_moved_subject_names_the_fix(tiny_run, tmp_path):
    payload_dir = tmp_path / "ws" / "checkpoints"
    payload_dir.mkdir(parents=True)
    import torch

    payload = torch.load(tiny_run.checkpoint, weights_only=True)
    payload["config"]["data"]["subject"] = str(tmp_path / "gone")
    torch.save(payload, payload_dir / "latest.pth")
    assert "--subject" in one_line_error(invoke("render", payload_dir / "latest.pth"))
    result = invoke("render", payload_dir / "latest.pth", "--subject", tiny_run.subject, "--frames", "0", "--no-nvs")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ws" / "render" / "latest" / "0000.png").is_file()
