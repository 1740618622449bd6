"""The CLI's console, imported by ``cli.py`` alone: a ``Reporter`` (``nerfbs/progress.py``) on standard output.

On a terminal each stage is a rich progress bar: one line of bar, share, count and times that fits 80
columns, and the stage's figures (loss, PSNR, speed) on a second line. When standard output is a file or
a pipe (``nerfbs train ... > log.txt``) the same stages write plain lines instead: one each time a stage
passes another tenth of its total, at least one a minute, and one at its end.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from typing import IO, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TextColumn
from rich.text import Text

from nerfbs.progress import Update

PLAIN_FRACTION = 0.1  # plain lines: one per tenth of a stage...
PLAIN_SECONDS = 60.0  # ...and at least one a minute


def clock(seconds: float | None) -> str:
    """``h:mm:ss`` (``-:--:--`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_figures(figures: dict, width: int | None = None) -> str:
    """``name value`` pairs, floats to four significant digits: ``loss 0.01234  psnr 25.31``. With ``width``,
    only the leading pairs that fit in it (the figures come most important first)."""
    text = ""
    for name, value in figures.items():
        pair = f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
        longer = f"{text}  {pair}" if text else pair
        if width is not None and len(longer) > width:
            break
        text = longer
    return text


class _Times(ProgressColumn):
    """``elapsed<remaining``, as one narrow column."""

    def render(self, task: Task) -> Text:
        return Text(f"{clock(task.elapsed or 0.0)}<{clock(task.time_remaining)}", style="progress.elapsed")


class _Bar(Progress):
    """A rich progress bar whose figures go on a line of their own below it."""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            if task.fields.get("figures"):
                yield Text("  " + task.fields["figures"], overflow="fold")


class _PlainStage:
    """A stage written as plain lines (see the module docstring)."""

    def __init__(self, write, name: str, total: int | None):
        self.write, self.name, self.total = write, name, total
        self.start = self.last = time.monotonic()
        self.next_fraction = PLAIN_FRACTION
        self.done, self.figures, self.pending = 0, {}, False

    def update(self, done: int, total: int | None = None, **figures) -> None:
        if total is not None:
            self.total = total
        self.done, self.figures, self.pending = done, figures, True
        now = time.monotonic()
        fraction = self._fraction()
        if (fraction is not None and fraction >= self.next_fraction - 1e-9) or now - self.last >= PLAIN_SECONDS:
            self._line(now)

    def close(self) -> None:
        if self.pending:
            self._line(time.monotonic())

    def _fraction(self) -> float | None:
        return min(self.done / self.total, 1.0) if self.total else None

    def _line(self, now: float) -> None:
        fraction = self._fraction()
        elapsed = now - self.start
        parts = [self.name]
        if fraction is not None:
            parts.append(f"{fraction:4.0%}" if self.figures else f"{self.done}/{self.total} ({fraction:.0%})")
            self.next_fraction = (math.floor(fraction / PLAIN_FRACTION + 1e-9) + 1) * PLAIN_FRACTION
        if self.figures:
            parts.append(format_figures(self.figures))
        remaining = elapsed * (1 - fraction) / fraction if fraction else None
        parts.append(f"[{clock(elapsed)} elapsed" + (f", {clock(remaining)} left]" if fraction and fraction < 1
                                                      else "]"))
        self.write("  ".join(parts))
        self.last, self.pending = now, False


class ConsoleReporter:
    """The ``Reporter`` of the CLI: bars on a terminal, plain lines otherwise (``live`` tells which)."""

    def __init__(self, file: IO[str] | None = None, *, live: bool | None = None, width: int | None = None):
        self.console = Console(file=file or sys.stdout, highlight=False, width=width)
        self.live = self.console.is_terminal if live is None else live

    def message(self, text: str) -> None:
        """Print ``text`` as it is (no markup, no wrapping inserted)."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Update]:
        """A bar (or plain lines) for a stage of ``total`` units; yields its ``update(done, total=None, **figures)``."""
        if not self.live:
            plain = _PlainStage(self.message, name, total)
            yield plain.update
            plain.close()
            return
        columns = [TextColumn("{task.description}"), BarColumn(bar_width=20), TaskProgressColumn(),
                   TextColumn("{task.fields[count]}"), _Times()]
        with _Bar(*columns, console=self.console, transient=False, refresh_per_second=4) as bar:
            task = bar.add_task(name, total=total, figures="", count="")

            def update(done: int, total: int | None = None, **figures) -> None:
                known = total if total is not None else bar.tasks[0].total
                count = "" if figures or not known else f"{done}/{known}"
                figures_text = format_figures(figures, width=self.console.width - 3)
                bar.update(task, completed=done, total=known, figures=figures_text, count=count)

            yield update
