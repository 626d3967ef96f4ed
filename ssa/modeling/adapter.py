"""Semantic Alignment Refine Module — the per-stage adapter of Eq. (3)-(4).

Applied *after* each frozen CLIP stage (it does not feed back into CLIP). Three streams, computed in
a joint width D (visual and text are projected into it, each stream is projected back to C_i):

    f_mw = softmax(F_v · F_wᵀ / √D) F_w        word cross-attention, padding masked     (Eq. 3)
    f_ms = softmax(F_v · F_sᵀ / √D) F_s        sentence stream                          (Eq. 3)
    f_mr = Φ_conv(F_v) + F_v                   convolutional residual path              (Eq. 3)
    W_α  = softmax(MLP([g(f_mw), g(f_mr), g(f_ms)]))   g = global average pooling       (Eq. 4)
    F_v ← W_α1 f_mw + W_α2 f_mr + W_α3 f_ms                                             (Eq. 4)

Decisions where the paper is silent:
- The sentence stream has a single key, so a literal softmax over keys is identically 1 and f_ms
  would be the sentence broadcast to every pixel. We add a null key (logit 0, value 0) to that
  softmax, so the weight becomes sigmoid(F_v·F_s/√D): each pixel takes as much of the sentence as it
  matches it. This keeps Eq. 3's form and makes the stream spatially selective.
- Φ_conv works in the joint width: a 3x3 conv + GELU on the projected visual features, projected back
  to C_i (a bottleneck, as adapters usually are).
- W_α is computed per sample and frame; the MLP's hidden width is D/4.
- Initialisation keeps CLIP's features at step 0: the output projections of all three streams are zero
  (so f_mw = f_ms = 0 and f_mr = F_v) and the gate starts at ~0.99 on the residual stream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SemanticAlignmentAdapter"]

# Gate bias at initialisation: softmax([0, 6, 0]) puts 0.995 on the residual stream.
_GATE_INIT_BIAS = 6.0


class SemanticAlignmentAdapter(nn.Module):
    """Adapter for one CLIP stage with ``visual_dim`` channels (C_i)."""

    def __init__(self, visual_dim: int, text_dim: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.visual_in = nn.Conv2d(visual_dim, dim, kernel_size=1)
        self.word_in = nn.Linear(text_dim, dim)
        self.sentence_in = nn.Linear(text_dim, dim)
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1)  # Φ_conv
        self.word_out = nn.Conv2d(dim, visual_dim, kernel_size=1)
        self.sentence_out = nn.Conv2d(dim, visual_dim, kernel_size=1)
        self.conv_out = nn.Conv2d(dim, visual_dim, kernel_size=1)
        gate_hidden = max(dim // 4, 8)
        self.gate = nn.Sequential(
            nn.Linear(3 * visual_dim, gate_hidden), nn.GELU(), nn.Linear(gate_hidden, 3)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for out in (self.word_out, self.sentence_out, self.conv_out):
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        last = self.gate[-1]
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            last.bias.copy_(torch.tensor([0.0, _GATE_INIT_BIAS, 0.0]))

    def forward(self, visual: Tensor, words: Tensor, word_mask: Tensor, sentence: Tensor,
                rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Refine one stage.

        visual (B_v, C_i, H, W) frames; words (B, L, D_t); word_mask (B, L) bool, True = real token;
        sentence (B, D_t): one text row per output row. ``rows`` (B,) long gives the frame of each row
        (default: row b reads frame b, B_v = B), so that the text-independent work (the projection into
        D and the whole f_mr path) runs once per frame however many expressions read it.
        Returns the refined visual features (B, C_i, H, W) and the stream weights W_α (B, 3).
        """
        v_frames = self.visual_in(visual)  # (B_v, D, H, W)
        # f_mr: convolutional residual path (Eq. 3, third line), (B_v, C_i, H, W)
        f_mr = self.conv_out(F.gelu(self.conv(v_frames))) + visual
        if rows is not None:
            v_frames, f_mr = v_frames[rows], f_mr[rows]
        b, c, h, w = f_mr.shape
        v_tokens = v_frames.flatten(2).transpose(1, 2)  # (B, HW, D)
        scale = 1.0 / math.sqrt(self.dim)
        # f_mw: word cross-attention (Eq. 3, first line); padding tokens are masked out. The 1x1 output
        # projection is linear, so it is applied to the L word values before the attention sum:
        # W_o(Σ_l a_pl w_l) + b = Σ_l a_pl (W_o w_l) + b — L·C_i instead of D·C_i per pixel.
        w_tokens = self.word_in(words)  # (B, L, D)
        logits = torch.einsum("bpd,bld->blp", v_tokens, w_tokens) * scale
        attn = logits.masked_fill(~word_mask[:, :, None], float("-inf")).softmax(dim=1)  # (B, L, HW)
        w_values = F.linear(w_tokens, self.word_out.weight[:, :, 0, 0])  # (B, L, C_i)
        # f_ms: sentence stream (Eq. 3, second line), softmax over {sentence, null key} = sigmoid; the
        # output projection of (weight · s) is weight · (W_o s) + b: rank 1 in (C_i, HW).
        s = self.sentence_in(sentence)  # (B, D)
        s_weight = torch.sigmoid(torch.einsum("bpd,bd->bp", v_tokens, s) * scale)  # (B, HW)
        s_value = F.linear(s, self.sentence_out.weight[:, :, 0, 0])  # (B, C_i) = W_o s
        b_mw, b_ms = self.word_out.bias, self.sentence_out.bias
        # Gate (Eq. 4): W_α = softmax(MLP([g(f_mw), g(f_mr), g(f_ms)])). The pooling g is linear, so the
        # pooled f_mw and f_ms come from the pooled attention weights without forming either map.
        g_mw = torch.einsum("bl,blc->bc", attn.mean(dim=2), w_values) + b_mw
        g_ms = s_weight.mean(dim=1, keepdim=True) * s_value + b_ms
        pooled = torch.cat([g_mw, f_mr.mean(dim=(2, 3)), g_ms], dim=1)
        weights = self.gate(pooled).softmax(dim=-1)  # (B, 3)
        # F_v ← W_α1 f_mw + W_α2 f_mr + W_α3 f_ms (Eq. 4) as one batched product: the sentence is one
        # more "word" with attention s_weight, the biases and W_α2 f_mr are the product's input.
        a1, a2, a3 = weights[:, 0, None, None], weights[:, 1, None, None], weights[:, 2, None, None]
        values = torch.cat([a1 * w_values, a3 * s_value[:, None]], dim=1).transpose(1, 2)  # (B, C_i, L+1)
        keys = torch.cat([attn, s_weight[:, None]], dim=1)  # (B, L+1, HW)
        bias = a1 * b_mw[None, :, None] + a3 * b_ms[None, :, None]  # (B, C_i, 1)
        out = torch.baddbmm(a2 * f_mr.reshape(b, c, h * w) + bias, values, keys).view(b, c, h, w)
        return out, weights
