"""Pixel decoder: deformable sampling against a hand-written bilinear reference, the pixel-offset
convention of MSDeformAttn, batch independence, and PixelDecoder shapes / gradients / validation."""

from __future__ import annotations

import math

import pytest
import torch

from ssa.modeling.pixel_decoder import MSDeformAttn, PixelDecoder, multi_scale_deformable_attention


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


def _tiny_decoder() -> PixelDecoder:
    torch.manual_seed(0)
    return PixelDecoder((8, 16, 32, 64), hidden_dim=32, mask_dim=16, num_layers=2, num_heads=4, num_points=2,
                        ffn_dim=64)


def _random_loss(mask: torch.Tensor, multi: list[torch.Tensor]) -> torch.Tensor:
    # random weights: a plain sum of LayerNorm outputs has zero gradient
    g = torch.Generator().manual_seed(3)
    loss = (mask * torch.randn(mask.shape, generator=g)).sum()
    return loss + sum((x * torch.randn(x.shape, generator=g)).sum() for x in multi)


def test_pixel_decoder_shapes_and_gradients():
    dec = _tiny_decoder()
    mask, multi = dec(_features(2, 64, 96))
    assert mask.shape == (2, 16, 16, 24)
    assert [tuple(x.shape) for x in multi] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]
    mask.sum().backward()
    for name, param in dec.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"

    # At initialisation the query reaches the output only through the zero-initialised offset and
    # attention-weight layers, so the level embedding's gradient is exactly zero; once those layers
    # have moved off zero, every parameter gets a non-zero gradient.
    with torch.no_grad():
        for layer in dec.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.1)
            layer.self_attn.attention_weights.weight.normal_(0, 0.1)
    dec.zero_grad(set_to_none=True)
    _random_loss(*dec(_features(2, 64, 96))).backward()
    for name, param in dec.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_pixel_decoder_batch_independent():
    dec = _tiny_decoder().eval()
    feats = _features(2, 64, 96)
    mask, multi = dec(feats)
    mask1, multi1 = dec([f[1:] for f in feats])
    torch.testing.assert_close(mask[1:], mask1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(multi[0][1:], multi1[0], atol=1e-5, rtol=1e-5)


def test_pixel_decoder_validates_inputs():
    dec = _tiny_decoder()
    feats = _features(1, 64, 64)
    with pytest.raises(ValueError, match="channels"):
        dec([feats[0], feats[1], torch.randn(1, 31, 4, 4), feats[3]])
    with pytest.raises(ValueError, match="4 feature maps"):
        dec(feats[1:])
    with pytest.raises(ValueError, match="4 input channel"):
        PixelDecoder((8, 16, 32))


def test_sparse_cpu_inference_path_equals_grid_sample(monkeypatch):
    import ssa.modeling.pixel_decoder as pd

    g = torch.Generator().manual_seed(4)
    shapes = [(5, 7), (3, 4), (2, 2)]
    b, q, m, d, p = 2, 9, 4, 8, 3
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, m, d, generator=g)
    locations = torch.rand(b, q, m, len(shapes), p, 2, generator=g) * 1.4 - 0.2
    weights = torch.randn(b, q, m, len(shapes) * p, generator=g).softmax(-1).view(b, q, m, len(shapes), p)
    calls = []
    original = pd._sample_sparse
    monkeypatch.setattr(pd, "_sample_sparse", lambda *a: calls.append(1) or original(*a))
    with torch.no_grad():
        fast = multi_scale_deformable_attention(value, shapes, locations, weights)
    assert calls == [1]
    slow = multi_scale_deformable_attention(value.requires_grad_(), shapes, locations, weights)  # grid_sample
    assert calls == [1] and slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.double(), naive_msda(value.detach().double(), shapes, locations.double(),
                                                         weights.double()), atol=1e-5, rtol=0)
