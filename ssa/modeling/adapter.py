"""Semantic Alignment Refine Module: the adapter between two frozen CLIP stages, Eq. (3)-(4).

Adapter i reads the output of CLIP stage i and its output is the input of CLIP stage i+1 (the
official ``ClipStageAdapterV2``), so from stage 1 on the visual pass depends on the expression.
With F_v (B, C_v, H, W) the stage output, F_w (B, L, D) the word features with their mask and F_s
(B, 1, D) the sentence feature, all three streams meet in a joint width D_a (256 in the paper):

    v̄ = W_v F_v + PE_2d                          visual tokens, raw (unnormalised) 2-D sine positions
    f_mw = U(LN(W_v F_v + MHA(v̄, W_l F_w + PE_1d, W_l F_w)))    word stream, padding masked  (Eq. 3)
    f_ms = U(LN(W_v F_v + MHA(v̄, W_l F_s, W_l F_s)))           sentence stream, same W_l, MHA, U
    f_mr = ReLU(Φ_2(ReLU(Φ_1 F_v))) + F_v                       residual path, two 1x1 convs (Eq. 3)
    W_α = softmax(MLP([GAP(f_ms), GAP(f_mw), GAP(f_mr)]))                                 (Eq. 4)
    F_v ← W_α0 f_ms + W_α1 f_mw + W_α2 f_mr                                               (Eq. 4)

U is one Linear D_a → C_v shared by both attention streams. The sentence stream attends to a single
key, so its attention weight is exactly 1 (the stream is a per-pixel LayerNorm of the visual
projection plus a constant): that is what the official network computes, kept as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssa.modeling.common import MLP, CrossAttentionLayer, cached_sine_position_2d, sine_encoding

__all__ = ["SemanticAlignmentAdapter"]


class SemanticAlignmentAdapter(nn.Module):
    """Adapter of one CLIP stage with ``visual_dim`` channels, text of width ``text_dim``."""

    def __init__(self, visual_dim: int, text_dim: int, dim: int = 256, heads: int = 8,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"adapter width must be divisible by 4 (2-D sine positions), got {dim}")
        self.visual_dim, self.text_dim, self.dim = visual_dim, text_dim, dim
        self.conv1 = nn.Conv2d(visual_dim, dim, 1)  # Φ_1 of the residual path
        self.conv2 = nn.Conv2d(dim, visual_dim, 1)  # Φ_2
        self.linear_v = nn.Conv2d(visual_dim, dim, 1)  # W_v
        self.linear_l = nn.Linear(text_dim, dim)  # W_l, words and sentence
        self.cross_attention = CrossAttentionLayer(dim, heads, dropout)
        self.up_v = nn.Linear(dim, visual_dim)  # U
        self.gate = MLP(3 * visual_dim, dim, 3, 2)

    def forward(self, visual: Tensor, words: Tensor, word_mask: Tensor, sentence: Tensor
                ) -> tuple[Tensor, Tensor]:
        """visual (B, C_v, H, W); words (B, L, D) with word_mask (B, L) True = real token; sentence
        (B, D). Returns the adapted features (B, C_v, H, W) and the stream weights W_α (B, 3), in the
        order [sentence, words, residual]."""
        b, c, h, w = visual.shape
        if c != self.visual_dim:
            raise ValueError(f"adapter built for {self.visual_dim} channels, got features "
                             f"{tuple(visual.shape)}")
        residual = F.relu(self.conv2(F.relu(self.conv1(visual)))) + visual  # f_mr
        # W_v as a product on the channels-last view: the tokens come out contiguous (adding to a
        # transposed view is ~10x slower on the CPU, and the streams add to them three times)
        tokens = F.linear(visual.flatten(2).transpose(1, 2), self.linear_v.weight.flatten(1),
                          self.linear_v.bias)  # (B, HW, D_a)
        pos = cached_sine_position_2d(h, w, self.dim, visual.device, tokens.dtype, normalize=False)[None]
        # (1, HW, D_a)
        lw = self.linear_l(words)  # (B, L, D_a)
        word_pos = sine_encoding(torch.arange(1, lw.shape[1] + 1, device=lw.device), self.dim).to(lw.dtype)
        sentence = self.linear_l(sentence)[:, None]  # (B, 1, D_a)
        if self.training and self.cross_attention.attn.dropout > 0:
            word_stream = self.cross_attention(tokens, lw, pos=pos, memory_pos=word_pos[None],
                                               key_padding_mask=~word_mask)  # (B, HW, D_a)
            sentence_stream = self.cross_attention(tokens, sentence, pos=pos)
        else:  # the same sums, reordered for few keys; the sentence stream's one key has weight 1
            word_stream = self.cross_attention.forward_few_keys(
                tokens, lw, pos=pos, memory_pos=word_pos[None], key_padding_mask=~word_mask)
            sentence_stream = self.cross_attention.forward_single_key(tokens, sentence)

        # U is affine, so GAP(U x) = U GAP(x) and Σ_s w_s U x_s = U (Σ_s w_s x_s) + (Σ_s w_s) b_U: the
        # gate reads the pooled streams and one U product serves both attention streams (Eq. 4).
        pooled = torch.stack([self.up_v(sentence_stream.mean(1)), self.up_v(word_stream.mean(1)),
                              residual.mean(dim=(-2, -1))], dim=1)  # (B, 3, C_v)
        weights = self.gate(pooled.flatten(1)).softmax(dim=-1)  # (B, 3), Eq. 4
        w_s, w_w, w_r = (weights[:, i, None, None] for i in range(3))  # (B, 1, 1) each
        streams = w_s * sentence_stream + w_w * word_stream  # (B, HW, D_a)
        # U straight into channels-first: (C_v, D_a) @ (B, D_a, HW), no transposing copy of the result
        mixed = torch.bmm(self.up_v.weight.expand(b, -1, -1), streams.transpose(1, 2))  # (B, C_v, HW)
        mixed = mixed + ((w_s + w_w) * self.up_v.bias).transpose(1, 2)  # + (B, C_v, 1)
        out = mixed.view(b, c, h, w) + w_r[..., None] * residual  # (B, C_v, H, W)
        return out, weights
