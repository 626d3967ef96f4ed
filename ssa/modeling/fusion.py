"""Text into the pixel decoder: the sentence resizer and the bi-directional fusion blocks of Eq. (5).

The sentence feature F_s (CLIP width) is resized to the decoder width (:class:`TextResizer`). Before
each deformable encoder layer of the pixel decoder, a :class:`TextFusionBlock` (the official
``BiAttentionBlock``) lets the visual tokens v (B, S, C) and the sentence l (B, 1, C) read each other:

    v̄ = LN_v(v),  l̄ = LN_l(l)
    A_h = (W_q v̄)_h (W_k l̄)_hᵀ / √d                         per head h, (S, 1)
    Δv = W_ov concat_h softmax_l(A_h) (W_vl l̄)_h            text → visual (one key: weight 1)
    Δl = W_ol concat_h softmax_S(A_hᵀ) (W_vv v̄)_h           visual → text
    v ← v̄ + γ_v ⊙ Δv,   l ← l̄ + γ_l ⊙ Δl                    (the residual is on the normalised inputs)

After the last block, l is F̂_s^t: the per-frame sentence feature that becomes the frame queries'
content and the decoders' text memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TextResizer", "TextFusionBlock"]


class TextResizer(nn.Module):
    """F_s (B, D_text) → (B, C): Linear, LayerNorm (eps 1e-12), dropout."""

    def __init__(self, text_dim: int, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc = nn.Linear(text_dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, sentence: Tensor) -> Tensor:
        return self.dropout(self.norm(self.fc(sentence)))


class _BiAttention(nn.Module):
    """The two attentions of one fusion block, sharing their logits."""

    def __init__(self, dim: int, embed_dim: int, heads: int, dropout: float, to_visual: bool = True) -> None:
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"fusion width {embed_dim} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.dropout = heads, embed_dim // heads, dropout
        self.v_proj = nn.Linear(dim, embed_dim)  # W_q
        self.l_proj = nn.Linear(dim, embed_dim)  # W_k
        self.values_v_proj = nn.Linear(dim, embed_dim)  # W_vv
        self.out_l_proj = nn.Linear(embed_dim, dim)  # W_ol
        self.to_visual = to_visual
        if to_visual:
            self.values_l_proj = nn.Linear(dim, embed_dim)  # W_vl
            self.out_v_proj = nn.Linear(embed_dim, dim)  # W_ov

    def _split(self, x: Tensor) -> Tensor:  # (B, n, E) → (B, h, n, d)
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, v: Tensor, l: Tensor) -> tuple[Tensor | None, Tensor]:
        if not (self.training and self.dropout > 0):
            return self._forward_factored(v, l)
        q = self._split(self.v_proj(v)) * self.head_dim ** -0.5  # (B, h, S, d)
        k = self._split(self.l_proj(l))  # (B, h, L, d)
        logits = q @ k.transpose(-2, -1)  # (B, h, S, L)
        drop = self.dropout if self.training else 0.0
        probs_l = F.dropout(logits.transpose(-2, -1).softmax(dim=-1), drop, self.training)  # (B, h, L, S)
        delta_l = (probs_l @ self._split(self.values_v_proj(v))).transpose(1, 2).flatten(2)  # (B, L, E)
        delta_v = None
        if self.to_visual:
            probs_v = F.dropout(logits.softmax(dim=-1), drop, self.training)  # (B, h, S, L)
            delta_v = (probs_v @ self._split(self.values_l_proj(l))).transpose(1, 2).flatten(2)  # (B, S, E)
            delta_v = self.out_v_proj(delta_v)
        return delta_v, self.out_l_proj(delta_l)

    def _forward_factored(self, v: Tensor, l: Tensor, shift: Tensor | None = None
                          ) -> tuple[Tensor | None, Tensor]:
        """:meth:`forward` without dropout, with every projection of the S visual tokens folded into
        the L text tokens' side (the same sums in another order, equal up to float rounding):

            A_h = (v W_q,h + b_q,h) k_hᵀ / √d = v (W_q,hᵀ k_hᵀ / √d) + b_q,h k_hᵀ / √d     (S×C)(C×L)
            Δv  = Σ_h softmax_l(A_h) (u_h W_ov,hᵀ) + b_ov,  u_h = (W_vl l)_h              (S×L)(L×C)
            Δl_h = softmax_S(A_hᵀ) (v W_vv,hᵀ + b_vv,h) = (softmax_S(A_hᵀ) v) W_vv,hᵀ + b_vv,h

        so no (S, E) tensor is formed: the visual side costs O(S·C·h·L) instead of O(S·C·E). With one
        text token, Δv is the same for every visual token and comes back as (B, 1, C), broadcast.

        ``shift`` (B, 1, C): v holds v̄ + shift, a constant per row (the caller added γ_v Δv already, see
        :meth:`TextFusionBlock._forward_one_token`). The shift adds shift · W_q,hᵀ k_h to a column of the
        logits, the same for every token, which the softmax over the tokens does not see; the read
        subtracts shift (the softmax's weights sum to 1). Δv is then left to the caller (None)."""
        b, s, c = v.shape
        n, h, d = l.shape[1], self.heads, self.head_dim
        k = self._split(self.l_proj(l)) * d ** -0.5  # (B, h, L, d)
        w_q = self.v_proj.weight.view(h, d, c)  # (h, d, C)
        key_in_v = torch.einsum("bhld,hdc->bhlc", k, w_q)  # (B, h, L, C): W_q,hᵀ k_h
        key_bias = torch.einsum("bhld,hd->bhl", k, self.v_proj.bias.view(h, d))  # (B, h, L)
        logits = v @ key_in_v.flatten(1, 2).transpose(1, 2) + key_bias.flatten(1)[:, None]  # (B, S, h·L)
        logits = logits.view(b, s, h, n)
        probs_l = logits.flatten(2).transpose(1, 2).softmax(dim=-1)  # (B, h·L, S) over the tokens
        read = (probs_l @ v).view(b, h, n, c)  # (B, h, L, C) = softmax_S(A_hᵀ) v
        if shift is not None:
            read = read - shift[:, None]  # (B, 1, 1, C): the read of v̄
        w_vv = self.values_v_proj.weight.view(h, d, c)
        delta_l = torch.einsum("bhlc,hdc->blhd", read, w_vv) + self.values_v_proj.bias.view(h, d)
        delta_l = self.out_l_proj(delta_l.flatten(2))  # (B, L, C)
        delta_v = None
        if self.to_visual and shift is None:
            if n == 1:  # one key: softmax_l is exactly 1, every token gets the same Δv, (B, 1, C)
                delta_v = self.delta_v_one_key(l)
            else:
                probs_v = logits.softmax(dim=-1).flatten(2)  # (B, S, h·L) over the keys
                delta_v = probs_v @ self._per_key(l) + self.out_v_proj.bias  # (B, S, C)
        return delta_v, delta_l

    def _per_key(self, l: Tensor) -> Tensor:
        """W_ov,h u_h for each head h and text token (u_h = (W_vl l)_h): (B, h·L, C)."""
        u = self._split(self.values_l_proj(l))  # (B, h, L, d)
        w_ov = self.out_v_proj.weight.view(-1, self.heads, self.head_dim)  # (C, h, d)
        return torch.einsum("bhld,chd->bhlc", u, w_ov).flatten(1, 2)

    def delta_v_one_key(self, l: Tensor) -> Tensor:
        """Δv for a text of one token (B, 1, C) (normalised): the softmax over one key is exactly 1, so
        every visual token gets Σ_h W_ov,h u_h + b_ov, (B, 1, C)."""
        return self._per_key(l).sum(1, keepdim=True) + self.out_v_proj.bias


class TextFusionBlock(nn.Module):
    """Eq. (5): bi-directional attention between visual tokens and the sentence, with layer scales.

    ``bidirectional=False`` (Tab. 7) keeps the visual tokens as they are: only the sentence reads them
    (the block then has no text-to-visual weights).
    """

    def __init__(self, dim: int, embed_dim: int = 512, heads: int = 4, dropout: float = 0.1,
                 bidirectional: bool = True, init_scale: float = 1e-4) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.layer_norm_v = nn.LayerNorm(dim)
        self.layer_norm_l = nn.LayerNorm(dim)
        self.attn = _BiAttention(dim, embed_dim, heads, dropout, to_visual=bidirectional)
        self.gamma_v = nn.Parameter(torch.full((dim,), init_scale)) if bidirectional else None
        self.gamma_l = nn.Parameter(torch.full((dim,), init_scale))

    def forward(self, visual: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """visual (B, S, C), text (B, L, C) → both updated, same shapes."""
        if self._one_token_inference(visual, text):
            return self._forward_one_token(visual, text)
        v, l = self.layer_norm_v(visual), self.layer_norm_l(text)
        delta_v, delta_l = self.attn(v, l)
        visual = v + self.gamma_v * delta_v if delta_v is not None else visual
        return visual, l + self.gamma_l * delta_l

    def _one_token_inference(self, visual: Tensor, text: Tensor) -> bool:
        """Whether :meth:`_forward_one_token` computes this call: a sentence of one token, both
        directions, no attention dropout, nothing to differentiate."""
        if text.shape[1] != 1 or not self.bidirectional or (self.training and self.attn.dropout > 0):
            return False
        return not torch.is_grad_enabled() or not (
            visual.requires_grad or text.requires_grad or any(p.requires_grad for p in self.parameters()))

    def _forward_one_token(self, visual: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` for a sentence of one token at inference, the same sums: Δv is then one vector
        per row (the text side alone gives it), so for one row γ_v Δv joins LN_v's bias and the visual
        update costs no pass of its own over the (1, S, C) tokens; the attention reads v̄ through the
        shift."""
        l = self.layer_norm_l(text)  # (B, 1, C)
        shift = self.gamma_v * self.attn.delta_v_one_key(l)  # (B, 1, C): γ_v Δv
        norm = self.layer_norm_v
        if visual.shape[0] == 1:  # (1, S, C): v̄ + γ_v Δv
            v = F.layer_norm(visual, norm.normalized_shape, norm.weight, norm.bias + shift[0, 0], norm.eps)
        else:  # a shift per row: added in place on LN_v's fresh output
            v = norm(visual).add_(shift)
        _, delta_l = self.attn._forward_factored(v, l, shift)
        return v, l + self.gamma_l * delta_l
