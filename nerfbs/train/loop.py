"""Training: from a subject folder to a checkpointed avatar.

A few small functions around one ``TrainRun`` record of the live objects: ``make_optimizer``,
``train_step``, ``validate``, ``save`` / ``restore`` and the ``train`` loop that ties them together.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from nerfbs.train import checkpoint as ckpt
from nerfbs.config import Config, TrainConfig
from nerfbs.data.rays import RaySampler
from nerfbs.data.subject import Subject, load_configured_subject
from nerfbs.errors import Interrupted, UserError
from nerfbs.images import error_grid, write_png
from nerfbs.field import BlendShapeField
from nerfbs.train.plot import write_curves
from nerfbs.render.carve import silhouette_cells
from nerfbs.render.image import render_with_truth
from nerfbs.render.pose import PoseCorrection
from nerfbs.render.rays import make_occupancy_grid, render_rays_train, update_occupancy
from nerfbs.train.workspace import Workspace
from taichi_kernels.occupancy import OccupancyGrid

log = logging.getLogger(__name__)


@dataclass
class TrainRun:
    """The live objects of one training run."""

    config: Config
    subject: Subject
    sampler: RaySampler
    field: BlendShapeField
    grid: OccupancyGrid
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    workspace: Workspace
    lpips: torch.nn.Module | None
    poses: PoseCorrection | None = None  # the training frames' pose corrections (None: pose refinement off)
    step: int = 0
    started: float = 0.0
    elapsed_before: float = 0.0  # training seconds spent before a resume

    @property
    def device(self) -> torch.device:
        """The device the run's tensors live on (the subject's)."""
        return self.subject.coeffs.device

    @property
    def elapsed(self) -> float:
        """Training seconds so far, including those before a resume."""
        return self.elapsed_before + (time.perf_counter() - self.started)


def fit_config_to_subject(config: Config, subject: Subject) -> Config:
    """The subject decides the number of bases: its coefficients plus the neutral one."""
    grid = dataclasses.replace(config.model.grid, num_bases=subject.num_coeffs + 1)
    return config.replace(model=dataclasses.replace(config.model, grid=grid))


def make_optimizer(field: BlendShapeField, cfg: TrainConfig, device: torch.device,
                   poses: PoseCorrection | None = None) -> torch.optim.Adam:
    """Adam as the original: weight decay on the MLPs only, eps 1e-15; with ``poses``, two more groups for the
    pose corrections' rotations and translations at their own rates. Each group's ``base_lr`` is its rate
    before the schedule's decay."""
    groups = [{"params": [field.encoder.tables], "weight_decay": 0.0, "base_lr": cfg.lr},
              {"params": field.mlp_parameters(), "weight_decay": cfg.mlp_weight_decay, "base_lr": cfg.lr}]
    if poses is not None:
        groups += [{"params": [poses.rotation], "weight_decay": 0.0, "base_lr": cfg.pose_rotation_lr},
                   {"params": [poses.translation], "weight_decay": 0.0, "base_lr": cfg.pose_translation_lr}]
    for group in groups:
        group["lr"] = group["base_lr"]
    return torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.99), eps=1e-15, fused=device.type == "cuda")


def training_fraction(cfg: TrainConfig, step: int, elapsed_s: float) -> float:
    """How far training has come, 0 to 1, by steps or by the wall-clock budget, whichever is further."""
    frac = step / max(cfg.steps, 1)
    if cfg.minutes > 0:
        frac = max(frac, elapsed_s / (cfg.minutes * 60.0))
    return min(frac, 1.0)


def lr_decay(cfg: TrainConfig, fraction: float) -> float:
    """The schedule's factor on every group's initial rate (``base_lr``): exponential decay from 1 to
    ``lr_final_fraction``."""
    return cfg.lr_final_fraction ** fraction


def occupancy_probes(run: TrainRun) -> torch.Tensor:
    """Coefficient rows [S, K] of randomly drawn training frames: the occupancy grid keeps the max density over
    them. Measured tighter without holes than the original's "each basis at its maximum" (docs/PERF.md)."""
    n = run.config.train.occupancy_probe_frames
    rows = torch.randint(0, run.subject.num_train, (n,), device=run.device, generator=run.generator)
    return run.subject.coeffs[rows]


def silhouette_grid_cells(subject: Subject, config: Config) -> torch.Tensor:
    """[res^3] bool: the occupancy cells some training frame sees inside its head mask (``nerfbs.render.carve``)."""
    rc = config.render
    frames = ((subject.poses[i], subject.frame(i)[1]) for i in range(subject.num_train))
    return silhouette_cells(rc.grid_resolution, rc.bound, subject.intrinsics, frames)


