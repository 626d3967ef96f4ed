"""Sequential object alignment (§3.3): instance trajectory generation, temporal enhancement (Eq. 6)
and the trajectory-to-instance ensemble (Eq. 7).

Frame queries Q̂^t are decoded independently per frame, so query i of frame t and query i of frame
t+1 need not be the same instance. Trajectories re-order every frame's queries by Hungarian matching
to the previous (already re-ordered) frame, so that index i follows one instance through time.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ssa.modeling.common import FFNLayer, SelfAttentionLayer, sine_encoding, sine_position_1d

__all__ = [
    "MaskPositionEncoding",
    "hungarian_trajectories",
    "apply_order",
    "TemporalEnhancement",
    "TrajectoryEnsemble",
]


class MaskPositionEncoding(nn.Module):
    """Not in the paper (``SSAConfig.query_positions``): add where each frame query's mask lies to the
    query, Q̂^t_i + W·[PE(ȳ_i^t), PE(x̄_i^t)], with (ȳ, x̄) the centroid of sigmoid(mask logits) in
    [0, 1] coordinates (detached) and PE a sine encoding (C/2 channels each).

    Frame queries are decoded from one frame at a time and carry little of *where* an object is, so
    two objects that look alike get near-identical queries: the Hungarian linking cannot tell them
    apart and a trajectory carries no motion. With their positions, a trajectory follows one of them
    and the temporal enhancement (Eq. 6) sees how it moves.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"mask position encoding needs a width divisible by 4, got {dim}")
        self.proj = nn.Linear(dim, dim)  # W

    def forward(self, queries: Tensor, mask_logits: Tensor) -> Tensor:
        """queries (..., N, C), mask logits (..., N, h, w) → queries (..., N, C) with positions."""
        if queries.shape[:-1] != mask_logits.shape[:-2]:
            raise ValueError(f"mask logits {tuple(mask_logits.shape)} do not match frame queries "
                             f"{tuple(queries.shape)}")
        h, w = mask_logits.shape[-2:]
        prob = mask_logits.detach().float().sigmoid()
        mass = prob.sum(dim=(-2, -1)).clamp_min(1e-6)  # (..., N)
        ys = (torch.arange(h, device=prob.device, dtype=prob.dtype) + 0.5) / h
        xs = (torch.arange(w, device=prob.device, dtype=prob.dtype) + 0.5) / w
        cy = (prob.sum(dim=-1) * ys).sum(dim=-1) / mass  # (..., N) in [0, 1]
        cx = (prob.sum(dim=-2) * xs).sum(dim=-1) / mass
        c = queries.shape[-1]
        # angles 16π·coordinate / f_i: the finest frequency has a period of 1/8 of the frame
        encoding = torch.cat([sine_encoding(cy * 16 * math.pi, c // 2),
                              sine_encoding(cx * 16 * math.pi, c // 2)], dim=-1)  # (..., N, C)
        return queries + self.proj(encoding.to(queries.dtype))


@torch.no_grad()
def hungarian_trajectories(queries: Tensor) -> Tensor:
    """Trajectory order of frame queries (B, T, N, C) → long tensor (B, T, N).

    ``order[b, t, i]`` is the index, among frame t's queries, of the query that continues trajectory
    i. Frame 0 keeps its order; frame t is matched to the re-ordered frame t-1 with cost
    1 − cosine similarity (``scipy.optimize.linear_sum_assignment``), on detached queries.
    """
    if queries.dim() != 4:
        raise ValueError(f"frame queries must be (B, T, N, C), got shape {tuple(queries.shape)}")
    b, t, n, _ = queries.shape
    unit = F.normalize(queries.detach().float(), dim=-1).cpu().numpy()  # (B, T, N, C)
    order = np.empty((b, t, n), dtype=np.int64)
    order[:, 0] = np.arange(n)
    for bi in range(b):
        prev = unit[bi, 0]
        for ti in range(1, t):
            cur = unit[bi, ti]
            cost = 1.0 - prev @ cur.T  # (N trajectories, N current queries)
            rows, cols = linear_sum_assignment(cost)
            order[bi, ti, rows] = cols
            prev = cur[order[bi, ti]]
    return torch.from_numpy(order).to(queries.device)


def apply_order(queries: Tensor, order: Tensor) -> Tensor:
    """Re-order frame queries (B, T, N, C) by a trajectory order (B, T, N): Q̃[b, t, i] = Q̂[b, t,
    order[b, t, i]]."""
    index = order[..., None].expand(*order.shape, queries.shape[-1])
    return torch.gather(queries, 2, index)


class _TemporalLayer(nn.Module):
    """One temporal enhancement layer on trajectories (B·N, T, C), Eq. (6)."""

    def __init__(self, dim: int, heads: int, kernel: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.short_term = nn.Conv1d(dim, dim, kernel_size=kernel, padding=kernel // 2)  # Φ_Conv1D
        self.short_norm = nn.LayerNorm(dim)
        self.long_term = SelfAttentionLayer(dim, heads, dropout)  # Φ_TempAttn
        self.ffn = FFNLayer(dim, ffn_dim, dropout)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        # ShortTerm(Q̃_i) = Φ_Conv1D(Q̃_i) along T, residual + norm.
        x = self.short_norm(x + self.short_term(x.transpose(1, 2)).transpose(1, 2))
        # LongTerm(Q̃_i) = Φ_TempAttn(Q̃_i): self-attention along T with temporal positions.
        x = self.long_term(x, pos=pos)
        return self.ffn(x)


class TemporalEnhancement(nn.Module):
    """Eq. (6): short-term Conv1D and long-term temporal attention along each trajectory."""

    def __init__(self, dim: int, heads: int, num_layers: int, kernel: int = 3, ffn_dim: int = 2048,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _TemporalLayer(dim, heads, kernel, ffn_dim, dropout) for _ in range(num_layers)
        )

    def forward(self, trajectories: Tensor) -> Tensor:
        """trajectories (B, T, N, C) → Q̃_TE (B, T, N, C)."""
        b, t, n, c = trajectories.shape
        x = trajectories.permute(0, 2, 1, 3).reshape(b * n, t, c)  # (B·N, T, C)
        pos = sine_position_1d(t, c, device=x.device, dtype=x.dtype)[None]  # (1, T, C)
        for layer in self.layers:
            x = layer(x, pos)
        return x.reshape(b, n, t, c).permute(0, 2, 1, 3)


class TrajectoryEnsemble(nn.Module):
    """Eq. (7): A = softmax_T(Φ_FC(Q̃_TE)), Q_v = Σ_t A^t · Q̃_TE^t."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 1)  # Φ_FC, weight in R^{1×C}

    def forward(self, trajectories: Tensor) -> tuple[Tensor, Tensor]:
        """trajectories (B, T, N, C) → video queries Q_v (B, N, C) and weights A (B, T, N)."""
        weights = self.fc(trajectories).squeeze(-1).softmax(dim=1)  # (B, T, N), sums to 1 over T
        video_queries = torch.einsum("btn,btnc->bnc", weights, trajectories)
        return video_queries, weights
