"""Frozen configuration shared by the CLI, the trainer, checkpoints and the renderer.

Defaults are the original NeRFBlendShape recipe (../shared/FORMAT.md). Derived values (level
resolutions, table offsets) are computed once here and never re-derived elsewhere.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from taichi_kernels.grid_layout import GridConfig


@dataclass(frozen=True)
class ModelConfig:
    """The field's architecture: the hash grid, the density and colour MLPs' widths and depths, the view
    encoding's spherical-harmonics degree and the half-width of the hash tables' uniform initialisation."""

    grid: GridConfig = field(default_factory=GridConfig)
    density_hidden: int = 64
    density_layers: int = 4
    geo_features: int = 64
    color_hidden: int = 64
    color_layers: int = 1
    sh_degree: int = 4
    table_init: float = 1e-4


@dataclass(frozen=True)
class RenderConfig:
    """Scene box, occupancy grid and marching steps (the original's values: step sizes scale with the box)."""

    bound: float = 0.06
    near_min: float = 0.05
    grid_resolution: int = 128
    density_threshold_ceiling: float = 10.0
    step_growth: float = 1.0 / 128  # dt = clamp(t * step_growth, min_step, max_step)
    # Long marching steps, this many times the original's (step_growth and max_step), except where a step would
    # touch a cell denser than long_step_density (0: nowhere): there the original's. 5 and 200 train 1.3x the
    # steps to a better held-out PSNR than the original's 1 and 0 and render 4x faster (docs/PERF.md, session 11).
    step_scale: float = 5.0
    long_step_density: float = 200.0
    max_steps_per_ray: int = 1024
    early_stop_transmittance: float = 1e-4  # training: samples after T falls below this get no gradient
    skip_hidden_samples: bool = False  # training: a density pass without gradient drops those samples first
    display_early_stop: float = 1e-2  # inference renders retire a ray below this transmittance (the original's)

    def __post_init__(self) -> None:
        if not self.bound > 0 or not self.near_min >= 0:
            raise ValueError("render: bound must be > 0 and near_min >= 0")
        if self.grid_resolution < 8 or self.grid_resolution % 8:
            raise ValueError("render: grid_resolution must be a multiple of 8, at least 8")
        if not 1 <= self.step_scale <= 16:
            raise ValueError(f"render: step_scale must lie in 1..16 (times the original's steps), got {self.step_scale}")
        if not self.long_step_density >= 0:
            raise ValueError(f"render: long_step_density must be >= 0 (0: no limit), got {self.long_step_density}")

    @property
    def min_step(self) -> float:
        """Smallest marching step in world units: the box diagonal (2 sqrt(3) bound) over 2048."""
        return 2.0 * math.sqrt(3.0) * self.bound / 2048

    @property
    def max_step(self) -> float:
        """Largest marching step of the original recipe in world units: about one occupancy-grid cell, 2 bound /
        (grid_resolution - 1); long steps are ``step_scale`` times it."""
        return 2.0 * self.bound / (self.grid_resolution - 1)


# A CPU-sized field (``nerfbs train --model small``, and ``nerfbs demo`` on a CPU): 8 levels x 2 features up to
# resolution 256, small MLPs and a 32^3 occupancy grid. The original's recipe needs seconds per step on a CPU.
SMALL_MODEL = ModelConfig(grid=GridConfig(num_levels=8, features_per_level=2, base_resolution=16, finest_resolution=256,
                                          log2_table_size=14),
                          density_hidden=32, density_layers=2, geo_features=15, color_hidden=32, color_layers=1,
                          sh_degree=3)
# Its marching steps are 4 times the original's: on a CPU every sample costs, and in `nerfbs demo`'s 4 minutes this
# trains 2.2x the steps to a better held-out PSNR and renders 3x faster (docs/PERF.md, session 10).
SMALL_RENDER = RenderConfig(grid_resolution=32, step_scale=4.0, long_step_density=0.0)
MODEL_PRESETS = ("auto", "original", "small")  # ``nerfbs train --model``


def resolve_model_preset(name: str, device_type: str) -> str:
    """``original`` or ``small`` for a ``--model`` choice: ``auto`` is the original's field on CUDA and the small
    one on a CPU (where the original's takes seconds per step and learns little in minutes)."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"model preset {name!r}: use one of {', '.join(MODEL_PRESETS)}")
    if name == "auto":
        return "original" if device_type == "cuda" else "small"
    return name


def model_preset_name(config: "Config") -> str:
    """Which preset a config's field and occupancy grid are: ``original``, ``small`` or ``custom`` (the number of
    bases, set by the subject, is ignored)."""
    bases = GridConfig().num_bases
    model = dataclasses.replace(config.model, grid=dataclasses.replace(config.model.grid, num_bases=bases))
    if (model, config.render) == (ModelConfig(), RenderConfig()):
        return "original"
    if (model, config.render) == (SMALL_MODEL, SMALL_RENDER):
        return "small"
    return "custom"


@dataclass(frozen=True)
class DataConfig:
    """Which subject to load and how: its folder, the last ``test_last`` frames held out, streaming frames from
    disk instead of holding them in memory, and the neutral-face ablation."""

    subject: str = ""
    test_last: int = 500
    stream_from_disk: bool = False
    neutral_only: bool = False  # ablation: every frame's coefficients fixed at the neutral face


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe: step and time budget, ray batches, learning rates, loss weights and schedules,
    occupancy refresh, validation and checkpoint intervals, seed and pose refinement."""

    steps: int = 30000
    minutes: float = 0.0  # 0: no wall-clock budget
    rays_per_image: int = 1024
    images_per_step: int = 2
    lr: float = 1e-3
    lr_final_fraction: float = 0.1
    mlp_weight_decay: float = 1e-6
    face_ray_fraction: float = 0.9
    mouth_ray_fraction: float = 0.0  # share of the rays drawn inside the mouth rectangle (out of the face share)
    subpixel_rays: bool = False  # colour rays through random points of their pixels (the original: pixel centres)
    mask_loss_steps: int = 4000
    mask_loss_weight: float = 1.0
    table_l1_weight: float = 1.0
    distortion_weight: float = 0.0  # mip-NeRF 360's distortion loss on the colour rays (not in the original's recipe)
    distortion_steps: int = 0  # the distortion loss applies in the first N steps only (0: in every step)
    lpips_from_step: int = 20000
    lpips_weight: float = 0.1
    lpips_patch: int = 32
    use_lpips: bool = True
    mixed_precision: bool = True
    occupancy_update_every: int = 16
    occupancy_warmup_steps: int = 256
    occupancy_probe_frames: int = 8
    occupancy_mask_carving: bool = False  # confine the grid to cells some training frame sees inside its head mask
    validate_every: int = 1000
    checkpoint_every: int = 5000
    seed: int = 0
    # Pose refinement (not in the original's recipe): a learnable rigid correction of each training frame's camera,
    # P' = [R(rotation) | translation] @ P on the world side (a rotation about the world origin, i.e. the head),
    # zero at the start, optimised with the photometric loss in its own Adam groups; held-out frames keep their
    # tracked poses. Units: rotation in radians (an axis-angle 3-vector), translation in the renderer's world units
    # (the scene box is [-0.06, 0.06]^3). For scale, with the synthetic heads' camera 0.3 from the head at 512 px:
    # a sideways translation of 1e-3 moves the image by about 3 px, a rotation of 1e-3 rad moves the face surface
    # (0.06 from the centre) by about 0.2 px. The learning rates are Adam's step sizes (about the largest change
    # per step) and decay with the field's; a frame gets a gradient only on the steps that draw it.
    # Off by default: on both real videos it lost held-out face score in 5 minutes (-0.14 dB katie, -0.27 dB d10,
    # docs/PERF.md session 18), and its spatial gradients make each step 15-21 % dearer.
    pose_refinement: bool = False
    # Its rates below are those measured on the GPU (docs/PERF.md, session 6): rates of 2e-4 / 1.2e-5 cost 0.7 dB
    # of held-out face score on d10 and 1.4 dB on katie (each frame's Adam steps wander); a tenth of them is neutral
    # (+0.01 dB on d10), with the penalty at 0.1 and corrections from the start. A CPU study preferred a later start
    # (pose_refinement_from 0.2), a 3x translation rate and a penalty of 1.0; the GPU has not measured that yet.
    pose_refinement_from: float = 0.0  # share of the training (steps or minutes) before the corrections start
    pose_rotation_lr: float = 2e-5  # radians per step (0.0011 degrees)
    pose_translation_lr: float = 1.2e-6  # world units per step: the rotation's rate at the box's half-width
    # Weight of the penalty mean_b(|rotation_b|^2 + |translation_b / bound|^2) over the step's frames b, added to
    # the loss (the L1 colour loss is about 0.02-0.1): it keeps corrections the images do not ask for small.
    pose_penalty: float = 0.1


