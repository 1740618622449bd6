"""Where a trained avatar's samples lie (issue 15): the analysis and pictures behind ``bench/samples.py``.

Works on anything with ``field``, ``grid``, ``config`` and ``subject`` (a ``TrainRun`` or an ``Avatar``),
on the CPU or the GPU. Every figure is computed from flat samples (``march_rays_train``) and per-sample
transmittance in plain torch, so it does not depend on the inference loop it diagnoses.

Vocabulary:
- ray classes: ``head`` (the pixel lies in the head mask), ``person`` (outside the mask, but the raw frame
  differs from bc.jpg there: hair, neck, shoulders cut off by the mask), ``background`` (the rest).
- a head ray's surface ``t_s``: where its transmittance falls below 0.5; a sample is ``before``,
  ``surface`` (within ``margin`` of t_s) or ``behind``; a head ray that never reaches T = 0.5 is
  ``transparent``.
- ``T < 1e-4``: samples training composites with no gradient; ``T < 1e-2``: samples the inference loop
  never needs (it retires rays there).
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from nerfbs.data.camera import image_rays, pixel_rays
from taichi_kernels.composite import composite
from taichi_kernels.march import march_rays_train
from taichi_kernels.samples import MarchParams, Samples

SURFACE_MARGIN = 0.002  # world units (about 2 cells of the original's 128^3 grid over a 0.12 box)
PERSON_DIFF = 30  # 8-bit colour difference between the raw frame and bc.jpg that marks a person pixel
RAY_CHUNK = 1 << 15


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")


def person_map(subject, frame: int) -> np.ndarray | None:
    """[H, W] bool: pixels of frame ``frame`` where the raw frame (ori_imgs) differs from bc.jpg, or None."""
    path = Path(subject.root) / "ori_imgs" / f"{subject.img_ids[frame]}.jpg"
    raw = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if raw is None or raw.shape[:2] != (subject.height, subject.width):
        return None
    bc = subject.background.cpu().numpy()[..., ::-1].astype(np.int16)  # RGB -> BGR
    return np.abs(raw.astype(np.int16) - bc).max(axis=-1) > PERSON_DIFF


def ray_classes(subject, frame: int, mask: torch.Tensor) -> torch.Tensor:
    """[H, W] int64 on mask's device: 0 head, 1 person (not head), 2 background, for frame ``frame``."""
    cls = torch.full(mask.shape, 2, dtype=torch.int64, device=mask.device)
    person = person_map(subject, frame)
    if person is not None:
        cls[torch.from_numpy(person).to(mask.device)] = 1
    cls[mask.bool()] = 0
    return cls


@torch.no_grad()
def per_sample(model, samples: Samples, ray_frame: torch.Tensor, coeffs: torch.Tensor) -> dict:
    """Field and transmittance at flat samples: sigma, alpha, T (before the sample), weight, all [M] float32."""
    sigma = torch.empty(samples.num_samples, device=samples.t.device)
    frames = ray_frame[samples.ray_index.long()]
    for s in range(0, samples.num_samples, 1 << 19):
        e = s + (1 << 19)
        with _autocast(samples.t.device):
            sigma[s:e] = model.field.density(samples.positions[s:e], frames[s:e], coeffs).float()
    tau = (sigma * samples.dt).double()
    cs = torch.cumsum(tau, 0)
    ray = samples.ray_index.long()
    start = (cs - tau)[samples.ray_offsets.long().clamp(max=max(samples.num_samples - 1, 0))]
    before = torch.exp(-((cs - tau) - start[ray])).float() if samples.num_samples else tau.float()
    alpha = 1.0 - torch.exp(-tau.float())
    return {"sigma": sigma, "alpha": alpha, "T": before, "w": before * alpha}


