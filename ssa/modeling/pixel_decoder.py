"""Pixel decoder: a multi-scale deformable-attention encoder over strides 8/16/32 in which each layer
is preceded by a text fusion block (Eq. 5, :mod:`ssa.modeling.fusion`), an FPN step to stride 4, and
two 1x1 projections of the stride-4 map: the frame-level mask features F_mask and the video-level ones.

Multi-scale deformable attention, for a query q with reference point p_q (normalised (x, y)):

    MSDeformAttn(z_q, p_q, {x_l}) = W_o concat_h [ sum_l sum_k A_hlqk · W_v x_l(p_q + Δp_hlqk / (W_l, H_l)) ]

where Δp are offsets in pixels of level l predicted from z_q, A the attention weights (softmax over
all L·P samples of a head), and x_l(·) bilinear interpolation of level l at a normalised location
(zero outside the map). No compiled extension: training (and CUDA) samples with
``torch.nn.functional.grid_sample``; CPU inference writes the whole sampling as one sparse matrix, the
bilinear corner weights times A, and applies it to the values as a weighted gather-sum per row
(``_sample_sparse``, ~3x faster on CPU, equal up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ssa.modeling.common import FFNLayer, cached_sine_position_2d, softmax_last
from ssa.modeling.fusion import TextFusionBlock

__all__ = ["multi_scale_deformable_attention", "MSDeformAttn", "DeformableEncoderLayer", "PixelDecoder",
           "PixelDecoderOutput"]


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Weighted bilinear sampling of a multi-level feature pyramid.

    Args:
        value: (B, S, M, D) per-head values; S = Σ_l H_l·W_l, levels concatenated, each row-major.
        spatial_shapes: (H_l, W_l) of each of the L levels.
        sampling_locations: (B, Q, M, L, P, 2) normalised (x, y) locations, (0, 0) the top-left corner
            of the map and (1, 1) the bottom-right one; samples outside read zeros.
        attention_weights: (B, Q, M, L, P), normalised over L·P.

    Returns:
        (B, Q, M·D), head-major channels (channel ``m * D + d``).
    """
    b, s, m, d = value.shape
    _, q, _, num_levels, p, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    if len(shapes) != num_levels:
        raise ValueError(f"{len(shapes)} spatial shapes for {num_levels} levels of sampling locations")
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(
            f"spatial shapes {shapes} cover {sum(h * w for h, w in shapes)} tokens, value has {s}"
        )
    if attention_weights.shape != (b, q, m, num_levels, p):
        raise ValueError(
            f"attention_weights has shape {tuple(attention_weights.shape)}, "
            f"expected {(b, q, m, num_levels, p)}"
        )

    if _sparse_applies(value, sampling_locations, attention_weights):
        size = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32, device=value.device)  # (L, 2)
        pixels = sampling_locations * size[:, None, :] - 0.5  # (B, Q, M, L, P, 2)
        return _sample_sparse(value, shapes, pixels, attention_weights)
    # Sample in the wider of the two dtypes: half-precision grids are too coarse for large maps.
    dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    grids = (2.0 * sampling_locations.to(dtype) - 1.0)  # (B, Q, M, L, P, 2) in grid_sample's [-1, 1]
    grids = grids.permute(0, 2, 1, 3, 4, 5).reshape(b * m, q, num_levels, p, 2)  # (B·M, Q, L, P, 2)
    weights = attention_weights.to(dtype).permute(0, 2, 1, 3, 4).reshape(b * m, 1, q, num_levels, p)

    out = value.new_zeros((b * m, d, q), dtype=dtype)  # (B·M, D, Q)
    start = 0
    for level, (h, w) in enumerate(shapes):
        value_l = value[:, start:start + h * w].to(dtype)  # (B, H_l·W_l, M, D)
        start += h * w
        value_l = value_l.permute(0, 2, 3, 1).reshape(b * m, d, h, w)  # (B·M, D, H_l, W_l)
        sampled = F.grid_sample(
            value_l, grids[:, :, level], mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (B·M, D, Q, P)
        out = out + (sampled * weights[:, :, :, level]).sum(-1)  # (B·M, D, Q)
    out = out.reshape(b, m * d, q).transpose(1, 2)  # (B, Q, M·D)
    return out.to(value.dtype)


def _sparse_applies(value: Tensor, *others: Tensor) -> bool:
    """Whether the CPU inference path (``_sample_sparse``) computes this sampling: float32 on the CPU
    with nothing to differentiate."""
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (value, *others))
    dtype = value.dtype
    for x in others:
        dtype = torch.promote_types(dtype, x.dtype)
    return value.device.type == "cpu" and not needs_grad and dtype == torch.float32


