"""Tests run on Taichi's CPU backend unless NERFBS_ARCH says otherwise."""
import os

os.environ.setdefault("NERFBS_ARCH", "cpu")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as cli.py: torch threads must not spin against Taichi's
