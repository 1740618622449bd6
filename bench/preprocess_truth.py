"""How close `nerfbs preprocess` comes to the truth on synthetic heads filmed with known lenses (CPU).

For each vertical field of view: `nerfbs synth` writes a head (yaw up to +-20 degrees, pitch +-10, roll
+-6), its ori_imgs become an mp4 (imageio-ffmpeg, 25 fps, quality 9), `preprocess_video` turns the video
into a subject, and that subject is compared with the synthetic one:
- rotation error: renderer camera rotations after one global rotation A (the two head frames differ by a
  fixed rotation; A is the chordal mean of est_i true_i^T), error_i = angle(est_i, A true_i), degrees;
- focal length error: the subject's fx mapped back to the video (x crop side / size) against the truth, %;
- mask IoU: the written parsing's head (blue) mapped back through the crop against the synthetic head mask;
- the rigid landmarks' reprojection error (bench/rigid_reprojection.py: frame means, median and worst frame).

    python bench/preprocess_truth.py --fov 25 60 --frames 120 --size 256 --work /tmp/truth --json truth.json

Synthetic subjects already under --work are reused. The preprocessor is run as `python CHECKOUT/cli.py
preprocess ...` in a subprocess, CHECKOUT being this repository or --checkout (e.g. the main branch, for
the figures before a change); --preprocess-args adds options (e.g. "--fov 25").
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from rigid_reprojection import subject_reprojection

from nerfbs.data.camera import renderer_from_stored

REPO = Path(__file__).resolve().parents[1]


def _read_subject(root: Path) -> dict:
    meta = json.loads((root / "transforms.json").read_text())
    frames = sorted(meta["frames"], key=lambda f: f["img_id"])
    poses = renderer_from_stored(np.array([f["transform_matrix"] for f in frames], dtype=np.float64))
    return {"meta": meta, "ids": [f["img_id"] for f in frames], "rot": poses[:, :3, :3]}


def write_video(subject: Path, video: Path, fps: float = 25.0) -> Path:
    """The subject's ori_imgs, in img_id order, as an H.264 mp4."""
    import imageio_ffmpeg

    ids = _read_subject(subject)["ids"]
    first = cv2.imread(str(subject / "ori_imgs" / f"{ids[0]}.jpg"))
    h, w = first.shape[:2]
    writer = imageio_ffmpeg.write_frames(str(video), (w, h), fps=fps, quality=9, macro_block_size=1)
    writer.send(None)
    for i in ids:
        writer.send(np.ascontiguousarray(cv2.imread(str(subject / "ori_imgs" / f"{i}.jpg"))[..., ::-1]))
    writer.close()
    return video


