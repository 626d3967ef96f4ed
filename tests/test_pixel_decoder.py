"""Pixel decoder: deformable sampling against a hand-written bilinear reference, the pixel-offset
convention of MSDeformAttn, batch independence, and PixelDecoder shapes / gradients / text fusion (Eq. 5)
/ validation."""

from __future__ import annotations

import math

import pytest
import torch

from ssa.modeling.pixel_decoder import (
    MSDeformAttn,
    PixelDecoder,
    PixelDecoderOutput,
    multi_scale_deformable_attention,
)


def naive_msda(value, shapes, locations, weights):
    """Explicit loops: bilinear interpolation with zero padding, pixel (i, j) centred at
    (j + 0.5, i + 0.5) in (normalised * size) coordinates."""
    b, _, m, d = value.shape
    _, q, _, num_levels, p, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, q, m, d, dtype=value.dtype)
    for bi in range(b):
        for qi in range(q):
            for mi in range(m):
                for li, (h, w) in enumerate(shapes):
                    for pi in range(p):
                        x = locations[bi, qi, mi, li, pi, 0].item() * w - 0.5
                        y = locations[bi, qi, mi, li, pi, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(d, dtype=value.dtype)
                        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    sample += wy * wx * value[bi, starts[li] + yy * w + xx, mi]
                        out[bi, qi, mi] += weights[bi, qi, mi, li, pi] * sample
    return out.reshape(b, q, m * d)


def test_msda_matches_naive_bilinear():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    b, q, m, d, p = 2, 5, 2, 3, 2
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, m, d, generator=g, dtype=torch.float64)
    # Include locations outside [0, 1] so the zero padding is exercised.
    locations = torch.rand(b, q, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.randn(b, q, m, len(shapes) * p, generator=g, dtype=torch.float64).softmax(-1)
    weights = weights.view(b, q, m, len(shapes), p)
    got = multi_scale_deformable_attention(value, shapes, locations, weights)
    assert got.shape == (b, q, m * d)
    torch.testing.assert_close(got, naive_msda(value, shapes, locations, weights), atol=1e-5, rtol=0)
    # float32 too (the dtype the model runs in)
    got32 = multi_scale_deformable_attention(value.float(), shapes, locations.float(), weights.float())
    torch.testing.assert_close(got32.double(), got, atol=1e-5, rtol=0)


def test_msda_pixel_centre_returns_pixel_value():
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 4), (2, 2)]
    s = sum(h * w for h, w in shapes)
    value = torch.randn(1, s, 2, 3, generator=g)
    locations = torch.rand(1, 1, 2, 2, 2, 2, generator=g)
    weights = torch.zeros(1, 1, 2, 2, 2)
    # head 0: pixel (y=2, x=1) of level 0; head 1: pixel (y=0, x=1) of level 1, second point.
    locations[0, 0, 0, 0, 0] = torch.tensor([(1 + 0.5) / 4, (2 + 0.5) / 3])
    weights[0, 0, 0, 0, 0] = 1.0
    locations[0, 0, 1, 1, 1] = torch.tensor([(1 + 0.5) / 2, (0 + 0.5) / 2])
    weights[0, 0, 1, 1, 1] = 1.0
    out = multi_scale_deformable_attention(value, shapes, locations, weights).view(2, 3)
    torch.testing.assert_close(out[0], value[0, 2 * 4 + 1, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], value[0, 12 + 0 * 2 + 1, 1], atol=1e-6, rtol=0)


def test_msda_rejects_inconsistent_shapes():
    value = torch.randn(1, 10, 2, 3)
    locations = torch.rand(1, 1, 2, 1, 2, 2)
    weights = torch.ones(1, 1, 2, 1, 2) / 2
    with pytest.raises(ValueError, match="tokens"):
        multi_scale_deformable_attention(value, [(3, 4)], locations, weights)


