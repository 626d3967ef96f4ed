"""Frame preprocessing: the official SSA test-time resize and normalisation.

This module is the ONE place where ssa preprocesses video frames; inference and training alike
call it, so that every path feeds the network the same pixels as the official SSA code
(detectron2 ``ResizeShortestEdge`` + ``ResizeTransform``, then ``(x - mean) / std``):

1. target size: scale the short side to ``short_side``, cap the long side at ``max_size``, then
   ``int(x + 0.5)`` per side (not Python's banker's ``round()``), see :func:`resized_size`;
2. resize the uint8 RGB frame with PIL's BILINEAR filter (antialiased when shrinking), keeping
   uint8, see :func:`resize_frame`;
3. normalise on the 0-255 scale with the OpenAI CLIP mean/std x 255, see :func:`normalize`.

Zero padding to a multiple of 32 happens later, inside the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DEFAULT_SHORT_SIDE",
    "FramePreprocessor",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "normalize",
    "preprocess_frames",
    "resize_frame",
    "resized_size",
]

#: Official test-time short side (MeViS and joint configs) and long-side cap.
DEFAULT_SHORT_SIDE = 448
DEFAULT_MAX_SIZE = 1333

#: Per-channel RGB mean and std on the 0-255 scale (OpenAI CLIP mean/std x 255; official yaml values).
PIXEL_MEAN: tuple[float, float, float] = (122.7709383, 116.7460125, 104.09373615)
PIXEL_STD: tuple[float, float, float] = (68.5005327, 66.6321579, 70.32316305)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def resized_size(
    height: int, width: int, short_side: int = DEFAULT_SHORT_SIDE, max_size: int = DEFAULT_MAX_SIZE
) -> tuple[int, int]:
    """Return the official ``(new_h, new_w)`` for a ``height`` x ``width`` frame.

    Same floating-point steps as detectron2's ``ResizeShortestEdge.get_output_shape``: the short side
    becomes ``short_side``, the other ``short_side / min(h, w) * side``; if the long side then exceeds
    ``max_size`` both are scaled by ``max_size / long``; each side is rounded with ``int(x + 0.5)``.
    """
    h = _check_positive_int("height", height)
    w = _check_positive_int("width", width)
    size = float(_check_positive_int("short_side", short_side))
    cap = _check_positive_int("max_size", max_size)
    scale = size / min(h, w)
    if h < w:
        new_h, new_w = size, scale * w
    else:
        new_h, new_w = scale * h, size
    if max(new_h, new_w) > cap:
        scale = cap * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def _check_frame(image: object, index: int | None = None) -> np.ndarray:
    where = "image" if index is None else f"frame {index}"
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{where} must be a numpy.ndarray (H, W, 3) uint8, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{where} must have dtype uint8 (RGB, 0-255), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{where} must have shape (H, W, 3) RGB, got {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{where} is empty: shape {tuple(image.shape)}")
    return image


def resize_frame(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 (H, W, 3) RGB frame to ``size = (h, w)`` with PIL BILINEAR; returns uint8 (h, w, 3).

    This is detectron2's ``ResizeTransform.apply_image`` for uint8 input (PIL's bilinear filter,
    which widens its support, i.e. antialiases, when shrinking). An unchanged size returns a copy.
    """
    image = _check_frame(image)
    new_h = _check_positive_int("target height", size[0])
    new_w = _check_positive_int("target width", size[1])
    if image.shape[:2] == (new_h, new_w):
        return image.copy()
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR)).copy()


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """``(x - PIXEL_MEAN) / PIXEL_STD`` per RGB channel on the 0-255 scale, for (..., 3, h, w) input.

    Accepts uint8 or floating tensors (values 0-255); returns float32 (float64 stays float64).
    """
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
    if frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"frames must have shape (..., 3, h, w), got {tuple(frames.shape)}")
    if frames.dtype == torch.float64:
        dtype = torch.float64
    elif frames.dtype == torch.uint8 or frames.is_floating_point():
        dtype = torch.float32
    else:
        raise TypeError(f"frames must be uint8 or floating point, got {frames.dtype}")
    x = frames.to(dtype)
    mean = torch.tensor(PIXEL_MEAN, dtype=dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, dtype=dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def preprocess_frames(
    images: Sequence[np.ndarray],
    short_side: int | None = DEFAULT_SHORT_SIDE,
    max_size: int = DEFAULT_MAX_SIZE,
) -> torch.Tensor:
    """Resize (official rule) and normalise uint8 (H, W, 3) RGB frames into a (T, 3, h, w) float32 tensor.

    ``short_side=None`` keeps the frames at their own size. All frames must share one size.
    """
    if isinstance(images, np.ndarray):
        raise TypeError("images must be a sequence of (H, W, 3) uint8 arrays, not one array; use list(array)")
    if len(images) == 0:
        raise ValueError("images is empty: need at least one frame")
    frames = FramePreprocessor(short_side, max_size)
    for image in images:
        frames.add(image)
    return frames.take()


class FramePreprocessor:
    """:func:`preprocess_frames` one frame at a time, for decoded video: :meth:`add` checks a frame and
    resizes it at once, so that the caller can drop the full-size frame (a 720p frame is 2.7 MB, its
    448-line copy 1.1 MB); :meth:`take` returns the frames added since the last take as one
    (k, 3, h, w) float32 tensor. Every frame added over the object's life must have the size of the
    first one. Same pixels as :func:`preprocess_frames` on the same frames."""

    def __init__(self, short_side: int | None = DEFAULT_SHORT_SIDE, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if short_side is not None:
            _check_positive_int("short_side", short_side)
        _check_positive_int("max_size", max_size)
        self.short_side, self.max_size = short_side, max_size
        self.size: tuple[int, int] | None = None  # (H, W) of the frames as given
        self.count = 0  # frames added so far
        self._resized: list[np.ndarray] = []

    def add(self, image: np.ndarray) -> None:
        """Check one uint8 (H, W, 3) RGB frame and keep its resized copy (never the frame itself)."""
        frame = _check_frame(image, self.count)
        if self.size is None:
            self.size = (frame.shape[0], frame.shape[1])
        elif frame.shape[:2] != self.size:
            raise ValueError(
                f"all frames must have the same size: frame 0 is {self.size[0]}x{self.size[1]} (HxW), "
                f"frame {self.count} is {frame.shape[0]}x{frame.shape[1]}"
            )
        if self.short_side is not None:
            frame = resize_frame(frame, resized_size(*self.size, self.short_side, self.max_size))
        self._resized.append(frame)  # without resizing: the caller's array, not a copy
        self.count += 1

    def take(self) -> torch.Tensor:
        """The frames added since the last call, resized and normalised: (k, 3, h, w) float32."""
        if not self._resized:
            raise ValueError("no frame was added since the last take()")
        stacked = torch.from_numpy(np.stack(self._resized)).permute(0, 3, 1, 2)
        self._resized = []
        return normalize(stacked).contiguous()
