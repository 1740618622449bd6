"""Training-step cost with and without the perceptual patch loss, and a profile of the patch step.

    NERFBS_ARCH=cuda NERFBS_CACHE=<folder with the converted LPIPS weights> \
        python3 bench/lpips_step.py --subject /tmp/syn_small --out $OUT/lpips_step.txt

Times ``--steps`` plain training steps, then as many steps past ``lpips_from_step`` (mouth and face patches
with LPIPS), each loop synchronised once at its end; then profiles 20 patch steps with ``torch.profiler``
(kernel launches and device time by operator) and writes the tables to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.rendering import _sync as sync  # noqa: E402
from nerfbs.train import perceptual
from nerfbs.train import loop as train  # noqa: E402
from nerfbs.config import Config, DataConfig, TrainConfig  # noqa: E402
from nerfbs.train.workspace import Workspace  # noqa: E402
from taichi_kernels import runtime  # noqa: E402


def mean_step_ms(run: train.TrainRun, steps: int) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        train.train_step(run)
    sync()
    return (time.perf_counter() - start) / steps * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subject", required=True)
    ap.add_argument("--test-last", type=int, default=10)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--workspace", default="/tmp/nerfbs-lpips-step")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    device = runtime.torch_device()
    never = 10 ** 9
    config = Config(data=DataConfig(subject=args.subject, test_last=args.test_last),
                    train=TrainConfig(steps=never, validate_every=never, checkpoint_every=never, lpips_from_step=never))
    run = train.prepare_run(config, Workspace(Path(args.workspace)), device, resume_from=None,
                            lpips_loader=lambda needed: perceptual.load_lpips(device))
    figures = {"warm_up_ms": mean_step_ms(run, args.steps), "plain_ms": mean_step_ms(run, args.steps)}
    run.step = never  # past lpips_from_step: every step adds a mouth (even) or face (odd) patch
    figures["patch_ms"] = mean_step_ms(run, args.steps)
    print(json.dumps(figures), flush=True)
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        mean_step_ms(run, 20)
    table = prof.key_averages()
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    Path(args.out).write_text(json.dumps(figures) + "\n" + table.table(sort_by=sort, row_limit=30) + "\n\n"
                              + table.table(sort_by="cpu_time_total", row_limit=30))


if __name__ == "__main__":
    main()
