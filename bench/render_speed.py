"""Render speed of a trained avatar's held-out frames (issue "Use the avatar"), variant by variant.

For each variant (the inference early-stop transmittance, the fused MLP layers on or off) it renders the
held-out frames through ``rendering_job.run_job`` (the code of ``nerfbs render``: batches of frames,
PNG writing on background threads, not counted) and scores 20 of them against the truth, so that a
faster variant is seen to keep the picture. Then, for the default variant, where a render's time goes:
the alive-ray loop's statistics and the field's parts (encoder, density MLP, colour input, colour MLP) timed on the
points of one batch.

    NERFBS_ARCH=cuda python3 bench/render_speed.py --checkpoint ws/checkpoints/latest.pth --out $OUT/render.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.rendering import _median_ms as timed, _sync as sync  # noqa: E402  (median ms after a warm-up)
from nerfbs.evaluate import report as evaluate
from nerfbs.render.image import render_with_truth  # noqa: E402
from nerfbs.export.avatar import Avatar, load_avatar  # noqa: E402
from nerfbs.data.camera import image_rays  # noqa: E402
from nerfbs.export.job import plan_render, run_job  # noqa: E402
from taichi_kernels import runtime  # noqa: E402
from taichi_kernels.color_input import color_input  # noqa: E402
from taichi_kernels.reference.color_input import color_input as color_input_torch  # noqa: E402
from taichi_kernels.inference import render_rays_inference  # noqa: E402
from taichi_kernels.samples import MarchParams  # noqa: E402

VARIANTS = {  # name: (display_early_stop, fused MLP layers)
    "stop1e-4_unfused": (1e-4, False),
    "stop1e-2_unfused": (1e-2, False),
    "stop1e-4_fused": (1e-4, True),
    "stop1e-2_fused": (1e-2, True),  # the defaults
}


def set_variant(avatar: Avatar, base_config, early_stop: float, fused: bool) -> None:
    avatar.config = base_config.replace(render=dataclasses.replace(base_config.render, display_early_stop=early_stop))
    avatar.field.density_net.fused_inference = fused
    avatar.field.color_net.fused_inference = fused


def quality(avatar: Avatar, frames: list[int]) -> dict:
    result, _ = evaluate.evaluate_frames(
        lambda f: render_with_truth(avatar.field, avatar.grid, avatar.config.render, avatar.subject, f),
        frames, avatar.subject.face_rects, avatar.subject.mouth_rects, None)
    return {region: round(v["psnr"], 3) for region, v in result.mean().items() if v["psnr"] is not None}


def where_time_goes(avatar: Avatar, job, batch: int) -> dict:
    """One batch of ``batch`` held-out frames: the loop's statistics, the field's share, the field's parts."""
    device = avatar.device
    origins, directions, slot = image_rays(job.poses[:batch], job.camera)
    background = job.background.reshape(-1, 3).repeat(batch, 1)
    coeffs = job.coeffs[:batch]
    field = avatar.field
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    field_ms = [0.0]

    def field_fn(points, dirs, frame_index):
        sync()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            sigma, rgb = field(points, dirs, frame_index, coeffs)
        sync()
        field_ms[0] += (time.perf_counter() - t0) * 1000
        calls.append((points, dirs, frame_index))
        return sigma.float(), rgb.float()

    params = MarchParams.from_render_config(avatar.config.render)
    stats: dict = {}
    with torch.no_grad():
        sync()
        t0 = time.perf_counter()
        render_rays_inference(origins, directions, slot.to(torch.int32), field_fn, avatar.grid, params, background,
                              stats=stats)
        sync()
        total_ms = (time.perf_counter() - t0) * 1000
        len_points = sum(c[0].shape[0] for c in calls)
        cap = 1 << 23  # the parts are timed on at most 8M points (Taichi indexes arrays with int32)
        points = torch.cat([c[0] for c in calls])[:cap]
        dirs = torch.cat([c[1] for c in calls])[:cap]
        frames = torch.cat([c[2] for c in calls])[:cap]
        n = points.shape[0]
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            unit = (points + field.bound) / (2.0 * field.bound)
            feats = field.encoder(unit, frames, coeffs)
            h16 = field.density_net(feats)
            degree = field.config.sh_degree
            colour_in = color_input(dirs, h16, degree)
            parts = {
                "encoder_ms": timed(lambda: field.encoder(unit, frames, coeffs)),
                "density_mlp_ms": timed(lambda: field.density_net(feats)),
                "color_input_ms": timed(lambda: color_input(dirs, h16, degree)),
                "color_input_torch_ms": timed(lambda: color_input_torch(dirs, h16, degree)),
                "color_mlp_ms": timed(lambda: field.color_net(colour_in)),
                "whole_field_ms": timed(lambda: field(points, dirs, frames, coeffs)),
            }
    pixels = batch * job.camera.height * job.camera.width
    return {"batch": batch, "total_ms": total_ms, "field_ms_in_loop": field_ms[0], "loop_stats": stats,
            "field_points": len_points, "field_points_per_pixel": len_points / pixels, "parts_timed_on": n,
            "occupancy": float(avatar.grid.occupancy_fraction), "parts_on_all_points": parts}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--score-frames", type=int, default=20)
    ap.add_argument("--render-dir", default="/tmp/nerfbs-render-speed")
    args = ap.parse_args()
    device = runtime.torch_device()
    avatar = load_avatar(args.checkpoint, device)
    base = avatar.config
    job = plan_render(avatar, frames="test", nvs=False)
    test = [int(i) for i in avatar.subject.test_indices]
    score = test[:: max(len(test) // args.score_frames, 1)][: args.score_frames]
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "checkpoint": args.checkpoint, "step": avatar.step, "frames": len(job),
                    "size": [job.camera.width, job.camera.height], "batch": args.batch, "variants": {}}
    run_job(avatar, job, Path(args.render_dir) / "warmup", batch=args.batch)  # compiles every kernel once
    for name, variant in VARIANTS.items():
        set_variant(avatar, base, *variant)
        stats = run_job(avatar, job, Path(args.render_dir) / name, batch=args.batch)
        report["variants"][name] = {"fps": stats.fps, "seconds": stats.seconds, "psnr": quality(avatar, score)}
        print(name, json.dumps(report["variants"][name]), flush=True)
    set_variant(avatar, base, *VARIANTS["stop1e-2_fused"])
    report["breakdown"] = where_time_goes(avatar, job, min(args.batch, len(job)))
    print(json.dumps(report["breakdown"], indent=1), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
