"""Pixel decoder: a multi-scale deformable-attention encoder over strides 8/16/32 in which each layer
is preceded by a text fusion block (Eq. 5, :mod:`ssa.modeling.fusion`), an FPN step to stride 4, and
two 1x1 projections of the stride-4 map: the frame-level mask features F_mask and the video-level ones.

Multi-scale deformable attention, for a query q with reference point p_q (normalised (x, y)):

    MSDeformAttn(z_q, p_q, {x_l}) = W_o concat_h [ sum_l sum_k A_hlqk · W_v x_l(p_q + Δp_hlqk / (W_l, H_l)) ]

where Δp are offsets in pixels of level l predicted from z_q, A the attention weights (softmax over
all L·P samples of a head), and x_l(·) bilinear interpolation of level l at a normalised location
(zero outside the map). No compiled extension: training (and CUDA) samples with
``torch.nn.functional.grid_sample``; CPU inference writes the whole sampling as one sparse matrix, the
bilinear corner weights times A, and multiplies it with the values (``_sample_sparse``, ~3x faster on
CPU, equal up to float rounding).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ssa.modeling.common import FFNLayer, cached_sine_position_2d
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

    # Sample in the wider of the two dtypes: half-precision grids are too coarse for large maps.
    dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    needs_grad = torch.is_grad_enabled() and any(
        x.requires_grad for x in (value, sampling_locations, attention_weights))
    if value.device.type == "cpu" and not needs_grad and dtype == torch.float32:
        return _sample_sparse(value, shapes, sampling_locations, attention_weights)
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


def _sample_sparse(value: Tensor, shapes: Sequence[tuple[int, int]], sampling_locations: Tensor,
                   attention_weights: Tensor) -> Tensor:
    """The same sum as the grid_sample path, as one sparse (B·M·Q × B·M·S) matrix times the values
    (B·M·S × D, head (b, m) reading its own S rows): row (b, m, q) holds, for each corner c, level l
    and point p, the weight A_mlqp · (the bilinear weight of c) at that corner's token (zero for
    corners outside the map, as grid_sample's zero padding with align_corners=False). The weights and
    columns are computed corner by corner on contiguous (B·M·Q, L·P) tensors, then laid out row by
    row in one copy. Inference only (no autograd through the indices)."""
    b, s, m, d = value.shape
    q, num_levels, p = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    device = value.device
    rows = b * m * q
    # per nonzero of a row (level l, point p): the level's width, height and first token, (L·P,)
    widths = torch.tensor([w for _, w in shapes], dtype=torch.float32, device=device).repeat_interleave(p)
    heights = torch.tensor([h for h, _ in shapes], dtype=torch.float32, device=device).repeat_interleave(p)
    starts = torch.tensor([0] + [h * w for h, w in shapes][:-1], device=device).cumsum(0).repeat_interleave(p)
    # (B, Q, M, L, P, 2) → (B·M·Q, L·P) per coordinate, rows in (b, m, q) order
    locations = sampling_locations.float().permute(5, 0, 2, 1, 3, 4).reshape(2, rows, num_levels * p)
    weights = attention_weights.float().permute(0, 2, 1, 3, 4).reshape(rows, num_levels * p)
    x = locations[0] * widths - 0.5  # pixel coordinates, centres at integers
    y = locations[1] * heights - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    # corners in the order (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)
    in_x = ((x0 >= 0) & (x0 < widths), (x0 >= -1) & (x0 < widths - 1))
    in_y = ((y0 >= 0) & (y0 < heights), (y0 >= -1) & (y0 < heights - 1))
    wx, wy = (1 - fx, fx), (1 - fy, fy)
    corners = ((0, 0), (1, 0), (0, 1), (1, 1))
    values = torch.stack([torch.where(in_x[i] & in_y[j], wx[i] * wy[j] * weights, 0.0)
                          for i, j in corners], dim=1)  # (B·M·Q, 4, L·P): row by row
    first = (y0 * widths + x0).long() + starts  # the token of corner (x0, y0), (B·M·Q, L·P)
    head = (torch.arange(b * m, device=device) * s).repeat_interleave(q)[:, None]  # (B·M·Q, 1)
    first = first + head
    step = widths.long()
    col = torch.stack([torch.where(in_x[i] & in_y[j], first + (i + j * step), head)
                       for i, j in corners], dim=1)  # (B·M·Q, 4, L·P); outside: any valid column, weight 0
    per_row = 4 * num_levels * p  # nonzeros per row
    crow = torch.arange(0, rows * per_row + 1, per_row, device=device)
    # float32 throughout (sparse kernels have no half types), also under autocast
    with warnings.catch_warnings(), torch.autocast(device.type, enabled=False):
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        matrix = torch.sparse_csr_tensor(crow, col.reshape(-1), values.reshape(-1),
                                         size=(rows, b * m * s), check_invariants=False)
        out = matrix @ value.float().permute(0, 2, 1, 3).reshape(b * m * s, d)  # (B·M·Q, D)
    return out.view(b, m, q, d).permute(0, 2, 1, 3).reshape(b, q, m * d).to(value.dtype)


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
