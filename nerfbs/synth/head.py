"""The procedural head of ``nerfbs synth``: expression controls, a signed distance field and materials.

Everything here is in *design units* (a real head's size in decimetres: about 2.3 tall); the scene
places it in the renderer's world scaled by ``DESIGN_SCALE`` (the head is then ~0.09 tall and fits
[-0.06, 0.06]^3). Axes: x to the subject's left, y up, z out of the face. The SDF is a smooth union
of ellipsoids, capsules and boxes, with a mouth cavity carved out, eyelids as spherical shells cut by
planes, and a jaw that moves the lower face by a smooth warp (so its Lipschitz bound is ~1.8: trace with
a relaxed step). Per-ray expression parameters come as a ``Rig`` of [N] tensors. Not differentiated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

DESIGN_SCALE = 0.04  # world units per design unit
LIPSCHITZ = 1.8  # bound on |grad sdf| given the jaw warp

# Expression controls driven by the coefficients (L = subject's left = +x).
CONTROLS = [
    "jaw_open", "jaw_side", "jaw_fwd", "mouth_close", "funnel", "pucker", "mouth_shift",
    "smile_L", "smile_R", "frown_L", "frown_R", "width_L", "width_R", "dimple_L", "dimple_R",
    "roll_lower", "roll_upper", "shrug_lower", "shrug_upper", "press_L", "press_R",
    "lower_down_L", "lower_down_R", "upper_up_L", "upper_up_R",
    "blink_L", "blink_R", "squint_L", "squint_R", "wide_L", "wide_R",
    "gaze_x_L", "gaze_x_R", "gaze_y_L", "gaze_y_R",
    "brow_inner_up", "brow_outer_up_L", "brow_outer_up_R", "brow_down_L", "brow_down_R",
    "cheek_puff", "cheek_raise_L", "cheek_raise_R", "sneer_L", "sneer_R", "tongue_out",
]
CONTROL_INDEX = {name: i for i, name in enumerate(CONTROLS)}

EYE = (0.3, 0.27, 0.6)  # left eyeball centre (mirrored for the right), radius EYE_R
EYE_R = 0.15
LID_R = 0.162
MOUTH_Y = -0.43  # height of the lips' meeting line


@dataclass
class Rig:
    """Per-ray (or per-frame) shape parameters derived from the controls, each [N] float32."""

    jaw_dx: torch.Tensor
    jaw_dy: torch.Tensor
    jaw_dz: torch.Tensor
    mouth_dx: torch.Tensor
    width_L: torch.Tensor
    width_R: torch.Tensor
    bend_L: torch.Tensor
    bend_R: torch.Tensor
    pucker: torch.Tensor
    funnel: torch.Tensor
    upper_up_L: torch.Tensor
    upper_up_R: torch.Tensor
    lower_down_L: torch.Tensor
    lower_down_R: torch.Tensor
    lip_thin_L: torch.Tensor
    lip_thin_R: torch.Tensor
    gap: torch.Tensor
    lid_up_L: torch.Tensor
    lid_up_R: torch.Tensor
    lid_low_L: torch.Tensor
    lid_low_R: torch.Tensor
    gaze_x_L: torch.Tensor
    gaze_x_R: torch.Tensor
    gaze_y_L: torch.Tensor
    gaze_y_R: torch.Tensor
    brow_in_L: torch.Tensor
    brow_in_R: torch.Tensor
    brow_out_L: torch.Tensor
    brow_out_R: torch.Tensor
    puff: torch.Tensor
    raise_L: torch.Tensor
    raise_R: torch.Tensor
    sneer_L: torch.Tensor
    sneer_R: torch.Tensor
    tongue: torch.Tensor
    dimple_L: torch.Tensor
    dimple_R: torch.Tensor
    press: torch.Tensor

    def take(self, index: torch.Tensor) -> "Rig":
        """The rig of the rays selected by ``index`` (every field indexed alike)."""
        return Rig(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def make_rig(controls: torch.Tensor) -> Rig:
    """Shape parameters [B] from controls [B, len(CONTROLS)] (each roughly in [0, 1], gaze/side in [-1, 1])."""
    c = {name: controls[:, i] for name, i in CONTROL_INDEX.items()}
    jaw = c["jaw_open"] * (1 - 0.7 * c["mouth_close"])
    return Rig(
        jaw_dx=0.07 * c["jaw_side"], jaw_dy=-0.24 * jaw, jaw_dz=-0.05 * jaw + 0.06 * c["jaw_fwd"],
        mouth_dx=0.06 * c["mouth_shift"],
        width_L=1 + 0.25 * c["width_L"] + 0.1 * c["smile_L"] - 0.3 * c["pucker"] - 0.2 * c["funnel"],
        width_R=1 + 0.25 * c["width_R"] + 0.1 * c["smile_R"] - 0.3 * c["pucker"] - 0.2 * c["funnel"],
        bend_L=0.11 * c["smile_L"] - 0.08 * c["frown_L"], bend_R=0.11 * c["smile_R"] - 0.08 * c["frown_R"],
        pucker=c["pucker"], funnel=c["funnel"],
        upper_up_L=0.05 * c["upper_up_L"] + 0.02 * c["shrug_upper"] + 0.02 * c["sneer_L"],
        upper_up_R=0.05 * c["upper_up_R"] + 0.02 * c["shrug_upper"] + 0.02 * c["sneer_R"],
        lower_down_L=0.06 * c["lower_down_L"] - 0.03 * c["shrug_lower"],
        lower_down_R=0.06 * c["lower_down_R"] - 0.03 * c["shrug_lower"],
        lip_thin_L=(0.5 * c["press_L"] + 0.3 * (c["roll_lower"] + c["roll_upper"] + c["mouth_close"])).clamp(max=0.8),
        lip_thin_R=(0.5 * c["press_R"] + 0.3 * (c["roll_lower"] + c["roll_upper"] + c["mouth_close"])).clamp(max=0.8),
        gap=(0.3 * jaw + 0.02 * c["funnel"]),
        lid_up_L=0.5 + 0.3 * c["wide_L"] - 0.15 * c["squint_L"] - 1.15 * c["blink_L"],
        lid_up_R=0.5 + 0.3 * c["wide_R"] - 0.15 * c["squint_R"] - 1.15 * c["blink_R"],
        lid_low_L=-0.55 + 0.25 * c["squint_L"] + 0.1 * c["cheek_raise_L"],
        lid_low_R=-0.55 + 0.25 * c["squint_R"] + 0.1 * c["cheek_raise_R"],
        gaze_x_L=0.35 * c["gaze_x_L"], gaze_x_R=0.35 * c["gaze_x_R"],
        gaze_y_L=0.3 * c["gaze_y_L"], gaze_y_R=0.3 * c["gaze_y_R"],
        brow_in_L=0.1 * c["brow_inner_up"] - 0.07 * c["brow_down_L"],
        brow_in_R=0.1 * c["brow_inner_up"] - 0.07 * c["brow_down_R"],
        brow_out_L=0.1 * c["brow_outer_up_L"] - 0.04 * c["brow_down_L"],
        brow_out_R=0.1 * c["brow_outer_up_R"] - 0.04 * c["brow_down_R"],
        puff=c["cheek_puff"], raise_L=c["cheek_raise_L"], raise_R=c["cheek_raise_R"],
        sneer_L=c["sneer_L"], sneer_R=c["sneer_R"], tongue=c["tongue_out"],
        dimple_L=c["dimple_L"], dimple_R=c["dimple_R"],
        press=0.5 * (c["press_L"] + c["press_R"] + c["roll_lower"] + c["roll_upper"] + c["mouth_close"]),
    )


# ------------------------------------------------------------------------------------------ primitives
def smoothstep(a: float, b: float, x: torch.Tensor) -> torch.Tensor:
    """0 below a, 1 above b, the cubic 3t^2 - 2t^3 between (t = (x - a) / (b - a))."""
    t = ((x - a) / (b - a)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def smin(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Smooth minimum of two distances with blend radius k (polynomial; k -> 0 gives min)."""
    h = (0.5 + 0.5 * (b - a) / k).clamp(0, 1)
    return b + (a - b) * h - k * h * (1 - h)


