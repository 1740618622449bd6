"""Write a subject in the NeRFBlendShape layout (../shared/FORMAT.md), readable by the original code.

```
root/head_imgs/<id>.jpg  ori_imgs/<id>.jpg  ori_imgs/<id>.lms  parsing/<id>.png  bc.jpg  transforms.json
```
Images are given as RGB uint8 arrays [H, W, 3] (numpy or torch) and written with JPEG quality 95
(parsing as lossless PNG, the head in pure blue). Image files are encoded on a small thread pool and
each written atomically; transforms.json is written last, atomically, by ``finish``, so a folder with
a transforms.json is complete.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from nerfbs.atomic import atomic_path, write_text
from nerfbs.data.camera import FORMAT_SCALE, renderer_from_stored, stored_from_renderer

__all__ = ["SubjectWriter", "renderer_from_stored", "stored_from_renderer", "HEAD_BLUE", "NUM_LANDMARKS"]

HEAD_BLUE = (0, 0, 255)  # parsing colour of head pixels, RGB
NUM_LANDMARKS = 478
JPEG_QUALITY = 95


def _rgb(image, name: str, height: int, width: int) -> np.ndarray:
    a = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if a.shape != (height, width, 3) or a.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 [{height}, {width}, 3], got {a.dtype} {list(a.shape)}")
    return a


def _write_image(path: Path, rgb: np.ndarray) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix == ".jpg" else []
    ok, buf = cv2.imencode(path.suffix, np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise OSError(f"{path}: could not encode the image")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


class SubjectWriter:
    """Collects frames of one subject and writes them in the layout.

    Usage: ``w = SubjectWriter(root, height=.., width=.., fx=.., fy=.., cx=.., cy=..)``;
    ``w.write_background(rgb)``; ``w.add_frame(...)`` per frame; ``w.finish()`` writes transforms.json.
    """

    def __init__(self, root: str | os.PathLike, *, height: int, width: int, fx: float, fy: float,
                 cx: float, cy: float, exp_names: Sequence[str] | None = None, scale: float = FORMAT_SCALE,
                 workers: int | None = None):
        self.root = Path(root)
        self.height, self.width = int(height), int(width)
        self.intrinsics = dict(fx=float(fx), fy=float(fy), cx=float(cx), cy=float(cy))
        self.exp_names = list(exp_names) if exp_names is not None else None
        self.scale = scale
        self._frames: list[dict] = []
        self._pending: list[Future] = []
        self._pool = ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1))
        for sub in ("head_imgs", "ori_imgs", "parsing"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _submit(self, path: Path, rgb: np.ndarray) -> None:
        self._pending.append(self._pool.submit(_write_image, path, rgb))
        if len(self._pending) > 64:  # bound the memory held by queued frames
            self._drain(keep=32)

    def _drain(self, keep: int = 0) -> None:
        while len(self._pending) > keep:
            self._pending.pop(0).result()

    def write_background(self, rgb) -> None:
        """bc.jpg: the static background [H, W, 3] uint8 RGB."""
        self._submit(self.root / "bc.jpg", _rgb(rgb, "bc.jpg", self.height, self.width).copy())

    def add_frame(self, img_id: int, *, ori, head, parsing, landmarks, coeffs,
                  renderer_pose=None, stored_pose=None) -> None:
        """One frame: ori/head/parsing RGB uint8 [H, W, 3], landmarks [478, 2] pixel (x, y), coeffs [K].

        Give the camera-to-world either in the renderer's frame (``renderer_pose``, converted with
        ``stored_from_renderer``) or as the stored matrix (``stored_pose``).
        """
        if (renderer_pose is None) == (stored_pose is None):
            raise ValueError("add_frame: give exactly one of renderer_pose and stored_pose")
        pose = np.asarray(renderer_pose if stored_pose is None else stored_pose, dtype=np.float64)
        if pose.shape != (4, 4):
            raise ValueError(f"add_frame: pose must be [4, 4], got {list(pose.shape)}")
        if stored_pose is None:
            pose = stored_from_renderer(pose, self.scale)
        lms = np.asarray(landmarks, dtype=np.float64)
        if lms.shape != (NUM_LANDMARKS, 2):
            raise ValueError(f"add_frame: landmarks must be [{NUM_LANDMARKS}, 2], got {list(lms.shape)}")
        coeffs = np.asarray(coeffs, dtype=np.float64).reshape(-1)
        if self._frames and len(coeffs) != len(self._frames[0]["exp_ori"]):
            raise ValueError(f"add_frame: frame {img_id} has {len(coeffs)} coefficients, "
                             f"the first had {len(self._frames[0]['exp_ori'])}")
        h, w = self.height, self.width
        img_id = int(img_id)
        self._submit(self.root / "ori_imgs" / f"{img_id}.jpg", _rgb(ori, "ori", h, w).copy())
        self._submit(self.root / "head_imgs" / f"{img_id}.jpg", _rgb(head, "head", h, w).copy())
        self._submit(self.root / "parsing" / f"{img_id}.png", _rgb(parsing, "parsing", h, w).copy())
        write_text(self.root / "ori_imgs" / f"{img_id}.lms", "".join(f"{x:.4f} {y:.4f}\n" for x, y in lms))
        self._frames.append({"img_id": img_id, "transform_matrix": pose.tolist(),
                             "exp_ori": coeffs.tolist()})

    def finish(self) -> Path:
        """Wait for every image, then write transforms.json atomically. Returns the subject folder."""
        try:
            self._drain()
        finally:
            self._pool.shutdown(wait=True)
        meta: dict = {"h": self.height, "w": self.width, **self.intrinsics}
        if self.exp_names is not None:
            meta["exp_names"] = self.exp_names
        frames = sorted(self._frames, key=lambda f: f["img_id"])
        head = json.dumps(meta, indent=1)[:-2]  # without the closing "\n}"
        body = ",\n  ".join(json.dumps(f) for f in frames)  # one frame per line
        write_text(self.root / "transforms.json", f'{head},\n "frames": [\n  {body}\n ]\n}}\n')
        return self.root

    def __enter__(self) -> "SubjectWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self._pool.shutdown(wait=True, cancel_futures=True)