def test_msdeformattn_init_ring():
    attn = MSDeformAttn(dim=16, num_levels=2, num_heads=4, num_points=3)
    bias = attn.sampling_offsets.bias.detach().view(4, 2, 3, 2)  # (M, L, P, 2)
    torch.testing.assert_close(bias[0, 1, 2], torch.tensor([3.0, 0.0]))  # head 0 looks right
    torch.testing.assert_close(bias[1, 0, 1], torch.tensor([0.0, 2.0]), atol=1e-6, rtol=0)  # head 1 down
    torch.testing.assert_close(bias[2, 0, 0], torch.tensor([-1.0, 0.0]), atol=1e-6, rtol=0)
    assert bias.abs().amax(-1).sub(torch.arange(1.0, 4.0)).abs().max() < 1e-6  # max |coord| = k+1
    assert attn.sampling_offsets.weight.abs().sum() == 0 and attn.attention_weights.weight.abs().sum() == 0


def test_msdeformattn_offsets_are_in_pixels():
    """One head, one level, one point, identity projections, offset (+1, 0) pixels from a pixel
    centre: the output is the right-hand neighbour's value."""
    h, w, c = 3, 5, 4
    attn = MSDeformAttn(dim=c, num_levels=1, num_heads=1, num_points=1)
    with torch.no_grad():
        for layer in (attn.value_proj, attn.output_proj):
            layer.weight.copy_(torch.eye(c))
            layer.bias.zero_()
    value = torch.randn(1, h * w, c)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w - 1), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    ref = torch.stack([(xs + 0.5) / w, (ys + 0.5) / h], dim=-1)[None, :, None, :]  # (1, Q, 1, 2)
    query = torch.randn(1, ref.shape[1], c)
    out = attn(query, ref, value, [(h, w)])
    torch.testing.assert_close(out[0], value[0, ys * w + xs + 1], atol=1e-5, rtol=0)


def test_msdeformattn_no_cross_batch_leakage():
    torch.manual_seed(0)
    attn = MSDeformAttn(dim=16, num_levels=2, num_heads=4, num_points=2)
    with torch.no_grad():  # make the offsets and weights depend on the query
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.attention_weights.weight.normal_(0, 0.5)
    shapes = [(4, 6), (2, 3)]
    s = sum(h * w for h, w in shapes)
    query, value = torch.randn(2, 7, 16), torch.randn(2, s, 16)
    ref = torch.rand(2, 7, 2, 2)
    both = attn(query, ref, value, shapes)
    for i in range(2):
        alone = attn(query[i:i + 1], ref[i:i + 1], value[i:i + 1], shapes)
        torch.testing.assert_close(both[i:i + 1], alone, atol=1e-5, rtol=0)
    # and the second sample does influence its own output
    other = attn(query, ref, torch.cat([value[:1], torch.randn(1, s, 16)]), shapes)
    torch.testing.assert_close(other[:1], both[:1], atol=1e-5, rtol=0)
    assert not torch.allclose(other[1:], both[1:])


