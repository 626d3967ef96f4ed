"""Video query decoder (§3.4): video queries Q_v read the frame queries Q̃_TE and the language
features, then the heads give the referring score S_cls and the mask embedding Q_emb.

Each layer: cross-attention to the T·N frame queries (with temporal position encoding) → cross-attention
to the language features → self-attention among the N video queries → FFN (post-norm).

Decision where the paper is silent: the language memory is the projected word features F_w together
with the per-frame sentence features F̂_s^t produced by the query generation (Eq. 5), so the decoder
sees both the expression and how each frame reads it. Predictions after every layer serve deep
supervision.

``trajectory_masks`` (not in the paper, off by default): the decoder only scores; the mask embedding of
video query i at frame t is the frame decoder's mask embedding of trajectory i's query at frame t (given
by the caller), rather than MLP(Q_v,i) for all frames, so the masks follow trajectory i. Video query i
then cross-attends to trajectory i's T frame queries only, so that its score is about the trajectory
whose mask it carries (self-attention among the video queries still compares trajectories).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ssa.modeling.common import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer, sine_position_1d

__all__ = ["VideoQueryDecoder", "VideoDecoderOutput"]


@dataclass
class VideoDecoderOutput:
    queries: Tensor  # (B, N, C) decoded video queries
    class_logits: Tensor  # (B, N, 2) S_cls: [referred, not referred]
    mask_embed: Tensor  # (B, N, T, mask_dim) Q_emb per frame (expanded over T without trajectory_masks)
    aux_class_logits: list[Tensor]  # per earlier layer, (B, N, 2)
    aux_mask_embed: list[Tensor]  # per earlier layer, (B, N, T, mask_dim)


class _VideoDecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.frame_attn = CrossAttentionLayer(dim, heads, dropout)
        self.text_attn = CrossAttentionLayer(dim, heads, dropout)
        self.self_attn = SelfAttentionLayer(dim, heads, dropout)
        self.ffn = FFNLayer(dim, ffn_dim, dropout)

    def forward(self, q: Tensor, pos: Tensor, frames: Tensor, frame_pos: Tensor, text: Tensor,
                text_pad: Tensor, frame_attn_mask: Tensor | None = None) -> Tensor:
        q = self.frame_attn(q, frames, pos=pos, memory_pos=frame_pos, attn_mask=frame_attn_mask)
        q = self.text_attn(q, text, pos=pos, key_padding_mask=text_pad)
        q = self.self_attn(q, pos=pos)
        return self.ffn(q)


class VideoQueryDecoder(nn.Module):
    def __init__(self, hidden_dim: int, text_dim: int, num_queries: int, num_heads: int,
                 num_layers: int, ffn_dim: int, mask_dim: int, dropout: float = 0.0,
                 trajectory_masks: bool = False) -> None:
        super().__init__()
        self.query_pos = nn.Embedding(num_queries, hidden_dim)
        self.text_proj = nn.Linear(text_dim, hidden_dim)
        self.layers = nn.ModuleList(
            _VideoDecoderLayer(hidden_dim, num_heads, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.class_head = nn.Linear(hidden_dim, 2)
        # MLP(Q_v,i): one Q_emb for all frames; none with trajectory_masks (the trajectories' own)
        self.mask_head = None if trajectory_masks else MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.mask_dim = mask_dim

    def _predict(self, q: Tensor, t: int, trajectory_masks: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, N, C) → normed q, class logits (B, N, 2), mask embedding (B, N, T, mask_dim)."""
        q = self.norm(q)
        if self.mask_head is None:
            emb = trajectory_masks
        else:
            emb = self.mask_head(q)[:, :, None].expand(-1, -1, t, -1)  # one Q_emb for all frames
        return q, self.class_head(q), emb

    def forward(self, video_queries: Tensor, frame_queries: Tensor, words: Tensor, word_mask: Tensor,
                frame_sentences: Tensor, trajectory_masks: Tensor | None = None) -> VideoDecoderOutput:
        """video_queries (B, N, C) Q_v; frame_queries (B, T, N, C) Q̃_TE; words (B, L, D_t) with
        word_mask (B, L) True = real token; frame_sentences (B, T, C) F̂_s^t; with ``trajectory_masks``
        the mask embeddings of the trajectories (B, N, T, mask_dim)."""
        b, t, n, c = frame_queries.shape
        if video_queries.shape != (b, n, c):
            raise ValueError(
                f"video queries {tuple(video_queries.shape)} do not match frame queries "
                f"{tuple(frame_queries.shape)}"
            )
        if (self.mask_head is None) != (trajectory_masks is not None):
            raise ValueError("trajectory mask embeddings are given exactly when the decoder was built with "
                             "trajectory_masks=True")
        if trajectory_masks is not None and trajectory_masks.shape != (b, n, t, self.mask_dim):
            raise ValueError(f"trajectory mask embeddings must be {(b, n, t, self.mask_dim)}, "
                             f"got {tuple(trajectory_masks.shape)}")
        frames = frame_queries.reshape(b, t * n, c)  # (B, T·N, C)
        frame_pos = sine_position_1d(t, c, device=frames.device, dtype=frames.dtype)
        frame_pos = frame_pos[None, :, None, :].expand(1, t, n, c).reshape(1, t * n, c)
        text = torch.cat([self.text_proj(words), frame_sentences], dim=1)  # (B, L + T, C)
        text_pad = torch.cat([~word_mask, word_mask.new_zeros(b, t)], dim=1)  # True = ignore
        pos = self.query_pos.weight[None]  # (1, N, C)
        own = None
        if trajectory_masks is not None:  # video query i reads trajectory i only: it scores that mask
            slot = torch.arange(n, device=frames.device)
            own = slot[:, None] != slot.repeat(t)[None]  # (N, T·N), True = not attended

        q = video_queries
        aux_cls, aux_emb = [], []
        for i, layer in enumerate(self.layers):
            q = layer(q, pos, frames, frame_pos, text, text_pad, own)
            if i < len(self.layers) - 1:
                _, cls, emb = self._predict(q, t, trajectory_masks)
                aux_cls.append(cls)
                aux_emb.append(emb)
        q, cls, emb = self._predict(q, t, trajectory_masks)
        return VideoDecoderOutput(q, cls, emb, aux_cls, aux_emb)
