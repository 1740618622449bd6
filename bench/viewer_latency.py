"""Latency of ``nerfbs view``: the time from a slider change to the new frame being sent, through the viewer's
own render path (``ViewerState`` -> the render thread ``RenderLoop`` -> ``FrameRenderer`` -> JPEG), without a
browser and without viser (the websocket send on localhost is left out; viser only queues the bytes).

A virtual browser looks through the avatar's first held-out camera with a square canvas, its camera at rest,
so every change renders at the full ``--side``. Each change moves one coefficient between the ends of its
training range (the coefficients in turn, the jaw first), and waits for its frame before the next one. Prints
the median / p90 latency and where it goes (rendering, JPEG encoding), and writes them as JSON with --json.

    python bench/viewer_latency.py runs/me/checkpoints/latest.pth --side 512                 # GPU
    NERFBS_ARCH=cpu python bench/viewer_latency.py runs/me/checkpoints/latest.pth --side 128  # CPU default
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerfbs.atomic import write_text  # noqa: E402
from nerfbs.export.avatar import load_avatar  # noqa: E402
from nerfbs.viewer.camera import View, fov_y_of  # noqa: E402
from nerfbs.viewer import frames  # noqa: E402
from nerfbs.viewer.frames import FrameRenderer, sequences  # noqa: E402
from nerfbs.viewer.loop import JPEG_QUALITY, RenderLoop  # noqa: E402
from nerfbs.viewer.state import ViewerState  # noqa: E402


def encode_jpeg(image: np.ndarray) -> bytes:
    """What viser's ``set_background_image(image, format="jpeg")`` does to a frame (RGB -> BGR, cv2 JPEG)."""
    ok, data = cv2.imencode(".jpeg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_JPEG_QUALITY), JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values``."""
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--subject", type=Path, default=None, help="the avatar's subject folder, if it moved")
    parser.add_argument("--side", type=int, default=512, help="image side in pixels (square canvas)")
    parser.add_argument("--changes", type=int, default=100, help="slider changes timed")
    parser.add_argument("--warmup", type=int, default=5, help="slider changes before timing")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--main-thread", action="store_true",
                        help="serve each change on the main thread (the loop's own _serve, no render thread)")
    args = parser.parse_args()

    avatar = load_avatar(args.checkpoint, subject_dir=args.subject)
    seq = next(iter(sequences(avatar).values()))
    lo, hi = avatar.coeff_min.cpu().numpy(), avatar.coeff_max.cpu().numpy()
    state = ViewerState(lo, hi, seq.coeffs[0], side=args.side)
    renderer = FrameRenderer(avatar)
    sent: list[tuple[float, int]] = []
    encode_seconds: list[float] = []
    cond = threading.Condition()

    def send(request, image) -> None:
        start = time.perf_counter()
        encode_jpeg(image)
        done = time.perf_counter()
        with cond:
            encode_seconds.append(done - start)
            sent.append((done, request.key[0]))
            cond.notify_all()

    render_seconds: list[float] = []
    loop_stats: list[dict] = []  # the inference loop's figures of every frame the viewer rendered
    plain_render_image = frames.render_image

    def render_image_with_stats(*a, **kw):
        loop_stats.append({})
        return plain_render_image(*a, stats=loop_stats[-1], **kw)

    frames.render_image = render_image_with_stats

    def timed_render(*a):
        start = time.perf_counter()
        image = renderer(*a)
        render_seconds.append(time.perf_counter() - start)
        return image

    failures: list[BaseException] = []

    def failed(request, error) -> None:
        with cond:
            failures.append(error)
            cond.notify_all()

    renderer.warm_up(seq.poses[0], seq.coeffs[0])  # Taichi compiles on the main thread only
    loop = RenderLoop(state, timed_render, send, error=failed)
    if not args.main_thread:
        loop.start()
    state.set_view(0, View(pose=seq.poses[0], fov_y=fov_y_of(avatar.subject.intrinsics), aspect=1.0), moving=False)
    names = avatar.coeff_names or [str(i) for i in range(len(lo))]
    order = sorted(range(len(lo)), key=lambda i: (names[i] != "jawOpen", -(hi[i] - lo[i])))
    order = [i for i in order if hi[i] > lo[i]] or [0]
    latencies: list[float] = []
    try:
        for n in range(args.warmup + args.changes):
            index = order[(n // 2) % len(order)]
            value = float(hi[index] if n % 2 == 0 else lo[index])
            start = time.perf_counter()
            version, _ = state.set_coefficient(index, value)
            if args.main_thread:
                request = state.next_request(timeout=1.0)
                try:
                    loop._serve(request)
                finally:
                    state.served(request)
            with cond:
                if not cond.wait_for(lambda: failures or (sent and sent[-1][1] >= version), timeout=600):
                    raise RuntimeError("no frame came within 10 minutes")
                if failures:
                    raise RuntimeError("the render thread failed") from failures[0]
                arrived = next(t for t, v in sent if v >= version)
            if n >= args.warmup:
                latencies.append(arrived - start)
    finally:
        loop.stop()

    timed = slice(-args.changes, None)
    result = {
        "checkpoint": str(args.checkpoint), "step": avatar.step, "device": avatar.device.type,
        "gpu": __import__("torch").cuda.get_device_name() if avatar.device.type == "cuda" else f"{os.cpu_count()} CPU threads",
        "size": [args.side, args.side], "changes": args.changes,
        "thread": "main" if args.main_thread else "render thread",
        "latency_ms": {"median": 1e3 * percentile(latencies, 50), "p90": 1e3 * percentile(latencies, 90),
                       "mean": 1e3 * float(np.mean(latencies)), "max": 1e3 * max(latencies)},
        "render_ms_median": 1e3 * percentile(render_seconds[timed], 50),
        "jpeg_ms_median": 1e3 * percentile(encode_seconds[timed], 50),
        "rounds_mean": float(np.mean([st["rounds"] for st in loop_stats[timed]])),
        "samples_per_frame_mean": float(np.mean([st["samples"] for st in loop_stats[timed]])),
        "frames_sent": len(sent),
    }
    lat = result["latency_ms"]
    print(f"{result['device']} ({result['gpu']}), {args.side}x{args.side}, {args.changes} slider changes, {result['thread']}: "
          f"latency median {lat['median']:.1f} ms, p90 {lat['p90']:.1f} ms (mean {lat['mean']:.1f}, max {lat['max']:.1f}); "
          f"rendering {result['render_ms_median']:.1f} ms, JPEG {result['jpeg_ms_median']:.1f} ms (medians); "
          f"{result['samples_per_frame_mean'] / 1e6:.2f} M samples in {result['rounds_mean']:.1f} rounds per frame")
    if args.json:
        write_text(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
