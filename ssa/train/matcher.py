"""Hungarian matching of predicted queries to ground-truth objects, and point sampling of masks.

Training (Eq. 8) treats the N queries of a frame (L_f) or of a clip (L_v) as a set prediction: each
ground-truth object is assigned to exactly one query by minimising

    C[i, k] = w_cls · (−p_i(referred)) + w_bce · BCE(m_i, g_k) + w_dice · Dice(m_i, g_k)

over one-to-one assignments (``scipy.optimize.linear_sum_assignment``). Masks are compared on a set of
points in normalised image coordinates rather than on full grids, which keeps the cost independent of
the resolution of either side: the predicted logits live on the H/4 × W/4 grid of the unpadded frames,
the targets may be at any resolution, and the same point (x, y) ∈ [0, 1]² lands on the same image
location in both (``grid_sample`` with ``align_corners=False``: 0 and 1 are the outer edges of the
first and last pixel).

Conventions: points are ``(..., M, 2)`` in (x, y) order (x along the width), as ``grid_sample``
expects. Predictions are sampled bilinearly; binary targets with nearest-neighbour lookup, so a
sampled target is the label of the pixel that contains the point (bilinear sampling would turn every
boundary point into a soft label that no confident prediction can reach).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = [
    "HungarianMatcher",
    "match_cost",
    "pairwise_bce_cost",
    "pairwise_dice_cost",
    "point_sample",
    "uniform_points",
    "uncertain_points",
]

# linear_sum_assignment rejects NaN/inf; a diverged prediction still needs *an* assignment (its loss
# will show the divergence), so non-finite costs are clamped to this magnitude.
_COST_CLAMP = 1e8


# -- point sampling ------------------------------------------------------------------------------------
def uniform_points(shape: tuple[int, ...], num_points: int, *, device: torch.device | str | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """``num_points`` uniform random points in [0, 1]², shape ``(*shape, num_points, 2)`` as (x, y).

    Drawn from ``generator`` (on the generator's device, then moved to ``device``) or, without one, from
    the global RNG of ``device`` — reproducible under ``torch.manual_seed`` either way.
    """
    size = (*shape, num_points, 2)
    if generator is not None:
        return torch.rand(size, generator=generator, device=generator.device).to(device)
    return torch.rand(size, device=device)


def point_sample(inputs: Tensor, points: Tensor, *, mode: str = "bilinear") -> Tensor:
    """Sample maps at normalised points: inputs (B, C, H, W), points (B, M, 2) in [0, 1]² → (B, C, M).

    ``align_corners=False`` and border padding: (0, 0) is the top-left corner of the first pixel,
    (1, 1) the bottom-right corner of the last, so the same point means the same image location on a
    grid of any resolution that covers the same image. ``mode="nearest"`` for binary targets.
    """
    if inputs.dim() != 4 or points.dim() != 3 or points.shape[-1] != 2:
        raise ValueError(
            f"point_sample expects inputs (B, C, H, W) and points (B, M, 2), got {tuple(inputs.shape)} "
            f"and {tuple(points.shape)}"
        )
    grid = (2.0 * points - 1.0).to(inputs.dtype)[:, None]  # (B, 1, M, 2) in [-1, 1]
    out = F.grid_sample(inputs, grid, mode=mode, padding_mode="border", align_corners=False)
    return out[:, :, 0]  # (B, C, M)


def uncertain_points(logits: Tensor, num_points: int, *, oversample_ratio: float = 3.0,
                     importance_sample_ratio: float = 0.75,
                     generator: torch.Generator | None = None) -> Tensor:
    """Importance-sampled points for the loss: logits (B, 1, h, w) → points (B, num_points, 2).

    Draw ``oversample_ratio · num_points`` uniform candidates, keep the
    ``importance_sample_ratio · num_points`` where the prediction is least certain (smallest
    |logit|), and fill up with fresh uniform points. The selection runs without gradient.
    """
    b = logits.shape[0]
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    num_candidates = max(int(oversample_ratio * num_points), num_uncertain)
    parts = []
    if num_uncertain > 0:
        candidates = uniform_points((b,), num_candidates, device=logits.device, generator=generator)
        with torch.no_grad():
            certainty = point_sample(logits.detach(), candidates)[:, 0].abs()  # (B, candidates)
            keep = certainty.topk(num_uncertain, dim=1, largest=False).indices  # (B, num_uncertain)
        parts.append(torch.gather(candidates, 1, keep[..., None].expand(-1, -1, 2)))
    if num_random > 0:
        parts.append(uniform_points((b,), num_random, device=logits.device, generator=generator))
    return torch.cat(parts, dim=1)


# -- pairwise costs ------------------------------------------------------------------------------------
def pairwise_bce_cost(pred: Tensor, target: Tensor) -> Tensor:
    """Mean binary cross-entropy of every prediction against every target on shared points.

    pred: logits (..., N, M); target: values in [0, 1] (..., K, M) → (..., N, K). Uses
    BCE(x, y) = softplus(x) − x·y, so the whole matrix is one matmul.
    """
    m = max(pred.shape[-1], 1)
    return (F.softplus(pred).sum(-1)[..., :, None] - pred @ target.transpose(-1, -2)) / m


def pairwise_dice_cost(pred: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Dice loss 1 − (2|σ(x)·y| + s) / (|σ(x)| + |y| + s) of every prediction against every target.

    pred: logits (..., N, M); target: values in [0, 1] (..., K, M) → (..., N, K).
    """
    prob = pred.sigmoid()
    inter = prob @ target.transpose(-1, -2)  # (..., N, K)
    total = prob.sum(-1)[..., :, None] + target.sum(-1)[..., None, :]
    return 1.0 - (2.0 * inter + smooth) / (total + smooth)


def match_cost(cost: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of a cost matrix (N predictions, K targets).

    Returns ``(rows, cols)`` as long tensors of length min(N, K), rows ascending: prediction
    ``rows[j]`` is assigned to target ``cols[j]``. Empty when N or K is 0. Non-finite entries are
    clamped to ±1e8 so a diverged prediction still gets an assignment.
    """
    if isinstance(cost, Tensor):
        cost = cost.detach().float().cpu().numpy()
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost matrix must be 2-D (predictions, targets), got shape {cost.shape}")
    if cost.size == 0:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty.clone()
    cost = np.nan_to_num(cost, nan=_COST_CLAMP, posinf=_COST_CLAMP, neginf=-_COST_CLAMP)
    rows, cols = linear_sum_assignment(cost)
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


# -- the matcher -----------------------------------------------------------------------------------
class HungarianMatcher:
    """Hungarian matcher of N predicted queries to K ground-truth masks (no parameters, no gradient).

    Cost C = class_weight · (−p_referred) + mask_weight · BCE + dice_weight · Dice, with the mask
    terms on ``num_points`` uniform random points shared by all predictions and targets of one
    frame (for a mask sequence: ``num_points`` per frame, the terms taken over all of them). Class
    logits are ``[referred, no object]``.
    """

    def __init__(self, class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                 num_points: int = 12544) -> None:
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher.num_points must be positive, got {num_points}")
        self.class_weight = float(class_weight)
        self.mask_weight = float(mask_weight)
        self.dice_weight = float(dice_weight)
        self.num_points = int(num_points)

    def __repr__(self) -> str:
        return (f"HungarianMatcher(class_weight={self.class_weight}, mask_weight={self.mask_weight}, "
                f"dice_weight={self.dice_weight}, num_points={self.num_points})")

    @torch.no_grad()
    def sample(self, mask_logits: Tensor, targets: Tensor, *, generator: torch.Generator | None = None
               ) -> tuple[Tensor, Tensor]:
        """Predictions and targets on shared uniform points, per frame.

        mask_logits (N, T, h, w), targets (K, T, H, W) → (T, N, M), (T, K, M) float32, where M is
        ``num_points`` and frame t uses the same M points for every prediction and target.
        """
        t = mask_logits.shape[1]
        points = uniform_points((t,), self.num_points, device=mask_logits.device, generator=generator)
        pred = point_sample(mask_logits.detach().float().transpose(0, 1), points)  # (T, N, M)
        if targets.shape[0] == 0:
            tgt = pred.new_zeros(t, 0, self.num_points)
        else:
            tgt = point_sample(targets.float().transpose(0, 1), points, mode="nearest")  # (T, K, M)
        return pred, tgt

    @torch.no_grad()
    def cost_matrix(self, class_logits: Tensor, pred_points: Tensor, target_points: Tensor) -> Tensor:
        """C of (..., N) predictions against (..., K) targets on shared points → (..., N, K).

        class_logits (..., N, 2); pred_points logits (..., N, M); target_points (..., K, M). The class
        term is −class_weight · p(referred).
        """
        prob = class_logits.detach().float().softmax(-1)[..., :1]  # (..., N, 1) p(referred)
        class_cost = prob.expand(*prob.shape[:-1], target_points.shape[-2])  # (..., N, K)
        pred, tgt = pred_points.float(), target_points.float()
        return (self.mask_weight * pairwise_bce_cost(pred, tgt)  # (..., N, K)
                + self.dice_weight * pairwise_dice_cost(pred, tgt)
                - self.class_weight * class_cost)

    @torch.no_grad()
    def __call__(self, class_logits: Tensor, mask_logits: Tensor, targets: Tensor, *,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Match one set: class_logits (N, 2), mask_logits (N, h, w) or (N, T, h, w), targets (K, H, W)
        or (K, T, H, W) (bool/uint8/float) → ``(pred_idx, tgt_idx)`` long tensors on CPU.

        For mask sequences the BCE and dice are taken over all T frames' points (a tube is one mask).
        """
        if mask_logits.dim() == 3:
            mask_logits = mask_logits[:, None]
        if targets.dim() == 3:
            targets = targets[:, None]
        if class_logits.dim() != 2 or mask_logits.dim() != 4 or targets.dim() != 4:
            raise ValueError(
                f"HungarianMatcher expects class_logits (N, 2), mask_logits (N, [T,] h, w) and targets "
                f"(K, [T,] H, W); got {tuple(class_logits.shape)}, {tuple(mask_logits.shape)}, "
                f"{tuple(targets.shape)}"
            )
        n, t = mask_logits.shape[:2]
        if class_logits.shape[0] != n or targets.shape[1] != t:
            raise ValueError(
                f"HungarianMatcher: {class_logits.shape[0]} class rows and {n} masks of {t} frames vs "
                f"targets of shape {tuple(targets.shape)}"
            )
        k = targets.shape[0]
        if n == 0 or k == 0:
            empty = torch.empty(0, dtype=torch.long)
            return empty, empty.clone()
        pred, tgt = self.sample(mask_logits, targets.to(mask_logits.device), generator=generator)
        pred = pred.transpose(0, 1).reshape(n, -1)  # (N, T·M)
        tgt = tgt.transpose(0, 1).reshape(k, -1)  # (K, T·M)
        return match_cost(self.cost_matrix(class_logits, pred, tgt))
