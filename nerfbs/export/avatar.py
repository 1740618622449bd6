"""A trained avatar rebuilt from its checkpoint alone: the field and occupancy grid from the saved
config and state, the subject's cameras, coefficients and background from the dataset folder the
config names (read in streaming mode: no training image is loaded). The training frames' cameras are the
refined ones when the run refined poses (``render.pose.refined_subject``); held-out frames keep their
tracked cameras."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

import torch

from nerfbs.train import checkpoint as ckpt
from nerfbs.config import Config
from nerfbs.data.rays import RaySampler
from nerfbs.data.subject import Subject, load_configured_subject
from nerfbs.errors import UserError
from nerfbs.field import BlendShapeField
from nerfbs.render.pose import PoseCorrection, refined_subject
from nerfbs.render.rays import make_occupancy_grid
from taichi_kernels.occupancy import OccupancyGrid

log = logging.getLogger(__name__)


@dataclass
class Avatar:
    """The live objects of a trained avatar. K tracked coefficients; the model takes rows of K + 1.

    coeff_min / coeff_max [K] are the training range saved in the checkpoint (what the model was
    trained on); ``lpips`` is set by whoever evaluates."""

    checkpoint: Path
    step: int
    config: Config
    field: BlendShapeField
    grid: OccupancyGrid
    subject: Subject
    coeff_min: torch.Tensor
    coeff_max: torch.Tensor
    coeff_names: Optional[list[str]]
    lpips: Optional[torch.nn.Module] = None

    @property
    def device(self) -> torch.device:
        """The device the subject's tensors (and the field) live on."""
        return self.subject.device

    @property
    def num_coeffs(self) -> int:
        """K, the tracked coefficient count (without the neutral)."""
        return int(self.coeff_min.shape[0])

    @cached_property
    def sampler(self) -> RaySampler:
        """A ``RaySampler`` over the subject, made on first use."""
        return RaySampler(self.subject, self.device)

    @property
    def workspace(self) -> Path:
        """The training workspace holding the checkpoint (``<ws>/checkpoints/x.pth`` -> ``<ws>``), else its folder."""
        parent = self.checkpoint.parent
        return parent.parent if parent.name == "checkpoints" else parent


def _subject_folder(path: Path, config: Config, subject_dir: Optional[str | Path]) -> Path:
    if subject_dir is not None:
        folder = Path(subject_dir)
        if not (folder / "transforms.json").is_file():
            raise UserError(f"--subject {folder}: no transforms.json there — give the folder the avatar was trained on")
        return folder
    folder = Path(config.data.subject)
    if not config.data.subject or not (folder / "transforms.json").is_file():
        raise UserError(f"{path}: the subject folder it was trained on, {config.data.subject or '(none)'}, is not "
                        "there (moved or deleted?) — pass --subject <folder holding its transforms.json>")
    return folder


def load_avatar(path: str | Path, device: Optional[torch.device] = None, *,
                subject_dir: Optional[str | Path] = None) -> Avatar:
    """Rebuild the avatar saved in checkpoint ``path`` on ``device`` (default: where Taichi runs).

    ``subject_dir`` replaces the dataset folder recorded in the checkpoint (when it moved). Every
    problem (missing or corrupt checkpoint, missing folder, another coefficient count) is a UserError."""
    from taichi_kernels import runtime

    path = Path(path)
    device = device if device is not None else runtime.torch_device()
    payload = ckpt.load_checkpoint(path, map_location=device)
    config: Config = payload["config"]
    folder = _subject_folder(path, config, subject_dir)
    subject = load_configured_subject(config.data, device, folder=folder, stream_from_disk=True)
    ckpt.check_coefficient_count(payload, subject.num_coeffs, path=path, subject=str(folder))

    stats = payload["expressions"]
    coeff_min = torch.as_tensor(stats["coeff_min"], dtype=torch.float32).to(device)
    coeff_max = torch.as_tensor(stats["coeff_max"], dtype=torch.float32).to(device)
    if coeff_min.shape != subject.coeff_min.shape or not (
            torch.allclose(coeff_min, subject.coeff_min, atol=1e-6) and torch.allclose(coeff_max, subject.coeff_max, atol=1e-6)):
        log.warning("%s: the training frames' coefficient range differs from the checkpoint's (the dataset changed "
                    "since training?); the subject's own frames are clamped to the new range", folder)

    field_ = BlendShapeField(config.model, bound=config.render.bound).to(device)
    ckpt.load_state_strict(field_, payload["model"], what="model", path=path)
    field_.eval()
    grid = make_occupancy_grid(config.render).to(device)
    ckpt.load_state_strict(grid, payload["occupancy"], what="occupancy grid", path=path)
    poses = ckpt.pose_state(payload, subject.num_train, path=path)
    if poses is not None:
        correction = PoseCorrection(subject.num_train).to(device)
        ckpt.load_state_strict(correction, poses, what="pose correction", path=path)
        subject = refined_subject(subject, correction)
    names = list(stats.get("coeff_names") or []) or subject.coeff_names
    return Avatar(checkpoint=path, step=int(payload["step"]), config=config, field=field_, grid=grid,
                  subject=subject, coeff_min=coeff_min, coeff_max=coeff_max, coeff_names=names or None)