def _autocast(run: TrainRun):
    enabled = run.config.train.mixed_precision and run.device.type == "cuda"
    return torch.autocast(run.device.type, dtype=torch.float16, enabled=enabled)


def train_step(run: TrainRun) -> dict[str, float]:
    """One optimisation step on ``images_per_step`` random training frames. Returns the step's figures."""
    cfg = run.config.train
    subject, step = run.subject, run.step
    if step % cfg.occupancy_update_every == 0:
        update_occupancy(run.field, run.grid, occupancy_probes(run), step=step,
                         warmup_steps=cfg.occupancy_warmup_steps, generator=run.generator)
    frames = torch.randint(0, subject.num_train, (cfg.images_per_step,), device=run.device, generator=run.generator)
    rays = run.sampler.sample(frames, cfg.rays_per_image, face_fraction=cfg.face_ray_fraction,
                              mouth_fraction=cfg.mouth_ray_fraction, generator=run.generator, train_frames=True,
                              subpixel=cfg.subpixel_rays)
    coeffs = subject.coeffs[frames]  # [B, K]
    fraction = training_fraction(cfg, step, run.elapsed)
    decay = lr_decay(cfg, fraction)
    lr = cfg.lr * decay
    for group in run.optimizer.param_groups:
        group["lr"] = group["base_lr"] * decay
    # Before pose_refinement_from the corrections are zero and left out (no gradient, no cost): a blurry field's
    # noisy gradients would set them wandering, and the field would then fit the wandered cameras.
    refine = run.poses is not None and fraction >= cfg.pose_refinement_from
    origins, directions = rays.origins, rays.directions
    if refine:
        origins, directions = run.poses.correct_rays(origins, directions, frames, rays.frame_slot)

    with _autocast(run):
        out = render_rays_train(run.field, run.grid, run.config.render, origins, directions,
                                rays.frame_slot, coeffs, rays.background, generator=run.generator,
                                distortion=_distortion_applies(cfg, step))
        color_loss = (out.rgb - rays.rgb).abs().mean()
        loss = color_loss
        figures = {"color_loss": color_loss}
        if refine and cfg.pose_penalty > 0:
            pose_penalty = run.poses.penalty(frames, run.config.render.bound)
            loss = loss + cfg.pose_penalty * pose_penalty
            figures["pose_penalty"] = pose_penalty
        if step < cfg.mask_loss_steps and cfg.mask_loss_weight > 0:
            mask_loss = F.mse_loss(out.opacity, rays.mask)
            loss = loss + cfg.mask_loss_weight * mask_loss
            figures["mask_loss"] = mask_loss
        if cfg.table_l1_weight > 0:
            table_l1 = run.field.encoder.tables[1:].abs().mean()
            loss = loss + cfg.table_l1_weight * table_l1
            figures["table_l1"] = table_l1
        if out.distortion is not None:
            distortion = out.distortion.mean()
            loss = loss + cfg.distortion_weight * distortion
            figures["distortion"] = distortion
        if run.lpips is not None and step >= cfg.lpips_from_step:
            patch_loss = _patch_loss(run, frames[0], "mouth" if step % 2 == 0 else "face", refine)
            loss = loss + patch_loss
            figures["patch_loss"] = patch_loss

    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if refine:
        run.poses.recenter_()
    run.step += 1

    mse = F.mse_loss(out.rgb.detach().float(), rays.rgb)
    figures.update(loss=loss, psnr=-10.0 * torch.log10(mse.clamp_min(1e-10)), occupancy=run.grid.occupied_share())
    # one device-to-host copy for all figures (a sync per figure would stall the launch queue each time)
    values = torch.stack([v.detach().float().reshape(()) for v in figures.values()]).tolist()
    result = dict(zip(figures.keys(), values))
    n_rays = max(rays.origins.shape[0], 1)
    result.update(lr=lr, samples_per_ray=out.num_samples / n_rays, marched_per_ray=out.num_marched / n_rays)
    return result


