"""The MediaPipe model files the video preprocessor runs, and where they come from.

Each model is resolved the same way: an explicit path (``--landmarker PATH``, ``--segmenter PATH``), else the
cache (``$NERFBS_CACHE`` or ``~/.cache/nerfbs``), else a download from MediaPipe's model storage, checked
against its sha256 and written into the cache. Offline without a copy, a one-line UserError says where to
put the file.
"""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nerfbs.atomic import atomic_path
from nerfbs.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFile:
    """A model file: its name in the cache, where to download it, its sha256, and how users name it."""

    name: str
    url: str
    sha256: str
    role: str  # "landmarker": used in messages as "<role> model"
    option: str  # the command-line option that gives its path


LANDMARKER = ModelFile(
    name="face_landmarker_v2_with_blendshapes.task",
    url=("https://storage.googleapis.com/mediapipe-assets/face_landmarker_v2_with_blendshapes.task"
         "?generation=1681322467931433"),
    sha256="b261925d4aad812b47a0e8d58c1baa1223270a5d1f663d78338bc881c003879d",
    role="landmarker", option="--landmarker")
SEGMENTER = ModelFile(  # MediaPipe's selfie (person) segmentation, general model, 256x256 input
    name="selfie_segmentation.tflite",
    url="https://storage.googleapis.com/mediapipe-assets/selfie_segmentation.tflite?generation=1683332563830600",
    sha256="9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
    role="segmenter", option="--segmenter")


def cache_dir() -> Path:
    """Where downloaded models live: ``$NERFBS_CACHE`` or ``~/.cache/nerfbs``."""
    env = os.environ.get("NERFBS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "nerfbs"


def _download(model: ModelFile, target: Path) -> None:
    with urllib.request.urlopen(model.url, timeout=60) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != model.sha256:
        raise UserError(f"{model.url}: downloaded file has sha256 {digest[:12]}…, expected "
                        f"{model.sha256[:12]}… — download it by hand to {target}")
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def resolve_model(model: ModelFile, path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The model file: ``path`` if given, else the cached copy, else a checked download into the cache.

    Raises UserError naming where to put the file when none of these works.
    """
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: {model.role} model not found — give the path of {model.name}")
        return p
    cached = cache_dir() / model.name
    if cached.is_file():
        return cached
    if download:
        try:
            log.info("downloading %s to %s", model.url, cached)
            _download(model, cached)
            return cached
        except OSError as err:
            log.info("download failed: %s", err)
    raise UserError(f"{cached}: {model.role} model not found and not downloadable — put {model.name} "
                    f"(sha256 {model.sha256[:12]}…, from {model.url.split('?')[0]}) there, "
                    f"set NERFBS_CACHE to its folder, or pass {model.option} PATH")


def open_task(model: ModelFile, path: Path, create):
    """``create()`` (a MediaPipe task's ``create_from_options``) with a file MediaPipe cannot load turned
    into a one-line UserError naming ``path``."""
    try:
        return create()
    except (ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: MediaPipe cannot load this {model.role} model ({first}) — give {model.name} "
                        f"(sha256 {model.sha256[:12]}…) with {model.option} PATH") from None
