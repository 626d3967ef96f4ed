"""Frame query decoder: masked-attention query decoding per frame, with the sentence as the queries.

"Language as queries": the N instance queries of one frame all start as F̂_s^t, the sentence after
the pixel decoder's fusion blocks (their positions are a learned embedding). ``num_layers``
post-norm layers refine them, each masked cross-attention to one level of the multi-scale memory
(levels round-robin, coarse to fine) → self-attention among the queries → cross-attention to
F̂_s^t → FFN. A shared head (LayerNorm → class / mask) predicts after
the initial queries and after every layer; each prediction's mask, thresholded at sigmoid 0.5, is
the foreground a query may attend to in the next layer's cross-attention. The last prediction is
the output, the earlier ``num_layers`` ones are deep supervision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ssa.modeling.common import (
    MLP,
    CrossAttentionLayer,
    FFNLayer,
    SelfAttentionLayer,
    cached_sine_position_2d,
)

__all__ = ["FrameQueryDecoder", "FrameDecoderOutput", "attention_mask_from_logits"]


@dataclass
class FrameDecoderOutput:
    """Predictions of the frame query decoder for B frames and N queries."""

    queries: Tensor  # (B, N, C) final queries, normed with the head's LayerNorm
    class_logits: Tensor  # (B, N, 2) [referred object, no object]
    mask_logits: Tensor | None  # (B, N, H4, W4); None when forward(masks=False)
    mask_embed: Tensor  # (B, N, mask_dim) final mask embeddings: mask_logits = mask_embed · mask_features
    aux_class_logits: list[Tensor] = field(default_factory=list)  # num_layers x (B, N, 2)
    aux_mask_logits: list[Tensor] = field(default_factory=list)  # num_layers x (B, N, H4, W4) (masks=True)
    aux_queries: list[Tensor] = field(default_factory=list)  # num_layers x (B, N, C), normed


def attention_mask_from_logits(mask_logits: Tensor, size: tuple[int, int], num_heads: int) -> Tensor:
    """Cross-attention mask from predicted mask logits, for ``nn.MultiheadAttention``.

    ``mask_logits`` (B, N, H, W) are detached and bilinearly resized (align_corners=False) to
    ``size`` = (h, w). A memory position is blocked (True) where the resized logit is < 0, i.e.
    sigmoid < 0.5. A query whose every position would be blocked is released entirely (no position
    blocked) so that no softmax row is all -inf. Returns a bool tensor (B * num_heads, N, h * w),
    sample b's mask repeated for its heads at rows b * num_heads .. (b + 1) * num_heads - 1.
    """
    if mask_logits.dim() != 4:
        raise ValueError(f"mask_logits must be (B, N, H, W), got shape {tuple(mask_logits.shape)}")
    logits = mask_logits.detach()
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return _blocked(logits).repeat_interleave(num_heads, dim=0)  # (B*heads, N, h*w)


def _blocked(logits: Tensor) -> Tensor:
    """Mask logits (B, N, h, w) at the memory's size -> blocked positions (B, N, h·w), True where
    sigmoid < 0.5, every position released for a query that would have none."""
    blocked = (logits.sigmoid() < 0.5).flatten(2)  # (B, N, h*w)
    return blocked & ~blocked.all(dim=-1, keepdim=True)


def _mask_logits(mask_embed: Tensor, features: Tensor) -> Tensor:
    """mask_embed (B, N, D) · features (B, D, h, w) -> mask logits (B, N, h, w)."""
    return torch.einsum("bnd,bdhw->bnhw", mask_embed, features)


def _resize_channels(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners=False) of (B, D, H, W) maps. Shrinking by an even factor f on
    both axes (the memory levels of a map padded to stride 32), output pixel i reads input pixels
    f·i + f/2 - 1 and f·i + f/2 with weight 1/2 each: two strided sums give it, without the kernel's
    per-pixel weights (~2x faster). Otherwise each channel is resized as its own image: for many channels
    torch's CPU kernel converts the maps to channels-last first, a slow copy (~20 ms for 256 x 112 x 200),
    which one-channel images avoid."""
    b, d, h, w = x.shape
    f = h // size[0]
    if f >= 2 and f % 2 == 0 and (h, w) == (f * size[0], f * size[1]):
        a = f // 2 - 1
        rows = x[:, :, a::f] + x[:, :, a + 1::f]  # (B, D, h', W): the two rows of each output row
        return (rows[..., a::f] + rows[..., a + 1::f]).mul_(0.25)  # (B, D, h', w')
    out = F.interpolate(x.reshape(b * d, 1, h, w), size=tuple(size), mode="bilinear", align_corners=False)
    return out.view(b, d, *size)


