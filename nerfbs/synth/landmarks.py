"""478 landmarks of the procedural head with MediaPipe face-mesh indices on the matching parts.

The points FORMAT.md relies on sit where a face-mesh tracker puts them: mouth corners 57 / 287, upper
lip top 0, lower lip bottom 17, eye corners 130 / 359, above the upper lids 27 / 257, below the lower
lids 23 / 253; also the lip rings, eyelid rings, brows, irises (468-477), nose and face oval. The other
indices are spread over the face. Lid, brow and iris points are placed on those parts directly;
the others are anchored at a design-space (x, y), moved with the jaw and the mouth, and dropped onto
the surface by tracing along -z. MediaPipe's "right" is the subject's right (x < 0 here, image left).
"""
from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch

from nerfbs.synth.head import EYE, EYE_R, LID_R, MOUTH_Y, Rig, jaw_weight

NUM_LANDMARKS = 478

# (right-side indices, left-side indices) running from the lateral/outer end to the medial end.
_LIP_UPPER_OUT = ([61, 185, 40, 39, 37], [291, 409, 270, 269, 267], 0)
_LIP_LOWER_OUT = ([146, 91, 181, 84], [375, 321, 405, 314], 17)
_LIP_UPPER_IN = ([78, 191, 80, 81, 82], [308, 415, 310, 311, 312], 13)
_LIP_LOWER_IN = ([95, 88, 178, 87], [324, 318, 402, 317], 14)
_EYE_UPPER = ([33, 246, 161, 160, 159, 158, 157, 173, 133], [263, 466, 388, 387, 386, 385, 384, 398, 362])
_EYE_LOWER = ([7, 163, 144, 145, 153, 154, 155], [249, 390, 373, 374, 380, 381, 382])
_BROW_UPPER = ([70, 63, 105, 66, 107], [300, 293, 334, 296, 336])
_BROW_LOWER = ([46, 53, 52, 65, 55], [276, 283, 282, 295, 285])
_FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
              148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
_NOSE_MID = [(168, 0.36), (6, 0.26), (197, 0.16), (195, 0.06), (5, -0.04), (4, -0.1), (1, -0.15), (2, -0.24)]
_NOSE_SIDE = ([(98, -0.22), (129, -0.12), (209, 0.0)], [(327, -0.22), (358, -0.12), (429, 0.0)])
_FORMAT_POINTS = {  # index: (x, y) of the left-side twin given for x > 0; placed mirrored for x < 0
    57: (-0.23, MOUTH_Y - 0.005), 287: (0.23, MOUTH_Y - 0.005),
    27: (-0.3, 0.43), 257: (0.3, 0.43), 23: (-0.3, 0.12), 253: (0.3, 0.12),
}
_EYE_OUTER = {130: -1, 359: 1}  # just lateral of the eye corners

# landmark kinds
STATIC, LIP_UP, LIP_LOW, LID_UP, LID_LOW, BROW, IRIS, EYE_CORNER = range(8)


