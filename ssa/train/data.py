"""Training clips (docs/design.md §5): 8 frames within ±10 of a reference frame, resized, cropped, flipped.

Every random choice of a clip comes from a generator seeded with ``(seed, epoch, index)``, so a clip
does not depend on the process that draws it, on data-loader workers or on what was drawn before: a
run split over ranks sees the same clips as a single process, and a resumed run the same as an
uninterrupted one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from ssa.data.datasets import ClipSampler, ReferringVideoDataset
from ssa.preprocessing import normalize, resize_frame, resized_size

__all__ = ["TrainBatch", "ReferringClips", "collate_clips", "flip_expression", "batch_keys"]

_LEFT_RIGHT = re.compile(r"\b(left|right)(most)?\b", re.IGNORECASE)


def flip_expression(text: str) -> str:
    """Swap "left" and "right" (a horizontally flipped clip must keep the expression true)."""
    def swap(m: re.Match) -> str:
        word = m.group(1)
        new = {"left": "right", "right": "left"}[word.lower()]
        new = new.capitalize() if word[0].isupper() else new
        return new + (m.group(2) or "")

    return _LEFT_RIGHT.sub(swap, text)


@dataclass
class TrainBatch:
    """B clips: frames (B, T, 3, H, W) CLIP-normalised, zero-padded to a common size; targets[b] the
    (K_b, T, H, W) bool masks of the referred objects (padding False); the expressions."""

    frames: Tensor
    targets: list[Tensor]
    expressions: list[str]
    keys: list[tuple[int, int]]  # (epoch, index) of each clip

    def to(self, device: torch.device | str) -> TrainBatch:
        targets = [t.to(device, non_blocking=True) for t in self.targets]
        return TrainBatch(self.frames.to(device, non_blocking=True), targets, self.expressions, self.keys)


class ReferringClips(torch.utils.data.Dataset):
    """Training clips of a referring dataset (MeViS, Ref-YouTube-VOS, Ref-DAVIS, synthetic).

    Items are addressed by ``(epoch, index)``. ``scales``: short sides to resize to (one drawn per clip;
    the long side is capped at ``max_size``); ``crop``: random crop of at most ``crop × crop`` pixels
    (re-drawn to keep a target pixel when there is one) or None; ``hflip``: flip half of the clips,
    swapping "left" and "right" in their expressions.
    """

    def __init__(self, dataset: ReferringVideoDataset, *, num_frames: int = 8, window: int = 10,
                 scales: Sequence[int] = (448,), max_size: int = 1333, crop: int | None = None,
                 hflip: bool = True, seed: int = 0) -> None:
        if not dataset.has_masks:
            raise ValueError(f"{dataset!r} has no ground-truth masks: it cannot be used for training")
        if len(dataset) == 0:
            raise ValueError(f"{dataset!r} has no expression to train on")
        if not scales or min(scales) < 32:
            raise ValueError(f"scales must be short sides >= 32 pixels, got {tuple(scales)}")
        if crop is not None and crop < 32:
            raise ValueError(f"crop must be >= 32 pixels or None, got {crop}")
        self.dataset = dataset
        self.num_frames, self.window = int(num_frames), int(window)
        self.scales = tuple(int(s) for s in scales)
        self.max_size, self.crop, self.hflip = int(max_size), crop, hflip
        self.seed = int(seed)
        self._visible: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def _visibility(self, index: int) -> np.ndarray:
        if index not in self._visible:
            masks, _ = self.dataset.load_masks(index)
            self._visible[index] = masks.any(axis=(0, 2, 3))  # (T_video,)
        return self._visible[index]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        visible = self._visibility(index)
        clip = ClipSampler(self.num_frames, self.window, rng=rng).sample(len(visible), visible)
        sample = self.dataset.load(index, clip)
        frames = np.stack(sample.frames)  # (T, H, W, 3) uint8
        masks = sample.masks  # (K, T, H, W) bool: the referred objects
        h0, w0 = frames.shape[1:3]
        h, w = resized_size(h0, w0, int(rng.choice(self.scales)), self.max_size)
        if (h, w) != (h0, w0):  # the official resize, as at inference (ssa.preprocessing)
            frames = np.stack([resize_frame(f, (h, w)) for f in frames])
            resized = np.zeros((masks.shape[0], len(clip), h, w), dtype=bool)
            for k, obj in enumerate(masks):
                for t, m in enumerate(obj):
                    m8 = m.astype(np.uint8)
                    resized[k, t] = cv2.resize(m8, (w, h), interpolation=cv2.INTER_NEAREST) > 0
            masks = resized
        if self.crop is not None and (h > self.crop or w > self.crop):
            ch, cw = min(h, self.crop), min(w, self.crop)
            for _ in range(10):
                y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                if not masks.any() or masks[:, :, y:y + ch, x:x + cw].any():
                    break
            frames, masks = frames[:, y:y + ch, x:x + cw], masks[:, :, y:y + ch, x:x + cw]
        expression = sample.expression
        if self.hflip and rng.random() < 0.5:
            frames, masks = frames[:, :, ::-1], masks[..., ::-1]
            expression = flip_expression(expression)
        x = normalize(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2))  # (T, 3, h, w)
        masks = torch.from_numpy(np.ascontiguousarray(masks))
        item = {
            "frames": x.contiguous(),
            "masks": masks,  # (K, T, h, w)
            "expression": expression,
            "key": (int(epoch), int(index)),
        }
        return item


def collate_clips(items: list[dict]) -> TrainBatch:
    """Pad clips to the largest height and width in the batch (frames with 0 = the mean colour after
    normalisation, masks with False) and stack them."""
    h = max(it["frames"].shape[-2] for it in items)
    w = max(it["frames"].shape[-1] for it in items)
    t = items[0]["frames"].shape[0]
    frames = torch.zeros(len(items), t, 3, h, w)
    def pad(masks: Tensor) -> Tensor:
        out = torch.zeros(masks.shape[0], t, h, w, dtype=torch.bool)
        out[..., :masks.shape[-2], :masks.shape[-1]] = masks
        return out

    for b, it in enumerate(items):
        fh, fw = it["frames"].shape[-2:]
        frames[b, :, :, :fh, :fw] = it["frames"]
    targets = [pad(it["masks"]) for it in items]
    return TrainBatch(frames, targets, [it["expression"] for it in items], [it["key"] for it in items])


def batch_keys(num_items: int, micro_batch: int, *, rank: int, world_size: int, seed: int,
               start_batch: int = 0) -> Iterator[list[tuple[int, int]]]:
    """This rank's micro-batches of ``(epoch, index)`` keys, from micro-batch ``start_batch`` on.

    Each epoch is one seeded permutation of the items; the global micro-batch ``g`` is items
    ``[g·B·W, (g+1)·B·W)`` of the epoch stream and rank ``r`` takes every W-th of them, so the global
    batch does not depend on the number of ranks. The tail of an epoch that does not fill a global
    batch is dropped.
    """
    per_global = micro_batch * world_size
    per_epoch = num_items // per_global
    if per_epoch == 0:
        raise ValueError(
            f"the dataset has {num_items} items, fewer than one global batch of {per_global} "
            f"({micro_batch} per rank x {world_size} ranks)"
        )
    g = start_batch
    while True:
        epoch, position = divmod(g, per_epoch)
        order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        chunk = order[position * per_global:(position + 1) * per_global].tolist()
        yield [(epoch, i) for i in chunk[rank::world_size]]
        g += 1
