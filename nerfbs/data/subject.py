"""Read a subject in the NeRFBlendShape layout (../shared/FORMAT.md) into a ``Subject``.

Frames are ordered by img_id; frames without a head image are skipped with a warning; the last
``test_last`` kept frames are the test split. Poses are converted to the renderer's camera-to-world,
coefficients are clamped to the training frames' range and get the neutral 1.0 prepended, rectangles
come from the landmarks. The training frames live on the device as uint8 images and bool head masks
(or are read from disk on demand with ``stream_from_disk``); test frames are read lazily. Ray batches
are drawn by ``RaySampler``.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
import torch

from nerfbs.config import DataConfig
from nerfbs.data.camera import FORMAT_SCALE, Intrinsics, renderer_from_stored
from nerfbs.errors import UserError

log = logging.getLogger(__name__)

Progress = Optional[Callable[[int, int], None]]
NUM_LANDMARKS = 478
MOUTH_POINTS = (57, 287, 0, 17)  # left, right, top, bottom
EYE_POINTS = (130, 359, (27, 257), (23, 253))  # left, right, min(top pair), max(bottom pair)
DEVICE_MEMORY_FRACTION = 0.7  # at most this share of free memory goes to training frames


def resolve_subject_path(name_or_path: str | os.PathLike) -> Path:
    """A subject folder given as a path, or as a name under ./dataset/."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    if not p.is_absolute() and len(p.parts) == 1:
        q = Path("dataset") / name_or_path
        if q.is_dir():
            return q
        raise UserError(f"{name_or_path}: no such subject folder (neither a path nor ./dataset/{name_or_path}) "
                        "— give the folder that holds transforms.json")
    raise UserError(f"{name_or_path}: no such subject folder — give the folder that holds transforms.json")


