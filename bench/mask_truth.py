"""Head-mask quality of ``nerfbs preprocess`` against synthetic truth (issue 14, item 3).

A subject written by ``nerfbs synth`` carries the exact head mask (parsing, pure blue: head, hair, ears and
neck down to the torso) and, in ori_imgs, the frames with a torso and a background. Its ori_imgs are made into
an mp4, the video is preprocessed, and every written parsing is compared with the truth mask mapped through the
preprocessor's crop (the crop window of the truth, resized to the subject's size by area, > 0.5). Reports the
per-frame IoU (mean, worst frame) and the IoU pooled over all frames, and the time preprocessing took.

    python bench/mask_truth.py --synth /tmp/syn --out /tmp/mask_truth [--frames 100 --size 512] \
        [--landmarker ../shared/models/face_landmarker_v2_with_blendshapes.task] \
        [--segmenter ../shared/models/selfie_segmentation.tflite] [--json /tmp/mask_truth.json] [--sheet /tmp/worst.png]

    python bench/mask_truth.py --consistency SUBJECT [SUBJECT ...]   # consecutive-frame mask IoU, real videos

``--synth`` is made first (``nerfbs synth --frames --size``) when it does not exist. ``mask_iou`` and
``truth_in_crop`` are the measurement, importable by other benchmarks.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
SHARED = Path(__file__).resolve().parents[2] / "shared"


def head_mask_of(parsing_png: Path) -> np.ndarray:
    """[H, W] bool: the pure-blue pixels of a parsing PNG."""
    bgr = cv2.imread(str(parsing_png))
    if bgr is None:
        raise FileNotFoundError(parsing_png)
    return (bgr[..., 0] == 255) & (bgr[..., 1] == 0) & (bgr[..., 2] == 0)


def truth_in_crop(mask: np.ndarray, crop: tuple[int, int, int], size: int) -> np.ndarray:
    """The video-frame mask [H, W] bool seen through the preprocessor's crop (x0, y0, side): [size, size] bool."""
    x0, y0, side = crop
    window = mask[y0:y0 + side, x0:x0 + side].astype(np.float32)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(window, (size, size), interpolation=interp) > 0.5


def mask_iou(truth_dir: Path, subject_dir: Path, crop: tuple[int, int, int]) -> dict:
    """IoU of ``subject_dir``'s parsing masks (preprocessed, img_id = video frame index) against the truth
    subject's (img_id = frame index, ori_imgs made into the video in img_id order)."""
    meta = json.loads((subject_dir / "transforms.json").read_text())
    size = int(meta["w"])
    truth_ids = sorted(int(p.stem) for p in (truth_dir / "parsing").glob("*.png"))
    rows = []
    inter = union = 0
    for f in sorted(meta["frames"], key=lambda f: int(f["img_id"])):
        k = int(f["img_id"])
        truth = truth_in_crop(head_mask_of(truth_dir / "parsing" / f"{truth_ids[k]}.png"), crop, size)
        mask = head_mask_of(subject_dir / "parsing" / f"{k}.png")
        i, u = int((truth & mask).sum()), int((truth | mask).sum())
        inter, union = inter + i, union + u
        rows.append({"frame": k, "iou": i / max(u, 1), "missed": int((truth & ~mask).sum()),
                     "extra": int((mask & ~truth).sum())})
    ious = np.array([r["iou"] for r in rows])
    worst = rows[int(ious.argmin())]
    return {"frames": len(rows), "mean_iou": float(ious.mean()), "min_iou": float(ious.min()),
            "worst_frame": worst["frame"], "pooled_iou": inter / max(union, 1),
            "missed_px_per_frame": float(np.mean([r["missed"] for r in rows])),
            "extra_px_per_frame": float(np.mean([r["extra"] for r in rows])), "per_frame": rows}


def temporal_iou(subject_dir: Path) -> dict:
    """How much a subject's masks change from one frame to the next: the IoU of consecutive parsing masks
    (mean, 5th percentile, worst). Head motion lowers it for any masker; flicker lowers it more."""
    ids = sorted(int(p.stem) for p in (subject_dir / "parsing").glob("*.png"))
    ious, prev = [], None
    for k in ids:
        mask = head_mask_of(subject_dir / "parsing" / f"{k}.png")
        if prev is not None:
            ious.append((mask & prev).sum() / max((mask | prev).sum(), 1))
        prev = mask
    ious = np.array(ious)
    return {"frames": len(ids), "mean": float(ious.mean()), "p5": float(np.percentile(ious, 5)),
            "min": float(ious.min()), "worst_pair": int(ids[int(ious.argmin())])}


