"""Instance query generation with the bi-directional encoder, Eq. (5).

Per frame t, visual tokens F_v^t (projected by a 1x1 conv) and text (projected by a linear layer)
meet in the joint width C:

    F̂_v^t = softmax(F_v^t W^Q_t2v · (F_s W^K_t2v)ᵀ / √C) F_s W^V_t2v     text → visual   (Eq. 5)
    F̂_s^t = softmax(F_s W^Q_v2t · (F_v^t W^K_v2t)ᵀ / √C) F_v^t W^V_v2t   visual → text   (Eq. 5)

and the frame's instance queries are Q^t = F̂_s^t repeated N times (the learned query position
embedding is added in the frame decoder).

Decisions where the paper is silent:
- Read literally, the t2v attention has a single key (the sentence), which makes its softmax
  trivial; its keys/values are the word features together with the sentence (DESIGN.md §2.4).
- Both attentions are residual and post-normed (transformer convention); F̂_v^t keeps the visual
  tokens (residual), the sentence query reads the *updated* visual tokens.
- The visual input is the (adapted) last CLIP stage, stride 32: the most semantic map, and the
  cheapest (the query only needs a frame-level summary).
- ``bidirectional=False`` (Tab. 7 row 2) drops the text→visual direction: the sentence reads the
  projected visual tokens directly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssa.modeling.common import CrossAttentionLayer, sine_position_2d

__all__ = ["InstanceQueryGenerator"]


class InstanceQueryGenerator(nn.Module):
    def __init__(self, visual_dim: int, text_dim: int, hidden_dim: int, num_queries: int,
                 num_heads: int, bidirectional: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.bidirectional = bidirectional
        self.visual_proj = nn.Conv2d(visual_dim, hidden_dim, kernel_size=1)
        self.text_proj = nn.Linear(text_dim, hidden_dim)
        self.text_to_visual = (
            CrossAttentionLayer(hidden_dim, num_heads, dropout) if bidirectional else None
        )
        self.visual_to_text = CrossAttentionLayer(hidden_dim, num_heads, dropout)

    def forward(self, visual: Tensor, words: Tensor, word_mask: Tensor, sentence: Tensor
                ) -> tuple[Tensor, Tensor]:
        """visual (B, C_4, h, w): one map per frame; words (B, L, D_t), word_mask (B, L) True = real
        token, sentence (B, D_t): the frame's expression, repeated per frame by the caller.

        Returns the initial queries Q^t (B, N, C) and the frame's sentence feature F̂_s^t (B, C).
        """
        b, _, h, w = visual.shape
        v = self.visual_proj(visual)  # (B, C, h, w)
        pos = sine_position_2d(h, w, v.shape[1], device=v.device, dtype=v.dtype)
        v = v.flatten(2).transpose(1, 2)  # (B, hw, C)
        pos = pos.flatten(1).transpose(0, 1)[None]  # (1, hw, C)
        s = self.text_proj(sentence)[:, None, :]  # (B, 1, C)
        if self.text_to_visual is not None:
            # Keys/values of the text→visual attention: [sentence; words].
            text = torch.cat([s, self.text_proj(words)], dim=1)  # (B, 1 + L, C)
            pad = torch.cat([word_mask.new_ones(b, 1), word_mask], dim=1)
            v = self.text_to_visual(v, text, pos=pos, key_padding_mask=~pad)  # F̂_v^t
        s_hat = self.visual_to_text(s, v, memory_pos=pos)  # (B, 1, C) F̂_s^t
        queries = s_hat.expand(b, self.num_queries, s_hat.shape[-1])  # (B, N, C) Q^t
        return queries, s_hat[:, 0]