@cache
def anchors() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per landmark: design anchor [478, 2] (x, y) (or a parameter for lid/brow/iris points),
    kind [478] int, side [478] (+1 subject's left, -1 right)."""
    xy = np.full((NUM_LANDMARKS, 2), np.nan)
    kind = np.full(NUM_LANDMARKS, STATIC)
    side = np.zeros(NUM_LANDMARKS)

    def put(i, x, y, k=STATIC, s=None):
        assert np.isnan(xy[i, 0]), i
        xy[i], kind[i], side[i] = (x, y), k, np.sign(x) if s is None else s

    def lip_ring(spec, y, k, half_width):
        right, left, mid = spec
        for j, (ri, li) in enumerate(zip(right, left)):
            x = half_width * (1 - j / len(right))
            put(ri, -x, y(x), k)
            put(li, x, y(x), k)
        put(mid, 0.0, y(0.0), k)

    lip_ring(_LIP_UPPER_OUT, lambda x: MOUTH_Y + 0.09 * (1 - (x / 0.21) ** 2), LIP_UP, 0.21)
    lip_ring(_LIP_LOWER_OUT, lambda x: MOUTH_Y - 0.1 * (1 - (x / 0.21) ** 2), LIP_LOW, 0.17)
    lip_ring(_LIP_UPPER_IN, lambda x: MOUTH_Y + 0.005, LIP_UP, 0.18)
    lip_ring(_LIP_LOWER_IN, lambda x: MOUTH_Y - 0.005, LIP_LOW, 0.15)
    for (right, left), k in ((_EYE_UPPER, LID_UP), (_EYE_LOWER, LID_LOW)):
        n = len(right)
        for j, (ri, li) in enumerate(zip(right, left)):
            theta = 1.05 * (1 - 2 * (j + (0 if k == LID_UP else 1)) / (n - 1 if k == LID_UP else n + 1))
            put(ri, theta, 0.0, k, -1.0)  # lid points: x holds the angle along the lid edge (outer > 0)
            put(li, theta, 0.0, k, 1.0)
    for (right, left), row in ((_BROW_UPPER, 1.0), (_BROW_LOWER, -1.0)):
        for j, (ri, li) in enumerate(zip(right, left)):
            s = 1 - j / (len(right) - 1)  # 1 at the outer end
            put(ri, s, row, BROW, -1.0)  # brow points: x holds the position along the brow (outer 1)
            put(li, s, row, BROW, 1.0)
    for base, sgn in ((468, -1.0), (473, 1.0)):  # iris centre, then 4 ring points
        for j in range(5):
            put(base + j, j, 0.0, IRIS, sgn)  # iris points: x holds 0 (centre) or the ring position
    for n_, i in enumerate(_FACE_OVAL):
        a = 2 * math.pi * n_ / len(_FACE_OVAL)
        put(i, 0.6 * math.sin(a), -0.1 + 0.86 * math.cos(a) + (0.02 if abs(math.sin(a)) < 1e-9 else 0))
    for i, y in _NOSE_MID:
        put(i, 0.0, y)
    for pts, sgn in zip(_NOSE_SIDE, (-1.0, 1.0)):
        for i, y in pts:
            put(i, sgn * (0.1 + 0.04 * (y + 0.22)), y)
    for i, (x, y) in _FORMAT_POINTS.items():
        put(i, x, y, LIP_UP if i in (57, 287) else STATIC)
    for i, sgn in _EYE_OUTER.items():
        put(i, sgn * (EYE[0] + 0.19), EYE[1] - 0.01, EYE_CORNER)
    free = np.flatnonzero(np.isnan(xy[:, 0]))
    gy, gx = np.mgrid[0.7:-0.9:-0.06, -0.56:0.5601:0.07]
    cand = np.stack([gx.ravel(), gy.ravel()], -1)
    inside = (cand[:, 0] / 0.58) ** 2 + ((cand[:, 1] + 0.1) / 0.82) ** 2 < 1
    cand = cand[inside]
    pick = cand[np.linspace(0, len(cand) - 1, len(free)).round().astype(int)]
    for i, (x, y) in zip(free, pick):
        put(i, x, y)
    return xy, kind, side


def landmarks_3d(rig: Rig, trace_fn) -> torch.Tensor:
    """Design-space landmark positions [B, 478, 3] for B frames (rig [B]).

    ``trace_fn(o [N, 3], d [N, 3], rig [N]) -> p [N, 3]`` drops points onto the surface (or their
    closest approach).
    """
    xy_np, kind_np, side_np = anchors()
    b = rig.jaw_dy.shape[0]
    dev, dt = rig.jaw_dy.device, rig.jaw_dy.dtype
    xy = torch.as_tensor(xy_np, dtype=dt, device=dev)[None].expand(b, -1, -1)
    kind = torch.as_tensor(kind_np, device=dev)
    left = torch.as_tensor(side_np > 0, device=dev)[None]
    x, y = xy[..., 0].clone(), xy[..., 1].clone()

    def sided(lv, rv):  # [B] per side -> [B, 478]
        return torch.where(left, lv[:, None], rv[:, None])

    # mouth points follow the lips: widen, bend, raise/lower, then the jaw
    mouth = (kind == LIP_UP) | (kind == LIP_LOW)
    width, bend = sided(rig.width_L, rig.width_R), sided(rig.bend_L, rig.bend_R)
    up, down = sided(rig.upper_up_L, rig.upper_up_R), sided(rig.lower_down_L, rig.lower_down_R)
    u = x
    mx = torch.where(mouth, u * width + rig.mouth_dx[:, None], x)
    my = y + bend * (u / 0.2).clamp(-1.3, 1.3) ** 2 + torch.where(kind == LIP_UP, up, -down)
    x, y = torch.where(mouth, mx, x), torch.where(mouth, my, y)
    z_probe = torch.full_like(x, 0.8)
    w = jaw_weight(x, y, z_probe)
    w = torch.where(kind == LIP_LOW, torch.ones_like(w), torch.where(kind == LIP_UP, torch.zeros_like(w), w))
    x, y = x + w * rig.jaw_dx[:, None], y + w * rig.jaw_dy[:, None]

    traced = ((kind == STATIC) | mouth | (kind == EYE_CORNER)).expand(b, -1)
    flat = torch.nonzero(traced.reshape(-1)).squeeze(1)
    frame = flat // NUM_LANDMARKS
    o = torch.stack([x.reshape(-1)[flat], y.reshape(-1)[flat], torch.full_like(flat, 2, dtype=dt)], -1)
    d = torch.zeros_like(o)
    d[:, 2] = -1
    out = torch.zeros(b, NUM_LANDMARKS, 3, dtype=dt, device=dev)
    out.view(-1, 3)[flat] = trace_fn(o, d, rig.take(frame))

    sgn = torch.where(left, 1.0, -1.0).to(dt).expand(b, -1)
    centre = torch.tensor(EYE, dtype=dt, device=dev)
    for k, angle in ((LID_UP, sided(rig.lid_up_L, rig.lid_up_R)), (LID_LOW, sided(rig.lid_low_L, rig.lid_low_R))):
        theta = xy[..., 0]
        p = torch.stack([sgn * (centre[0] + LID_R * torch.sin(theta)),
                         centre[1] + LID_R * torch.cos(theta) * torch.sin(angle),
                         centre[2] + LID_R * torch.cos(theta) * torch.cos(angle)], -1)
        out = torch.where((kind == k)[None, :, None], p, out)
    s = xy[..., 0]
    brow_in, brow_out = sided(rig.brow_in_L, rig.brow_in_R), sided(rig.brow_out_L, rig.brow_out_R)
    bx = 0.1 + 0.34 * s
    by = 0.5 + brow_in + s * (0.03 + brow_out - brow_in) + 0.035 * xy[..., 1]
    bz = 0.84 - 0.16 * s
    out = torch.where((kind == BROW)[None, :, None], torch.stack([sgn * bx, by, bz], -1), out)
    gx, gy = sided(rig.gaze_x_L, rig.gaze_x_R), sided(rig.gaze_y_L, rig.gaze_y_R)
    gaze = torch.stack([torch.sin(gx) * torch.cos(gy), torch.sin(gy), torch.cos(gx) * torch.cos(gy)], -1)
    ring = xy[..., 0]  # 0 centre, 1..4 ring points: right, top, left, bottom of the iris
    ang = 0.5 * (ring > 0).to(dt)
    phi = (ring - 1) * (math.pi / 2)
    tangent_x = torch.stack([torch.cos(gx), torch.zeros_like(gx), -torch.sin(gx)], -1)
    tangent_y = torch.cross(gaze, tangent_x, dim=-1)
    offset = (torch.cos(phi)[..., None] * tangent_x + torch.sin(phi)[..., None] * tangent_y) * torch.sin(ang)[..., None]
    iris = torch.stack([sgn * centre[0], centre[1].expand_as(sgn), centre[2].expand_as(sgn)], -1) + EYE_R * (
        gaze * torch.cos(ang)[..., None] + offset)
    out = torch.where((kind == IRIS)[None, :, None], iris, out)
    return out