@dataclass(frozen=True)
class SynthConfig:
    """Defaults of ``nerfbs synth`` (``nerfbs.synth.generate.synthesize``): frames, square image side in pixels,
    expression coefficients per frame and the random seed."""

    frames: int = 600
    size: int = 512
    coeffs: int = 46
    seed: int = 0


@dataclass(frozen=True)
class PreprocessConfig:
    """Defaults of ``nerfbs preprocess`` (``nerfbs.preprocess.pipeline.preprocess_video``): the crop's side in pixels."""

    size: int = 512


@dataclass(frozen=True)
class OutputConfig:
    """Defaults of ``nerfbs render`` (``nerfbs.export.job``) and ``nerfbs export-video`` (``nerfbs.export.video``)."""

    frames: str = "test"  # whose cameras and coefficients: test, train, all, a range or a list
    background: str = "dataset"  # dataset (bc.jpg), white or alpha
    scale: float = 1.0  # output resolution / the dataset's
    camera: str = "dataset"  # the frames' own cameras, or orbit
    novel_views: bool = True  # also each frame from the original's novel-view camera
    batch: int = 4  # images per renderer call
    video_fps: float = 25.0


SYNTH, PREPROCESS, OUTPUT = SynthConfig(), PreprocessConfig(), OutputConfig()