@dataclass
class Subject:
    """One subject: cameras, coefficients, rectangles and frames. N frames, K coefficients.

    poses [N, 4, 4] float32 renderer camera-to-world, coeffs [N, K+1] float32 (neutral 1.0 first, the
    rest clamped to [coeff_min, coeff_max] of the training frames), rects [N, 4] int32 (x0, y0, x1, y1)
    with x1, y1 exclusive, all on ``device``. Frames [0, num_train) train, the rest test.
    """

    name: str
    root: Path
    intrinsics: Intrinsics
    img_ids: list[int]
    poses: torch.Tensor
    coeffs: torch.Tensor
    coeff_names: Optional[list[str]]
    coeff_min: torch.Tensor
    coeff_max: torch.Tensor
    num_train: int
    face_rects: torch.Tensor
    mouth_rects: torch.Tensor
    eye_rects: torch.Tensor
    landmarks: torch.Tensor  # [N, 478, 2] float32 pixel (x, y), on the CPU
    background: torch.Tensor  # [H, W, 3] uint8
    device: torch.device
    images: Optional[torch.Tensor] = None  # [num_train, H, W, 3] uint8 head_imgs, None when streaming
    masks: Optional[torch.Tensor] = None  # [num_train, H, W] bool head masks, None when streaming
    stream_from_disk: bool = False

    @property
    def num_frames(self) -> int:
        """N, the frames kept (training and held-out)."""
        return len(self.img_ids)

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return self.intrinsics.height

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return self.intrinsics.width

    @property
    def fx(self) -> float:
        """Horizontal focal length in pixels."""
        return self.intrinsics.fx

    @property
    def fy(self) -> float:
        """Vertical focal length in pixels."""
        return self.intrinsics.fy

    @property
    def cx(self) -> float:
        """Principal point x in pixels."""
        return self.intrinsics.cx

    @property
    def cy(self) -> float:
        """Principal point y in pixels."""
        return self.intrinsics.cy

    @property
    def num_coeffs(self) -> int:
        """K, the tracked coefficient count (without the neutral)."""
        return self.coeffs.shape[1] - 1

    @property
    def train_indices(self) -> torch.Tensor:
        """[num_train] int64 frame indices of the training frames, on the device."""
        return torch.arange(self.num_train, device=self.device)

    @property
    def test_indices(self) -> torch.Tensor:
        """[N - num_train] int64 frame indices of the held-out frames, on the device."""
        return torch.arange(self.num_train, self.num_frames, device=self.device)

    def frame(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame i's head image [H, W, 3] uint8 and head mask [H, W] bool, on the device."""
        if not 0 <= i < self.num_frames:
            raise IndexError(f"frame {i} out of range [0, {self.num_frames})")
        if i < self.num_train and self.images is not None:
            return self.images[i], self.masks[i]
        rgb, mask = _read_frame(self.root, self.img_ids[i], self.height, self.width)
        return torch.from_numpy(rgb).to(self.device), torch.from_numpy(mask).to(self.device)

    def original(self, i: int) -> Optional[np.ndarray]:
        """Frame i's original image (ori_imgs/<img_id>.jpg) as RGB uint8 [H, W, 3] numpy, or None when the
        subject has no such file; a file of another size is a UserError."""
        if not 0 <= i < self.num_frames:
            raise IndexError(f"frame {i} out of range [0, {self.num_frames})")
        path = self.root / "ori_imgs" / f"{self.img_ids[i]}.jpg"
        if not path.is_file():
            return None
        return np.ascontiguousarray(_read_image(path, self.img_ids[i], self.height, self.width)[..., ::-1])

    def frames(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head images [B, H, W, 3] uint8 and masks [B, H, W] bool of the given frames."""
        idx = indices.long()
        if self.images is not None and bool((idx < self.num_train).all()):
            idx = idx.to(self.device)
            return self.images[idx], self.masks[idx]
        pairs = [self.frame(int(i)) for i in idx.tolist()]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


# ---------------------------------------------------------------------------------------------- reading
def _read_image(path: Path, img_id: int, height: int, width: int, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise UserError(f"{path}: frame {img_id}: unreadable or missing image — re-export the frame")
    if img.shape[:2] != (height, width):
        raise UserError(f"{path}: frame {img_id}: image is {img.shape[1]}x{img.shape[0]}, transforms.json says "
                        f"{width}x{height} — resize the frame or fix h/w")
    return img


def _read_frame(root: Path, img_id: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """head_imgs RGB [H, W, 3] uint8 and the parsing's head mask [H, W] bool (pure blue pixels)."""
    head = _read_image(root / "head_imgs" / f"{img_id}.jpg", img_id, height, width)
    parsing_path = root / "parsing" / f"{img_id}.png"
    parsing = _read_image(parsing_path, img_id, height, width)  # BGR
    mask = (parsing[..., 0] == 255) & (parsing[..., 1] == 0) & (parsing[..., 2] == 0)
    if not mask.any():
        raise UserError(f"{parsing_path}: frame {img_id}: no head pixels (pure blue 0,0,255) in the parsing "
                        "— the head must be marked in blue")
    return np.ascontiguousarray(head[..., ::-1]), mask


def _read_landmarks(path: Path, img_id: int) -> np.ndarray:
    try:
        values = np.array(path.read_text().split(), dtype=np.float32)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: frame {img_id}: cannot read landmarks ({err}) — write 478 'x y' lines") from None
    if values.size != NUM_LANDMARKS * 2:
        raise UserError(f"{path}: frame {img_id}: {values.size // 2} landmarks, expected {NUM_LANDMARKS} "
                        "— write 478 'x y' lines")
    return values.reshape(NUM_LANDMARKS, 2)


def _meta(root: Path) -> dict:
    path = root / "transforms.json"
    if not path.is_file():
        raise UserError(f"{path}: not found — a subject folder needs transforms.json (see FORMAT.md)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not valid JSON ({err}) — re-export it") from None
    missing = [k for k in ("h", "w", "fx", "fy", "cx", "cy", "frames") if k not in meta]
    if missing:
        raise UserError(f"{path}: missing keys {missing} — see FORMAT.md")
    if not isinstance(meta["frames"], list) or not meta["frames"]:
        raise UserError(f"{path}: 'frames' is empty — the subject needs frames")
    return meta


def _parse_frames(path: Path, frames: list) -> tuple[list[int], np.ndarray, np.ndarray]:
    """img_ids, stored poses [N, 4, 4] float64 and coefficients [N, K] float32, ordered by img_id."""
    for n, f in enumerate(frames):
        if not isinstance(f, dict) or not {"img_id", "transform_matrix", "exp_ori"} <= set(f):
            raise UserError(f"{path}: frame #{n} lacks img_id, transform_matrix or exp_ori — see FORMAT.md")
    frames = sorted(frames, key=lambda f: int(f["img_id"]))
    ids, poses, coeffs = [], [], []
    k = len(frames[0]["exp_ori"])
    for f in frames:
        img_id = int(f["img_id"])
        try:
            pose = np.array(f["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            pose = np.zeros(0)
        if pose.shape != (4, 4):
            raise UserError(f"{path}: frame {img_id}: transform_matrix is not 4x4 — store a 4x4 camera-to-world")
        exp = np.array(f["exp_ori"], dtype=np.float32).reshape(-1)
        if exp.size != k:
            raise UserError(f"{path}: frame {img_id}: {exp.size} coefficients in exp_ori, the first frame has {k} "
                            "— every frame needs the same count")
        ids.append(img_id)
        poses.append(pose)
        coeffs.append(exp)
    return ids, np.stack(poses), np.stack(coeffs)


def read_expressions(path: str | os.PathLike) -> tuple[Optional[list[str]], np.ndarray]:
    """A subject folder's coefficient names (``exp_names``; None when absent) and raw coefficients [N, K] float32
    in img_id order, read and checked as ``load_subject`` reads them."""
    root = Path(path)
    meta = _meta(root)
    _, _, coeffs = _parse_frames(root / "transforms.json", meta["frames"])
    return meta.get("exp_names"), coeffs


def _rects(x0, y0, x1, y1, width: int, height: int) -> np.ndarray:
    """Integer rectangles [N, 4] (x0, y0, x1, y1), x1/y1 exclusive, clipped, at least one pixel."""
    x0 = np.clip(np.floor(x0), 0, width - 1)
    y0 = np.clip(np.floor(y0), 0, height - 1)
    x1 = np.clip(np.maximum(np.ceil(x1), x0 + 1), 1, width)
    y1 = np.clip(np.maximum(np.ceil(y1), y0 + 1), 1, height)
    x0, y0 = np.minimum(x0, x1 - 1), np.minimum(y0, y1 - 1)
    return np.stack([x0, y0, x1, y1], -1).astype(np.int32)


def landmark_rects(lms: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face, mouth and eye rectangles [N, 4] int32 from landmarks [N, 478, 2] (FORMAT.md's rules)."""
    lo, hi = lms.min(1), lms.max(1)  # [N, 2]
    c = (lo + hi) / 2
    r = 1.2 * 0.5 * np.linalg.norm(hi - lo, axis=-1)
    face = _rects(c[:, 0] - r, c[:, 1] - 1.2 * r, c[:, 0] + r, c[:, 1] + 0.8 * r, width, height)
    left, right, top, bottom = (lms[:, i] for i in MOUTH_POINTS)
    mouth = _rects(np.minimum(left[:, 0], right[:, 0]), np.minimum(top[:, 1], bottom[:, 1]),
                   np.maximum(left[:, 0], right[:, 0]), np.maximum(top[:, 1], bottom[:, 1]), width, height)
    (el, er, (t0, t1), (b0, b1)) = EYE_POINTS
    ey0 = np.minimum(lms[:, t0, 1], lms[:, t1, 1])
    ey1 = np.maximum(lms[:, b0, 1], lms[:, b1, 1])
    eye = _rects(np.minimum(lms[:, el, 0], lms[:, er, 0]), np.minimum(ey0, ey1),
                 np.maximum(lms[:, el, 0], lms[:, er, 0]), np.maximum(ey0, ey1), width, height)
    return face, mouth, eye


def _write_min_max(root: Path, lo: np.ndarray, hi: np.ndarray) -> None:
    """min_<K>.txt / max_<K>.txt as the original writes them, only when absent or different."""
    k = lo.size
    for name, values in ((f"min_{k}.txt", lo), (f"max_{k}.txt", hi)):
        path = root / name
        try:
            if path.is_file() and np.array_equal(np.loadtxt(path, dtype=np.float32).reshape(-1), values):
                continue
            np.savetxt(path, values)
        except (OSError, ValueError) as err:
            log.warning("%s: could not write the coefficient range (%s); continuing", path, err)


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _load_training_frames(root: Path, ids: list[int], height: int, width: int, device: torch.device,
                          progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(ids)
    images = torch.empty((n, height, width, 3), dtype=torch.uint8, device=device)
    masks = torch.empty((n, height, width), dtype=torch.bool, device=device)
    workers = min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (rgb, mask) in enumerate(pool.map(lambda j: _read_frame(root, j, height, width), ids)):
            images[i] = torch.from_numpy(rgb).to(device, non_blocking=False)
            masks[i] = torch.from_numpy(mask).to(device)
            if progress is not None:
                progress(i + 1, n)
    return images, masks


def load_subject(path: str | os.PathLike, *, test_last: int, device: str | torch.device = "cpu",
                 stream_from_disk: bool = False, progress: Progress = None, scale: float = FORMAT_SCALE) -> Subject:
    """Load a subject folder (or a name under ./dataset/). ``progress(done, total)`` counts the training frames
    read into memory (with ``stream_from_disk``, the frames whose landmarks were read)."""
    root = resolve_subject_path(path)
    device = torch.device(device)
    meta = _meta(root)
    tpath = root / "transforms.json"
    height, width = int(meta["h"]), int(meta["w"])
    ids, stored, raw = _parse_frames(tpath, meta["frames"])

    keep = [i for i, img_id in enumerate(ids) if (root / "head_imgs" / f"{img_id}.jpg").is_file()]
    for i in sorted(set(range(len(ids))) - set(keep)):
        log.warning("%s: frame %d has no head image, skipped", root / "head_imgs" / f"{ids[i]}.jpg", ids[i])
    ids, stored, raw = [ids[i] for i in keep], stored[keep], raw[keep]
    if test_last < 0 or len(ids) < test_last + 1:
        raise UserError(f"{tpath}: {len(ids)} usable frames, but --test-last {test_last} needs at least "
                        f"{test_last + 1} — lower --test-last")
    num_train = len(ids) - test_last

    with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
        lms = np.stack(list(pool.map(lambda j: _read_landmarks(root / "ori_imgs" / f"{j}.lms", j), ids)))
    if progress is not None and stream_from_disk:
        progress(len(ids), len(ids))
    face, mouth, eye = landmark_rects(lms, width, height)

    lo, hi = raw[:num_train].min(0), raw[:num_train].max(0)
    _write_min_max(root, lo, hi)
    clamped = np.clip(raw, lo, hi)
    coeffs = np.concatenate([np.ones((len(ids), 1), np.float32), clamped], 1)
    names = meta.get("exp_names")
    if names is not None and len(names) != raw.shape[1]:
        log.warning("%s: %d exp_names for %d coefficients, names ignored", tpath, len(names), raw.shape[1])
        names = None

    bc_path = root / "bc.jpg"
    background = np.ascontiguousarray(_read_image(bc_path, -1, height, width)[..., ::-1]) if bc_path.is_file() else None
    if background is None:
        raise UserError(f"{bc_path}: not found — the layout needs the static background image bc.jpg")

    images = masks = None
    if not stream_from_disk:
        need = num_train * height * width * 4
        free = _available_bytes(device)
        if need > DEVICE_MEMORY_FRACTION * free:
            raise UserError(f"{root}: {num_train} training frames need {need / 2**30:.1f} GiB, "
                            f"{free / 2**30:.1f} GiB free on {device} — use --stream to read frames from disk")
        images, masks = _load_training_frames(root, ids[:num_train], height, width, device, progress)

    def dev(a, dtype):
        return torch.as_tensor(a, dtype=dtype).to(device)

    return Subject(
        name=root.resolve().name, root=root,
        intrinsics=Intrinsics(height, width, float(meta["fx"]), float(meta["fy"]), float(meta["cx"]), float(meta["cy"])),
        img_ids=ids, poses=dev(renderer_from_stored(stored, scale), torch.float32),
        coeffs=dev(coeffs, torch.float32), coeff_names=list(names) if names is not None else None,
        coeff_min=dev(lo, torch.float32), coeff_max=dev(hi, torch.float32), num_train=num_train,
        face_rects=dev(face, torch.int32), mouth_rects=dev(mouth, torch.int32), eye_rects=dev(eye, torch.int32),
        landmarks=torch.from_numpy(lms), background=dev(background, torch.uint8), device=device,
        images=images, masks=masks, stream_from_disk=stream_from_disk)


def load_configured_subject(data: DataConfig, device: str | torch.device, *, folder: str | os.PathLike | None = None,
                            stream_from_disk: bool | None = None, progress: Progress = None) -> Subject:
    """The subject a config's data section describes (``folder`` and ``stream_from_disk`` override its
    ``subject`` and ``stream_from_disk``). The one place ``neutral_only`` applies: every frame's
    coefficients become the neutral face's."""
    subject = load_subject(folder if folder is not None else data.subject, test_last=data.test_last, device=device,
                           stream_from_disk=data.stream_from_disk if stream_from_disk is None else stream_from_disk,
                           progress=progress)
    if data.neutral_only:
        subject.coeffs[:, 1:] = 0.0
    return subject
