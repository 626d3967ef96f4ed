"""Pixel motion features (not in the paper, ``SSAConfig.motion_features``, off by default).

In the paper every pixel-level feature is computed frame by frame; motion only enters at the query
level (trajectories, temporal enhancement). Two objects that look the same then have the same mask
features F_mask^t, and a mask Q_emb · F_mask^t covers both of them whatever Q_emb is: an expression that
only motion can resolve ("the red square moving left" beside an identical one moving right) cannot be
segmented. This module gives the pixel features a local motion cue: a small convolutional encoder reads
each frame's temporal difference x_t - x_{t-1} (the previous frame of the clip; for a clip's first frame
without a known predecessor the forward difference x_1 - x_0 stands in) and adds

    F_mask^t += W_m · E(x_t - x_{t-1})       at stride 4 (the mask features)
    F_8^t    += W_8 · E(x_t - x_{t-1})       at stride 8 (what the frame decoder attends to)

with W_m, W_8 zero-initialised, so a model starts out as the paper's network. E reads the differences
only, not x_t: with x_t as well it learnt appearance features that barely responded to motion (README,
"Motion-only expressions").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PixelMotionEncoder", "temporal_differences"]


def temporal_differences(frames: Tensor, previous: Tensor | None = None) -> Tensor:
    """x_t - x_{t-1} for clips (B, T, 3, H, W); ``previous`` (B, 3, H, W) is the frame before each clip.
    Without it the first frame takes the forward difference x_1 - x_0 (zeros for one-frame clips)."""
    if previous is not None:
        before = torch.cat([previous[:, None].to(frames.dtype), frames[:, :-1]], dim=1)
        return frames - before
    diff = frames[:, 1:] - frames[:, :-1]  # (B, T-1, 3, H, W)
    first = diff[:, :1] if diff.shape[1] else torch.zeros_like(frames[:, :1])
    return torch.cat([first, diff], dim=1)


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation)


class PixelMotionEncoder(nn.Module):
    """E: the frames' temporal differences → motion features at strides 4 and 8."""

    def __init__(self, hidden_dim: int, mask_dim: int, width: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            _conv(3, width, stride=2), nn.ReLU(inplace=True),  # stride 2
            _conv(width, width, stride=2), nn.ReLU(inplace=True),  # stride 4
            _conv(width, width), nn.ReLU(inplace=True),
            _conv(width, width, dilation=2), nn.ReLU(inplace=True),
        )
        self.to_mask = nn.Conv2d(width, mask_dim, 1)  # W_m
        self.to_stride8 = _conv(width, hidden_dim, stride=2)  # W_8
        for proj in (self.to_mask, self.to_stride8):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, frames: Tensor, previous: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """frames (B, T, 3, H, W) with H, W multiples of 8 → (B·T, mask_dim, H/4, W/4) and
        (B·T, hidden_dim, H/8, W/8)."""
        b, t, _, h, w = frames.shape
        if h % 8 or w % 8:
            raise ValueError(f"motion features need frame sides divisible by 8, got {h}x{w}")
        if previous is not None and previous.shape != (b, 3, h, w):
            raise ValueError(f"the previous frames must be (B, 3, H, W) = {(b, 3, h, w)}, "
                             f"got {tuple(previous.shape)}")
        x = temporal_differences(frames, previous)  # (B, T, 3, H, W)
        e = self.encoder(x.reshape(b * t, 3, h, w))  # (B·T, width, H/4, W/4)
        return self.to_mask(e), self.to_stride8(e)