def classify(samples: Samples, ps: dict, ray_cls: torch.Tensor, margin: float = SURFACE_MARGIN) -> dict:
    """Sample counts by class (see the module docstring) for rays of classes ray_cls [R]."""
    ray = samples.ray_index.long()
    rays = ray_cls.shape[0]
    t_after = ps["T"] * (1.0 - ps["alpha"])
    big = torch.full((rays,), float("inf"), device=ray.device)
    t_s = big.scatter_reduce(0, ray, torch.where(t_after < 0.5, samples.t, big[ray]), reduce="amin")
    cls = ray_cls[ray]
    has_surface = torch.isfinite(t_s)[ray]
    rel = samples.t - torch.where(has_surface, t_s[ray], torch.zeros_like(samples.t))
    head = cls == 0
    out = {
        "rays": {"head": int((ray_cls == 0).sum()), "person": int((ray_cls == 1).sum()),
                 "background": int((ray_cls == 2).sum())},
        "samples": int(ray.shape[0]),
        "head_before": int((head & has_surface & (rel < -margin)).sum()),
        "head_surface": int((head & has_surface & (rel.abs() <= margin)).sum()),
        "head_behind": int((head & has_surface & (rel > margin)).sum()),
        "head_transparent": int((head & ~has_surface).sum()),
        "person": int((cls == 1).sum()),
        "background": int((cls == 2).sum()),
        "T_below_1e-4": int((ps["T"] < 1e-4).sum()),
        "T_below_1e-2": int((ps["T"] < 1e-2).sum()),
        "weight_below_1e-4": int((ps["w"] < 1e-4).sum()),
        "alpha_below_1e-2_visible": int(((ps["alpha"] < 1e-2) & (ps["T"] >= 1e-2)).sum()),
    }
    counts = torch.bincount(ray, minlength=rays).float()
    for name, k in (("head", 0), ("person", 1), ("background", 2)):
        sel = ray_cls == k
        out[f"per_ray_{name}"] = float(counts[sel].mean()) if bool(sel.any()) else 0.0
    out["per_ray"] = float(counts.mean()) if rays else 0.0
    out["per_ray_T_above_1e-2"] = float((ps["T"] >= 1e-2).sum()) / max(rays, 1)
    return out


def _add(total: dict, part: dict) -> None:
    for k, v in part.items():
        if isinstance(v, dict):
            _add(total.setdefault(k, {}), v)
        elif k.startswith("per_ray"):
            total.setdefault(k + "_parts", []).append(v)
        else:
            total[k] = total.get(k, 0) + v


@torch.no_grad()
def training_rays(model, frames: list[int], rays_per_image: int, face_fraction: float,
                  generator: torch.Generator, visibility: torch.Tensor | None = None) -> dict:
    """Rays drawn as training draws them (face-rectangle share, jittered marching) from ``frames``; with
    ``visibility`` [res^3], also the max sample weight seen in each grid cell (scatter-max, in place)."""
    subject, grid = model.subject, model.grid
    params = MarchParams.from_render_config(model.config.render)
    sampler = model.sampler
    total: dict = {}
    for f in frames:
        batch = sampler.sample(torch.tensor([f], device=subject.device), rays_per_image, face_fraction=face_fraction,
                               generator=generator)
        _, mask = subject.frame(f)
        cls_img = ray_classes(subject, f, mask)
        ray_cls = cls_img[batch.pixels[:, 1], batch.pixels[:, 0]]
        s = march_rays_train(batch.origins, batch.directions, grid, params, jitter=True, generator=generator)
        ps = per_sample(model, s, batch.frame_slot, subject.coeffs[f:f + 1])
        _add(total, classify(s, ps, ray_cls))
        if visibility is not None:
            _scatter_weight(visibility, s, ps, grid)
    for k in [k for k in total if k.endswith("_parts")]:
        parts = total.pop(k)
        total[k[:-6]] = float(np.mean(parts))
    return total


def _cells(points: torch.Tensor, grid) -> torch.Tensor:
    res = grid.resolution
    c = torch.floor((points + grid.bound) * (res / (2.0 * grid.bound))).long().clamp(0, res - 1)
    return c[:, 0] + res * (c[:, 1] + res * c[:, 2])


def _scatter_weight(visibility: torch.Tensor, s: Samples, ps: dict, grid) -> None:
    visibility.scatter_reduce_(0, _cells(s.positions, grid), ps["w"], reduce="amax")