def _patch_loss(run: TrainRun, frame: torch.Tensor, rect: str, refine: bool) -> torch.Tensor:
    """LPIPS (+ 0.1 x L1) on a rendered 32x32 patch inside the mouth or face rectangle, weighted as the original."""
    cfg = run.config.train
    p = cfg.lpips_patch
    rays = run.sampler.sample_patch(frame, rect, size=p, generator=run.generator, train_frames=True)
    coeffs = run.subject.coeffs[frame].unsqueeze(0)
    origins, directions = rays.origins, rays.directions
    if refine:
        origins, directions = run.poses.correct_rays(origins, directions, frame.reshape(1), rays.frame_slot)
    out = render_rays_train(run.field, run.grid, run.config.render, origins, directions, rays.frame_slot,
                            coeffs, rays.background, generator=run.generator)
    pred = out.rgb.float().reshape(1, p, p, 3).permute(0, 3, 1, 2)
    truth = rays.rgb.reshape(1, p, p, 3).permute(0, 3, 1, 2)
    return cfg.lpips_weight * (run.lpips(pred, truth).mean() + (pred - truth).abs().mean())


def validation_frames(subject: Subject) -> list[int]:
    """Every 70th held-out frame, as the original validates."""
    return [int(i) for i in subject.test_indices[::70]]


