"""Object selection (§3.4): which video queries are the referred object(s).

- multi-object (MeViS): every query whose score exceeds a threshold (0.5); their masks are united;
  no query kept → an empty mask in every frame.
- single-object (Ref-YouTube-VOS, Ref-DAVIS17): the arg-max query.

This module owns the masks: :func:`mask_product` (mask embeddings times the mask features, used by the
model and the pipeline) and :func:`upsample_masks`, as the official network makes them: the logits on
the padded stride-4 grid are upsampled bilinearly to the padded model-input size, cropped to the
model-input size, upsampled to the output size, and thresholded at logit > 0. Only the selected queries
are upsampled.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Mode", "select_queries", "select_masks", "mask_product", "upsample_masks", "query_masks"]

Mode = Literal["multi", "single"]
"""Query selection: "multi" (every query above the threshold, united) or "single" (the best one)."""


def mask_product(embed: Tensor, features: Tensor) -> Tensor:
    """Mask logits (..., K, T, h, w) of K mask embeddings (..., K, C) on T frames' mask features
    (..., T, C, h, w): m = Q_emb · F_mask, per frame.

    One product per frame on the features as they lie: ``einsum`` would first copy them to
    (C, T·h·w), a 367 MB copy per 16-frame chunk at 448 px (8x slower here), and in training would
    keep one such copy per call for the backward pass. The result is a (..., K, T, h, w) view of a
    (..., T, K, h·w) tensor."""
    h, w = features.shape[-2:]
    logits = torch.matmul(embed.unsqueeze(-3), features.flatten(-2))  # (..., T, K, h·w)
    return logits.transpose(-3, -2).unflatten(-1, (h, w))  # (..., K, T, h, w)


def select_queries(class_logits: Tensor, mode: Mode = "multi", threshold: float = 0.5) -> Tensor:
    """Indices (K,) of the selected queries of one pair, from its class logits (N, 2)."""
    if class_logits.dim() != 2 or class_logits.shape[-1] != 2:
        raise ValueError(f"class logits must be (N, 2), got {tuple(class_logits.shape)}")
    scores = class_logits.softmax(dim=-1)[:, 0]  # (N,)
    if mode == "multi":
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        return torch.nonzero(scores > threshold).flatten()
    if mode == "single":
        return scores.argmax().reshape(1)
    raise ValueError(f"mode must be 'multi' or 'single', got {mode!r}")


def upsample_masks(logits: Tensor, model_size: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Binary masks (..., H, W) at ``size`` from mask logits (..., h4, w4) on the padded stride-4 grid of
    frames fed to the model at ``model_size`` (h, w): bilinear to (4·h4, 4·w4), crop to (h, w),
    bilinear to (H, W), logit > 0 (the official two-stage upsampling)."""
    h, w = model_size
    lead, (h4, w4) = logits.shape[:-2], logits.shape[-2:]
    if h > 4 * h4 or w > 4 * w4:
        raise ValueError(f"mask logits {h4}x{w4} cover {4 * h4}x{4 * w4} pixels, less than the model "
                         f"input {h}x{w}")
    x = logits.float().reshape(-1, 1, h4, w4)
    x = F.interpolate(x, size=(4 * h4, 4 * w4), mode="bilinear", align_corners=False)[..., :h, :w]
    if (h, w) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return (x > 0).reshape(*lead, *size)


def query_masks(embed: Tensor, features: Tensor, model_size: tuple[int, int], size: tuple[int, int]
                ) -> Tensor:
    """Binary masks (K, T, H, W) at ``size`` of K selected queries: their mask embeddings (K, C) times T
    frames' mask features (T, C, h4, w4) (:func:`mask_product`, in fp32), upsampled by
    :func:`upsample_masks`. What the pipeline makes, chunk by chunk, for the selected queries only."""
    if embed.shape[0] == 0:
        return torch.zeros((0, features.shape[0], *size), dtype=torch.bool, device=features.device)
    return upsample_masks(mask_product(embed.float(), features.float()), model_size, size)


def select_masks(class_logits: Tensor, mask_logits: Tensor, model_size: tuple[int, int],
                 size: tuple[int, int], mode: Mode = "multi", threshold: float = 0.5
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Masks of one pair at ``size`` (H, W).

    class_logits (N, 2), mask_logits (N, T, h4, w4) on the padded grid of frames of ``model_size``.
    Returns the united mask (T, H, W) bool, the per-object masks (K, T, H, W) bool and their scores (K,).
    """
    if mask_logits.dim() != 4 or mask_logits.shape[0] != class_logits.shape[0]:
        raise ValueError(
            f"mask logits must be (N, T, h, w) with N = {class_logits.shape[0]}, "
            f"got {tuple(mask_logits.shape)}"
        )
    keep = select_queries(class_logits, mode, threshold)
    scores = class_logits.softmax(dim=-1)[keep, 0]
    _, t, _, _ = mask_logits.shape
    if keep.numel() == 0:
        empty = torch.zeros((t, *size), dtype=torch.bool, device=mask_logits.device)
        return empty, empty[None, :0].reshape(0, t, *size), scores
    objects = upsample_masks(mask_logits[keep], model_size, size)  # (K, T, H, W), the kept queries only
    return objects.any(dim=0), objects, scores
