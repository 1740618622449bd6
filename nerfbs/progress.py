"""How the library's long-running functions report progress: through a ``Reporter`` their caller passes in.

The library never prints. ``nerfbs train`` / ``nerfbs demo`` hand in the CLI's console (``nerfbs/console.py``:
progress bars on a terminal, plain periodic lines in a file or a pipe); library users and tests pass
``SILENT`` (the default) or their own object with these two methods.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator, Protocol

# update(done, total=None, **figures): ``done`` units of the stage's ``total`` (a new total may be given),
# and the figures to show beside it (name -> number or text), e.g. update(300, step=300, loss=0.012).
Update = Callable[..., None]


class Reporter(Protocol):
    """Where a long-running function's messages and progress go."""

    def message(self, text: str) -> None:
        """One line for the user (a result, a choice made for them)."""

    def stage(self, name: str, total: int | None = None) -> ContextManager[Update]:
        """A stage of ``total`` units (None: unknown); the context yields its ``Update``."""


class Silent:
    """A ``Reporter`` that shows nothing."""

    def message(self, text: str) -> None:
        """Discard the line."""

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Update]:
        """A stage whose updates are discarded."""
        yield lambda done, total=None, **figures: None


SILENT = Silent()
