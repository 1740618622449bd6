"""Models and videos the repository does not carry, found through one setting: ``NERFBS_TEST_ASSETS``.

That variable names a folder holding ``models/`` and ``videos/`` (the layout of this project's
``../shared``); unset, ``../shared`` beside the repository is used when it exists. A test that needs a
missing file skips with a message naming the file and how to get it; under ``CI=true`` (``.ci/run``)
the same miss fails the test instead, so CI cannot pass with those tests silently skipped. Nothing
here downloads anything.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV = "NERFBS_TEST_ASSETS"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared"

# Where each file comes from, for the skip message (MediaPipe's model storage and the example videos of
# the projects named in ../shared/MODELS.md).
SOURCES = {
    "models/face_landmarker_v2_with_blendshapes.task":
        "https://storage.googleapis.com/mediapipe-assets/face_landmarker_v2_with_blendshapes.task",
    "models/selfie_segmentation.tflite": "https://storage.googleapis.com/mediapipe-assets/selfie_segmentation.tflite",
    "videos/talk_speech_katie.mp4":
        "the example videos of github.com/OpenTalker/SadTalker; any clip of one talking face, 24 frames or more, "
        "saved under this name works",
}


def assets_root() -> Path | None:
    """The folder the tests take models/ and videos/ from: ``$NERFBS_TEST_ASSETS``, else ../shared if present."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_ROOT if DEFAULT_ROOT.is_dir() else None


def in_ci() -> bool:
    """True under CI (``CI=true``, as .ci/run and most CI services set it): a missing asset is a failure there."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_message(relative: str, root: Path | None) -> str:
    """One line: which file is missing, where it was looked for, and how to provide it."""
    where = (f"missing {root / relative}" if root is not None
             else f"missing {relative} ({ENV} is not set and {DEFAULT_ROOT} does not exist)")
    source = SOURCES.get(relative, "see README.md, Tests")
    return f"{where}: set {ENV} to a folder holding models/ and videos/ with it (get it from {source})"


def asset(relative: str) -> Path:
    """The path of ``relative`` (e.g. ``models/x.task``) under the assets folder, or skip the calling test
    (fail it under CI) with ``missing_message``."""
    root = assets_root()
    if root is not None and (root / relative).is_file():
        return root / relative
    message = missing_message(relative, root)
    if in_ci():
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)