def rotation_errors(est: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Angles [N] in degrees between est_i and A true_i, A [3, 3] the chordal mean of est_i true_i^T."""
    u, _, vt = np.linalg.svd(np.einsum("nij,nkj->ik", est, true))
    a = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    aligned = a @ true
    trace = np.einsum("nij,nij->n", est, aligned)
    return np.degrees(np.arccos(np.clip((trace - 1) / 2, -1, 1)))


def mask_ious(truth: Path, est: Path, crop: tuple[int, int, int], ids: list[int]) -> np.ndarray:
    """IoU [N] of the synthetic head (blue parsing) and the estimated parsing mapped back through the crop."""
    x0, y0, side = crop
    out = []
    for i in ids:
        t = cv2.imread(str(truth / "parsing" / f"{i}.png"))
        e = cv2.imread(str(est / "parsing" / f"{i}.png"))
        t_mask = (t[..., 0] > 127) & (t[..., 1] < 128) & (t[..., 2] < 128)  # BGR: pure blue
        e_head = ((e[..., 0] > 127) & (e[..., 1] < 128) & (e[..., 2] < 128)).astype(np.uint8)
        e_mask = np.zeros_like(t_mask)
        e_mask[y0:y0 + side, x0:x0 + side] = cv2.resize(e_head, (side, side), interpolation=cv2.INTER_NEAREST) > 0
        out.append((t_mask & e_mask).sum() / max(1, (t_mask | e_mask).sum()))
    return np.array(out)


def measure(fov: float, args) -> dict:
    from nerfbs.synth.generate import synthesize

    work = Path(args.work)
    synth_dir = work / f"synth_fov{fov:g}"
    if not (synth_dir / "transforms.json").exists():
        shutil.rmtree(synth_dir, ignore_errors=True)
        synthesize(synth_dir, frames=args.frames, size=args.size, coeffs=46, seed=args.seed, fov_degrees=fov)
    video = write_video(synth_dir, work / f"synth_fov{fov:g}.mp4")
    out = work / f"{args.tag}_fov{fov:g}"
    shutil.rmtree(out, ignore_errors=True)
    checkout = Path(args.checkout).resolve()
    cmd = [sys.executable, str(checkout / "cli.py"), "preprocess", str(video), str(out), "--size", str(args.out_size),
           "--landmarker", args.landmarker, *shlex.split(args.preprocess_args)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(checkout)}, cwd=checkout, capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    crop = tuple(int(v) for v in re.search(r"crop x=(\d+) y=(\d+) side=(\d+)", done.stdout).groups())
    truth, est = _read_subject(synth_dir), _read_subject(out)
    where = {i: k for k, i in enumerate(truth["ids"])}
    keep = [where[i] for i in est["ids"]]
    rot = rotation_errors(est["rot"], truth["rot"][keep])
    side = crop[2]
    focal = est["meta"]["fy"] * side / args.out_size
    focal_true = truth["meta"]["fy"]
    iou = mask_ious(synth_dir, out, crop, est["ids"])
    view = truth["rot"][:, :, 2]  # the camera's viewing direction in the head's frame
    yaw = np.degrees(np.arctan2(view[:, 0], -view[:, 2]))
    row = {"fov_true": float(np.degrees(2 * np.arctan(truth["meta"]["h"] / 2 / focal_true))),
           "frames": len(est["ids"]), "frames_true": len(truth["ids"]),
           "yaw_range_deg": [float(yaw.min()), float(yaw.max())],
           "rotation_error_deg": {"mean": float(rot.mean()), "median": float(np.median(rot)), "max": float(rot.max()),
                                  "per_frame": rot.round(3).tolist()},
           "focal_px": focal, "focal_true_px": focal_true, "focal_error_pct": 100 * (focal / focal_true - 1),
           "mask_iou": {"mean": float(iou.mean()), "min": float(iou.min())}, "seconds": seconds}
    errors = subject_reprojection(out).mean(1)
    row["reprojection_px"] = {"median": float(np.median(errors)), "worst": float(errors.max())}
    tracking = out / "tracking.json"
    if tracking.exists():
        row["focal_sigma_px"] = json.loads(tracking.read_text()).get("focal_sigma_px")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fov", type=float, nargs="+", default=[25.0, 60.0], help="vertical fields of view, degrees")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--size", type=int, default=256, help="synthetic frame size, pixels")
    ap.add_argument("--out-size", type=int, default=256, help="preprocessed subject size, pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--landmarker", default=str(Path(__file__).resolve().parents[2] / "shared" / "models" /
                                               "face_landmarker_v2_with_blendshapes.task"))
    ap.add_argument("--work", default="/tmp/preprocess_truth")
    ap.add_argument("--tag", default="pp", help="name of the preprocessed subjects under --work")
    ap.add_argument("--checkout", default=str(REPO), help="the nerfbs checkout whose preprocessor runs")
    ap.add_argument("--preprocess-args", default="", help="more options for nerfbs preprocess")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    rows = {f"{fov:g}": measure(fov, args) for fov in args.fov}
    print(f"{'fov':>5} {'frames':>7} {'yaw range':>13} {'rot mean':>9} {'rot max':>8} {'focal err':>10} "
          f"{'IoU mean':>9} {'IoU min':>8} {'reproj med/worst':>17} {'time':>7}")
    for r in rows.values():
        rep = r.get("reprojection_px") or {}
        reproj = f"{rep['median']:.2f}/{rep['worst']:.2f}" if rep else "n/a"
        print(f"{r['fov_true']:5.1f} {r['frames']:4d}/{r['frames_true']:<3d} "
              f"{r['yaw_range_deg'][0]:+6.1f}..{r['yaw_range_deg'][1]:+5.1f} "
              f"{r['rotation_error_deg']['mean']:8.2f}° {r['rotation_error_deg']['max']:7.2f}° "
              f"{r['focal_error_pct']:+9.1f}% {r['mask_iou']['mean']:9.3f} {r['mask_iou']['min']:8.3f} "
              f"{reproj:>17} {r['seconds']:6.1f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
