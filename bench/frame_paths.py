"""Where the viewer's frame time goes that a plain render loop does not see: one process, one avatar, the same
frames rendered through ``FrameRenderer`` (the viewer's call) with, in turn, the held-out frames' own coefficients
or the slider benchmark's extreme ones (``viewer_latency.py``: one coefficient at an end of its training range),
on the main thread or on a worker thread (as ``nerfbs view``'s render thread), and ``render_image`` alone (the
profile's call: no conversion to pixels, no copy to the host). Trials interleave the modes (the GPU machine's
figures drift); prints each mode's median ms per frame, samples and rounds per frame.

    python3 bench/frame_paths.py runs/me/checkpoints/latest.pth --subject subjects/me --frames 20 --trials 3
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerfbs.atomic import write_text  # noqa: E402
from nerfbs.export.avatar import load_avatar  # noqa: E402
from nerfbs.render.image import render_image  # noqa: E402
from nerfbs.viewer import frames  # noqa: E402
from nerfbs.viewer.frames import FrameRenderer, sequences  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Worker:
    """A thread that runs the calls it is given, one at a time (the viewer's render thread)."""

    def __init__(self):
        self.calls: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            fn = self.calls.get()
            try:
                self.results.put((fn(), None))
            except BaseException as err:  # handed back to the caller
                self.results.put((None, err))

    def __call__(self, fn):
        self.calls.put(fn)
        value, err = self.results.get()
        if err is not None:
            raise err
        return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--subject", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    avatar = load_avatar(args.checkpoint, subject_dir=args.subject)
    s = avatar.subject
    seq = next(iter(sequences(avatar).values()))
    count = min(args.frames, len(seq))
    lo, hi = avatar.coeff_min.cpu().numpy(), avatar.coeff_max.cpu().numpy()
    order = [i for i in np.argsort(-(hi - lo)) if hi[i] > lo[i]] or [0]
    extremes = []
    for n in range(count):
        c = seq.coeffs[0].copy()
        i = order[(n // 2) % len(order)]
        c[i] = hi[i] if n % 2 == 0 else lo[i]
        extremes.append(c)
    renderer = FrameRenderer(avatar)
    background = s.background.float().to(avatar.device) / 255.0
    worker = Worker()
    loop_stats: list[dict] = []
    plain = frames.render_image

    def counted(*a, **kw):
        loop_stats.append({})
        return plain(*a, stats=loop_stats[-1], **kw)

    frames.render_image = counted

    def viewer_frame(n: int, coeffs) -> np.ndarray:
        return renderer(seq.poses[n], s.intrinsics, coeffs[n], "dataset")

    def plain_frame(n: int) -> None:
        pose = torch.as_tensor(seq.poses[n], dtype=torch.float32, device=avatar.device)
        row = torch.ones(len(lo) + 1, device=avatar.device)
        row[1:] = torch.as_tensor(seq.coeffs[n], device=avatar.device)
        loop_stats.append({})
        render_image(avatar.field, avatar.grid, avatar.config.render, pose, s.intrinsics, row, background,
                     stats=loop_stats[-1])
        sync()

    modes = {
        "render_image, frames' coefficients, main thread": lambda n: plain_frame(n),
        "FrameRenderer, frames' coefficients, main thread": lambda n: viewer_frame(n, seq.coeffs),
        "FrameRenderer, frames' coefficients, worker thread": lambda n: worker(lambda: viewer_frame(n, seq.coeffs)),
        "FrameRenderer, extreme coefficients, main thread": lambda n: viewer_frame(n, extremes),
        "FrameRenderer, extreme coefficients, worker thread": lambda n: worker(lambda: viewer_frame(n, extremes)),
    }
    renderer.warm_up(seq.poses[0], seq.coeffs[0])  # Taichi compiles on the main thread only
    for fn in modes.values():
        fn(0)
    times: dict[str, list[float]] = {name: [] for name in modes}
    figures: dict[str, list[dict]] = {name: [] for name in modes}
    for _ in range(args.trials):
        for name, fn in modes.items():
            for n in range(count):
                start = time.perf_counter()
                fn(n)
                times[name].append(1e3 * (time.perf_counter() - start))
                figures[name].append(loop_stats[-1])
    result = {}
    for name in modes:
        result[name] = {"ms_median": float(np.median(times[name])), "ms_p90": float(np.percentile(times[name], 90)),
                        "samples_M": float(np.mean([f["samples"] for f in figures[name]])) / 1e6,
                        "rounds": float(np.mean([f["rounds"] for f in figures[name]]))}
        r = result[name]
        print(f"{name:52s} {r['ms_median']:6.1f} ms median, p90 {r['ms_p90']:6.1f}; "
              f"{r['samples_M']:.2f} M samples in {r['rounds']:.1f} rounds")
    if args.json:
        write_text(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
