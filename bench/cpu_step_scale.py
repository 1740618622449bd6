"""`nerfbs demo` on the CPU with long marching steps: the demo's own subject, recipe and time budget, once per
``--scales`` value of render.step_scale (run one after another in separate output folders), then the held-out
scores, the steps trained, the training samples per ray and the render speed of each, as one table.

    NERFBS_ARCH=cpu python bench/cpu_step_scale.py --out /tmp/demo_steps --minutes 4 --scales 1 4
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerfbs import demo  # noqa: E402
from nerfbs.progress import SILENT  # noqa: E402


def run(out: Path, minutes: float, scale: float) -> dict:
    recipe = demo.demo_config

    def with_scale(device):
        config = recipe(device)
        return config.replace(render=dataclasses.replace(config.render, step_scale=scale))

    demo.demo_config = with_scale
    try:
        result = demo.run_demo(out, minutes=minutes, report=SILENT)
    finally:
        demo.demo_config = recipe
    rows = [json.loads(line) for line in (result.workspace / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "samples_per_ray" in r]
    scores = json.loads((result.workspace / "eval" / "metrics.json").read_text())["mean"]
    return {"step_scale": scale, "steps": train_rows[-1]["step"] if train_rows else 0,
            "samples_per_ray": sum(r["samples_per_ray"] for r in train_rows[-20:]) / max(len(train_rows[-20:]), 1),
            "held_out_psnr": {k: scores[k]["psnr"] for k in ("full", "face", "mouth") if k in scores},
            "render_fps": result.render_fps, "checkpoint": str(result.checkpoint)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 4.0])
    args = ap.parse_args()
    results = [run(args.out / f"scale{k:g}", args.minutes, k) for k in args.scales]
    print("| step_scale | steps | train samples/ray | held-out full / face / mouth PSNR | render frames/s |")
    print("|---|---|---|---|---|")
    for r in results:
        psnr = " / ".join(f"{r['held_out_psnr'].get(k, float('nan')):.2f}" for k in ("full", "face", "mouth"))
        print(f"| {r['step_scale']:g} | {r['steps']} | {r['samples_per_ray']:.1f} | {psnr} | {r['render_fps']:.1f} |")
    (args.out / "step_scale.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
