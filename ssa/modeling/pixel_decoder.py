"""Pixel decoder: a multi-scale deformable-attention encoder over strides 8/16/32 in which each layer
is preceded by a text fusion block (Eq. 5, :mod:`ssa.modeling.fusion`), an FPN step to stride 4, and
two 1x1 projections of the stride-4 map: the frame-level mask features F_mask and the video-level ones.

Multi-scale deformable attention, for a query q with reference point p_q (normalised (x, y)):

    MSDeformAttn(z_q, p_q, {x_l}) = W_o concat_h [ sum_l sum_k A_hlqk · W_v x_l(p_q + Δp_hlqk / (W_l, H_l)) ]

where Δp are offsets in pixels of level l predicted from z_q, A the attention weights (softmax over
all L·P samples of a head), and x_l(·) bilinear interpolation of level l at a normalised location
(zero outside the map). No compiled extension: training (and CUDA) samples with
``torch.nn.functional.grid_sample``; CPU inference gathers the 4 bilinear corners of every sample from a
zero-bordered table of the values as weighted gather-sums (``_gather_bilinear``, ~3x faster on CPU, equal
up to float rounding), and runs each encoder layer a chunk of queries at a time
(``DeformableEncoderLayer._forward_in_query_chunks``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

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
    """The same sum as the grid_sample path, as a weighted gather-sum over the bilinear corners
    (:func:`_gather_bilinear`). ``pixels`` (B, Q, M, L, P, 2) are the sample positions (x, y) in pixels
    of their level, pixel centres at integers (a normalised location times (W_l, H_l) minus 0.5, as
    grid_sample with align_corners=False reads it). Inference only (no autograd through the indices).
    Returns (B, Q, M·D)."""
    b, q, m = pixels.shape[:3]
    d = value.shape[-1]
    table = _value_table(value, shapes)  # (B·S'·M, D)
    grid = _sampling_grid(shapes, m, pixels.shape[4], value.device, table.shape[0])
    out = value.new_empty(b, q, m * d, dtype=torch.float32)
    rows_per_batch = table.shape[0] // b
    for i in range(b):
        x = pixels[i, ..., 0].float().reshape(q, -1).clone()  # (Q, M·L·P), overwritten below
        y = pixels[i, ..., 1].float().reshape(q, -1).clone()
        a = attention_weights[i].float().reshape(q, -1)
        out[i] = _gather_bilinear(table, grid, x, y, a, i * rows_per_batch).view(q, m * d)
    return out.to(value.dtype)


def _value_table(value: Tensor, shapes: Sequence[tuple[int, int]]) -> Tensor:
    """The values (B, S, M, D) with a zero border per level (1 token before, 2 after, on both axes), as
    :func:`_gather_bilinear` reads them: (B·S'·M, D) float32, S' = Σ (H_l + 3)(W_l + 3), row
    (b·S' + token)·M + m."""
    b, _, m, d = value.shape
    table = value.new_empty(b, sum((h + 3) * (w + 3) for h, w in shapes), m * d, dtype=torch.float32)
    start = 0
    for (h, w), level in zip(shapes, value.split([h * w for h, w in shapes], dim=1), strict=True):
        block = table[:, start:start + (h + 3) * (w + 3)].view(b, h + 3, w + 3, m * d)
        start += (h + 3) * (w + 3)
        block[:, 0].zero_()  # the border: one line above, two below, one column left, two right
        block[:, h + 1:].zero_()
        block[:, 1:h + 1, 0].zero_()
        block[:, 1:h + 1, w + 1:].zero_()
        block[:, 1:h + 1, 1:w + 1] = level.reshape(b, h, w, m * d)
    return table.view(-1, d)


class _SamplingGrid(NamedTuple):
    """Per-sample constants of :func:`_gather_bilinear`, each (n,) = (M·L·P,) in (m, l, p) order."""

    heads: int
    x_max: Tensor  # W_l: positions are clamped to [-1, W_l] x [-1, H_l]
    y_max: Tensor  # H_l
    row_step: Tensor  # (W_l + 3)·M: one pixel down in the bordered table, in table rows
    row_step_int: Tensor  # the same, as the index dtype
    origin: Tensor  # table row of pixel (0, 0) of level l for head m: (first_l + W_l + 4)·M + m
    index: torch.dtype  # int32 where the table allows: less to move


def _sampling_grid(shapes: Sequence[tuple[int, int]], heads: int, points: int, device: torch.device,
                   table_rows: int) -> _SamplingGrid:
    levels = len(shapes)

    def per_sample(values: list[float]) -> Tensor:  # one value per level -> (M·L·P,)
        level = torch.tensor(values, dtype=torch.float64, device=device)
        return level[None, :, None].expand(heads, levels, points).reshape(-1)

    sizes = [(h + 3) * (w + 3) for h, w in shapes]
    first = [sum(sizes[:i]) for i in range(levels)]
    # corner rows are computed in floating point, exactly (integers below 2^24 in float32)
    exact = torch.float32 if table_rows < 2**24 else torch.float64
    index = torch.int32 if table_rows < 2**31 else torch.int64
    step = per_sample([(w + 3) * heads for _, w in shapes])
    origin = per_sample([(f + w + 4) * heads for f, (_, w) in zip(first, shapes, strict=True)])
    origin = origin + torch.arange(heads, dtype=torch.float64, device=device).repeat_interleave(
        levels * points)
    x_max, y_max = per_sample([w for _, w in shapes]).float(), per_sample([h for h, _ in shapes]).float()
    return _SamplingGrid(heads, x_max, y_max, step.to(exact), step.to(index), origin.to(exact), index)


def _gather_bilinear(table: Tensor, grid: _SamplingGrid, x: Tensor, y: Tensor, attention: Tensor,
                     offset: int = 0) -> Tensor:
    """Σ_{l,p} A · bilinear(x_l at (x, y)) per query and head, as weighted gather-sums over the table.

    ``x``, ``y`` (R, n): the positions in pixels of the R queries' n = M·L·P samples, (m, l, p) order;
    they are overwritten. ``attention`` (R, n) the weights A. ``table`` (rows, D) from
    :func:`_value_table`; ``offset`` its row of this batch row's first token. Positions are clamped to
    [-1, W_l] x [-1, H_l]: every corner is then a token of the bordered map, and a corner outside the
    map reads a zero, as grid_sample's zero padding does, with no per-corner test. One
    ``embedding_bag`` (a weighted gather-sum per row, ~30% faster than a CSR matrix times the table)
    sums the 4·L·P corners of each (query, head): one call rather than one per corner saves three
    passes over the (R·M, D) output. Returns (R·M, D), float32."""
    r, n = x.shape
    m = grid.heads
    x.clamp_(min=-1.0)
    torch.minimum(x, grid.x_max, out=x)
    y.clamp_(min=-1.0)
    torch.minimum(y, grid.y_max, out=y)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x.sub_(x0), y.sub_(y0)
    if grid.origin.dtype != torch.float32:
        x0, y0 = x0.to(grid.origin.dtype), y0.to(grid.origin.dtype)
    corner = torch.addcmul(grid.origin, y0, grid.row_step).add_(x0, alpha=m)  # row of corner (y0, x0)
    if offset:
        corner.add_(offset)
    lp = n // m
    # the 4 corners of each sample as one bag of 4·L·P per (query, head): rows and weights (R, M, 4, L·P)
    index = torch.empty(r, m, 4, lp, dtype=grid.index, device=x.device)
    index[:, :, 0] = corner.view(r, m, lp)  # (y0, x0)
    torch.add(index[:, :, 0], m, out=index[:, :, 1])  # (y0, x0 + 1)
    torch.add(index[:, :, 0], grid.row_step_int.view(m, lp), out=index[:, :, 2])  # (y0 + 1, x0)
    torch.add(index[:, :, 2], m, out=index[:, :, 3])  # (y0 + 1, x0 + 1)
    weight = torch.empty(r, m, 4, lp, dtype=torch.float32, device=x.device)
    fx, fy, attention = fx.view(r, m, lp), fy.view(r, m, lp), attention.view(r, m, lp)
    below = torch.mul(fy, attention, out=weight[:, :, 2])  # fy·A
    above = torch.sub(attention, below, out=weight[:, :, 0])  # (1 - fy)·A
    torch.mul(above, fx, out=weight[:, :, 1])
    torch.mul(below, fx, out=weight[:, :, 3])
    above.sub_(weight[:, :, 1])  # (1 - fy)·A·(1 - fx)
    below.sub_(weight[:, :, 3])
    with torch.autocast(table.device.type, enabled=False):  # float32 throughout
        return F.embedding_bag(index.view(r * m, 4 * lp), table,
                               per_sample_weights=weight.view(r * m, 4 * lp), mode="sum")  # (R·M, D)


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

        if self._cpu_inference(value, query, reference_points):
            return self._sample_on_cpu(query, reference_points, value, spatial_shapes)
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


    def _cpu_inference(self, *inputs: Tensor) -> bool:
        """Whether :meth:`_sample_on_cpu` computes this call: float32 on the CPU, autocast off, nothing
        to differentiate."""
        return (_sparse_applies(*inputs, *self.parameters())
                and not torch.is_autocast_enabled(inputs[0].device.type))

    def _sampling_plan(self, value: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> _SamplingPlan:
        """What every query chunk of :meth:`_sample_chunk` reads (CPU inference): the bordered table of
        the projected values and the products' weights. value (B, S, C)."""
        b, s, c = value.shape
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        n = m * lv * p
        table = _value_table(self.value_proj(value).view(b, s, m, c // m), spatial_shapes)  # (B·S'·M, D)
        # one product for the x offsets, the y offsets and the attention logits, in blocks of n columns
        offsets_w = self.sampling_offsets.weight.view(m, lv, p, 2, c).movedim(3, 0).reshape(2 * n, c)
        offsets_b = self.sampling_offsets.bias.view(m, lv, p, 2).movedim(3, 0).reshape(2 * n)
        weight = torch.cat([offsets_w, self.attention_weights.weight]).t()  # (C, 3n)
        # the reference points' share of the positions, p_q·(W_l, H_l) - 0.5, as a product of the
        # (x_l, y_l) of each level with a (2L, 3n) matrix of sizes
        to_pixels = torch.zeros(lv, 2, 3, m, lv, p, device=value.device)
        for level, (h, w) in enumerate(spatial_shapes):
            to_pixels[level, 0, 0, :, level] = w
            to_pixels[level, 1, 1, :, level] = h
        half = torch.tensor([0.5, 0.5, 0.0], device=value.device).repeat_interleave(n)
        bias = torch.cat([offsets_b, self.attention_weights.bias]) - half  # (3n,)
        grid = _sampling_grid(spatial_shapes, m, p, value.device, table.shape[0])
        return _SamplingPlan(table, table.shape[0] // b, weight, bias, to_pixels.view(2 * lv, 3 * n), grid)

    def _sample_chunk(self, plan: _SamplingPlan, query: Tensor, reference_points: Tensor,
                      batch_index: int) -> Tensor:
        """The sampling of :meth:`forward` for CPU inference, before the output projection, for one
        chunk of one batch row's queries: query (R, C), reference_points (R, L, 2). The positions come
        straight in pixels (p_q·(W_l, H_l) - 0.5 + Δp) from the product, the softmax over a head's L·P
        samples is :func:`_softmax_per_head`, and every elementwise step reads
        contiguous blocks of n = M·L·P columns. Returns (R, C)."""
        r = query.shape[0]
        n = self.num_heads * self.num_levels * self.num_points
        both = torch.addmm(plan.bias, query, plan.weight)  # (R, 3n): x | y | attention logits
        both.addmm_(reference_points.reshape(r, -1).to(both.dtype), plan.to_pixels)
        attention = _softmax_per_head(both[:, 2 * n:], self.num_heads)  # (R, n)
        out = _gather_bilinear(plan.table, plan.grid, both[:, :n], both[:, n:2 * n], attention,
                               batch_index * plan.rows_per_batch)  # (R·M, D)
        return out.view(r, self.dim)

    def _sample_on_cpu(self, query: Tensor, reference_points: Tensor, value: Tensor,
                       spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """:meth:`forward` for CPU inference, the same sums, a chunk of queries at a time
        (:meth:`_sample_chunk`, then the output projection on the chunk). Returns (B, Q, C)."""
        b, q, _ = query.shape
        plan = self._sampling_plan(value, spatial_shapes)
        out = query.new_empty(b, q, self.dim)
        for i in range(b):
            for part in _query_chunks(q):
                sampled = self._sample_chunk(plan, query[i, part], reference_points[i, part], i)
                torch.addmm(self.output_proj.bias, sampled, self.output_proj.weight.t(), out=out[i, part])
        return out


def _softmax_per_head(logits: Tensor, heads: int) -> Tensor:
    """The softmax over each head's L·P attention logits of R queries, (R, M·L·P) -> the same shape,
    contiguous. The exponentials are shifted by the chunk's largest logit rather than each head's own (one
    reduction over the chunk instead of R·M short ones: ~2x faster; the softmax does not change with
    the shift). Where that leaves a head's sum below 1e-30 (all its logits ~69 below the chunk's
    largest), each head's own largest logit is used, as :func:`~ssa.modeling.common.softmax_last` does."""
    r = logits.shape[0]
    e = (logits - logits.max()).exp_().view(r, heads, -1)  # (R, M, L·P), every entry <= 1
    total = e.sum(dim=-1, keepdim=True)
    if bool(total.min() < 1e-30):
        return softmax_last(logits.reshape(r, heads, -1)).view(r, -1)
    return e.div_(total).view(r, -1)


class _SamplingPlan(NamedTuple):
    """One MSDeformAttn call's CPU sampling state, shared by its query chunks."""

    table: Tensor  # (B·S'·M, D) the bordered values (_value_table)
    rows_per_batch: int  # S'·M
    weight: Tensor  # (C, 3n) offsets x, offsets y, attention logits
    bias: Tensor  # (3n,) their biases, -0.5 on the positions
    to_pixels: Tensor  # (2L, 3n) reference (x_l, y_l) -> pixels of level l
    grid: _SamplingGrid


def _query_chunks(q: int) -> list[slice]:
    """Slices of _QUERY_CHUNK queries: the per-sample work of a chunk then stays in the cache."""
    return [slice(start, min(start + _QUERY_CHUNK, q)) for start in range(0, q, _QUERY_CHUNK)]


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
        if self.self_attn._cpu_inference(src, pos, reference_points, *self.parameters()):
            return self._forward_in_query_chunks(src, pos, reference_points, spatial_shapes)
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes)  # (B, S, C)
        src = self.norm(src + self.dropout(attn))
        return self.ffn(src)

    def _forward_in_query_chunks(self, src: Tensor, pos: Tensor, reference_points: Tensor,
                                 spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """:meth:`forward` for CPU inference, the same sums: the values are projected once, then each
        chunk of queries goes through the sampling, the output projection, the residual and norm and the
        FFN while it is in the cache, instead of each step reading and writing the whole map."""
        b, q, c = src.shape
        attn = self.self_attn
        plan = attn._sampling_plan(src, spatial_shapes)
        out = torch.empty_like(src)
        w_o = attn.output_proj.weight.t()
        drop = self.training and self.dropout.p > 0
        for i in range(b):
            for part in _query_chunks(q):
                x = src[i, part]  # (R, C)
                sampled = attn._sample_chunk(plan, x + pos[i if pos.shape[0] > 1 else 0, part],
                                             reference_points[i, part], i)
                if drop:
                    y = self.dropout(torch.addmm(attn.output_proj.bias, sampled, w_o)).add_(x)
                else:  # the residual as the product's addend
                    y = torch.addmm(x, sampled, w_o).add_(attn.output_proj.bias)
                out[i, part] = self.ffn(self.norm(y))
        return out


def _channels_first(x: Tensor) -> Tensor:
    """A contiguous copy of a (B, C, H, W) view of channels-last data, one (H·W, C) -> (C, H·W)
    transpose per image (torch's 2-D transposing copy: ~4x faster than ``contiguous()`` on the 4-D view)."""
    if x.is_contiguous() or (torch.is_grad_enabled() and x.requires_grad):
        return x.contiguous()
    b, c, h, w = x.shape
    out = x.new_empty(b, c, h * w)
    for i in range(b):
        out[i].copy_(x[i].flatten(1))
    return out.view(b, c, h, w)


def _conv1x1(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 convolution; on the CPU with a channels-first input, as one matrix product per image (the
    same sums; torch's CPU kernel for 1x1 convolutions fills the output with the bias first, a slow
    broadcast copy, and is ~30% slower at stride 4)."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
    if x.device.type != "cpu" or not x.is_contiguous() or needs_grad or torch.is_autocast_enabled("cpu"):
        return conv(x)
    b, _, h, w = x.shape
    weight = conv.weight.flatten(1)  # (C_out, C_in)
    out = x.new_empty(b, weight.shape[0], h * w)
    for i in range(b):  # (C_out, C_in) @ (C_in, H·W): torch.matmul would transpose and copy its output
        torch.mm(weight, x[i].view(x.shape[1], h * w), out=out[i])
    if conv.bias is not None:
        out.add_(conv.bias[:, None])
    return out.view(b, -1, h, w)


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
        self.output_conv = nn.Sequential(*_conv_norm(hidden_dim, hidden_dim, 3, bias=False),
                                         nn.ReLU(inplace=True))
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

        lateral = self.lateral[1](_conv1x1(self.lateral[0], features[0]))  # (B, C, H/4, W/4)
        # stride 8 -> stride 4, from a channels-first copy of the level (on src's transposed view, the
        # interpolation is ~3x slower)
        top_down = F.interpolate(_channels_first(multi_scale[-1]), size=lateral.shape[-2:], mode="bilinear",
                                 align_corners=False)
        fpn = self.output_conv(top_down.add_(lateral))  # (B, C, H/4, W/4)
        return PixelDecoderOutput(_conv1x1(self.mask_features, fpn), _conv1x1(self.video_mask_features, fpn),
                                  multi_scale, text, src)