def _sample_sparse(value: Tensor, shapes: Sequence[tuple[int, int]], pixels: Tensor,
                   attention_weights: Tensor) -> Tensor:
    """The same sum as the grid_sample path, as one sparse matrix times the values.

    ``pixels`` (B, Q, M, L, P, 2) are the sample positions (x, y) in pixels of their level, pixel
    centres at integers (a normalised location times (W_l, H_l) minus 0.5, as grid_sample with
    align_corners=False reads it). Each level gets a zero border (1 token before, 2 after, on both axes)
    and positions are clamped to [-1, W_l] x [-1, H_l]: every corner of a sample is then a token of the
    bordered map, and a corner outside the map reads a zero, as grid_sample's zero padding does, with
    no per-corner test. Row (b, q, m) of the sparse (B·Q·M × B·S'·M) matrix holds A_mlqp times the
    bilinear weight of each of the 4 corners at that corner's (b, token, m) row of the values, so the
    product (B·Q·M, D) is already the (B, Q, M·D) output. Inference only (no autograd through the
    indices)."""
    return _sample_rows(_value_table(value, shapes), shapes, pixels, attention_weights)


def _value_table(value: Tensor, shapes: Sequence[tuple[int, int]]) -> Tensor:
    """The values (B, S, M, D) with a zero border per level (1 token before, 2 after, on both axes), as
    :func:`_sample_rows` reads them: (B, S', M, D), S' = Σ (H_l + 3)(W_l + 3)."""
    b, _, m, d = value.shape
    levels = value.split([h * w for h, w in shapes], dim=1)
    return torch.cat([F.pad(v.reshape(b, h, w, m * d), (0, 0, 1, 2, 1, 2)).reshape(b, -1, m, d)
                      for (h, w), v in zip(shapes, levels, strict=True)], dim=1)


