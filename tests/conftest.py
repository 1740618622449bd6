"""Tests run on Taichi's CPU backend unless NERFBS_ARCH says otherwise."""
import os

os.environ.setdefault("NERFBS_ARCH", "cpu")