def _features(b: int, h: int, w: int, channels=(8, 16, 32, 64)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    strides = (4, 8, 16, 32)
    return [torch.randn(b, c, h // s, w // s, generator=g) for c, s in zip(channels, strides, strict=True)]


C, MASK_DIM = 32, 16


def _text(b: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(b, 1, C, generator=torch.Generator().manual_seed(seed))


def _tiny_decoder(bidirectional: bool = True) -> PixelDecoder:
    torch.manual_seed(0)
    return PixelDecoder((8, 16, 32, 64), hidden_dim=C, mask_dim=MASK_DIM, num_layers=2, num_heads=4,
                        num_points=2, ffn_dim=64, fusion_dim=32, fusion_heads=2,
                        bidirectional=bidirectional).eval()


def _random_loss(out: PixelDecoderOutput) -> torch.Tensor:
    # random weights: a plain sum of LayerNorm outputs has zero gradient
    g = torch.Generator().manual_seed(3)
    parts = [out.mask_features, out.video_mask_features, out.text, *out.multi_scale]
    return sum((x * torch.randn(x.shape, generator=g)).sum() for x in parts)


def test_pixel_decoder_shapes():
    dec = _tiny_decoder()
    with torch.no_grad():
        out = dec(_features(2, 64, 96), _text(2))
    assert isinstance(out, PixelDecoderOutput)
    assert out.mask_features.shape == out.video_mask_features.shape == (2, MASK_DIM, 16, 24)
    assert not torch.allclose(out.mask_features, out.video_mask_features)  # two projections
    assert [tuple(x.shape) for x in out.multi_scale] == [(2, C, 2, 3), (2, C, 4, 6), (2, C, 8, 12)]
    assert out.text.shape == (2, 1, C)
    assert out.memory.shape == (2, 6 + 24 + 96, C)
    # the memory is the three levels flattened, coarse first
    flat = torch.cat([x.flatten(2).transpose(1, 2) for x in out.multi_scale], dim=1)
    torch.testing.assert_close(out.memory, flat, atol=0, rtol=0)


def test_pixel_decoder_gradients_reach_every_parameter():
    dec = _tiny_decoder().train()
    feats, text = _features(2, 64, 96), _text(2).requires_grad_(True)
    # At initialisation the query reaches the output only through the zero-initialised offset and
    # attention-weight layers, so the level embedding's gradient is exactly zero; once those layers
    # have moved off zero, every parameter gets a non-zero gradient.
    with torch.no_grad():
        for layer in dec.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.1)
            layer.self_attn.attention_weights.weight.normal_(0, 0.1)
    _random_loss(dec(feats, text)).backward()
    for name, param in dec.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
    assert text.grad is not None and text.grad.abs().sum() > 0


def test_pixel_decoder_batch_independent():
    dec = _tiny_decoder()
    feats, text = _features(2, 64, 96), _text(2)
    with torch.no_grad():
        both = dec(feats, text)
        one = dec([f[1:] for f in feats], text[1:])
    for a, b in [(both.mask_features, one.mask_features), (both.video_mask_features, one.video_mask_features),
                 (both.text, one.text), (both.memory, one.memory)]:
        torch.testing.assert_close(a[1:], b, atol=1e-5, rtol=1e-5)


def _with_layer_scale(dec: PixelDecoder, value: float) -> PixelDecoder:
    with torch.no_grad():  # a visible layer scale (1e-4 at init)
        for block in dec.fusion_layers:
            if block.gamma_v is not None:
                block.gamma_v.fill_(value)
            block.gamma_l.fill_(value)
    return dec


def test_text_fusion_is_bidirectional():
    dec = _with_layer_scale(_tiny_decoder(), 0.5)
    feats, text = _features(2, 64, 96), _text(2)
    other_text = text.clone()
    other_text[1] = _text(1, seed=9)[0]
    other_feats = [f.clone() for f in feats]
    other_feats[2][1] += torch.randn(other_feats[2][1].shape)  # stride 16 of sample 1
    with torch.no_grad():
        out = dec(feats, text)
        text_changed = dec(feats, other_text)
        visual_changed = dec(other_feats, text)
    # text → visual: sample 1's visual outputs change, sample 0's do not
    for name in ("mask_features", "video_mask_features", "memory"):
        a, b = getattr(out, name), getattr(text_changed, name)
        torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=0)
        assert (a[1] - b[1]).abs().max() > 1e-3, name
    # visual → text
    assert (visual_changed.text[1] - out.text[1]).abs().max() > 1e-3
    torch.testing.assert_close(visual_changed.text[0], out.text[0], atol=1e-6, rtol=0)


def test_text_fusion_at_init_already_reads_the_text():
    dec = _tiny_decoder()  # layer scale 1e-4: small but not zero
    feats, text = _features(1, 64, 64), _text(1)
    with torch.no_grad():
        a = dec(feats, text).mask_features
        b = dec(feats, _text(1, seed=9)).mask_features
    assert (a - b).abs().max() > 1e-7


def test_without_bidirectional_fusion_the_visual_tokens_ignore_the_text():
    dec = _with_layer_scale(_tiny_decoder(bidirectional=False), 0.5)
    assert all(not block.bidirectional for block in dec.fusion_layers)
    names = {name.rsplit(".", 2)[-2] for name, _ in dec.fusion_layers.named_parameters()}
    assert "out_l_proj" in names and not {"out_v_proj", "values_l_proj"} & names  # no text → visual weights
    feats, text = _features(2, 64, 96), _text(2)
    other_feats = [f.clone() for f in feats]
    other_feats[3] += torch.randn(other_feats[3].shape)
    with torch.no_grad():
        out = dec(feats, text)
        text_changed = dec(feats, _text(2, seed=9))
        visual_changed = dec(other_feats, text)
    for name in ("mask_features", "video_mask_features", "memory"):
        torch.testing.assert_close(getattr(text_changed, name), getattr(out, name), atol=0, rtol=0)
    for a, b in zip(text_changed.multi_scale, out.multi_scale, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (text_changed.text - out.text).abs().max() > 1e-3
    assert (visual_changed.text - out.text).abs().max() > 1e-3  # the sentence still reads the visual tokens


def test_text_output_is_the_last_fusion_blocks_sentence():
    dec = _with_layer_scale(_tiny_decoder(), 0.5)
    feats, text = _features(2, 64, 64), _text(2)
    captured = []
    hook = dec.fusion_layers[-1].register_forward_hook(lambda m, i, o: captured.append(o[1]))
    try:
        with torch.no_grad():
            out = dec(feats, text)
    finally:
        hook.remove()
    torch.testing.assert_close(out.text, captured[0], atol=0, rtol=0)
    # the residual is on the normalised sentence: with no text update it is LN_2(LN_1(text))
    with torch.no_grad():
        for block in dec.fusion_layers:
            block.gamma_l.zero_()
        still = dec(feats, text).text
        first, second = dec.fusion_layers
        expected = second.layer_norm_l(first.layer_norm_l(text))
    torch.testing.assert_close(still, expected, atol=1e-6, rtol=1e-6)
    assert (still - out.text).abs().max() > 1e-3


def test_pixel_decoder_validates_inputs():
    dec = _tiny_decoder()
    feats, text = _features(1, 64, 64), _text(1)
    with pytest.raises(ValueError, match="channels"):
        dec([feats[0], feats[1], torch.randn(1, 31, 4, 4), feats[3]], text)
    with pytest.raises(ValueError, match="4 feature maps"):
        dec(feats[1:], text)
    with pytest.raises(ValueError, match="batch sizes"):
        dec([feats[0], feats[1], feats[2], feats[3].expand(2, -1, -1, -1)], text)
    with pytest.raises(ValueError, match="text"):
        dec(feats, torch.randn(1, 1, C + 1))
    with pytest.raises(ValueError, match="text"):
        dec(feats, torch.randn(2, 1, C))
    with pytest.raises(ValueError, match="text"):
        dec(feats, torch.randn(1, C))
    with pytest.raises(ValueError, match="4 input channel"):
        PixelDecoder((8, 16, 32))
    with pytest.raises(ValueError, match="divisible by 4"):
        PixelDecoder((8, 16, 32, 64), hidden_dim=30)


def _count_calls(monkeypatch, owner, name: str) -> list[int]:
    """Patch ``owner.name`` to record each call (and still run it); returns the record."""
    calls: list[int] = []
    original = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a: calls.append(1) or original(*a))
    return calls


def _randomize(module: torch.nn.Module, g: torch.Generator, scale: float = 0.3) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=g) * scale)