def _sample_rows(table: Tensor, shapes: Sequence[tuple[int, int]], pixels: Tensor,
                 attention_weights: Tensor) -> Tensor:
    """:func:`_sample_sparse` from the bordered values of :func:`_value_table` (B, S', M, D), for the
    queries of ``pixels`` (B, Q, M, L, P, 2) and ``attention_weights`` (B, Q, M, L, P), which may be
    any slice of a layer's queries. Returns (B, Q, M·D)."""
    b, _, m, d = table.shape
    q, num_levels, p = pixels.shape[1], pixels.shape[3], pixels.shape[4]
    device = table.device
    rows, lp = b * q * m, num_levels * p
    padded = table.shape[1]
    columns = b * padded * m
    index = torch.int32 if max(columns, rows * 4 * lp) < 2**31 else torch.int64  # int32: less to move
    # per sample of a row (level l, point p), (L·P,): the level's size and the first token of its block
    width = torch.tensor([w for _, w in shapes], dtype=torch.float32, device=device).repeat_interleave(p)
    height = torch.tensor([h for h, _ in shapes], dtype=torch.float32, device=device).repeat_interleave(p)
    sizes = [(h + 3) * (w + 3) for h, w in shapes]
    first = torch.tensor([0, *sizes[:-1]], device=device).cumsum(0).repeat_interleave(p).to(index)
    xy = pixels.float().reshape(rows, lp, 2)
    x = xy[..., 0].clamp(min=-1.0).minimum(width)  # (B·Q·M, L·P)
    y = xy[..., 1].clamp(min=-1.0).minimum(height)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x.sub_(x0), y.sub_(y0)
    # weights of the corners (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1): (B·Q·M, 2, 2, L·P)
    a = attention_weights.float().reshape(rows, lp)
    below = fy.mul_(a)  # fy·A
    above = a - below  # (1 - fy)·A
    left = 1 - fx
    values = torch.empty(rows, 2, 2, lp, device=device)
    torch.mul(above, left, out=values[:, 0, 0])
    torch.mul(above, fx, out=values[:, 0, 1])
    torch.mul(below, left, out=values[:, 1, 0])
    torch.mul(below, fx, out=values[:, 1, 1])
    # their rows of the values: b·S'·M + token·M + m for the corner (y0, x0), then +M, +W'_l·M, +(W'_l+1)·M
    step = (width.to(index) + 3) * m  # (L·P,)
    head = (torch.arange(b, dtype=index, device=device) * (padded * m)).repeat_interleave(q * m)
    head = head + torch.arange(m, dtype=index, device=device).repeat(b * q)  # (B·Q·M,)
    corner = (y0.to(index) + 1).mul_(width.to(index) + 3).add_(x0.to(index)).add_(first + 1)
    corner = corner.mul_(m).add_(head[:, None])  # (B·Q·M, L·P)
    col = torch.empty(rows, 2, 2, lp, dtype=index, device=device)
    col[:, 0, 0] = corner
    torch.add(corner, m, out=col[:, 0, 1])
    torch.add(corner, step, out=col[:, 1, 0])
    torch.add(corner, step + m, out=col[:, 1, 1])
    # the sparse product as a weighted gather-sum per row: row r sums values[r, k] · table[col[r, k]]
    # over its 4·L·P corners (embedding_bag's kernel: ~30% faster than a CSR matrix times the table);
    # float32 throughout, also under autocast
    with torch.autocast(device.type, enabled=False):
        out = F.embedding_bag(col.view(rows, 4 * lp), table.float().reshape(columns, d),
                              per_sample_weights=values.view(rows, 4 * lp), mode="sum")  # (B·Q·M, D)
    return out.view(b, q, m * d).to(table.dtype)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (M heads, L levels, P points per head and level)."""

    def __init__(self, dim: int, num_levels: int, num_heads: int, num_points: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MSDeformAttn: dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on rings: head h looks along angle 2πh/M (unit vector rescaled so that its
        largest coordinate is ±1), point k at (k+1) times that vector; attention starts uniform."""
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(m, dtype=torch.float32) * (2.0 * math.pi / m)  # (M,)
        direction = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (M, 2) as (x, y)
        direction = direction / direction.abs().amax(dim=-1, keepdim=True)
        scale = torch.arange(1, p + 1, dtype=torch.float32)  # (P,)
        ring = direction[:, None, None, :] * scale[None, None, :, None]  # (M, 1, P, 2)
        ring = ring.expand(m, lv, p, 2)  # (M, L, P, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """query (B, Q, C); reference_points (B, Q, L, 2) normalised (x, y); value (B, S, C) the
        flattened levels of ``spatial_shapes``. Returns (B, Q, C)."""
        b, q, _ = query.shape
        s = value.shape[1]
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        if len(spatial_shapes) != lv:
            raise ValueError(f"MSDeformAttn built for {lv} levels, got {len(spatial_shapes)} spatial shapes")
        if reference_points.shape != (b, q, lv, 2):
            raise ValueError(
                f"reference_points has shape {tuple(reference_points.shape)}, expected {(b, q, lv, 2)}"
            )

        v = self.value_proj(value).view(b, s, m, self.dim // m)  # (B, S, M, D)
        if _sparse_applies(v, query, reference_points):
            return self.output_proj(self._sample_on_cpu(query, reference_points, v, spatial_shapes))
        offsets = self.sampling_offsets(query).view(b, q, m, lv, p, 2)  # (B, Q, M, L, P, 2) in pixels
        weights = self.attention_weights(query).view(b, q, m, lv * p).softmax(-1)
        weights = weights.view(b, q, m, lv, p)  # (B, Q, M, L, P)

        # (W_l, H_l) per level turns pixel offsets into normalised ones.
        size = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=reference_points.dtype,
                            device=reference_points.device)  # (L, 2)
        locations = (
            reference_points[:, :, None, :, None, :] + offsets / size[None, None, None, :, None, :]
        )  # (B, Q, M, L, P, 2)
        out = multi_scale_deformable_attention(v, spatial_shapes, locations, weights)  # (B, Q, C)
        return self.output_proj(out)


    def _sample_on_cpu(self, query: Tensor, reference_points: Tensor, v: Tensor,
                       spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """The sampling of :meth:`forward` for CPU inference, the same sums: offsets and attention
        logits from one product (their weights stacked), the softmax over a head's L·P samples by
        :func:`~ssa.modeling.common.softmax_last`, and the positions straight in pixels
        (p_q·(W_l, H_l) - 0.5 + Δp) for :func:`_sample_rows`. Returns (B, Q, C) before the output
        projection."""
        b, q, _ = query.shape
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        split = m * lv * p * 2
        weight = torch.cat([self.sampling_offsets.weight, self.attention_weights.weight])
        bias = torch.cat([self.sampling_offsets.bias, self.attention_weights.bias])
        size = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=torch.float32, device=query.device)
        origin = reference_points * size - 0.5  # (B, Q, L, 2) in pixels of each level
        table = _value_table(v, spatial_shapes)  # (B, S', M, D)
        out = query.new_empty(b, q, self.dim)
        # a few hundred queries at a time: the per-sample index arithmetic (B·Q·M·L·P entries per step)
        # then stays in the cache
        for start in range(0, q, _QUERY_CHUNK):
            part = slice(start, min(start + _QUERY_CHUNK, q))
            both = F.linear(query[:, part], weight, bias)  # (B, r, M·L·P·3)
            r = both.shape[1]
            weights = softmax_last(both[..., split:].reshape(b, r, m, lv * p)).view(b, r, m, lv, p)
            pixels = both[..., :split].view(b, r, m, lv, p, 2) + origin[:, part, None, :, None, :]
            out[:, part] = _sample_rows(table, spatial_shapes, pixels, weights)
        return out


_QUERY_CHUNK = 1024  # queries per step of MSDeformAttn._sample_on_cpu


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention over all levels, then an FFN."""

    def __init__(self, dim: int, num_levels: int, num_heads: int, num_points: int, ffn_dim: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_levels, num_heads, num_points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FFNLayer(dim, ffn_dim, dropout)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """src (B, S, C), pos (B or 1, S, C), reference_points (B, S, L, 2) -> (B, S, C)."""
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes)  # (B, S, C)
        src = self.norm(src + self.dropout(attn))
        return self.ffn(src)


