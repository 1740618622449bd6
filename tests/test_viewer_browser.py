"""A real browser: headless Chromium (Debian's ``chromium``; CI installs it) loads ``nerfbs view`` of the tiny
avatar, receives frames, and its screenshot shows a rendered image and the panel. Skips without Chromium."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import pytest

pytest.importorskip("viser")

_SPEC = importlib.util.spec_from_file_location("viewer_screenshot",
                                               Path(__file__).resolve().parents[1] / "bench" / "viewer_screenshot.py")
screenshot = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(screenshot)


@pytest.mark.skipif(screenshot.find_chromium() is None, reason="no chromium on PATH (apt-get install -y chromium)")
def test_chromium_shows_the_avatar_and_the_panel(tiny_run, tmp_path):
    from nerfbs.viewer.server import open_viewer

    with open_viewer(tiny_run.checkpoint, port=0, side=128) as viewer:
        path = screenshot.chromium_screenshot(viewer.url, tmp_path / "screenshot.png", width=1280, height=800,
                                              ready=lambda: screenshot.full_frame_sent(viewer))
        frames = viewer.loop.stats().frames
    assert frames >= 1, "the browser never received a frame"
    image = cv2.imread(str(path))[..., ::-1].astype(float)
    assert image.shape == (800, 1280, 3)
    assert image.std() > 10, "blank screenshot"
    # the rendered frame fills the page behind the panel: the synthetic head's background is not white ...
    scene = image[200:600, 300:700]
    assert scene.mean() < 235 and scene.std() > 5
    # ... and the panel on the right is white with blue buttons (View's and the sliders' Neutral)
    panel = image[60:460, 960:1240]
    white = (panel.min(-1) > 245).mean()
    blue = (panel[..., 2] - panel[..., 0] > 60).mean()
    assert white > 0.4 and blue > 0.03, (white, blue)
