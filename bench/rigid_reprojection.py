"""How well a subject's camera poses register its frames (CPU, seconds): the reprojection error of the
rigid face landmarks (``nerfbs.preprocess.head_fit.RIGID_LANDMARKS``: nose bridge, eye corners, forehead,
temples) against the best rigid points for the stored poses and intrinsics, triangulated from all frames.
Per frame the mean over those landmarks, in pixels of the subject's images; printed as the median frame
and the worst frame. It reads only transforms.json and ori_imgs/*.lms, so it scores any preprocessor.

    python bench/rigid_reprojection.py /tmp/d10 /tmp/katie [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nerfbs.data.camera import renderer_from_stored


def subject_reprojection(root: str | Path) -> np.ndarray:
    """Rigid landmarks' reprojection errors [N, L] (pixels) of the subject at ``root``, frames in img_id order."""
    from nerfbs.preprocess.head_fit import rigid_reprojection

    root = Path(root)
    meta = json.loads((root / "transforms.json").read_text())
    frames = sorted(meta["frames"], key=lambda f: f["img_id"])
    poses = renderer_from_stored(np.array([f["transform_matrix"] for f in frames], dtype=np.float64))
    lms = np.stack([np.loadtxt(root / "ori_imgs" / f"{f['img_id']}.lms") for f in frames])
    return rigid_reprojection(poses, meta["fx"], meta["fy"], meta["cx"], meta["cy"], lms)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("subjects", nargs="+")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = {}
    for s in args.subjects:
        per_frame = subject_reprojection(s).mean(1)
        out[s] = {"median": float(np.median(per_frame)), "worst": float(per_frame.max()),
                  "worst_index": int(per_frame.argmax()), "frames": len(per_frame)}
        print(f"{s}: {len(per_frame)} frames, rigid reprojection error per frame: median {out[s]['median']:.2f} px, "
              f"worst {out[s]['worst']:.2f} px (frame #{out[s]['worst_index']})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
