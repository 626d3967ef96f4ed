"""Pixel motion features: **experimental, not in the official network**
(``SSAConfig.experimental_motion_features``, off by default).

In the official network every pixel-level feature is computed frame by frame and motion enters only at
the query level (trajectories, temporal enhancement). Two objects that look the same then have the same
mask features, and a mask Q_emb · F_mask^t covers both whatever Q_emb is: an expression that only motion
resolves ("the square moving left" beside an identical one moving right) cannot be segmented by the
masks alone. This module gives the pixel features a local motion cue. A small convolutional encoder E
reads each frame's temporal difference x_t - x_{t-1} (the frame before it; a clip's first frame without
a known predecessor takes the forward difference x_1 - x_0) once per frame, expression-independent, and
each (frame, expression) row of the pixel decoder's output gets

    F_mask^t       += W_f · E(x_t - x_{t-1})     frame-level mask features (stride 4)
    F_mask^video,t += W_v · E(x_t - x_{t-1})     the video decoder's mask features (stride 4)
    F_8^t          += W_8 · E(x_t - x_{t-1})     the stride-8 level the frame decoder attends to

W_f, W_v, W_8 start at zero, so a model gains the module without changing its output, and a trained
model can be continued with it. E reads the differences only (reading x_t as well, an earlier version
learnt appearance and barely responded to motion).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PixelMotionEncoder", "temporal_differences"]


def temporal_differences(frames: Tensor, previous: Tensor | None = None) -> Tensor:
    """x_t - x_{t-1} for clips (B, T, 3, H, W). ``previous`` (B, 3, H, W) is the frame before each
    clip; without it the first frame takes the forward difference x_1 - x_0 (zeros for one frame)."""
    if previous is not None:
        before = torch.cat([previous[:, None].to(frames.dtype), frames[:, :-1]], dim=1)
        return frames - before
    diff = frames[:, 1:] - frames[:, :-1]  # (B, T-1, 3, H, W)
    first = diff[:, :1] if diff.shape[1] else torch.zeros_like(frames[:, :1])
    return torch.cat([first, diff], dim=1)


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation)


class PixelMotionEncoder(nn.Module):
    """E and the zero-initialised projections W_f, W_v (stride 4) and W_8 (stride 8)."""

    def __init__(self, hidden_dim: int, mask_dim: int, width: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            _conv(3, width, stride=2), nn.ReLU(inplace=True),  # stride 2
            _conv(width, width, stride=2), nn.ReLU(inplace=True),  # stride 4
            _conv(width, width), nn.ReLU(inplace=True),
            _conv(width, width, dilation=2), nn.ReLU(inplace=True),
        )
        self.to_mask = nn.Conv2d(width, mask_dim, 1)  # W_f
        self.to_video_mask = nn.Conv2d(width, mask_dim, 1)  # W_v
        self.to_stride8 = _conv(width, hidden_dim, stride=2)  # W_8
        for proj in (self.to_mask, self.to_video_mask, self.to_stride8):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def encode(self, frames: Tensor, previous: Tensor | None = None) -> Tensor:
        """E(x_t - x_{t-1}) of clips (B, T, 3, H, W), H and W multiples of 8 → (B·T, width, H/4, W/4)."""
        b, t, _, h, w = frames.shape
        if h % 8 or w % 8:
            raise ValueError(f"motion features need frame sides divisible by 8, got {h}x{w}")
        if previous is not None and tuple(previous.shape) != (b, 3, h, w):
            raise ValueError(f"the previous frames must be (B, 3, H, W) = {(b, 3, h, w)}, "
                             f"got {tuple(previous.shape)}")
        x = temporal_differences(frames, previous)  # (B, T, 3, H, W)
        return self.encoder(x.reshape(b * t, 3, h, w))

    def project(self, motion: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encoded rows (R, width, H/4, W/4) → what each row's frame-level mask features, video mask
        features (R, mask_dim, H/4, W/4) and stride-8 level (R, hidden_dim, H/8, W/8) gain."""
        return self.to_mask(motion), self.to_video_mask(motion), self.to_stride8(motion)
