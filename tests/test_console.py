"""The CLI's console: plain periodic lines when the output is not a terminal, bars that fit 80 columns on one,
and help texts that show every default and every word."""
from __future__ import annotations

import io
import re

import pytest
import typer

from cli import app
from nerfbs import console as console_module
from nerfbs.console import ConsoleReporter, format_figures
from tiny import invoke


def _stage_lines(total: int, *, live: bool, width: int = 80) -> list[str]:
    out = io.StringIO()
    reporter = ConsoleReporter(out, live=live, width=width)
    reporter.message("first line")
    with reporter.stage("training", total=total) as update:
        for step in range(1, total + 1):
            update(step, step=step, loss=0.01234567, psnr=25.3125, val=24.5, **{"ms/step": 812.5, "spr": 19.1,
                                                                                  "occ%": 35.27})
    with reporter.stage("loading training frames", total=50) as update:
        for i in range(1, 51):
            update(i, 50)
    return out.getvalue().splitlines()


def test_plain_lines_at_every_tenth_with_step_loss_psnr_and_speed():
    lines = _stage_lines(200, live=False)
    assert lines[0] == "first line"
    training = [line for line in lines if line.startswith("training")]
    steps = [int(re.search(r"step (\d+)", line).group(1)) for line in training]
    assert steps == list(range(20, 201, 20)), training
    assert all(k in training[0] for k in ("loss 0.01235", "psnr 25.31", "val 24.5", "ms/step 812.5", "elapsed"))
    loading = [line for line in lines if line.startswith("loading")]
    assert len(loading) == 10 and "50/50 (100%)" in loading[-1]
    assert not any("\x1b" in line for line in lines), "no terminal escapes in a log file"


def test_plain_stage_writes_a_line_a_minute_and_a_last_line(monkeypatch):
    clock = iter(range(0, 10_000, 61))
    monkeypatch.setattr(console_module.time, "monotonic", lambda: float(next(clock)))
    out = io.StringIO()
    reporter = ConsoleReporter(out, live=False)
    with reporter.stage("encoding") as update:  # unknown total: one line a minute, then the last one
        for i in range(3):
            update(i + 1)
    assert [line.split("  [")[0] for line in out.getvalue().splitlines()] == ["encoding"] * 3


def test_bars_fit_80_columns():
    lines = _stage_lines(30, live=True)
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    bar = next(line for line in lines if line.startswith("training"))
    assert "100%" in bar and "0:00:00<" in bar
    assert any(line.strip().startswith("step 30") and "loss 0.01235" in line for line in lines), lines


def test_format_figures():
    assert format_figures({"step": 3, "loss": 0.123456, "occ%": 35.0}) == "step 3  loss 0.1235  occ% 35"


def _options_with_defaults(command: str) -> list[str]:
    params = typer.main.get_command(app).commands[command].params
    return [p.opts[0] for p in params if p.param_type_name == "option" and p.name != "help" and not p.required]


@pytest.mark.parametrize("command", ["train", "render", "eval", "synth", "preprocess", "export-video", "demo"])
def test_help_shows_every_default_and_flags_as_flags(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    text = result.output
    expected = _options_with_defaults(command)
    assert text.count("[default:") == len(expected), text
    # `nerfbs train --help | grep -c default`: one line per option with a default
    assert sum("default" in line for line in text.splitlines()) == len(expected), text
    assert "<bool>" not in text


def test_help_keeps_words_in_brackets_and_angle_brackets():
    train = " ".join(invoke("train", "--help").output.split())
    assert "[default: (runs/<subject name>)]" in train and "--resume Continue the run" in train
    assert "[default: auto]" in train and "[default: 30000]" in train
    render = " ".join(invoke("render", "--help").output.split())
    assert "<workspace>/render/<checkpoint name>" in render and "(<i>_nvs.png)" in render
    preprocess = " ".join(invoke("preprocess", "--help").output.split())
    assert "downloaded there on first use" in preprocess


def test_only_the_cli_and_its_console_touch_rich_or_typer():
    """Library code reports through callbacks; the console lives in cli.py and nerfbs/console.py (cli.py's alone)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders, console_users = [], []
    for path in [root / "cli.py", *(root / "nerfbs").rglob("*.py"), *(root / "taichi_kernels").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            rel = path.relative_to(root).as_posix()
            if any(n.split(".")[0] in ("rich", "typer") for n in names) and rel not in ("cli.py", "nerfbs/console.py"):
                offenders.append(rel)
            if any(n == "nerfbs.console" for n in names) and rel != "cli.py":
                console_users.append(rel)
    assert not offenders and not console_users, (offenders, console_users)


def test_command_list_is_not_cut():
    commands = invoke("--help").output.split("Commands:")[1]
    assert "..." not in commands and "demo" in commands