class FrameQueryDecoder(nn.Module):
    """Mask2Former-style masked-attention decoder of per-frame instance queries."""

    def __init__(self, hidden_dim: int = 256, num_queries: int = 20, num_heads: int = 8,
                 num_layers: int = 9, ffn_dim: int = 2048, mask_dim: int = 256, num_levels: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        for name, value in [("hidden_dim", hidden_dim), ("num_queries", num_queries),
                            ("num_heads", num_heads), ("num_layers", num_layers), ("ffn_dim", ffn_dim),
                            ("mask_dim", mask_dim), ("num_levels", num_levels)]:
            if value <= 0:
                raise ValueError(f"FrameQueryDecoder: {name} must be positive, got {value}")
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        if hidden_dim % 4:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by 4 (2-D sine position)")
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.mask_dim = mask_dim
        self.num_levels = num_levels

        self.query_pos = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_levels, hidden_dim)
        self.cross_attn_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.self_attn_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.text_attn_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, ffn_dim, dropout) for _ in range(num_layers))

        # prediction head shared by every layer
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_head = nn.Linear(hidden_dim, 2)
        self.mask_head = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    # ------------------------------------------------------------------------------------------------
    def _check_inputs(self, text: Tensor, multi_scale: Sequence[Tensor], mask_features: Tensor) -> None:
        if text.dim() != 3 or text.shape[1:] != (1, self.hidden_dim):
            raise ValueError(f"text must be (B, 1, {self.hidden_dim}), got {tuple(text.shape)}")
        batch = text.shape[0]
        if not isinstance(multi_scale, (list, tuple)) or len(multi_scale) != self.num_levels:
            count = len(multi_scale) if isinstance(multi_scale, (list, tuple)) else type(multi_scale).__name__
            raise ValueError(f"multi_scale must be a list of {self.num_levels} feature maps, got {count}")
        for level, feat in enumerate(multi_scale):
            if feat.dim() != 4 or feat.shape[0] != batch or feat.shape[1] != self.hidden_dim:
                raise ValueError(
                    f"multi_scale[{level}] must be ({batch}, {self.hidden_dim}, h, w) to match the queries, "
                    f"got {tuple(feat.shape)}"
                )
        if mask_features.dim() != 4 or mask_features.shape[0] != batch \
                or mask_features.shape[1] != self.mask_dim:
            raise ValueError(
                f"mask_features must be ({batch}, {self.mask_dim}, H4, W4), got {tuple(mask_features.shape)}"
            )

    def _predict(self, x: Tensor, mask_features: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """Shared head: (normed queries (B,N,C), class logits (B,N,2), mask logits (B,N,H4,W4) or None
        without ``mask_features``, mask embeddings (B,N,D))."""
        normed = self.decoder_norm(x)
        class_logits = self.class_head(normed)  # (B, N, 2)
        mask_embed = self.mask_head(normed)  # (B, N, D)
        mask_logits = None if mask_features is None else _mask_logits(mask_embed, mask_features)
        return normed, class_logits, mask_logits, mask_embed

    checkpoint_layers = False  # recompute layers in backward (SSAModel.set_activation_checkpointing)

    def _layer(self, i: int, x: Tensor, memory: Tensor, memory_pos: Tensor, query_pos: Tensor,
               blocked: Tensor, text: Tensor, keys: Tensor | None = None) -> Tensor:
        """Layer i: masked cross-attention to ``memory`` (positions ``memory_pos``, or ``keys`` = memory +
        positions already added; ``blocked`` (B, N, M) True = masked) → self-attention → text
        cross-attention → FFN."""
        cross = self.cross_attn_layers[i]
        if cross.dropout_active:
            x = cross(x, memory, pos=query_pos, memory_pos=memory_pos,
                      attn_mask=blocked.repeat_interleave(self.num_heads, dim=0))  # (B·H, N, M)
        else:  # the same sums, the key and value projections folded into the N queries
            x = cross.forward_few_queries(x, memory, pos=query_pos, keys=keys, attn_mask=blocked,
                                          memory_pos=memory_pos if keys is None else None)
        x = self.self_attn_layers[i](x, pos=query_pos)
        x = self.text_attn_layers[i](x, text, pos=query_pos)
        return self.ffn_layers[i](x)  # (B, N, C)

    def forward(self, text: Tensor, multi_scale: Sequence[Tensor], mask_features: Tensor, *,
                masks: bool = True) -> FrameDecoderOutput:
        """Decode N queries that start as ``text`` (B, 1, C), F̂_s^t, against ``multi_scale``
        (num_levels maps (B, C, h_l, w_l), coarse → fine) and predict masks on ``mask_features``
        (B, mask_dim, H4, W4).

        The cross-attention masks come from ``mask_features`` resized to each memory level: bilinear
        resizing is linear in the channels, so mask_embed · resize(F_mask) is the official
        resize(mask_embed · F_mask), at a fraction of the cost. ``masks=False`` skips the full-resolution
        mask logits of every prediction (the frame-level deep supervision; inference needs only the
        queries): ``mask_logits`` is then None and ``aux_mask_logits`` empty."""
        self._check_inputs(text, multi_scale, mask_features)
        batch = text.shape[0]
        queries = text.expand(batch, self.num_queries, self.hidden_dim)  # (B, N, C), language as queries

        # memory tokens per level: (B, S_l, C) with level embedding, and their sine positions (1, S_l, C)
        memories: list[Tensor] = []
        positions: list[Tensor] = []
        sizes: list[tuple[int, int]] = []
        for level, feat in enumerate(multi_scale):
            h, w = feat.shape[-2:]
            sizes.append((h, w))
            memories.append(feat.flatten(2).transpose(1, 2) + self.level_embed.weight[level].to(feat.dtype))
            pos = cached_sine_position_2d(h, w, self.hidden_dim, feat.device, feat.dtype)  # (h·w, C)
            positions.append(pos.unsqueeze(0))

        query_pos = self.query_pos.weight.unsqueeze(0).expand(batch, -1, -1).to(queries.dtype)  # (B, N, C)
        level_features = [_resize_channels(mask_features.detach(), s) for s in sizes]  # (B, D, h_l, w_l)
        full = mask_features if masks else None

        class_preds: list[Tensor] = []
        mask_preds: list[Tensor | None] = []
        query_preds: list[Tensor] = []
        x = queries
        normed, class_logits, mask_logits, mask_embed = self._predict(x, full)
        class_preds.append(class_logits)
        mask_preds.append(mask_logits)
        query_preds.append(normed)
        # memory + positions once per level, for the layers that read the level (without gradients: a
        # checkpointed layer keeps only its inputs)
        keys = ([m + p for m, p in zip(memories, positions, strict=True)]
                if not torch.is_grad_enabled() else [None] * self.num_levels)
        for i in range(self.num_layers):
            level = i % self.num_levels
            level_logits = _mask_logits(mask_embed.detach(), level_features[level])  # (B, N, h_l, w_l)
            blocked = _blocked(level_logits)  # (B, N, h_l·w_l), as attention_mask_from_logits
            args = (i, x, memories[level], positions[level], query_pos, blocked, text, keys[level])
            if self.checkpoint_layers and torch.is_grad_enabled():  # recompute the layer in backward
                x = checkpoint(self._layer, *args, use_reentrant=False)
            else:
                x = self._layer(*args)  # (B, N, C)
            normed, class_logits, mask_logits, mask_embed = self._predict(x, full)
            class_preds.append(class_logits)
            mask_preds.append(mask_logits)
            query_preds.append(normed)

        return FrameDecoderOutput(
            queries=normed,
            class_logits=class_preds[-1],
            mask_logits=mask_preds[-1],
            mask_embed=mask_embed,
            aux_class_logits=class_preds[:-1],
            aux_mask_logits=mask_preds[:-1] if masks else [],
            aux_queries=query_preds[:-1],
        )