@torch.no_grad()
def frame_samples(model, frame: int, visibility: torch.Tensor | None = None) -> dict:
    """Every pixel of frame ``frame`` marched without jitter: per-pixel maps [H, W] of the samples training
    marching places (``marched``) and of those before T < early_stop (``needed``: what an exact inference
    renderer must evaluate), the frame's ray classes, and (given ``visibility``) the cells' max weights."""
    subject, grid, rc = model.subject, model.grid, model.config.render
    params = MarchParams.from_render_config(rc)
    h, w = subject.height, subject.width
    origins, directions, _ = image_rays(subject.poses[frame], subject.intrinsics)
    marched = torch.zeros(h * w, device=origins.device)
    needed = torch.zeros(h * w, device=origins.device)
    for start in range(0, h * w, RAY_CHUNK):
        o, d = origins[start:start + RAY_CHUNK], directions[start:start + RAY_CHUNK]
        s = march_rays_train(o, d, grid, params, jitter=False)
        ps = per_sample(model, s, torch.zeros(o.shape[0], dtype=torch.int32, device=o.device),
                        subject.coeffs[frame:frame + 1])
        marched[start:start + o.shape[0]] = s.ray_counts.float()
        ray = s.ray_index.long()
        needed[start:start + o.shape[0]] = torch.bincount(ray[ps["T"] >= rc.display_early_stop],
                                                          minlength=o.shape[0]).float()
        if visibility is not None:
            _scatter_weight(visibility, s, ps, grid)
    _, mask = subject.frame(frame)
    return {"marched": marched.reshape(h, w), "needed": needed.reshape(h, w),
            "classes": ray_classes(subject, frame, mask)}


def grid_figures(grid, render_config, visibility: torch.Tensor | None) -> dict:
    """Occupied share, threshold, a histogram of the occupied cells' density (log10 bins) and of the alpha it
    gives over one max step, and (given ``visibility``) the share of occupied cells no analysed ray saw."""
    occ = grid.occupied()
    dens = grid.density[occ]
    edges = [-math.inf, 0, 1, 2, 3, 4, math.inf]
    logd = torch.log10(dens.clamp_min(1e-30))
    hist = {f"1e{lo}..1e{hi}" if math.isfinite(lo) and math.isfinite(hi) else (f"<1e{hi}" if math.isfinite(hi) else f">1e{lo}"):
            int(((logd >= lo) & (logd < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])}
    alpha = 1.0 - torch.exp(-dens * render_config.max_step)
    a_edges = [0.0, 1e-3, 1e-2, 1e-1, 0.5, 1.01]
    a_hist = {f"{lo:g}..{hi:g}": int(((alpha >= lo) & (alpha < hi)).sum()) for lo, hi in zip(a_edges[:-1], a_edges[1:])}
    out = {"resolution": grid.resolution, "occupied_share": float(occ.float().mean()), "mean_density": grid.mean_density,
           "threshold": grid.threshold, "occupied_cells": int(occ.sum()), "occupied_density_hist": hist,
           "occupied_alpha_at_max_step_hist": a_hist, "max_step": render_config.max_step}
    if visibility is not None:
        seen = visibility > 1e-3
        out["occupied_never_weighted_share"] = float((occ & ~seen).sum()) / max(int(occ.sum()), 1)
        out["weighted_cells_share"] = float(seen.float().mean())
    return out


# ---- pictures ---------------------------------------------------------------------------------------------

def _colour(values: np.ndarray, vmax: float) -> np.ndarray:
    """[H, W] float -> [H, W, 3] uint8 RGB (turbo colour map, 0..vmax)."""
    scaled = np.clip(values / max(vmax, 1e-9), 0.0, 1.0)
    return cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]


