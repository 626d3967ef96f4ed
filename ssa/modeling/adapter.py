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

from ssa.modeling.common import MLP, CrossAttentionLayer, FoldedKeys, cached_sine_position_2d, sine_encoding

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
        lw = self.linear_l(words)  # (B, L, D_a)
        word_pos = sine_encoding(torch.arange(1, lw.shape[1] + 1, device=lw.device), self.dim).to(lw.dtype)
        sentence = self.linear_l(sentence)[:, None]  # (B, 1, D_a)
        if _in_token_chunks(self, visual, words, sentence):
            return self._forward_in_token_chunks(visual, lw, word_pos, word_mask, sentence)
        residual = F.relu(self.conv2(F.relu(self.conv1(visual)))) + visual  # f_mr
        # W_v as a product on the channels-last view: the tokens come out contiguous (adding to a
        # transposed view is ~10x slower on the CPU, and the streams add to them three times)
        tokens = F.linear(visual.flatten(2).transpose(1, 2), self.linear_v.weight.flatten(1),
                          self.linear_v.bias)  # (B, HW, D_a)
        pos = cached_sine_position_2d(h, w, self.dim, visual.device, tokens.dtype, normalize=False)[None]
        # (1, HW, D_a)
        if self.cross_attention.dropout_active:
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

    def _forward_in_token_chunks(self, visual: Tensor, lw: Tensor, word_pos: Tensor, word_mask: Tensor,
                                 sentence: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` for CPU inference, the same sums, a few hundred tokens at a time so that the
        elementwise work (positions, residual adds, LayerNorms, ReLUs, the gated sum) runs on data in
        the cache rather than in passes over whole stride-4 maps. Pass 1 writes the two attention
        streams (before U) and the residual path per chunk and sums them for the gate; pass 2 mixes
        them per chunk, U's product accumulating onto the weighted residual in place.
        lw (B, L, D_a) and sentence (B, 1, D_a) are W_l of the words and of the sentence."""
        b, c, h, w = visual.shape
        n, d = h * w, self.dim
        attn = self.cross_attention
        flat = visual.reshape(b, c, n)  # (B, C_v, N)
        folded = attn.fold_few_keys(lw, word_pos[None], ~word_mask)
        constant = attn.single_key_value(sentence)[:, 0]  # (B, D_a): the sentence stream's attention
        # Φ_1 and W_v read the same pixels: one product (2 D_a, C_v)
        w_in = torch.cat([self.conv1.weight.flatten(1), self.linear_v.weight.flatten(1)])
        b_in = torch.cat([self.conv1.bias, self.linear_v.bias])
        w_2, b_2 = self.conv2.weight.flatten(1), self.conv2.bias[:, None]  # (C_v, D_a), (C_v, 1)
        pos = cached_sine_position_2d(h, w, d, visual.device, visual.dtype, normalize=False)  # (N, D_a)
        norm = attn.norm
        chunks = [(start, min(start + _TOKEN_CHUNK, n)) for start in range(0, n, _TOKEN_CHUNK)]
        streams: list[list[tuple[Tensor, Tensor]]] = []  # per sample and chunk: (r, D_a) sentence, words
        out = visual.new_empty(b, c, n)  # f_mr, then the output in place
        sums = visual.new_zeros(b, 2, d)
        residual_sums = visual.new_zeros(b, c)
        for i in range(b):
            folded_i = FoldedKeys(folded.query[i:i + 1], folded.bias[i:i + 1], folded.out[i:i + 1],
                                  folded.heads)
            streams.append([])
            for start, stop in chunks:
                v = flat[i, :, start:stop]  # (C_v, r)
                hidden = torch.addmm(b_in, v.t(), w_in.t())  # (r, 2 D_a): Φ_1 F_v | W_v F_v
                tokens = hidden[:, d:]
                residual = torch.addmm(b_2, w_2, hidden[:, :d].relu_().t()).relu_()  # (C_v, r)
                residual_sums[i] += torch.add(residual, v, out=out[i, :, start:stop]).sum(1)  # f_mr
                word = attn.attend_folded((tokens + pos[start:stop])[None], folded_i)[0]  # (r, D_a)
                sentence_stream = norm(tokens + constant[i])  # Eq. 3, the sentence's single key
                word_stream = norm(word.add_(tokens))  # Eq. 3
                sums[i, 0] += sentence_stream.sum(0)
                sums[i, 1] += word_stream.sum(0)
                streams[i].append((sentence_stream, word_stream))
        # U is affine, so GAP(U x) = U GAP(x) and Σ_s w_s U x_s = U (Σ_s w_s x_s) + (Σ_s w_s) b_U (Eq. 4)
        pooled = torch.cat([self.up_v(sums / n).flatten(1), residual_sums / n], dim=1)  # (B, 3 C_v)
        weights = self.gate(pooled).softmax(dim=-1)  # (B, 3), Eq. 4
        bias = (weights[:, :2].sum(1, keepdim=True) * self.up_v.bias)[..., None]  # (B, C_v, 1)
        for i in range(b):
            w_s, w_w, w_r = weights[i].tolist()
            for (start, stop), (sentence_stream, word_stream) in zip(chunks, streams[i], strict=True):
                mixed = sentence_stream.mul_(w_s).add_(word_stream, alpha=w_w)  # (r, D_a)
                out[i, :, start:stop].mul_(w_r).add_(bias[i]).addmm_(self.up_v.weight, mixed.t())
        return out.view(b, c, h, w), weights


_TOKEN_CHUNK = 1024  # tokens per chunk: a chunk's (r, 2 D_a) products stay within a core's L2 cache


def _in_token_chunks(adapter: SemanticAlignmentAdapter, *inputs: Tensor) -> bool:
    """Whether the adapter runs :meth:`SemanticAlignmentAdapter._forward_in_token_chunks`: on the CPU,
    with nothing to differentiate, no attention dropout and no autocast (its products write into
    buffers of the input's dtype)."""
    if inputs[0].device.type != "cpu" or adapter.cross_attention.dropout_active:
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    if not torch.is_grad_enabled():
        return True
    return not any(x.requires_grad for x in inputs) and not any(
        p.requires_grad for p in adapter.parameters())
