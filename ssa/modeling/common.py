"""Small building blocks shared by the SSA heads: MLP, sine position encodings, post-norm attention
and feed-forward sub-layers."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MLP",
    "sine_position_2d",
    "sine_position_1d",
    "sine_encoding",
    "cached_sine_position_2d",
    "CrossAttentionLayer",
    "FoldedKeys",
    "SelfAttentionLayer",
    "FFNLayer",
    "softmax_last",
]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def sine_position_1d(length: int, dim: int, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32, temperature: float = 10000.0,
                     start: int = 1) -> Tensor:
    """Sinusoidal encoding of positions start..start+length-1, (length, dim): channel 2k is
    sin(p / temperature^(2k/dim)), channel 2k+1 the cosine (the official 1-D encodings count from 1)."""
    position = torch.arange(start, start + length, device=device, dtype=torch.float32)
    return sine_encoding(position, dim, temperature).to(dtype)


def sine_encoding(values: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sinusoidal encoding of real values (...,) → (..., dim): interleaved sin/cos of values / f_i with
    frequencies f_i = temperature^(2i/dim)."""
    if dim % 2:
        raise ValueError(f"sine position encoding needs an even dim, got {dim}")
    freq = temperature ** (torch.arange(0, dim, 2, device=values.device, dtype=torch.float32) / dim)
    angles = values.float()[..., None] / freq  # (..., dim/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def sine_position_2d(height: int, width: int, dim: int, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32, temperature: float = 10000.0,
                     normalize: bool = True) -> Tensor:
    """2-D sinusoidal encoding (DETR style), (dim, height, width): the first half of the channels
    encodes y, the second half x, over coordinates 1..H and 1..W, scaled to (0, 2π] when ``normalize``
    (the pixel decoder and frame decoder) or raw (the adapters)."""
    if dim % 4:
        raise ValueError(f"2-D sine position encoding needs dim divisible by 4, got {dim}")
    half = dim // 2
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32)
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32)
    if normalize:
        eps = 1e-6
        y = y / (height + eps) * 2 * math.pi
        x = x / (width + eps) * 2 * math.pi
    freq = temperature ** (2 * (torch.arange(half, device=device) // 2).float() / half)  # (half,)
    py = y[:, None] / freq  # (H, half)
    px = x[:, None] / freq  # (W, half)
    py = torch.stack([py[:, 0::2].sin(), py[:, 1::2].cos()], dim=2).flatten(1)
    px = torch.stack([px[:, 0::2].sin(), px[:, 1::2].cos()], dim=2).flatten(1)
    pos = torch.cat(
        [py[:, None, :].expand(height, width, half), px[None, :, :].expand(height, width, half)], dim=-1
    )
    return pos.permute(2, 0, 1).to(dtype)  # (dim, H, W)


@functools.lru_cache(maxsize=32)
def cached_sine_position_2d(height: int, width: int, dim: int, device: torch.device | None = None,
                            dtype: torch.dtype = torch.float32, normalize: bool = True) -> Tensor:
    """:func:`sine_position_2d` as (height·width, dim) tokens, computed once per size and kept (the
    heads ask for the same few sizes every frame; the sines of a stride-4 map cost as much as a
    small matrix product). Shared: never modify the result in place."""
    with torch.inference_mode(False), torch.no_grad():
        pos = sine_position_2d(height, width, dim, device=device, dtype=dtype, normalize=normalize)
        return pos.flatten(1).transpose(0, 1).contiguous()  # (H·W, dim)


def softmax_last(x: Tensor) -> Tensor:
    """softmax over the last dimension, the same sum as ``Tensor.softmax(-1)``: several times faster on
    the CPU when that dimension is short (a few to a few dozen entries), where torch's kernel is slow."""
    e = (x - x.amax(dim=-1, keepdim=True)).exp()
    if torch.is_grad_enabled() and e.requires_grad:  # autograd keeps e for the backward pass
        return e / e.sum(dim=-1, keepdim=True)
    return e.div_(e.sum(dim=-1, keepdim=True))


class FoldedKeys(NamedTuple):
    """A short memory with an attention's query and output projections folded in
    (:meth:`CrossAttentionLayer.fold_few_keys`)."""

    query: Tensor  # (B, C, H·L): the scores are (x + pos) @ query + bias
    bias: Tensor  # (B, 1, H·L), -inf at padded keys
    out: Tensor  # (B, H·L, C): the output is softmax_l(scores) @ out + b_o
    heads: int


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class CrossAttentionLayer(nn.Module):
    """Post-norm cross-attention: ``norm(x + attn(x + pos, mem + mem_pos, mem))``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, *, pos: Tensor | None = None,
                memory_pos: Tensor | None = None, attn_mask: Tensor | None = None,
                key_padding_mask: Tensor | None = None) -> Tensor:
        out = self.attn(
            _with_pos(x, pos), _with_pos(memory, memory_pos), memory,
            attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
        )[0]
        return self.norm(x + self.dropout(out))

    @property
    def dropout_active(self) -> bool:
        """Whether :meth:`forward` drops attention weights now (training with dropout > 0). When it
        does not, the reordered paths (``forward_few_keys``, ``forward_few_queries``,
        ``forward_single_key``) compute the same sums."""
        return self.training and self.attn.dropout > 0

    def _packed_projections(self, caller: str) -> tuple[tuple[Tensor, ...], tuple[Tensor | None, ...]]:
        """The attention's query, key and value weights and biases (None without bias), split from its
        packed in-projection, which the folded paths need (equal query/key/value widths)."""
        attn = self.attn
        if attn.in_proj_weight is None:
            raise ValueError(f"{caller} needs the packed in-projection (equal query/key/value widths)")
        biases = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None,) * 3
        return attn.in_proj_weight.chunk(3), biases

    def fold_few_keys(self, memory: Tensor, memory_pos: Tensor | None = None,
                      key_padding_mask: Tensor | None = None) -> FoldedKeys:
        """A short memory (a sentence's words) with the query and output projections folded into its
        keys and values: with k_hl and v_hl head h's key and value of token l,

            score_hl(x) = ((x + pos) · W_q,hᵀ k_hl + b_q,h · k_hl) / √d_h
            out(x) = Σ_h Σ_l softmax_l(score_h)(x) · (W_o,h v_hl) + b_o

        so that any number of queries then takes one product to the H·L scores and one back
        (:meth:`attend_folded`). Keys padded in every row are dropped. memory (B, L, C), key_padding_mask
        (B, L) True = padding."""
        attn = self.attn
        b, _, c = memory.shape
        heads = attn.num_heads
        dh = c // heads
        (w_q, w_k, w_v), (b_q, b_k, b_v) = self._packed_projections("fold_few_keys")
        if key_padding_mask is not None:
            keep = ~key_padding_mask.all(0)  # (L,) real in some row
            memory, key_padding_mask = memory[:, keep], key_padding_mask[:, keep]
            memory_pos = memory_pos[:, keep] if memory_pos is not None else None
        length = memory.shape[1]
        keys = F.linear(_with_pos(memory, memory_pos), w_k, b_k).view(b, length, heads, dh)
        values = F.linear(memory, w_v, b_v).view(b, length, heads, dh)
        scale = dh ** -0.5
        query = torch.einsum("hdc,blhd->bchl", w_q.view(heads, dh, c) * scale, keys)  # (B, C, H, L)
        bias = memory.new_zeros(b, 1, heads, length) if b_q is None else (
            torch.einsum("hd,blhd->bhl", b_q.view(heads, dh) * scale, keys)[:, None])  # (B, 1, H, L)
        if key_padding_mask is not None:
            bias = bias.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        out = torch.einsum("blhd,chd->bhlc", values, attn.out_proj.weight.view(c, heads, dh))
        return FoldedKeys(query.reshape(b, c, heads * length), bias.reshape(b, 1, heads * length),
                          out.reshape(b, heads * length, c), heads)

    def attend_folded(self, queries: Tensor, folded: FoldedKeys) -> Tensor:
        """The attention's output (out_proj included, before the residual and the norm) for queries
        (B, N, C) that already include their positions, from :meth:`fold_few_keys`. Returns (B, N, C)."""
        b, n, _ = queries.shape
        scores = torch.baddbmm(folded.bias, queries, folded.query)  # (B, N, H·L)
        probs = softmax_last(scores.view(b, n, folded.heads, -1)).view(b, n, -1)
        out = torch.bmm(probs, folded.out)  # (B, N, C)
        bias = self.attn.out_proj.bias
        return out if bias is None else out.add_(bias)

    def forward_few_keys(self, x: Tensor, memory: Tensor, *, pos: Tensor | None = None,
                         memory_pos: Tensor | None = None, key_padding_mask: Tensor | None = None) -> Tensor:
        """:meth:`forward` without dropout, for a short memory (a sentence's words) and many queries:
        the same sums in another order (:meth:`fold_few_keys`), with no per-head reshapes of (N, C)
        tensors. x (B, N, C), memory (B, L, C), key_padding_mask (B, L) True = padding."""
        folded = self.fold_few_keys(memory, memory_pos, key_padding_mask)
        return self.norm(x + self.attend_folded(_with_pos(x, pos), folded))

    def forward_few_queries(self, x: Tensor, memory: Tensor, *, pos: Tensor | None = None,
                            memory_pos: Tensor | None = None, attn_mask: Tensor | None = None,
                            keys: Tensor | None = None) -> Tensor:
        """:meth:`forward` without dropout, for few queries and a long memory (the video decoder's T·N
        frame queries, the frame decoder's N queries over a stride-8 map), the same sums in another
        order: the key and value projections fold into the queries,

            score_hm(x) = (W_k,hᵀ q_h(x)) · (m + pos_m) + q_h(x) · b_k,h,   q_h(x) = W_q,h (x + pos) + b_q,h
            out(x) = W_o concat_h [W_v,h (Σ_m softmax_m(score_h) m) + b_v,h] + b_o

        (the weights of a row sum to 1), so no (M, C) key or value tensor is made: memory grows with M
        only by the (N·H, M) scores. ``memory_pos`` (1 or B, P, C) may be shorter than the memory when
        the memory's positions repeat every P tokens (M a multiple of P); ``keys`` (B, M, C) is
        memory + memory_pos already added, in its place, for a caller whose memory serves several
        layers. ``attn_mask`` bool, True = blocked (no row blocked everywhere): (B·H, N, M) as
        :meth:`forward` takes it, or (B, N, M) shared by the heads (added to the scores as a (B, 1, N, M)
        -inf bias, one broadcast pass). Without gradients the key bias's share q_h · b_k,h, a constant
        per score row, is left out: the softmax over the memory does not change with it.
        x (B, N, C), memory (B, M, C)."""
        attn = self.attn
        b, n, c = x.shape
        m = memory.shape[1]
        heads = attn.num_heads
        dh = c // heads
        (w_q, w_k, w_v), (b_q, b_k, b_v) = self._packed_projections("forward_few_queries")
        q = F.linear(_with_pos(x, pos), w_q, b_q).view(b, n, heads, dh) * dh ** -0.5  # (B, N, H, dh)
        folded = torch.einsum("bnhd,hdc->bhnc", q, w_k.view(heads, dh, c)).reshape(b, heads * n, c)
        if keys is not None:
            if memory_pos is not None:
                raise ValueError("forward_few_queries takes keys or memory_pos, not both")
            scores = folded @ keys.transpose(1, 2)  # (B, H·N, M)
        elif memory_pos is not None and memory_pos.shape[1] == m:  # a position per token: one product
            scores = folded @ (memory + memory_pos).transpose(1, 2)  # (B, H·N, M)
            memory_pos = None
        else:
            scores = folded @ memory.transpose(1, 2)  # (B, H·N, M)
        # in place on the fresh scores below (autograd keeps none of them: the products keep their
        # inputs, softmax its output): one pass less each over the (B, H·N, M) tensor
        if b_k is not None and torch.is_grad_enabled() and b_k.requires_grad:  # (its gradient is ~0)
            scores.add_(torch.einsum("bnhd,hd->bhn", q, b_k.view(heads, dh)).reshape(b, heads * n, 1))
        if memory_pos is not None:
            period = memory_pos.shape[1]
            if m % period:
                raise ValueError(f"memory_pos of {period} tokens does not repeat evenly over {m} tokens")
            at_pos = folded @ memory_pos.transpose(1, 2)  # (B, H·N, P)
            scores.view(b, heads * n, m // period, period).add_(at_pos[:, :, None])
        if attn_mask is not None and attn_mask.shape[0] == b * heads:  # rows b·H + h: the scores' layout
            scores.masked_fill_(attn_mask.reshape(b, heads * n, m), float("-inf"))
        elif attn_mask is not None:  # (B, N, M), every head alike
            blocked = scores.new_zeros(b, 1, n, m).masked_fill_(attn_mask.view(b, 1, n, m), float("-inf"))
            scores.view(b, heads, n, m).add_(blocked)
        probs = scores.softmax(dim=-1)
        read = (probs @ memory).view(b, heads, n, c)  # (B, H, N, C): Σ_m softmax · m, per head
        out = torch.einsum("bhnc,hdc->bnhd", read, w_v.view(heads, dh, c)).reshape(b, n, c)
        if b_v is not None:
            out = out + b_v
        return self.norm(x + attn.out_proj(out))

    def single_key_value(self, memory: Tensor) -> Tensor:
        """The attention's output for a memory of one token (B, 1, C), whatever the queries: the softmax
        over one key is exactly 1, so every query reads ``out_proj(v_proj(memory))`` (B, 1, C)."""
        attn = self.attn
        c = memory.shape[-1]
        if memory.shape[1] != 1:
            raise ValueError(f"a single-key attention needs one memory token, got {memory.shape[1]}")
        w_v = attn.in_proj_weight[2 * c:] if attn.in_proj_weight is not None else attn.v_proj_weight
        b_v = attn.in_proj_bias[2 * c:] if attn.in_proj_bias is not None else None
        return attn.out_proj(F.linear(memory, w_v, b_v))

    def forward_single_key(self, x: Tensor, memory: Tensor) -> Tensor:
        """:meth:`forward` for a memory of one token (B, 1, C) and no masks, without dropout
        (:meth:`single_key_value`): the queries' projections are never needed (x (B, N, C))."""
        return self.norm(x + self.single_key_value(memory))


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention: ``norm(x + attn(x + pos, x + pos, x))``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, *, pos: Tensor | None = None,
                key_padding_mask: Tensor | None = None) -> Tensor:
        q = _with_pos(x, pos)
        out = self.attn(q, q, x, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return self.norm(x + self.dropout(out))


class FFNLayer(nn.Module):
    """Post-norm feed-forward: ``norm(x + W2 relu(W1 x))``."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        # ReLU in place on the (N, hidden) product: one pass less over the widest tensor, and autograd
        # keeps the ReLU's output, not its input
        if (self.dropout.p == 0 or not self.training) and not torch.is_autocast_enabled(x.device.type):
            return self._forward_residual_in_product(x)  # (autocast would round the residual sum)
        return self.norm(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x), inplace=True)))))

    def _forward_residual_in_product(self, x: Tensor) -> Tensor:
        """The same sums without dropout, the residual x as the second product's addend (one contiguous
        copy instead of the bias's broadcast copy and a separate add)."""
        flat = x.reshape(-1, x.shape[-1])  # (N, C)
        hidden = F.relu(self.linear1(flat), inplace=True)  # (N, hidden)
        out = torch.addmm(flat, hidden, self.linear2.weight.t()).add_(self.linear2.bias)
        return self.norm(out.view(x.shape))
