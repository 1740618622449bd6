"""How far can the held-out mouth be predicted from the coefficients at all? (issue 5's expression check)

Renders every frame's expression of a synthetic subject (`nerfbs synth`'s procedural tracks, or a tracked
subject's with ``--tracks-from``) at one fixed pose, so that only the expression varies, in a window around the
mouth at the subject's full resolution. Training frames are all but the last ``--test-last``, as in training.
Reports the mean mouth PSNR over the held-out frames (inside each frame's mouth rectangle, FORMAT.md's rule) of:

  mean     the per-pixel mean of the training images: the best a model without expressions can do (in L2)
  linear   per-pixel ridge regression on the coefficients: a blendshape model in image space
  knn1/5   the nearest training expression(s) in coefficient space (inverse-distance weights)
  mlp      an MLP decoder, coefficients -> window image, trained on the training images (early-stopped on
           the last 50 of them)

and how novel the held-out expressions are: the median distance from a held-out coefficient vector to the nearest
training one, against that between training frames more than a second apart, both as a share of the RMS spread of
the training coefficients; and the principal components the training coefficients need for 90% of their variance.

    python3 bench/expression_predictors.py --out /tmp/pred.json [--tracks-from SUBJECT] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nerfbs.data.camera import project  # noqa: E402
from nerfbs.data.subject import landmark_rects  # noqa: E402
from nerfbs.synth.generate import (FPS, _surface, camera_poses, coefficient_names, make_scene,  # noqa: E402
                          tracked_coefficient_tracks)
from nerfbs.synth.head import DESIGN_SCALE, make_rig  # noqa: E402
from nerfbs.synth.landmarks import landmarks_3d  # noqa: E402
from nerfbs.synth.raytrace import TraceSettings, render_heads  # noqa: E402


def novelty(c: np.ndarray, held: int, apart: int) -> dict:
    tr, te = np.arange(len(c) - held), np.arange(len(c) - held, len(c))
    x = c[tr] - c[tr].mean(0)
    spread = float(np.sqrt((x ** 2).sum(1).mean()))
    held_nn = np.sqrt(((c[te, None] - c[None, tr]) ** 2).sum(-1)).min(1)
    d = np.sqrt(((c[tr, None] - c[None, tr]) ** 2).sum(-1))
    train_nn = np.where(np.abs(tr[:, None] - tr[None, :]) > apart, d, np.inf).min(1)
    var = np.linalg.svd(x, compute_uv=False) ** 2
    return {"spread": spread, "held_out_nn_share": float(np.median(held_nn)) / spread,
            "train_nn_share": float(np.median(train_nn)) / spread,
            "components_90": int(np.searchsorted(np.cumsum(var) / var.sum(), 0.9)) + 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tracks-from", default="", help="a subject written by nerfbs preprocess (default: procedural)")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--test-last", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mlp-steps", type=int, default=3000)
    args = ap.parse_args()
    dev, size, n, held = torch.device(args.device), args.size, args.frames, args.test_last
    names = coefficient_names(46)
    tracks = tracked_coefficient_tracks(args.tracks_from, names, n) if args.tracks_from else None
    scene = make_scene(n, size, 46, args.seed, dev, tracks)
    f, settings = scene.focal, TraceSettings()
    rest = torch.from_numpy(camera_poses(np.eye(3)[None], np.zeros((1, 3)))[0]).to(dev, torch.float32)

    def rig(index):
        return make_rig((torch.from_numpy(scene.coefficients[index]).double() @ scene.control_weights).to(dev, torch.float32))

    t0 = time.perf_counter()
    lms = []
    for s in range(0, n, 50):
        index = list(range(s, min(n, s + 50)))
        points = landmarks_3d(rig(index), lambda o, d, g: _surface(o, d, g, 1.0 / f, settings)) * DESIGN_SCALE
        lms += [project(points[j].double(), rest.double(), f, f, size / 2, size / 2)[0].cpu().numpy()
                for j in range(len(index))]
    _, mouth, _ = landmark_rects(np.stack(lms), size, size)
    x0, y0 = mouth[:, 0].min() - 8, mouth[:, 1].min() - 8  # a window holding every frame's mouth rectangle
    w, h = int(mouth[:, 2].max() + 8 - x0), int(mouth[:, 3].max() + 8 - y0)
    rects = mouth - np.array([x0, y0, x0, y0])
    images = []
    for s in range(0, n, 20):
        index = list(range(s, min(n, s + 20)))
        layers = render_heads(rest[None].expand(len(index), 4, 4).contiguous(), rig(index), f, f,
                              size / 2 - x0, size / 2 - y0, h, w, settings)
        a = layers.head_alpha[..., None]
        images.append((layers.head * a + 0.5 * (1 - a)).clamp(0, 1).cpu())
    images = np.round(torch.cat(images).double().numpy() * 255) / 255  # [F, h, w, 3], 8-bit like the dataset
    report: dict = {"args": vars(args), "window": [w, h], "render_seconds": time.perf_counter() - t0}

    c = scene.coefficients.astype(np.float64)
    train, test = np.arange(n - held), np.arange(n - held, n)
    flat = images.reshape(n, -1)

    def mouth_psnr(pred: np.ndarray, frames: np.ndarray) -> float:
        out = []
        for p, i in zip(pred.reshape(len(frames), h, w, 3), frames):
            a0, b0, a1, b1 = rects[i]
            out.append(-10 * math.log10(max(float(np.mean((p[b0:b1, a0:a1] - images[i, b0:b1, a0:a1]) ** 2)), 1e-12)))
        return float(np.mean(out))

    report["mean"] = mouth_psnr(np.repeat(flat[train].mean(0)[None], held, 0), test)
    design = np.concatenate([np.ones((n, 1)), c], 1)

    def ridge(lam: float, fit: np.ndarray, rows: np.ndarray) -> np.ndarray:
        gram = design[fit].T @ design[fit] + lam * np.diag([0.0] + [1.0] * c.shape[1])
        return design[rows] @ np.linalg.solve(gram, design[fit].T @ flat[fit])

    fit, val = train[:-50], train[-50:]
    lam = max([1e-3, 1e-2, 1e-1, 1, 3, 10, 30, 100], key=lambda l: mouth_psnr(ridge(l, fit, val), val))
    report["linear"], report["linear_lambda"] = mouth_psnr(ridge(lam, train, test), test), lam
    d = ((c[test, None] - c[None, train]) ** 2).sum(-1)
    order = np.argsort(d, 1)
    report["knn1"] = mouth_psnr(flat[train][order[:, 0]], test)
    wk = 1.0 / (np.take_along_axis(d, order[:, :5], 1) + 1e-6)
    report["knn5"] = mouth_psnr(np.einsum("nk,nkd->nd", wk, flat[train][order[:, :5]]) / wk.sum(1, keepdims=True), test)

    torch.manual_seed(0)
    xs, ys = torch.tensor(c, dtype=torch.float32), torch.tensor(flat, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(c.shape[1], 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, flat.shape[1]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    best = (-math.inf, None)
    for step in range(args.mlp_steps):
        batch = torch.from_numpy(np.random.default_rng(step).choice(fit, 64))
        loss = ((torch.sigmoid(net(xs[batch])) - ys[batch]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 249:
            with torch.no_grad():
                score = mouth_psnr(torch.sigmoid(net(xs[val])).numpy(), val)
            if score > best[0]:
                best = (score, {k: v.clone() for k, v in net.state_dict().items()})
    net.load_state_dict(best[1])
    with torch.no_grad():
        report["mlp"] = mouth_psnr(torch.sigmoid(net(xs[test])).numpy(), test)
    report["novelty"] = novelty(c, held, apart=int(FPS))
    report["seconds"] = time.perf_counter() - t0
    print(json.dumps({k: v for k, v in report.items() if k != "args"}), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
