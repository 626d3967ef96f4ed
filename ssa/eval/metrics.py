"""J (region similarity) and F (boundary F-measure) following the DAVIS 2017 reference evaluation.

Masks are (H, W) or (T, H, W) arrays of booleans (or 0/1 integers). Per-frame functions always return a
float64 array of shape (T,); a single (H, W) frame is treated as T = 1 and gives shape (1,).

Notes that follow the reference exactly:

* The boundary map (:func:`seg2bmap`) marks a pixel when it differs from its east, south or
  south-east neighbour (neighbours outside the image count as background), except that the last row
  compares only with the east neighbour, the last column only with the south neighbour, and the
  bottom-right pixel is never a boundary. Consequently an all-foreground frame has an empty boundary.
* The F precision / recall rules are stated on boundary pixel counts, so "empty" for F means an empty
  boundary map (an all-empty mask, or the all-foreground frame above).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

BOUND_TH = 0.008


def _as_frames(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and return both masks as boolean (T, H, W) arrays."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: gt {gt.shape} vs pred {pred.shape}")
    if gt.ndim == 2:
        gt, pred = gt[None], pred[None]
    elif gt.ndim != 3:
        raise ValueError(f"masks must be (H, W) or (T, H, W), got shape {gt.shape}")
    return gt.astype(bool), pred.astype(bool)


def j_score(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-frame IoU, shape (T,); 1.0 where both masks are empty."""
    gt, pred = _as_frames(gt, pred)
    inter = np.logical_and(gt, pred).sum(axis=(1, 2), dtype=np.int64)
    union = np.logical_or(gt, pred).sum(axis=(1, 2), dtype=np.int64)
    out = np.ones(gt.shape[0], dtype=np.float64)
    nz = union > 0
    out[nz] = inter[nz] / union[nz]
    return out


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a 2-D mask, same size, as DAVIS ``seg2bmap`` computes it."""
    seg = np.asarray(seg).astype(bool)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap expects a 2-D mask, got shape {seg.shape}")
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk_kernel(radius: int) -> np.ndarray:
    """uint8 structuring element with ones at all (dy, dx) where dy² + dx² <= radius²."""
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx <= r * r).astype(np.uint8)


def boundary_tolerance(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """Match tolerance in pixels: ``bound_th`` itself if >= 1, else ceil(bound_th * image diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(height, width)))


def _f_frame(gt: np.ndarray, pred: np.ndarray, kernel: np.ndarray) -> float:
    """Boundary F-measure of one (H, W) frame pair."""
    fg_b = seg2bmap(pred)
    gt_b = seg2bmap(gt)
    n_fg = int(fg_b.sum())
    n_gt = int(gt_b.sum())
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        fg_dil = cv2.dilate(fg_b.astype(np.uint8), kernel).astype(bool)
        gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
        precision = np.logical_and(fg_b, gt_dil).sum() / n_fg
        recall = np.logical_and(gt_b, fg_dil).sum() / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def f_score(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-frame DAVIS boundary F-measure, shape (T,)."""
    gt, pred = _as_frames(gt, pred)
    kernel = disk_kernel(boundary_tolerance(gt.shape[1], gt.shape[2]))
    return np.array([_f_frame(g, p, kernel) for g, p in zip(gt, pred, strict=True)], dtype=np.float64)


def jf(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Scores of one expression: {"J", "F", "J&F"}, J and F being means over frames."""
    j = float(j_score(gt, pred).mean())
    f = float(f_score(gt, pred).mean())
    return {"J": j, "F": f, "J&F": (j + f) / 2}


def summarize(per_expression: Sequence[tuple[float, float]]) -> dict[str, float | int]:
    """Dataset scores from per-expression (J, F) pairs: means over expressions, J&F, and "count"."""
    n = len(per_expression)
    if n == 0:
        raise ValueError("summarize needs at least one expression")
    arr = np.asarray(per_expression, dtype=np.float64).reshape(n, 2)
    j, f = (float(v) for v in arr.mean(axis=0))
    return {"J": j, "F": f, "J&F": (j + f) / 2, "count": n}
