"""Where a 512x512 frame's render time goes: torch's profiler over ``render_images`` of a trained avatar, one
frame per call (the viewer's) or ``--batch`` frames per call (``nerfbs render``'s), after warm-up. Prints the top
operations by device time and the inference loop's figures.

    python3 bench/render_profile.py runs/me/checkpoints/latest.pth --subject subjects/me --frames 20 [--batch 8] \
        [--per-round 16,8:32] [--lookup 1,2,4] [--torch-activations] [--product-columns 8] [--repeat 2] [--rows 0] [--overshoot]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerfbs.data.camera import image_rays  # noqa: E402
from nerfbs.export.avatar import load_avatar  # noqa: E402
from nerfbs.field import FrozenField  # noqa: E402
from nerfbs.render import rays as rays_module  # noqa: E402
from nerfbs.render.image import render_images  # noqa: E402
from nerfbs.render.rays import visible_counts  # noqa: E402
from taichi_kernels import hash_grid, runtime  # noqa: E402
from taichi_kernels.march import march_rays_train  # noqa: E402
from taichi_kernels.samples import MarchParams  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--subject", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--rows", type=int, default=25, help="rows of the profiler's table (0: no profile)")
    parser.add_argument("--per-round", default="", help="also time these first-round sample counts, each N or N:CAP "
                                                         "(CAP: the most a round grows to), e.g. 16,32,8:32")
    parser.add_argument("--lookup", default="", help="also time the inference lookup with these features per thread, "
                                                     "e.g. 1,2,4")
    parser.add_argument("--torch-activations", action="store_true",
                        help="also time the field's activations in torch (the renderer before session 14), not in the "
                             "round kernels")
    parser.add_argument("--product-columns", default="", help="also time the MLPs' last layers computed in products "
                                                              "of these many output columns each, e.g. 8")
    parser.add_argument("--overshoot", action="store_true",
                        help="also count the samples the renders evaluate past each ray's early stop (a full march "
                             "of the same rays and a density pass over it find where each ray stops)")
    parser.add_argument("--repeat", type=int, default=1, help="time the whole list of variants this many times")
    parser.add_argument("--batch", type=int, default=1, help="frames per render call")
    args = parser.parse_args()
    avatar = load_avatar(args.checkpoint, subject_dir=args.subject)
    avatar.field.eval()
    s = avatar.subject
    background = s.background.float() / 255.0
    test = [int(i) for i in s.test_indices][: args.frames]
    default_cap = rays_module.MAX_SAMPLES_PER_ROUND
    calls = [test[i:i + args.batch] for i in range(0, len(test), args.batch)]  # the frames of each render call

    def one(f: list[int], stats: dict | None = None, per_round: int | None = None) -> None:
        images = render_images(avatar.field, avatar.grid, avatar.config.render, s.poses[f], s.intrinsics, s.coeffs[f],
                               background, stats=stats, samples_per_round=per_round)
        images.rgb.clamp(0, 1).mul(255).to(torch.uint8).cpu()

    arch, lookup = runtime.ensure_initialized(), hash_grid.LOOKUP_FEATURES_PER_THREAD
    channels = avatar.config.model.grid.features_per_level
    default_group = lookup.get(arch, channels)
    # (first round, growth cap, features per lookup thread, activations in torch, columns per last-layer product)
    product = FrozenField.PRODUCT_COLUMNS
    variants = [(None, default_cap, default_group, False, product)]
    for spec in filter(None, args.per_round.split(",")):
        per_round, _, cap = spec.partition(":")
        variants.append((int(per_round), int(cap) if cap else default_cap, default_group, False, product))
    variants += [(None, default_cap, int(g), False, product) for g in filter(None, args.lookup.split(","))]
    variants += [(None, default_cap, default_group, True, product)] * args.torch_activations
    variants += [(None, default_cap, default_group, False, int(c)) for c in filter(None, args.product_columns.split(","))]
    logits = FrozenField.logits
    for per_round, cap, group, torch_activations, columns in variants * args.repeat:
        rays_module.MAX_SAMPLES_PER_ROUND, lookup[arch], FrozenField.PRODUCT_COLUMNS = cap, group, columns
        # The renderer calls the frozen field's ``logits``; giving it activated outputs makes the round kernels read
        # them as they are, as before session 14.
        FrozenField.logits = (lambda self, *a: logits(self, *a).activated()) if torch_activations else logits
        for f in calls[:3]:
            one(f, per_round=per_round)
        sync()
        start = time.perf_counter()
        rounds, samples, kernel_ms = 0, 0, 0.0
        for f in calls:
            stats: dict = {}
            one(f, stats, per_round)
            rounds += stats["rounds"]
            samples += stats["samples"]
            kernel_ms += stats["round_kernel_ms"]
        sync()
        n = len(test)
        ms = 1e3 * (time.perf_counter() - start) / n
        print(f"{ms:.2f} ms per frame ({args.batch} per call), {rounds / len(calls):.1f} rounds per call, "
              f"{samples / n / 1e6:.2f} M samples per frame, {kernel_ms / n:.1f} ms per frame from round launches to "
              f"counters (first round: {per_round or 'default'} samples per ray, rounds up to {cap}; lookup: "
              f"{math.gcd(group, channels)} features per thread; activations in "
              f"{'torch' if torch_activations else 'the round kernels'}; last layers' products: "
              f"{f'{columns} columns each' if columns else 'one'})")
    rays_module.MAX_SAMPLES_PER_ROUND, lookup[arch], FrozenField.PRODUCT_COLUMNS = default_cap, default_group, product
    FrozenField.logits = logits
    if args.overshoot:
        overshoot(avatar, calls, background, one)
    if args.rows == 0:
        return
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                          if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=activities) as prof:
        for f in calls:
            one(f)
        sync()
    print(prof.key_averages().table(sort_by="cuda_time_total" if torch.cuda.is_available() else "cpu_time_total", row_limit=args.rows, max_name_column_width=60))


def overshoot(avatar, calls: list[list[int]], background: torch.Tensor, one) -> None:
    """Print the samples per pixel the renders evaluate, those needed (each ray's samples up to the one where its
    transmittance falls below the display early stop, from a full march without jitter and the frozen field's
    density) and those a march through the whole box places."""
    s, config = avatar.subject, avatar.config.render
    params = MarchParams.from_render_config(config)
    evaluated = needed = marched = pixels = 0
    for f in calls:
        stats: dict = {}
        one(f, stats)
        origins, directions, index = image_rays(s.poses[f].float(), s.intrinsics)
        samples = march_rays_train(origins, directions, avatar.grid, params, jitter=False)
        dtype = torch.float16 if origins.device.type == "cuda" else torch.float32
        sigma = avatar.field.frozen(s.coeffs[f], dtype).density(samples.positions, index[samples.ray_index.long()])
        evaluated += stats["samples"]
        needed += int(visible_counts(sigma, samples, params.early_stop).sum())
        marched += samples.num_samples
        pixels += origins.shape[0]
    print(f"overshoot: {evaluated / pixels:.2f} samples per pixel evaluated, {needed / pixels:.2f} needed before each "
          f"ray's early stop (T < {params.early_stop:g}), {marched / pixels:.2f} through the whole box; "
          f"{100 * (evaluated - needed) / max(evaluated, 1):.1f} % of the evaluated past the stop")


if __name__ == "__main__":
    main()