def test_sparse_cpu_inference_path_equals_grid_sample(monkeypatch):
    import ssa.modeling.pixel_decoder as pd

    g = torch.Generator().manual_seed(4)
    shapes = [(5, 7), (3, 4), (2, 2)]
    b, q, m, d, p = 2, 9, 4, 8, 3
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, m, d, generator=g)
    locations = torch.rand(b, q, m, len(shapes), p, 2, generator=g) * 1.4 - 0.2
    weights = torch.randn(b, q, m, len(shapes) * p, generator=g).softmax(-1).view(b, q, m, len(shapes), p)
    calls = _count_calls(monkeypatch, pd, "_sample_sparse")
    with torch.no_grad():
        fast = multi_scale_deformable_attention(value, shapes, locations, weights)
    assert calls == [1]
    slow = multi_scale_deformable_attention(value.requires_grad_(), shapes, locations, weights)  # grid_sample
    assert calls == [1] and slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.double(), naive_msda(value.detach().double(), shapes, locations.double(),
                                                         weights.double()), atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [4, 11, 512])
def test_cpu_inference_attention_equals_the_training_path(monkeypatch, chunk):
    """MSDeformAttn's CPU inference path (one product for offsets and logits, positions in pixels,
    bordered maps, queries a chunk at a time: here 3 uneven chunks, one, or one larger than needed)
    gives what the grid_sample path gives, samples far outside the maps included."""
    import ssa.modeling.pixel_decoder as pd

    monkeypatch.setattr(pd, "_QUERY_CHUNK", chunk)
    g = torch.Generator().manual_seed(7)
    shapes = [(6, 9), (3, 5), (2, 3)]
    attn = MSDeformAttn(32, num_levels=3, num_heads=4, num_points=3).eval()
    _randomize(attn, g)
    with torch.no_grad():
        attn.sampling_offsets.bias.mul_(20)  # many samples land outside their map
    s = sum(h * w for h, w in shapes)
    query, value = torch.randn(2, 11, 32, generator=g), torch.randn(2, s, 32, generator=g)
    ref = torch.rand(2, 11, 3, 2, generator=g)
    calls = _count_calls(monkeypatch, pd.MSDeformAttn, "_sample_on_cpu")
    with torch.no_grad():
        fast = attn(query, ref, value, shapes)
    assert calls == [1]
    slow = attn(query.requires_grad_(), ref, value, shapes)  # grid_sample
    assert calls == [1] and slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=1e-5)
    assert (fast - attn.output_proj.bias).abs().max() > 0.1  # not all samples fell outside


