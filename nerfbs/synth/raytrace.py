"""Render frames of the procedural head: sphere tracing the SDF of ``synth_head``, shading, and
compositing over a static background with a torso (ori image), its head-only version and the parsing.

Rays are those of the layout (``nerfbs.data.camera.pixel_rays``: pixel (u, v) with no half-pixel offset), so
the head image's pixels are exactly what a NeRF trained on them is asked for. Only pixels inside the
projected bounding sphere of the head are traced, many frames per pass, with a bounded step count and
compaction of the still-marching rays; silhouettes are anti-aliased by the rays' closest approach (the
nearest miss covers clamp(0.5 - distance / pixel, 0, 1) of its pixel), colour edges by smooth masks a
pixel wide. Vectorised torch: runs on the CPU and on CUDA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nerfbs.data.camera import pixel_rays
from nerfbs.synth.head import DESIGN_SCALE, LIPSCHITZ, Rig, albedo, normals, sdf

HEAD_BOX = ((-0.9, -1.47, -1.12), (0.9, 1.38, 1.12))  # design-unit bounds of the head (and neck)
BOUND_CENTRE = (0.0, -0.05, 0.0)
BOUND_RADIUS = 1.75
LIGHT = (-0.45, 0.55, 0.7)  # key light direction in the head frame (the light moves with the head)


@dataclass(frozen=True)
class TraceSettings:
    """Sphere-tracing settings: step cap, step scale (1 / the SDF's Lipschitz bound), hit threshold in pixels, compaction period."""
    max_steps: int = 96
    step_scale: float = 1.0 / LIPSCHITZ
    hit_pixels: float = 0.25  # a ray hits when the distance is below this many pixels
    compact_every: int = 6


@dataclass
class Layers:
    """Rendered layers of B frames: colours [B, H, W, 3] float in [0, 1], coverages [B, H, W]."""

    head: torch.Tensor
    head_alpha: torch.Tensor
    head_mask: torch.Tensor  # [B, H, W] bool: rays that hit the head


def _box_interval(o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo = torch.tensor(HEAD_BOX[0], dtype=o.dtype, device=o.device)
    hi = torch.tensor(HEAD_BOX[1], dtype=o.dtype, device=o.device)
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0, t1 = (lo - o) * inv, (hi - o) * inv
    return torch.minimum(t0, t1).amax(-1).clamp_min(0), torch.maximum(t0, t1).amin(-1)


def trace(o: torch.Tensor, d: torch.Tensor, rig: Rig, pix: float, settings: TraceSettings
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sphere-trace design-unit rays o, d [N, 3] (d unit) through the head with per-ray rig [N].

    ``pix`` is a pixel's angular size (1 / focal). Returns the hit flag [N] bool, the depth t [N] of the
    hit or of the closest approach, and the closest approach in pixels [N] (0 for hits).
    """
    n = o.shape[0]
    t_near, t_far = _box_interval(o, d)
    hit = torch.zeros(n, dtype=torch.bool, device=o.device)
    t = t_near.clone()
    best = torch.full((n,), float("inf"), dtype=o.dtype, device=o.device)
    best_t = t_near.clone()
    active = torch.nonzero(t_near < t_far).squeeze(1)
    g = rig.take(active)
    ta, fa, oa, da, ba, bta = t[active], t_far[active], o[active], d[active], best[active], best_t[active]
    live = torch.ones_like(ta, dtype=torch.bool)
    hita = torch.zeros_like(live)
    for step in range(settings.max_steps):
        dist = sdf(oa + ta[:, None] * da, g)
        px = dist / (ta.clamp_min(1e-3) * pix)  # distance in pixels
        closer = live & (px < ba)
        ba, bta = torch.where(closer, px, ba), torch.where(closer, ta, bta)
        new_hit = live & (px < settings.hit_pixels)
        hita = hita | new_hit
        ta = ta + torch.where(live & ~new_hit, dist * settings.step_scale, torch.zeros_like(dist))
        live = live & ~new_hit & (ta <= fa)
        last = step == settings.max_steps - 1
        if last or (step + 1) % settings.compact_every == 0:  # write back, keep the marching rays
            hit[active], t[active], best[active], best_t[active] = hita, ta, ba, bta
            active, ta, fa, oa, da, ba, bta, hita = (a[live] for a in (active, ta, fa, oa, da, ba, bta, hita))
            g = g.take(live)
            live = live[live]
            if active.numel() == 0:
                break
    best = torch.where(hit, torch.zeros_like(best), best)
    t = torch.where(hit, t, best_t)
    return hit, t, best


def shade(p: torch.Tensor, view: torch.Tensor, g: Rig, footprint: torch.Tensor) -> torch.Tensor:
    """Lit colour [N, 3] at surface points p [N, 3] seen along unit directions view [N, 3]."""
    n = normals(p, g)
    col, spec = albedo(p, g, footprint)
    light = torch.tensor(LIGHT, dtype=p.dtype, device=p.device)
    light = light / light.norm()
    diffuse = (n @ light).clamp_min(0)
    fill = 0.5 + 0.5 * n[:, 1]  # sky-ish fill from above
    half = light - view
    half = half / half.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    specular = spec * (n * half).sum(-1).clamp_min(0) ** 40
    rgb = col * (0.3 + 0.55 * diffuse + 0.2 * fill)[:, None] + specular[:, None]
    return rgb.clamp(0, 1)


def render_heads(poses: torch.Tensor, rig: Rig, fx: float, fy: float, cx: float, cy: float,
                 height: int, width: int, settings: TraceSettings = TraceSettings()) -> Layers:
    """Render the head alone for B renderer camera-to-world poses [B, 4, 4] (world units), rig [B]."""
    b = poses.shape[0]
    dev, dt = poses.device, poses.dtype
    rect = _bounding_rect(poses, fx, fy, cx, cy, height, width)
    x0, y0, x1, y1 = rect
    vv, uu = torch.meshgrid(torch.arange(y0, y1, device=dev), torch.arange(x0, x1, device=dev), indexing="ij")
    u, v = uu.reshape(-1).repeat(b), vv.reshape(-1).repeat(b)
    frame = torch.arange(b, device=dev).repeat_interleave((y1 - y0) * (x1 - x0))
    origins, dirs = pixel_rays(poses, fx, fy, cx, cy, u.to(dt), v.to(dt), frame)
    origins = origins / DESIGN_SCALE
    ray_rig = rig.take(frame)
    pix = 1.0 / math.sqrt(fx * fy)
    hit, t, miss_px = trace(origins, dirs, ray_rig, pix, settings)
    alpha = torch.where(hit, torch.ones_like(t), (0.5 - miss_px).clamp(0, 1))
    head = torch.zeros(b, height, width, 3, dtype=dt, device=dev)
    cover = torch.zeros(b, height, width, dtype=dt, device=dev)
    mask = torch.zeros(b, height, width, dtype=torch.bool, device=dev)
    seen = torch.nonzero(alpha > 0).squeeze(1)
    if seen.numel():
        p = origins[seen] + t[seen, None] * dirs[seen]
        col = shade(p, dirs[seen], ray_rig.take(seen), t[seen] * pix)
        head[frame[seen], v[seen], u[seen]] = col
        cover[frame[seen], v[seen], u[seen]] = alpha[seen]
    mask[frame[hit], v[hit], u[hit]] = True
    return Layers(head=head, head_alpha=cover, head_mask=mask)


def _bounding_rect(poses: torch.Tensor, fx, fy, cx, cy, height: int, width: int) -> tuple[int, int, int, int]:
    """Pixel rectangle (x0, y0, x1, y1), x1/y1 exclusive, holding every frame's projected bounding sphere."""
    centre = torch.tensor(BOUND_CENTRE, dtype=poses.dtype, device=poses.device) * DESIGN_SCALE
    rot, trans = poses[:, :3, :3], poses[:, :3, 3]
    cam = torch.einsum("bji,bj->bi", rot, centre - trans)  # [B, 3] centre in camera space
    r = BOUND_RADIUS * DESIGN_SCALE
    z = cam[:, 2].clamp_min(r * 1.01)
    spread = r / torch.sqrt((z * z - r * r).clamp_min(1e-12))  # tangent of the sphere's half angle
    lo_u = ((cam[:, 0] / z - spread) * fx + cx).min().item()
    hi_u = ((cam[:, 0] / z + spread) * fx + cx).max().item()
    lo_v = ((cam[:, 1] / z - spread) * fy + cy).min().item()
    hi_v = ((cam[:, 1] / z + spread) * fy + cy).max().item()
    x0, x1 = max(0, math.floor(lo_u)), min(width, math.ceil(hi_u) + 1)
    y0, y1 = max(0, math.floor(lo_v)), min(height, math.ceil(hi_v) + 1)
    return x0, y0, max(x0, x1), max(y0, y1)


# ---------------------------------------------------------------------------------- background, torso
def background(height: int, width: int, seed: int, device) -> torch.Tensor:
    """A static textured background [H, W, 3] float in [0, 1]: a wall with panels, a shelf and noise."""
    gen = torch.Generator().manual_seed(seed + 7919)
    v, u = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    hue = torch.rand(3, generator=gen) * 0.25 + torch.tensor([0.45, 0.5, 0.55])
    col = hue * (0.75 + 0.25 * (1 - v))[..., None]
    panels = (torch.sin(u * math.pi * 7 + 0.4) > 0.85).float() * 0.08
    col = col - panels[..., None]
    shelf = ((v - 0.3).abs() < 0.025).float() * (u > 0.62).float()
    col = torch.where(shelf[..., None] > 0, torch.tensor([0.45, 0.3, 0.2]), col)
    frame_ = ((u - 0.2).abs() < 0.12) & ((v - 0.22).abs() < 0.1)
    inner = ((u - 0.2).abs() < 0.1) & ((v - 0.22).abs() < 0.08)
    art = 0.5 + 0.5 * torch.sin(u * 60) * torch.cos(v * 45)
    col = torch.where(frame_[..., None], torch.tensor([0.25, 0.2, 0.15]), col)
    col = torch.where(inner[..., None], torch.stack([art, 0.6 * art + 0.2, 1 - art], -1) * 0.8 + 0.1, col)
    blobs = torch.zeros(height, width)
    for _ in range(12):
        cu, cv_, s = torch.rand(3, generator=gen)
        blobs += torch.exp(-((u - cu) ** 2 + (v - cv_) ** 2) / (0.002 + 0.01 * s))
    col = col * (1 - 0.12 * blobs.clamp(0, 1))[..., None]
    grain = torch.rand(height // 4 + 1, width // 4 + 1, generator=gen)
    grain = torch.nn.functional.interpolate(grain[None, None], size=(height, width), mode="bilinear",
                                            align_corners=False)[0, 0]
    col = col + 0.06 * (grain - 0.5)[..., None]
    return col.clamp(0, 1).to(device)


def torso(height: int, width: int, shift_u: torch.Tensor, shift_v: torch.Tensor, neck_v: float
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shoulders and shirt below the neck, per frame: colour [B, H, W, 3] and coverage [B, H, W].

    shift_u, shift_v [B] move the torso with the head's translation (pixels); ``neck_v`` is the collar's
    height (pixels) at rest. Coverage is anti-aliased over a pixel.
    """
    dev, dt = shift_u.device, shift_u.dtype
    v = torch.arange(height, device=dev, dtype=dt)[None, :, None] - shift_v[:, None, None]
    u = torch.arange(width, device=dev, dtype=dt)[None, None, :] - shift_u[:, None, None] - width / 2
    s = width / 512
    collar = neck_v + 0.0009 * u * u / s  # the neckline dips towards the shoulders
    shoulders = neck_v + 55 * s + 0.0025 * (u.abs() - 60 * s).clamp_min(0) ** 2 / s
    top = torch.where(u.abs() < 95 * s, collar, torch.maximum(collar, shoulders))
    cover = (v - top + 0.5).clamp(0, 1)
    shade_ = 0.85 - 0.25 * (u.abs() / (width / 2)).clamp(0, 1) + 0.05 * torch.sin(v / (6 * s))
    base = torch.tensor([0.2, 0.3, 0.55], device=dev, dtype=dt)
    col = base * shade_[..., None]
    stripe = ((v - top) < 6 * s).to(dt) * (u.abs() < 120 * s).to(dt)
    col = col + (torch.tensor([0.75, 0.75, 0.8], device=dev, dtype=dt) - col) * stripe[..., None] * 0.8
    return col.clamp(0, 1), cover
