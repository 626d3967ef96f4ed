"""Sequential object alignment (§3.3): instance trajectory generation, temporal enhancement (Eq. 6)
and the trajectory-to-instance ensemble (Eq. 7).

Frame queries Q̂^t are decoded independently per frame, so query i of frame t and query i of frame
t+1 need not be the same instance. Trajectories re-order every frame's queries by Hungarian matching
to the previous (already re-ordered) frame, so that index i follows one instance through time.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ssa.modeling.common import SelfAttentionLayer, sine_position_1d

__all__ = [
    "hungarian_trajectories",
    "apply_order",
    "TemporalEnhancement",
    "TrajectoryEnsemble",
]


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


class TemporalEnhancement(nn.Module):
    """Eq. (6) along each trajectory (B·N sequences of length T), one block:

        x ← LN(x + Conv1d_k3(ReLU(Conv1d_k5(x))))     short term, replicate 'same' padding
        x ← LN(x + MHA(x + PE, x + PE, x))             long term, PE = 1-D sine of t = 1..T
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.short_conv1 = nn.Conv1d(dim, dim, 5, padding="same", padding_mode="replicate")
        self.short_conv2 = nn.Conv1d(dim, dim, 3, padding="same", padding_mode="replicate")
        self.short_norm = nn.LayerNorm(dim)
        self.long_term = SelfAttentionLayer(dim, heads, dropout)

    def forward(self, trajectories: Tensor) -> Tensor:
        """trajectories (B, T, N, C) → Q̃_TE (B, T, N, C)."""
        b, t, n, c = trajectories.shape
        x = trajectories.permute(0, 2, 3, 1).reshape(b * n, c, t)  # (B·N, C, T)
        x = x + self.short_conv2(F.relu(self.short_conv1(x)))
        x = self.short_norm(x.transpose(1, 2))  # (B·N, T, C)
        pos = sine_position_1d(t, c, device=x.device, dtype=x.dtype)[None]  # (1, T, C), t = 1..T
        x = self.long_term(x, pos=pos)
        return x.reshape(b, n, t, c).permute(0, 2, 1, 3)


class TrajectoryEnsemble(nn.Module):
    """Eq. (7): A = softmax_T(Φ_FC(Q̃_TE)), Q_v = Σ_t A^t · Q̃_TE^t."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 1)  # Φ_FC, weight in R^{1×C}

    def logits(self, trajectories: Tensor) -> Tensor:
        """Φ_FC(Q̃_TE), (B, T, N): the weights before the softmax over T."""
        return self.fc(trajectories).squeeze(-1)

    def forward(self, trajectories: Tensor) -> tuple[Tensor, Tensor]:
        """trajectories (B, T, N, C) → video queries Q_v (B, N, C) and weights A (B, T, N)."""
        weights = self.logits(trajectories).softmax(dim=1)  # (B, T, N), sums to 1 over T
        video_queries = torch.einsum("btn,btnc->bnc", weights, trajectories)
        return video_queries, weights