def smax(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Smooth maximum of two distances with blend radius k."""
    return -smin(-a, -b, k)


def ellipsoid(x, y, z, c, r) -> torch.Tensor:
    """Approximate distance to an axis-aligned ellipsoid (centre c, radii r; tensors or floats)."""
    px, py, pz = (x - c[0]) / r[0], (y - c[1]) / r[1], (z - c[2]) / r[2]
    k0 = torch.sqrt(px * px + py * py + pz * pz)
    k1 = torch.sqrt((px / r[0]) ** 2 + (py / r[1]) ** 2 + (pz / r[2]) ** 2)
    return k0 * (k0 - 1) / k1.clamp_min(1e-6)


def sphere(x, y, z, c, r: float) -> torch.Tensor:
    """Signed distance to a sphere of centre c and radius r."""
    return torch.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - r


def capsule(x, y, z, a, b, r: float) -> torch.Tensor:
    """Distance to the segment a-b (each a triple of tensors/floats) thickened by r."""
    pa = (x - a[0], y - a[1], z - a[2])
    ba = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
    h = ((pa[0] * ba[0] + pa[1] * ba[1] + pa[2] * ba[2]) / (ba[0] ** 2 + ba[1] ** 2 + ba[2] ** 2)).clamp(0, 1)
    return torch.sqrt((pa[0] - ba[0] * h) ** 2 + (pa[1] - ba[1] * h) ** 2 + (pa[2] - ba[2] * h) ** 2) - r


def round_box(x, y, z, c, half, r: float) -> torch.Tensor:
    """Signed distance to an axis-aligned box (centre c, half extents ``half``) with edges rounded by r."""
    qx, qy, qz = ((x - c[0]).abs() - half[0]), ((y - c[1]).abs() - half[1]), ((z - c[2]).abs() - half[2])
    outside = torch.sqrt(qx.clamp_min(0) ** 2 + qy.clamp_min(0) ** 2 + qz.clamp_min(0) ** 2)
    return outside + torch.maximum(qx, torch.maximum(qy, qz)).clamp_max(0) - r


# ------------------------------------------------------------------------------------------------ parts
SIDE_BLEND = 0.06  # half-width of the band about the midline where a left/right control crosses over


def _side(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The left control on the subject's left (x > 0), the right one on the right, blended smoothly across the
    midline (a face deforms continuously: a hard switch would cut a step into the lips)."""
    return right + (left - right) * smoothstep(-SIDE_BLEND, SIDE_BLEND, x)


def jaw_weight(x, y, z) -> torch.Tensor:
    """How much of the jaw's displacement a point follows: 1 on the chin, 0 above the mouth and on the neck."""
    return smoothstep(-0.38, -0.6, y) * smoothstep(-1.3, -0.95, y) * smoothstep(-0.4, 0.15, z)


def _mouth_frame(x, y, z, g: Rig):
    """Mouth-local coordinates: shifted, widened per side and bent (smile corners up, frown down)."""
    mx = x - g.mouth_dx
    width = _side(mx, g.width_L, g.width_R)
    u = mx / width
    bend = _side(mx, g.bend_L, g.bend_R) * (u / 0.2).clamp(-1.3, 1.3) ** 2
    return u, y - bend, z - 0.07 * g.pucker


def parts(p: torch.Tensor, g: Rig) -> dict[str, torch.Tensor]:
    """Signed distances [N] of the head's named parts at design points p [N, 3]; 'all' is the surface.
    Also 'opening', the mouth's half-height [N] (<= 0 when the lips are together)."""
    x, y, z = p.unbind(-1)
    ax = x.abs()
    w = jaw_weight(x, y, z)
    qx, qy, qz = x - w * g.jaw_dx, y - w * g.jaw_dy, z - w * g.jaw_dz  # the jaw's content, sampled back

    d = smin(ellipsoid(x, y, z, (0, 0.42, -0.12), (0.74, 0.82, 0.92)),
             ellipsoid(qx, qy, qz, (0, -0.12, 0.18), (0.58, 0.8, 0.66)), 0.25)
    d = smin(d, ellipsoid(qx, qy, qz, (0, -0.74, 0.42), (0.26, 0.2, 0.24)), 0.15)
    raise_ = _side(x, g.raise_L, g.raise_R)
    d = smin(d, ellipsoid(ax, y, z, (0.36, 0.02 + 0.05 * raise_, 0.55), (0.2, 0.13 + 0.03 * raise_, 0.17)), 0.12)
    d = smin(d, ellipsoid(ax, qy, qz, (0.34 + 0.06 * g.puff, -0.3, 0.42 + 0.08 * g.puff),
                          (0.2 + 0.06 * g.puff, 0.22, 0.2 + 0.08 * g.puff)), 0.15)
    sneer = _side(x, g.sneer_L, g.sneer_R)
    nose = smin(ellipsoid(x, y, z, (0, 0.06, 0.8), (0.1, 0.3, 0.15)), sphere(x, y, z, (0, -0.15, 0.9), 0.1), 0.08)
    nose = smin(nose, ellipsoid(ax, y, z, (0.1, -0.2 + 0.04 * sneer, 0.8), (0.075 + 0.02 * sneer, 0.06, 0.07)), 0.04)
    d = smin(d, nose, 0.06)
    d = smax(d, -sphere(ax, y, z, (EYE[0], EYE[1], EYE[2] + 0.1), 0.17), 0.06)  # eye sockets
    brow_in, brow_out = _side(x, g.brow_in_L, g.brow_in_R), _side(x, g.brow_out_L, g.brow_out_R)
    brow = capsule(ax, y, z, (0.1, 0.5 + brow_in, 0.8), (0.44, 0.53 + brow_out, 0.64), 0.04)
    d = smin(d, brow, 0.03)
    ear = ellipsoid(ax, y, z, (0.76, 0.2, -0.08), (0.1, 0.27, 0.17))
    d = smin(d, ear, 0.05)
    neck = torch.maximum(torch.sqrt(x * x + (z + 0.12) ** 2) - 0.38, torch.maximum(y - -0.3, -1.45 - y))
    d = smin(d, neck, 0.15)
    hairline = (0.6 - 1.0 * smoothstep(0.55, -0.5, z) + 0.25 * smoothstep(0.45, 0.75, ax) * smoothstep(0.0, 0.6, z)
                + 0.45 * smoothstep(0.5, 0.7, ax) * torch.exp(-(z + 0.08) ** 2 / 0.06))
    hair = smax(ellipsoid(x, y, z, (0, 0.47, -0.14), (0.79, 0.88, 0.98)), hairline - y, 0.05)
    d = smin(d, hair, 0.02)

    # mouth: lips, a carved cavity, teeth and tongue
    u, my, mz = _mouth_frame(x, y, z, g)
    uq, mqy, mqz = _mouth_frame(qx, qy, qz, g)
    thin = _side(x, g.lip_thin_L, g.lip_thin_R)
    up = _side(x, g.upper_up_L, g.upper_up_R)
    down = _side(x, g.lower_down_L, g.lower_down_R)
    upper = ellipsoid(u, my, mz, (0, MOUTH_Y + 0.045 + up, 0.8), (0.21, 0.05 * (1 - 0.5 * thin), 0.075))
    lower = ellipsoid(uq, mqy, mqz, (0, MOUTH_Y - 0.05 - down, 0.79), (0.19, 0.055 * (1 - 0.5 * thin), 0.075))
    lips = torch.minimum(upper, lower)
    d = smin(d, lips, 0.04)
    top = MOUTH_Y + 0.6 * up
    bottom = MOUTH_Y + g.jaw_dy * 0.85 - 0.8 * down
    opening = (top - bottom) / 2
    half = opening.clamp_min(0.004)
    middle = (top + bottom) / 2
    cavity = ellipsoid(u, my, z, (0, middle, 0.66), (0.15 * (1 - 0.35 * g.funnel), half, 0.3))
    # the approximate ellipsoid distance is far too deep inside so flat an ellipsoid: bound it by the slab's;
    # a closed mouth then has no cavity at all (shrunk away: else a sliver of it is carved and painted dark)
    cavity = torch.maximum(cavity, (my - middle).abs() - half) + (0.012 - opening).clamp_min(0)
    d = smax(d, -cavity, 0.012)
    teeth = torch.minimum(round_box(u, my, z, (0, MOUTH_Y - 0.01, 0.72), (0.12, 0.025, 0.04), 0.012),
                          round_box(uq, mqy, qz, (0, MOUTH_Y - 0.06, 0.7), (0.11, 0.022, 0.04), 0.012))
    tongue = ellipsoid(qx, qy, qz, (0, MOUTH_Y - 0.1, 0.52 + 0.38 * g.tongue), (0.12, 0.06, 0.18))
    d = torch.minimum(d, torch.minimum(teeth, tongue))

    # eyes: eyeballs and lids (spherical shells cut by planes through the eye centre)
    ex, ey, ez = ax - EYE[0], y - EYE[1], z - EYE[2]
    eyeball = torch.sqrt(ex * ex + ey * ey + ez * ez) - EYE_R
    shell = (torch.sqrt(ex * ex + ey * ey + ez * ez) - LID_R).abs() - 0.012
    a_up, a_low = _side(x, g.lid_up_L, g.lid_up_R), _side(x, g.lid_low_L, g.lid_low_R)
    cut_up = -(ey * torch.cos(a_up) - ez * torch.sin(a_up))  # < 0 above the upper lid's edge
    cut_low = ey * torch.cos(a_low) - ez * torch.sin(a_low)  # < 0 below the lower lid's edge
    lids = torch.maximum(shell, torch.minimum(cut_up, cut_low))
    d = torch.minimum(d, torch.minimum(eyeball, lids))
    return {"all": d, "hair": hair, "brow": brow, "lips": lips, "cavity": cavity, "opening": opening, "teeth": teeth,
            "tongue": tongue, "eyeball": eyeball, "lids": lids, "lid_edge": torch.minimum(cut_up.abs(), cut_low.abs()),
            "ear": ear, "neck": neck}


def sdf(p: torch.Tensor, g: Rig) -> torch.Tensor:
    """Signed distance [N] of design points p [N, 3] to the head (negative inside)."""
    return parts(p, g)["all"]


def normals(p: torch.Tensor, g: Rig, h: float = 2e-3) -> torch.Tensor:
    """Unit surface normals [N, 3] by the tetrahedron finite difference of the SDF."""
    k = torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=p.dtype, device=p.device)
    n = sum(k[i] * sdf(p + h * k[i], g)[:, None] for i in range(4))
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def albedo(p: torch.Tensor, g: Rig, footprint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Surface colour [N, 3] in [0, 1] and specular strength [N] at surface points p [N, 3].

    ``footprint`` [N] is a pixel's size in design units there, the width of colour edges (anti-aliasing).
    """
    x, y, z = p.unbind(-1)
    ax = x.abs()
    pt = parts(p, g)
    fw = footprint.clamp_min(1e-4)

    def on(dist: torch.Tensor, eps: float = 0.006) -> torch.Tensor:  # 1 on a part's surface, soft edge
        return smoothstep(eps + fw, eps - fw, dist)

    def mix(a: torch.Tensor, b, t: torch.Tensor) -> torch.Tensor:
        b = torch.as_tensor(b, dtype=p.dtype, device=p.device).expand_as(a)
        return a + (b - a) * t[:, None]

    tex = 1 + 0.03 * torch.sin(41 * x) * torch.sin(37 * y + 3 * z)
    col = torch.tensor([0.86, 0.64, 0.52], dtype=p.dtype, device=p.device) * tex[:, None]
    smile = _side(x, g.bend_L, g.bend_R).clamp_min(0) / 0.11
    blush = (0.25 + 0.6 * smile + 0.5 * _side(x, g.raise_L, g.raise_R) + 0.4 * g.puff)
    blush = blush * torch.exp(-((ax - 0.4) ** 2 + (y + 0.12) ** 2) / 0.02)
    col = mix(col, [0.9, 0.45, 0.45], (0.5 * blush).clamp(0, 0.6))
    sneer = _side(x, g.sneer_L, g.sneer_R)
    wrinkle = sneer * torch.exp(-((ax - 0.13) ** 2 + (y + 0.02) ** 2) / 0.004) * (0.5 + 0.5 * torch.sin(90 * y))
    frown = (-torch.minimum(g.brow_in_L, g.brow_in_R)).clamp(0, 0.07) / 0.07
    frown = frown * torch.exp(-(x ** 2 / 0.004 + (y - 0.45) ** 2 / 0.01)) * (0.5 + 0.5 * torch.cos(80 * x))
    dimple = _side(x, g.dimple_L, g.dimple_R) * torch.exp(-((ax - 0.27) ** 2 + (y - MOUTH_Y + 0.02) ** 2) / 0.002)
    col = mix(col, [0.55, 0.35, 0.3], (0.6 * wrinkle + 0.5 * frown + 0.6 * dimple).clamp(0, 0.8))
    col = mix(col, [0.8, 0.6, 0.5], on(pt["ear"], 0.02) * smoothstep(0.7, 0.8, ax) * 0.4)
    strands = 0.75 + 0.25 * torch.sin(70 * x + 25 * z + 10 * torch.sin(9 * y))
    col = mix(col, torch.stack([0.2 * strands, 0.12 * strands, 0.07 * strands], -1), on(pt["hair"], 0.012))
    col = mix(col, [0.16, 0.1, 0.07], on(pt["brow"], 0.015))
    lip_col = torch.tensor([0.74, 0.33, 0.36], dtype=p.dtype, device=p.device) * (1 - 0.35 * g.press)[:, None]
    col = mix(col, lip_col, on(pt["lips"], 0.012) * smoothstep(0.3, 0.2, ax))
    col = mix(col, [0.24, 0.05, 0.06], on(pt["cavity"].abs(), 0.01) * smoothstep(0.9, 0.7, z)
              * smoothstep(0.004, 0.016, pt["opening"]))
    col = mix(col, [0.78, 0.38, 0.42], on(pt["tongue"]))
    col = mix(col, [0.95, 0.93, 0.86], on(pt["teeth"]))
    # eyeball: white, iris and pupil by the angle to the gaze direction
    gx, gy = _side(x, g.gaze_x_L, g.gaze_x_R), _side(x, g.gaze_y_L, g.gaze_y_R)
    gaze = torch.stack([torch.sin(gx) * torch.cos(gy), torch.sin(gy), torch.cos(gx) * torch.cos(gy)], -1)
    e = torch.stack([ax - EYE[0], y - EYE[1], z - EYE[2]], -1)
    e = e * torch.stack([torch.sign(x + 1e-9), torch.ones_like(x), torch.ones_like(x)], -1)  # back to true x
    cos_a = (e * gaze).sum(-1) / e.norm(dim=-1).clamp_min(1e-9)
    ang_fw = fw / EYE_R
    iris = smoothstep(math.cos(0.5) - ang_fw, math.cos(0.5) + ang_fw, cos_a)
    pupil = smoothstep(math.cos(0.22) - ang_fw, math.cos(0.22) + ang_fw, cos_a)
    eye_col = mix(mix(torch.tensor([0.94, 0.93, 0.9], dtype=p.dtype, device=p.device).expand_as(col).clone(),
                      [0.22, 0.42, 0.55], iris), [0.03, 0.03, 0.04], pupil)
    eye_on = on(pt["eyeball"], 0.004)
    col = mix(col, eye_col, eye_on)
    lid_on = on(pt["lids"], 0.004)
    col = mix(col, [0.8, 0.58, 0.48], lid_on)
    col = mix(col, [0.08, 0.05, 0.05], lid_on * smoothstep(0.03 + fw, 0.0, pt["lid_edge"]))
    spec = 0.08 + 0.5 * eye_on * (1 - lid_on) + 0.2 * on(pt["lips"], 0.012) + 0.3 * on(pt["teeth"])
    return col.clamp(0, 1), spec