def _conv_norm(in_dim: int, out_dim: int, kernel: int, bias: bool) -> nn.Sequential:
    conv = nn.Conv2d(in_dim, out_dim, kernel, padding=kernel // 2, bias=bias)
    nn.init.xavier_uniform_(conv.weight)
    if bias:
        nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.GroupNorm(math.gcd(32, out_dim), out_dim))


@dataclass
class PixelDecoderOutput:
    """Outputs of the pixel decoder for B rows (frame, expression)."""

    mask_features: Tensor  # (B, mask_dim, H/4, W/4) frame-level F_mask
    video_mask_features: Tensor  # (B, mask_dim, H/4, W/4) the video decoder's mask features
    multi_scale: list[Tensor]  # encoder outputs [(B, C, H/32, W/32), (B, C, H/16, W/16), (B, C, H/8, W/8)]
    text: Tensor  # (B, 1, C) F̂_s^t, the sentence after the last fusion block
    memory: Tensor  # (B, S, C) encoder output tokens (the three levels, flattened)


class PixelDecoder(nn.Module):
    """[Text fusion → deformable encoder layer] x num_layers on strides 8/16/32, FPN step to stride 4,
    mask-feature projections.

    ``forward(features, text)`` takes the four adapted stage maps (strides 4, 8, 16, 32) and the resized
    sentence (B, 1, C), and returns a :class:`PixelDecoderOutput`.
    """

    num_encoder_levels = 3

    def __init__(self, in_channels: Sequence[int], hidden_dim: int = 256, mask_dim: int = 256,
                 num_layers: int = 6, num_heads: int = 8, num_points: int = 4, ffn_dim: int = 1024,
                 dropout: float = 0.0, fusion_dim: int = 512, fusion_heads: int = 4,
                 fusion_dropout: float = 0.1, bidirectional: bool = True) -> None:
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        if len(in_channels) != 4:
            raise ValueError(
                f"PixelDecoder expects 4 input channel counts (strides 4..32), got {in_channels}"
            )
        if hidden_dim % 4:
            raise ValueError(
                f"PixelDecoder hidden_dim must be divisible by 4 (sine position), got {hidden_dim}"
            )
        self.in_channels = in_channels
        self.hidden_dim = hidden_dim
        self.mask_dim = mask_dim
        lv = self.num_encoder_levels

        # Strides 32, 16, 8: low resolution first.
        self.input_proj = nn.ModuleList(
            _conv_norm(c, hidden_dim, 1, bias=True) for c in reversed(in_channels[1:])
        )
        self.level_embed = nn.Parameter(torch.empty(lv, hidden_dim))
        nn.init.normal_(self.level_embed)
        self.fusion_layers = nn.ModuleList(
            TextFusionBlock(hidden_dim, fusion_dim, fusion_heads, fusion_dropout, bidirectional)
            for _ in range(num_layers)
        )
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(hidden_dim, lv, num_heads, num_points, ffn_dim, dropout)
            for _ in range(num_layers)
        )
        # FPN step to stride 4.
        self.lateral = _conv_norm(in_channels[0], hidden_dim, 1, bias=False)
        self.output_conv = nn.Sequential(*_conv_norm(hidden_dim, hidden_dim, 3, bias=False), nn.ReLU())
        self.mask_features = nn.Conv2d(hidden_dim, mask_dim, 1)
        self.video_mask_features = nn.Conv2d(hidden_dim, mask_dim, 1)
        for conv in (self.mask_features, self.video_mask_features):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def _check(self, features: Sequence[Tensor], text: Tensor) -> None:
        if not isinstance(features, (list, tuple)) or len(features) != 4:
            n = len(features) if isinstance(features, (list, tuple)) else type(features).__name__
            raise ValueError(f"PixelDecoder expects a list of 4 feature maps (strides 4, 8, 16, 32), got {n}")
        for i, (f, c) in enumerate(zip(features, self.in_channels, strict=True)):
            if not isinstance(f, Tensor) or f.dim() != 4:
                raise ValueError(f"PixelDecoder feature {i} must be a (B, C, H, W) tensor")
            if f.shape[1] != c:
                raise ValueError(
                    f"PixelDecoder feature {i} (stride {4 * 2 ** i}) has {f.shape[1]} channels, expected {c}"
                )
            if f.shape[0] != features[0].shape[0]:
                raise ValueError(f"PixelDecoder features have different batch sizes: "
                                 f"{[int(x.shape[0]) for x in features]}")
        if text.dim() != 3 or text.shape[0] != features[0].shape[0] or text.shape[2] != self.hidden_dim:
            raise ValueError(f"PixelDecoder text must be ({features[0].shape[0]}, L, {self.hidden_dim}), "
                             f"got {tuple(text.shape)}")

    @staticmethod
    def _reference_points(shapes: Sequence[tuple[int, int]], device: torch.device,
                          dtype: torch.dtype) -> Tensor:
        """Normalised pixel centres ((x+0.5)/W_l, (y+0.5)/H_l) of all levels, (S, 2)."""
        points = []
        for h, w in shapes:
            ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
            xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (H_l, W_l)
            points.append(torch.stack([gx, gy], dim=-1).reshape(h * w, 2))
        return torch.cat(points, dim=0)  # (S, 2)

    checkpoint_layers = False  # recompute layers in backward (SSAModel.set_activation_checkpointing)

    def _layer(self, i: int, src: Tensor, text: Tensor, pos: Tensor, ref: Tensor,
               shapes: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """Fusion block i (Eq. 5) then deformable encoder layer i: src (B, S, C), text (B, 1, C)."""
        src, text = self.fusion_layers[i](src, text)
        return self.layers[i](src, pos, ref, shapes), text

    def forward(self, features: Sequence[Tensor], text: Tensor) -> PixelDecoderOutput:
        self._check(features, text)
        b = features[0].shape[0]
        srcs, pos, shapes = [], [], []
        for level, (proj, f) in enumerate(zip(self.input_proj, reversed(features[1:]), strict=True)):
            x = proj(f)  # (B, C, h, w), strides 32, 16, 8
            h, w = x.shape[-2:]
            shapes.append((int(h), int(w)))
            srcs.append(x.flatten(2).transpose(1, 2))  # (B, h·w, C)
            p = cached_sine_position_2d(h, w, self.hidden_dim, x.device, x.dtype)  # (h·w, C)
            pos.append(p + self.level_embed[level].to(x.dtype))  # (h·w, C)
        src = torch.cat(srcs, dim=1)  # (B, S, C)
        pos_all = torch.cat(pos, dim=0)[None]  # (1, S, C)
        ref = self._reference_points(shapes, src.device, torch.float32)  # (S, 2)
        ref = ref[None, :, None, :].expand(b, -1, len(shapes), 2)  # (B, S, L, 2)

        recompute = self.checkpoint_layers and torch.is_grad_enabled()
        for i in range(len(self.layers)):
            if recompute:  # keep only the layer's inputs; recompute it in the backward pass
                src, text = checkpoint(self._layer, i, src, text, pos_all, ref, shapes, use_reentrant=False)
            else:
                src, text = self._layer(i, src, text, pos_all, ref, shapes)

        multi_scale = []
        start = 0
        for h, w in shapes:
            level = src[:, start:start + h * w]  # (B, h·w, C)
            start += h * w
            multi_scale.append(level.transpose(1, 2).reshape(b, self.hidden_dim, h, w))  # (B, C, h, w)

        lateral = self.lateral(features[0])  # (B, C, H/4, W/4)
        top_down = F.interpolate(multi_scale[-1], size=lateral.shape[-2:], mode="bilinear",
                                 align_corners=False)  # stride 8 -> stride 4
        fpn = self.output_conv(lateral + top_down)  # (B, C, H/4, W/4)
        return PixelDecoderOutput(self.mask_features(fpn), self.video_mask_features(fpn), multi_scale,
                                  text, src)
