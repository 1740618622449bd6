"""Take preprocessed subjects to the GPU machine within its 64 MiB transfer limit.

Several subjects made from one video (today's preprocessing and the new one, say) share their ori_imgs
JPEGs, and head_imgs is ori_imgs with everything outside the parsing's head replaced by bc.jpg. So a
group travels as one copy of the ori_imgs JPEGs plus, per subject, an xz archive of the rest (transforms,
landmarks, parsing, background, extra files); files that every subject of the group has alike (the landmarks,
when only tracking or masks changed) travel once, in common.tar.xz. ``unpack`` rebuilds each subject, its head_imgs
from the carried ori_imgs (re-encoded at the writer's JPEG quality: every subject of the group is rebuilt alike).

    python3 bench/carry.py pack --out .carry/d10 base=/tmp/base/d10 new=/tmp/new/d10
    python3 bench/carry.py unpack .carry/d10 --to /tmp/subjects      # there: /tmp/subjects/d10_base, ...
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np

JPEG_QUALITY = 95  # nerfbs.data.writer's
COMMON = "common.tar.xz"  # the files every subject of a group has alike


def pack(out: Path, subjects: dict[str, Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(subjects.values()))
    jpegs = sorted((first / "ori_imgs").glob("*.jpg"))
    for name, root in subjects.items():
        theirs = sorted(p.name for p in (root / "ori_imgs").glob("*.jpg"))
        if theirs != [p.name for p in jpegs] or not all(
                filecmp.cmp(p, root / "ori_imgs" / p.name, shallow=False) for p in jpegs):
            sys.exit(f"{root}: its ori_imgs differ from {first}'s (another crop?) — carry it in its own group")
    (out / "ori_imgs").mkdir(exist_ok=True)
    for p in jpegs:
        shutil.copy2(p, out / "ori_imgs" / p.name)
    own = {name: _carried_files(root) for name, root in subjects.items()}
    common = [] if len(subjects) == 1 else [rel for rel in next(iter(own.values())) if all(
        (root / rel).is_file() and filecmp.cmp(first / rel, root / rel, shallow=False) for root in subjects.values())]
    with tarfile.open(out / COMMON, "w:xz") as tar:
        for rel in common:
            tar.add(first / rel, arcname=str(rel))
    for name, root in subjects.items():
        with tarfile.open(out / f"{name}.tar.xz", "w:xz") as tar:
            for rel in sorted(set(own[name]) - set(common)):
                tar.add(root / rel, arcname=str(rel))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {len(subjects)} subjects, {len(jpegs)} frames, {size / 2**20:.1f} MiB")


def _carried_files(root: Path) -> list[Path]:
    """A subject's files that travel (relative paths): all but head_imgs and the ori_imgs JPEGs."""
    files = [path.relative_to(root) for path in sorted(root.rglob("*")) if path.is_file()]
    return [rel for rel in files if rel.parts[0] != "head_imgs" and not (rel.parts[0] == "ori_imgs" and rel.suffix == ".jpg")]


def unpack(src: Path, to: Path) -> None:
    for archive in sorted(a for a in src.glob("*.tar.xz") if a.name != COMMON):
        root = to / f"{src.name}_{archive.name[:-len('.tar.xz')]}"
        root.mkdir(parents=True, exist_ok=True)
        for part in (src / COMMON, archive):
            if part.exists():  # groups packed before common.tar.xz have none
                with tarfile.open(part) as tar:
                    tar.extractall(root, filter="data")
        (root / "head_imgs").mkdir(exist_ok=True)
        bc = cv2.imread(str(root / "bc.jpg"))
        for jpg in sorted((src / "ori_imgs").glob("*.jpg")):
            shutil.copy2(jpg, root / "ori_imgs" / jpg.name)
            ori = cv2.imread(str(jpg))
            parsing = cv2.imread(str(root / "parsing" / f"{jpg.stem}.png"))
            head = (parsing[..., 0] == 255) & (parsing[..., 1] == 0) & (parsing[..., 2] == 0)
            cv2.imwrite(str(root / "head_imgs" / jpg.name), np.where(head[..., None], ori, bc),
                        [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        print(f"{root}: rebuilt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("subjects", nargs="+", help="NAME=FOLDER, one per subject of the group")
    u = sub.add_parser("unpack")
    u.add_argument("src", type=Path)
    u.add_argument("--to", required=True, type=Path)
    args = ap.parse_args()
    if args.verb == "pack":
        pack(args.out, {s.split("=", 1)[0]: Path(s.split("=", 1)[1]) for s in args.subjects})
    else:
        unpack(args.src, args.to)


if __name__ == "__main__":
    main()
