"""Ray batches drawn from a subject's frames: random colour rays (mostly inside the face rectangle),
square patches for the perceptual loss, and every pixel of one frame."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from nerfbs.data.camera import pixel_rays
from nerfbs.data.subject import Subject


@dataclass
class RayBatch:
    """R rays drawn from B frames. ``frame_slot`` says which of the B frames a ray belongs to."""

    origins: torch.Tensor  # [R, 3] float32
    directions: torch.Tensor  # [R, 3] float32, unit
    frame_slot: torch.Tensor  # [R] int32 in [0, B)
    rgb: torch.Tensor  # [R, 3] float32 in [0, 1], head_imgs pixel
    mask: torch.Tensor  # [R] float32, 1 on the head (parsing blue)
    background: torch.Tensor  # [R, 3] float32 in [0, 1], bc.jpg pixel
    pixels: torch.Tensor  # [R, 2] long (u, v)
    image_shape: Optional[tuple[int, int]] = None  # (rows, cols) when the rays form a grid

    def __len__(self) -> int:
        return self.origins.shape[0]


class RaySampler:
    """Draws ray batches with their targets from a subject's frames, on ``device``."""

    def __init__(self, subject: Subject, device: str | torch.device | None = None):
        self.subject = subject
        self.device = torch.device(device) if device is not None else subject.device
        s = subject
        self.poses = s.poses.to(self.device)
        self.background = s.background.to(self.device)
        self.rects = {"face": s.face_rects.to(self.device), "mouth": s.mouth_rects.to(self.device),
                      "eye": s.eye_rects.to(self.device)}
        self.whole_image = torch.tensor([0, 0, s.width, s.height], device=self.device, dtype=torch.int32)

    def _rand(self, shape, generator: torch.Generator | None) -> torch.Tensor:
        dev = generator.device if generator is not None else self.device
        return torch.rand(shape, generator=generator, device=dev).to(self.device)

    def _targets(self, frames: torch.Tensor, slot: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                 train_frames: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rgb [..., 3], mask [...], background [..., 3]) float32 at integer pixels (u, v) [...] of frames[slot]
        (slot, u and v of one shape)."""
        s = self.subject
        if s.images is not None and (train_frames or bool((frames < s.num_train).all())):
            fi = frames.to(s.images.device)[slot.to(s.images.device)]
            uu, vv = u.to(s.images.device), v.to(s.images.device)
            rgb, mask = s.images[fi, vv, uu].to(self.device), s.masks[fi, vv, uu].to(self.device)
        else:
            images, masks = s.frames(frames)
            images, masks = images.to(self.device), masks.to(self.device)
            rgb, mask = images[slot, v, u], masks[slot, v, u]
        return rgb.float() / 255.0, mask.float(), self.background[v, u].float() / 255.0

    def _bilinear_targets(self, frames: torch.Tensor, slot: torch.Tensor, uf: torch.Tensor, vf: torch.Tensor,
                          train_frames: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``_targets`` read bilinearly at real pixel coordinates (uf, vf) [R] inside the image: one read of
        the four neighbours [R, 4], then their weighted sum."""
        s = self.subject
        u0, v0 = uf.floor().long(), vf.floor().long()
        u1, v1 = (u0 + 1).clamp(max=s.width - 1), (v0 + 1).clamp(max=s.height - 1)
        fu, fv = uf - u0, vf - v0
        weights = torch.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv], 1)  # [R, 4]
        rgb, mask, background = self._targets(frames, slot[:, None].expand(-1, 4), torch.stack([u0, u1, u0, u1], 1),
                                              torch.stack([v0, v0, v1, v1], 1), train_frames)
        w = weights[..., None]
        return (rgb * w).sum(1), (mask * weights).sum(1), (background * w).sum(1)

    def _batch(self, frames: torch.Tensor, slot: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
               image_shape: tuple[int, int] | None = None, *, train_frames: bool = False,
               offsets: torch.Tensor | None = None) -> RayBatch:
        """Targets and rays of pixels (u, v) [R] of frames[slot] (frames [B] long, slot [R] long).

        ``train_frames``: the caller guarantees every frame is a training frame, so the in-memory images serve
        without the check (a host sync on the GPU). ``offsets`` [R, 2]: sub-pixel shifts of the rays, the
        targets then read bilinearly there."""
        s = self.subject
        uf, vf = u.float(), v.float()
        if offsets is None:
            rgb, mask, background = self._targets(frames, slot, u, v, train_frames)
        else:
            uf = (uf + offsets[:, 0]).clamp(0, s.width - 1)
            vf = (vf + offsets[:, 1]).clamp(0, s.height - 1)
            rgb, mask, background = self._bilinear_targets(frames, slot, uf, vf, train_frames)
        origins, directions = pixel_rays(self.poses[frames], s.fx, s.fy, s.cx, s.cy, uf, vf, slot)
        return RayBatch(origins=origins, directions=directions, frame_slot=slot.to(torch.int32), rgb=rgb, mask=mask,
                        background=background, pixels=torch.stack([u, v], -1), image_shape=image_shape)

    def _frames(self, frame_indices, train_frames: bool) -> torch.Tensor:
        """Frame indices as a long [B] tensor on the device; checked against the subject unless the caller
        guarantees training frames (the training loop's own draws: checking them would sync with the GPU)."""
        frames = torch.as_tensor(frame_indices).long().reshape(-1)
        if not train_frames and frames.numel():
            lo, hi = int(frames.min()), int(frames.max())
            if lo < 0 or hi >= self.subject.num_frames:
                raise ValueError(f"frame indices must lie in [0, {self.subject.num_frames})")
        return frames.to(self.device)

    def sample(self, frame_indices: torch.Tensor, rays_per_image: int, face_fraction: float = 0.9,
               generator: torch.Generator | None = None, mouth_fraction: float = 0.0, *,
               train_frames: bool = False, subpixel: bool = False) -> RayBatch:
        """``rays_per_image`` random pixels from each of the B frames: round(face_fraction x R) inside the
        frame's face rectangle (of which round(mouth_fraction x R) inside its mouth rectangle), the rest
        anywhere. Rays are grouped by frame (slot b owns rays [b R, (b+1) R)). ``train_frames``: the caller
        guarantees the indices are training frames already on the device (no host sync: see ``_frames``).
        ``subpixel``: each ray passes through a random point of its pixel's square (+-0.5 pixel) instead of
        the pixel itself, its targets read bilinearly there."""
        frames = self._frames(frame_indices, train_frames)
        b, r = frames.numel(), int(rays_per_image)
        n_face = int(round(r * face_fraction))
        n_mouth = min(int(round(r * mouth_fraction)), n_face)
        rect = torch.cat([self.rects["mouth"][frames][:, None].expand(b, n_mouth, 4),
                          self.rects["face"][frames][:, None].expand(b, n_face - n_mouth, 4),
                          self.whole_image.expand(b, r - n_face, 4)], 1).reshape(-1, 4).long()  # [B R, 4]
        lo, hi = rect[:, :2], rect[:, 2:]
        uv = lo + (self._rand((b * r, 2), generator) * (hi - lo)).long()
        uv = torch.minimum(uv, hi - 1)
        slot = torch.arange(b, device=self.device).repeat_interleave(r)
        offsets = self._rand((b * r, 2), generator) - 0.5 if subpixel else None
        return self._batch(frames, slot, uv[:, 0], uv[:, 1], train_frames=train_frames, offsets=offsets)

    def sample_patch(self, frame_index: int | torch.Tensor, rect: str = "mouth", size: int = 32,
                     generator: torch.Generator | None = None, *, train_frames: bool = False) -> RayBatch:
        """A size x size pixel patch of one frame placed at random over its ``rect`` ("mouth", "face" or
        "eye") rectangle, kept inside the image; rays in row-major order (R = size * size). Computed on the
        device throughout (no host sync given ``train_frames``, as ``sample``)."""
        s = self.subject
        if rect not in self.rects:
            raise ValueError(f"sample_patch: rect must be one of {sorted(self.rects)}, got {rect!r}")
        if size > min(s.width, s.height):
            raise ValueError(f"sample_patch: a {size}px patch does not fit a {s.width}x{s.height} image")
        frames = self._frames(frame_index, train_frames)[:1]
        lo, hi = self.rects[rect][frames[0]].long().view(2, 2)  # (x0, y0), (x1, y1)
        span = torch.maximum(hi - size, lo) - lo + 1
        start = lo + (self._rand(2, generator) * span).long()
        x0, y0 = start[0].clamp(max=s.width - size), start[1].clamp(max=s.height - size)
        ar = torch.arange(size, device=self.device)
        v, u = torch.meshgrid(y0 + ar, x0 + ar, indexing="ij")
        slot = torch.zeros(size * size, dtype=torch.long, device=self.device)
        return self._batch(frames, slot, u.reshape(-1), v.reshape(-1), (size, size), train_frames=train_frames)