def comparison_sheet(truth_dir: Path, subject_dir: Path, crop: tuple[int, int, int], frames: list[int]) -> np.ndarray:
    """RGB rows, one per frame: the crop with the truth outline (green) and the mask's (red), and the
    disagreement (missed head pixels magenta, extra pixels yellow)."""
    size = int(json.loads((subject_dir / "transforms.json").read_text())["w"])
    truth_ids = sorted(int(p.stem) for p in (truth_dir / "parsing").glob("*.png"))
    rows = []
    for k in frames:
        ori = cv2.imread(str(subject_dir / "ori_imgs" / f"{k}.jpg"))[..., ::-1].copy()
        truth = truth_in_crop(head_mask_of(truth_dir / "parsing" / f"{truth_ids[k]}.png"), crop, size)
        mask = head_mask_of(subject_dir / "parsing" / f"{k}.png")
        lines = ori.copy()
        for m, colour in ((truth, (0, 255, 0)), (mask, (255, 0, 0))):
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(lines, contours, -1, colour, 1)
        diff = (ori * 0.4).astype(np.uint8)
        diff[truth & ~mask] = (255, 0, 255)
        diff[mask & ~truth] = (255, 255, 0)
        rows.append(np.concatenate([lines, diff], axis=1))
    return np.concatenate(rows, axis=0)


def video_of_subject(subject: Path, mp4: Path, fps: float = 25.0) -> Path:
    """The subject's ori_imgs, in img_id order, as an H.264 mp4 (high quality)."""
    import imageio_ffmpeg

    paths = sorted((subject / "ori_imgs").glob("*.jpg"), key=lambda p: int(p.stem))
    first = cv2.imread(str(paths[0]))
    h, w = first.shape[:2]
    writer = imageio_ffmpeg.write_frames(str(mp4), (w, h), fps=fps, quality=9, macro_block_size=1)
    writer.send(None)
    for p in paths:
        writer.send(np.ascontiguousarray(cv2.imread(str(p))[..., ::-1]))
    writer.close()
    return mp4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synth", type=Path, help="a nerfbs synth subject (made when absent)")
    ap.add_argument("--out", type=Path, help="scratch folder: the video and the preprocessed subject")
    ap.add_argument("--consistency", type=Path, nargs="*", default=[],
                    help="instead: the consecutive-frame mask IoU of these preprocessed subjects")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--landmarker", type=Path, default=SHARED / "models" / "face_landmarker_v2_with_blendshapes.task")
    ap.add_argument("--segmenter", type=Path, default=SHARED / "models" / "selfie_segmentation.tflite")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--sheet", type=Path, default=None, help="also write the worst frames' outlines here (PNG)")
    args = ap.parse_args()
    if args.consistency:
        print(json.dumps({str(d): temporal_iou(d) for d in args.consistency}, indent=2))
        return
    if args.synth is None or args.out is None:
        ap.error("--synth and --out are needed (or --consistency SUBJECT...)")

    from nerfbs.preprocess.pipeline import preprocess_video

    if not (args.synth / "transforms.json").exists():
        from nerfbs.synth.generate import synthesize

        synthesize(args.synth, frames=args.frames, size=args.size)
    args.out.mkdir(parents=True, exist_ok=True)
    video = video_of_subject(args.synth, args.out / "synth.mp4")
    subject = args.out / "subject"
    if subject.exists():
        shutil.rmtree(subject)
    options = {"segmenter": args.segmenter} if "segmenter" in preprocess_video.__code__.co_varnames else {}
    t0 = time.perf_counter()
    report = preprocess_video(video, subject, size=args.size, landmarker=args.landmarker, **options)
    seconds = time.perf_counter() - t0
    result = mask_iou(args.synth, subject, report.crop)
    result.update(crop=list(report.crop), preprocess_s=round(seconds, 1))
    summary = {k: v for k, v in result.items() if k != "per_frame"}
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    if args.sheet is not None:
        worst = sorted(result["per_frame"], key=lambda r: r["iou"])[:3]
        sheet = comparison_sheet(args.synth, subject, report.crop, [r["frame"] for r in worst])
        cv2.imwrite(str(args.sheet), sheet[..., ::-1])


if __name__ == "__main__":
    main()