@pytest.mark.parametrize("chunk", [5, 512])
def test_encoder_layer_in_query_chunks_equals_the_whole_map_path(monkeypatch, chunk):
    """DeformableEncoderLayer's CPU inference path (values projected once, then per chunk of queries:
    sampling, output projection with the residual as its addend, norm and FFN) gives what the whole-map
    path gives (taken with gradients), for two batch rows and one shared position map."""
    import ssa.modeling.pixel_decoder as pd

    monkeypatch.setattr(pd, "_QUERY_CHUNK", chunk)
    g = torch.Generator().manual_seed(11)
    shapes = [(5, 8), (3, 4), (2, 2)]
    layer = pd.DeformableEncoderLayer(32, 3, 4, 2, ffn_dim=48).eval()
    _randomize(layer, g)
    s = sum(h * w for h, w in shapes)
    src, pos = torch.randn(2, s, 32, generator=g), torch.randn(1, s, 32, generator=g)
    ref = PixelDecoder._reference_points(shapes, src.device, torch.float32)[None, :, None].expand(2, -1, 3, 2)
    calls = _count_calls(monkeypatch, pd.DeformableEncoderLayer, "_forward_in_query_chunks")
    with torch.no_grad():
        fast = layer(src, pos, ref, shapes)
    assert calls == [1]
    slow = layer(src.clone().requires_grad_(), pos, ref, shapes)
    assert calls == [1] and slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # each batch row alone gives its row
        torch.testing.assert_close(layer(src[1:], pos, ref[1:], shapes), fast[1:], atol=1e-5, rtol=1e-5)