def validate(run: TrainRun) -> dict[str, float]:
    """Render one held-out frame (cycling through the validation frames), save the comparison grid."""
    frames = validation_frames(run.subject)
    frame = frames[(run.step // max(run.config.train.validate_every, 1)) % len(frames)]
    pred, truth = render_with_truth(run.field, run.grid, run.config.render, run.subject, frame)
    mse = float(np.mean((pred - truth) ** 2))
    write_png(run.workspace.validation(run.step), error_grid(pred, truth))
    return {"val_psnr": -10.0 * math.log10(max(mse, 1e-10)), "val_frame": frame}


def expression_stats(subject: Subject) -> dict:
    """The subject's coefficient statistics a checkpoint stores: ``num_coeffs`` (K), ``coeff_min`` and
    ``coeff_max`` [K] float32 on the CPU, and ``coeff_names``."""
    return {"num_coeffs": subject.num_coeffs, "coeff_min": subject.coeff_min.cpu(),
            "coeff_max": subject.coeff_max.cpu(), "coeff_names": list(subject.coeff_names or [])}


def _distortion_applies(cfg: TrainConfig, step: int) -> bool:
    """Whether step ``step`` adds the distortion loss: a positive weight, within ``distortion_steps`` if set."""
    return cfg.distortion_weight > 0 and (cfg.distortion_steps <= 0 or step < cfg.distortion_steps)


def save(run: TrainRun, path: Path) -> Path:
    """Write the run's full state (model, occupancy, optimizer, scaler, RNG, elapsed time, pose corrections) to a
    checkpoint at ``path``; returns what ``save_checkpoint`` returns."""
    return ckpt.save_checkpoint(
        path, config=run.config, step=run.step, model=run.field.state_dict(), occupancy=run.grid.state_dict(),
        optimizer=run.optimizer.state_dict(), scaler=run.scaler.state_dict(), expressions=expression_stats(run.subject),
        rng={"generator": run.generator.get_state(), "elapsed": torch.tensor(run.elapsed, dtype=torch.float64)},
        poses=None if run.poses is None else run.poses.state_dict())


def restore(run: TrainRun, payload: dict, path: Path) -> None:
    """Load a checkpoint's model, occupancy, pose corrections, optimizer and RNG state into ``run`` (strict)."""
    ckpt.check_coefficient_count(payload, run.subject.num_coeffs, path=path, subject=str(run.subject.root))
    ckpt.load_state_strict(run.field, payload["model"], what="model", path=path)
    poses = ckpt.pose_state(payload, run.subject.num_train, path=path)
    if (poses is None) != (run.poses is None):
        raise UserError(f"{path}: saved {'without' if poses is None else 'with'} pose corrections but the run's config "
                        "says otherwise — resume with the checkpoint's own config")
    if run.poses is not None:
        ckpt.load_state_strict(run.poses, poses, what="pose correction", path=path)
    ckpt.load_state_strict(run.grid, payload["occupancy"], what="occupancy grid", path=path)
    base_lrs = [group["base_lr"] for group in run.optimizer.param_groups]
    try:
        run.optimizer.load_state_dict(payload["optimizer"])
    except (ValueError, KeyError) as err:
        raise UserError(f"{path}: optimizer state does not match this model ({err}) — retrain") from None
    for group, base_lr in zip(run.optimizer.param_groups, base_lrs):  # version 1 files saved no base_lr
        group["base_lr"] = base_lr
    if payload.get("scaler"):
        run.scaler.load_state_dict(payload["scaler"])
    run.generator.set_state(payload["rng"]["generator"].cpu())  # a ByteTensor on the CPU, whatever map_location did
    run.elapsed_before = float(payload["rng"]["elapsed"])
    run.step = int(payload["step"])


def build_run(config: Config, workspace: Workspace, device: torch.device, *, lpips: torch.nn.Module | None,
              progress: Callable[[int, int], None] | None = None) -> TrainRun:
    """Load the subject ``config.data`` names and build the field, occupancy grid and optimizer for ``config``."""
    subject = load_configured_subject(config.data, device, progress=progress)
    config = fit_config_to_subject(config, subject)
    torch.manual_seed(config.train.seed)
    field = BlendShapeField(config.model, bound=config.render.bound).to(device)
    grid = make_occupancy_grid(config.render).to(device)
    poses = PoseCorrection(subject.num_train).to(device) if config.train.pose_refinement else None
    if config.train.occupancy_mask_carving:
        grid.restrict(silhouette_grid_cells(subject, config))
    generator = torch.Generator(device=device)
    generator.manual_seed(config.train.seed)
    return TrainRun(config=config, subject=subject, sampler=RaySampler(subject, device), field=field, grid=grid,
                    optimizer=make_optimizer(field, config.train, device, poses), poses=poses,
                    scaler=torch.amp.GradScaler(device.type, enabled=config.train.mixed_precision and device.type == "cuda"),
                    generator=generator,
                    workspace=workspace, lpips=lpips)


StepCallback = Callable[[int, dict], None]


def train(run: TrainRun, *, on_step: StepCallback | None = None, log_every: int = 50) -> dict:
    """Run the loop until the step count or the wall-clock budget ends it. Saves the latest checkpoint at the
    end, periodically, and on Ctrl-C (then raises ``Interrupted`` saying so). Returns the last figures."""
    cfg = run.config.train
    ws = run.workspace
    ws.create()
    ws.write_config(run.config.to_dict())
    run.started = time.perf_counter()
    last: dict = {}
    try:
        while run.step < cfg.steps and not (cfg.minutes > 0 and run.elapsed >= cfg.minutes * 60.0):
            t0 = time.perf_counter()
            figures = train_step(run)
            figures["ms_per_step"] = (time.perf_counter() - t0) * 1000.0
            step = run.step
            if step % cfg.validate_every == 0 or step == cfg.steps:
                figures.update(validate(run))
            if step % log_every == 0 or "val_psnr" in figures:
                ws.append_metrics({"step": step, "elapsed_s": round(run.elapsed, 2), **figures})
            if step % cfg.checkpoint_every == 0:
                save(run, ws.periodic(step))
                save(run, ws.latest)
            last = figures
            if on_step is not None:
                on_step(step, figures)
    except KeyboardInterrupt:
        save(run, ws.latest)
        raise Interrupted(f"interrupted at step {run.step}: saved {ws.latest} (continue with --resume)") from None
    if "val_psnr" not in last and validation_frames(run.subject):
        last.update(validate(run))
        ws.append_metrics({"step": run.step, "elapsed_s": round(run.elapsed, 2), **last})
    save(run, ws.latest)
    write_curves(ws.read_metrics(), ws.curves)
    return last


def check_workspace(workspace: Workspace, *, resume: bool) -> None:
    """Refuse to resume nothing, or to overwrite a run without --resume."""
    if resume and not workspace.latest.exists():
        raise UserError(f"{workspace.latest}: nothing to resume — train without --resume first")
    if not resume and workspace.latest.exists():
        raise UserError(f"{workspace.root} already holds a run ({workspace.latest.name}) — pass --resume to continue "
                        "it, or choose another --workspace")


def prepare_run(config: Config, workspace: Workspace, device: torch.device, *, resume_from: dict | None,
                lpips_loader: Callable[[bool], torch.nn.Module | None],
                progress: Callable[[int, int], None] | None = None) -> TrainRun:
    """A new run (``resume_from`` None), or the run whose loaded checkpoint ``resume_from`` is (the workspace's
    latest) continued with ``config``'s step/time budget.

    ``lpips_loader(needed)`` returns the perceptual network, raising when ``needed`` and it is unavailable."""
    check_workspace(workspace, resume=resume_from is not None)
    if resume_from is not None:
        saved: Config = resume_from["config"]
        config = saved.replace(train=dataclasses.replace(saved.train, steps=config.train.steps,
                                                         minutes=config.train.minutes))
    needs_lpips = config.train.use_lpips and config.train.steps > config.train.lpips_from_step
    run = build_run(config, workspace, device, lpips=lpips_loader(needs_lpips) if config.train.use_lpips else None,
                    progress=progress)
    if resume_from is not None:
        restore(run, resume_from, workspace.latest)
        workspace.truncate_metrics(run.step)
    return run