def _label(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` with a black strip above it holding ``text``."""
    strip = np.zeros((14, image.shape[1], 3), np.uint8)
    cv2.putText(strip, text, (2, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([strip, image], axis=0)


def samples_picture(pred: np.ndarray, truth: np.ndarray, maps: dict, vmax: float = 64.0) -> np.ndarray:
    """prediction | truth | samples training marches per pixel | samples an exact renderer needs per pixel
    (turbo, 0..vmax), the head mask's outline in white on the maps; small frames are enlarged to 256 pixels.
    uint8 RGB."""
    outline = maps["classes"].cpu().numpy() == 0
    edge = outline ^ cv2.erode(outline.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    zoom = max(1, 256 // pred.shape[1])
    up = (lambda a: np.repeat(np.repeat(a, zoom, 0), zoom, 1))
    panels = [_label(up((np.clip(pred, 0, 1) * 255).astype(np.uint8)), "render"),
              _label(up((np.clip(truth, 0, 1) * 255).astype(np.uint8)), "truth")]
    for key, name in (("marched", "marched"), ("needed", "needed")):
        m = maps[key].cpu().numpy()
        img = _colour(m, vmax)
        img[edge] = 255
        panels.append(_label(up(img), f"{name}/pixel: mean {m.mean():.1f}, max {m.max():.0f} (scale 0..{vmax:.0f})"))
    return np.concatenate(panels, axis=1)


def grid_picture(grid, visibility: torch.Tensor | None, centre: torch.Tensor | None = None, zoom: int = 0) -> np.ndarray:
    """Three axis-aligned slices of the grid through ``centre`` (world [3], default the origin). Top row: log10
    density (turbo, 0..4), empty cells dimmed. Bottom row: black empty, red occupied but no analysed ray gave
    it weight > 1e-3, green occupied and weighted, blue weighted but empty. uint8 RGB [2 S + 28, 3 S, 3]."""
    res = grid.resolution
    zoom = zoom or max(1, 256 // res)
    dens = grid.density.reshape(res, res, res).cpu().numpy()  # [z, y, x]
    occ = grid.occupied().reshape(res, res, res).cpu().numpy()
    seen = (visibility.reshape(res, res, res).cpu().numpy() > 1e-3) if visibility is not None else np.zeros_like(occ)
    c = centre.cpu().numpy() if centre is not None else np.zeros(3)
    idx = np.clip(((c + grid.bound) * res / (2 * grid.bound)).astype(int), 0, res - 1)  # x, y, z
    top, bottom = [], []
    for axis, name, k in ((0, "z", idx[2]), (1, "y", idx[1]), (2, "x", idx[0])):
        d, o, v = (np.take(a, k, axis=axis) for a in (dens, occ, seen))
        img = _colour(np.log10(np.maximum(d, 1e-3)), 4.0).astype(np.float32)
        img[~o] *= 0.25
        cat = np.zeros(o.shape + (3,), np.uint8)
        cat[o & ~v] = (200, 40, 40)
        cat[o & v] = (40, 200, 40)
        cat[~o & v] = (40, 80, 255)
        up = (lambda a: np.repeat(np.repeat(a, zoom, 0), zoom, 1)[::-1])
        top.append(_label(up(img.astype(np.uint8)), f"{name}={k}: log10 density, occupied {o.mean():.0%}"))
        bottom.append(_label(up(cat), f"{name}={k}: red never weighted ({(o & ~v).sum() / max(o.sum(), 1):.0%})"))
    return np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)


def pixel_ray_batch(subject, frame: int, pixels: torch.Tensor):
    """(origins, directions) [P, 3] of pixels [P, 2] (u, v) long of frame ``frame``."""
    p = subject.poses[frame:frame + 1]
    slot = torch.zeros(pixels.shape[0], dtype=torch.long, device=pixels.device)
    return pixel_rays(p, subject.fx, subject.fy, subject.cx, subject.cy, pixels[:, 0].float(), pixels[:, 1].float(), slot)


def composite_check(model, frame: int) -> float:
    """Max |opacity| difference between the torch transmittance above and the composite kernel on 1,024 rays
    of ``frame`` (a self-check of ``per_sample``)."""
    subject = model.subject
    pix = torch.stack(torch.meshgrid(torch.arange(0, subject.width, max(subject.width // 32, 1)),
                                     torch.arange(0, subject.height, max(subject.height // 32, 1)), indexing="xy"),
                      -1).reshape(-1, 2).to(subject.device)
    o, d = pixel_ray_batch(subject, frame, pix)
    s = march_rays_train(o, d, model.grid, MarchParams.from_render_config(model.config.render), jitter=False)
    ps = per_sample(model, s, torch.zeros(o.shape[0], dtype=torch.int32, device=o.device), subject.coeffs[frame:frame + 1])
    with torch.no_grad():
        _, opacity, _ = composite(ps["sigma"], torch.zeros(s.num_samples, 3, device=o.device), s.t, s.dt,
                                  s.ray_offsets, s.ray_counts, torch.zeros_like(o), early_stop=0.0)
    ours = torch.zeros(o.shape[0], device=o.device).index_add_(0, s.ray_index.long(), ps["w"])
    return float((ours - opacity).abs().max()) if o.shape[0] else 0.0