def test_fpn_helpers_equal_torch():
    """The 1x1 convolution as one product per image and the channels-first copy of a channels-last
    view give what Conv2d and contiguous() give; with gradients, the modules themselves run."""
    from ssa.modeling.pixel_decoder import _channels_first, _conv1x1

    g = torch.Generator().manual_seed(2)
    conv = torch.nn.Conv2d(6, 5, 1)
    x = torch.randn(2, 6, 4, 7, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(_conv1x1(conv, x), conv(x), atol=1e-6, rtol=1e-6)
        conv.bias = None
        torch.testing.assert_close(_conv1x1(conv, x), conv(x), atol=1e-6, rtol=1e-6)
    assert _conv1x1(conv, x).requires_grad  # the Conv2d path, differentiable
    tokens = torch.randn(2, 4 * 7 + 3, 6, generator=g)
    view = tokens[:, 3:].transpose(1, 2).reshape(2, 6, 4, 7)  # as PixelDecoder's multi-scale outputs
    first = _channels_first(view)
    assert first.is_contiguous() and torch.equal(first, view.contiguous())


def test_ffn_without_dropout_equals_the_formula():
    """FFNLayer without active dropout (the residual as the second product's addend) computes
    norm(x + W2 relu(W1 x)), for any leading shape, with gradients."""
    from ssa.modeling.common import FFNLayer

    torch.manual_seed(0)
    ffn = FFNLayer(8, 16, dropout=0.1).eval()
    x = torch.randn(2, 3, 8, requires_grad=True)
    expected = ffn.norm(x + ffn.linear2(torch.relu(ffn.linear1(x))))
    out = ffn(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    out.sum().backward()
    assert x.grad is not None and ffn.linear2.weight.grad.abs().sum() > 0


def test_ffn_under_autocast_keeps_the_residual_sum_in_float32():
    """Under autocast the FFN adds the residual outside the product (its bfloat16/float16 addend would
    round the residual stream): the result is the formula's, evaluated under the same autocast."""
    from ssa.modeling.common import FFNLayer

    torch.manual_seed(0)
    ffn = FFNLayer(8, 16).eval()
    x = torch.randn(4, 8) * 100
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = ffn(x)
        expected = ffn.norm(x + ffn.linear2(torch.relu(ffn.linear1(x))))
    assert torch.equal(out, expected)


def test_fusion_block_one_token_inference_equals_the_block(monkeypatch):
    """At inference with a sentence of one token, the fusion block folds γ_v Δv into LN_v's bias (one
    row) or adds it in place (several rows) and reads v̄ through the shift: the same outputs as the
    block's general path, which runs when gradients are recorded."""
    from ssa.modeling.fusion import TextFusionBlock

    g = torch.Generator().manual_seed(21)
    block = TextFusionBlock(16, 32, heads=4).eval()
    _randomize(block, g)
    calls = _count_calls(monkeypatch, TextFusionBlock, "_forward_one_token")
    for runs, batch in enumerate((1, 3), start=1):
        visual, text = torch.randn(batch, 40, 16, generator=g), torch.randn(batch, 1, 16, generator=g)
        general = block(visual.clone().requires_grad_(), text)  # records gradients: the general path
        with torch.no_grad():
            fast = block(visual, text)
        assert len(calls) == runs  # the no-grad runs only
        for a, b in zip(fast, general, strict=True):
            torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=1e-5)
        assert (fast[1] - block.layer_norm_l(text)).abs().max() > 1e-2  # the sentence read the tokens


def test_sampling_softmax_with_the_chunks_largest_logit():
    """The sampling's softmax shifts by the chunk's largest logit: the same as each head's own softmax,
    also for heads whose logits all lie far below that largest one (they take the per-head shift)."""
    from ssa.modeling.common import softmax_last
    from ssa.modeling.pixel_decoder import _softmax_per_head

    g = torch.Generator().manual_seed(23)
    wide = torch.randn(50, 3 * 96, generator=g) * 4  # (R, 3n): x | y | logits, as the product gives them
    logits = wide[:, 192:]
    for case in (logits, torch.cat([logits[:10] - 150.0, logits[10:]])):
        out = _softmax_per_head(case, 8)
        assert out.shape == (50, 96) and out.is_contiguous()
        expected = softmax_last(case.reshape(50, 8, 12)).view(50, 96)
        torch.testing.assert_close(out, expected, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(out.view(50, 8, 12).sum(-1), torch.ones(50, 8))
