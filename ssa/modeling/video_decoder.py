"""Video query decoder (§3.4): the video queries Q_v read the sentence and the enhanced trajectories,
then the heads give the referring score S_cls and the mask embedding Q_emb.

Each post-norm layer: cross-attention to the T per-frame sentence features F̂_s^t (no key position)
→ cross-attention to the T·N trajectory tokens Q̃_TE (key position: a learned embedding of the
trajectory slot i, the same at every frame) → self-attention among the N video queries → FFN.
Predictions (LayerNorm → class / mask MLP) follow every layer: the last is the output, the earlier
ones deep supervision. ``sim_frame`` / ``sim_clip`` embed the trajectories and the video queries for
the training-only similarity loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ssa.modeling.common import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer

__all__ = ["VideoQueryDecoder", "VideoDecoderOutput"]


@dataclass
class VideoDecoderOutput:
    queries: Tensor  # (B, N, C) decoded video queries, normed
    class_logits: Tensor  # (B, N, 2) S_cls: [referred, not referred]
    mask_embed: Tensor  # (B, N, mask_dim) Q_emb, one for all frames
    aux_class_logits: list[Tensor] = field(default_factory=list)  # per earlier layer, (B, N, 2)
    aux_mask_embed: list[Tensor] = field(default_factory=list)  # per earlier layer, (B, N, mask_dim)


class _VideoDecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.text_attn = CrossAttentionLayer(dim, heads, dropout)
        self.frame_attn = CrossAttentionLayer(dim, heads, dropout)
        self.self_attn = SelfAttentionLayer(dim, heads, dropout)
        self.ffn = FFNLayer(dim, ffn_dim, dropout)

    def forward(self, q: Tensor, pos: Tensor, text: Tensor, frames: Tensor, slot_pos: Tensor) -> Tensor:
        """slot_pos (1, N, C): the frame queries' key position, the same for every frame."""
        q = self.text_attn(q, text, pos=pos)
        if self.frame_attn.dropout_active:
            t = frames.shape[1] // slot_pos.shape[1]
            q = self.frame_attn(q, frames, pos=pos, memory_pos=slot_pos.repeat(1, t, 1))
        else:  # the same sums with the key/value projections folded into the few queries: no (T·N, C)
            q = self.frame_attn.forward_few_queries(q, frames, pos=pos, memory_pos=slot_pos)  # keys
        q = self.self_attn(q, pos=pos)
        return self.ffn(q)


class VideoQueryDecoder(nn.Module):
    def __init__(self, hidden_dim: int, num_queries: int, num_heads: int, num_layers: int, ffn_dim: int,
                 mask_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.query_pos = nn.Embedding(num_queries, hidden_dim)
        self.frame_slot_pos = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList(
            _VideoDecoderLayer(hidden_dim, num_heads, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.class_head = nn.Linear(hidden_dim, 2)
        self.mask_head = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.sim_frame = nn.Linear(hidden_dim, hidden_dim)  # training only (similarity loss)
        self.sim_clip = nn.Linear(hidden_dim, hidden_dim)

    def _predict(self, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q = self.norm(q)
        return q, self.class_head(q), self.mask_head(q)

    def forward(self, video_queries: Tensor, trajectories: Tensor, sentences: Tensor) -> VideoDecoderOutput:
        """video_queries (B, N, C) Q_v; trajectories (B, T, N, C) Q̃_TE; sentences (B, T, C) F̂_s^t."""
        b, t, n, c = trajectories.shape
        if video_queries.shape != (b, n, c) or n != self.num_queries:
            raise ValueError(f"video queries {tuple(video_queries.shape)} do not match trajectories "
                             f"{tuple(trajectories.shape)} of {self.num_queries} slots")
        if sentences.shape != (b, t, c):
            raise ValueError(f"sentences must be {(b, t, c)}, got {tuple(sentences.shape)}")
        frames = trajectories.reshape(b, t * n, c)  # (B, T·N, C), t-major
        slot_pos = self.frame_slot_pos.weight.to(frames.dtype)[None]  # (1, N, C), every frame alike
        pos = self.query_pos.weight.to(frames.dtype)[None]  # (1, N, C)
        q = video_queries
        aux_cls, aux_emb = [], []
        for i, layer in enumerate(self.layers):
            q = layer(q, pos, sentences, frames, slot_pos)
            if i < len(self.layers) - 1:
                _, cls, emb = self._predict(q)
                aux_cls.append(cls)
                aux_emb.append(emb)
        q, cls, emb = self._predict(q)
        return VideoDecoderOutput(q, cls, emb, aux_cls, aux_emb)
