"""Tests run on Taichi's CPU backend unless NERFBS_ARCH says otherwise."""
import os

os.environ.setdefault("NERFBS_ARCH", "cpu")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as cli.py: torch threads must not spin against Taichi's


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny synthetic subject trained briefly through the CLI, once per session (see tiny.py)."""
    from tiny import build_tiny_run

    return build_tiny_run(tmp_path_factory.getbasetemp() / "tiny_run")