@dataclass(frozen=True)
class Config:
    """The whole configuration: data, model, render and train sections (saved in every checkpoint)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain dicts (JSON-ready; ``from_dict`` reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """Rebuild a config from ``to_dict`` output. Keys of fields removed since (``RETIRED_KEYS``, found in
        older checkpoints) are dropped, fields added since (``ADDED_KEYS``) missing from it get the values older
        checkpoints were trained with; any other unknown key is an error (a config from another version)."""
        return _build(cls, d)

    def replace(self, **sections: Any) -> "Config":
        """A copy with whole sections replaced, e.g. ``config.replace(train=TrainConfig(steps=100))``."""
        return dataclasses.replace(self, **sections)


# Fields that older nerfbs versions wrote into checkpoints and that no longer exist, by section. Their values
# never changed what a checkpoint renders: DataConfig.scale (the format's translation scale, always 0.33 and
# never read; the loader uses data.camera.FORMAT_SCALE).
RETIRED_KEYS = {"DataConfig": {"scale"}}
# Fields added since checkpoints were first written whose defaults changed what a field renders: a checkpoint without
# them gets the value it was trained with (the original's one-cell steps everywhere).
ADDED_KEYS = {"RenderConfig": {"step_scale": 1.0, "long_step_density": 0.0}}


def _build(kind: type, d: Any) -> Any:
    if not dataclasses.is_dataclass(kind):
        return d
    if not isinstance(d, dict):
        raise ValueError(f"config section {kind.__name__} is not a mapping")
    retired = RETIRED_KEYS.get(kind.__name__, set())
    d = {**ADDED_KEYS.get(kind.__name__, {}), **{k: v for k, v in d.items() if k not in retired}}
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"config section {kind.__name__} has unknown keys {unknown}")
    kwargs = {}
    for name, value in d.items():
        ftype = fields[name].type
        sub = {"GridConfig": GridConfig, "ModelConfig": ModelConfig, "RenderConfig": RenderConfig,
               "DataConfig": DataConfig, "TrainConfig": TrainConfig}.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        kwargs[name] = _build(sub, value) if sub else value
    return kind(**kwargs)
