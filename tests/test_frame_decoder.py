"""Tests of the masked-attention frame query decoder (small sizes, CPU)."""

from __future__ import annotations

import pytest
import torch

from ssa.modeling.frame_decoder import FrameDecoderOutput, FrameQueryDecoder, attention_mask_from_logits

C, HEADS, LAYERS, N, FFN, MASK_DIM = 32, 4, 3, 5, 64, 16
LEVEL_SIZES = [(2, 3), (4, 6), (8, 12)]
MASK_SIZE = (16, 24)


def make_decoder(num_layers: int = LAYERS) -> FrameQueryDecoder:
    torch.manual_seed(0)
    return FrameQueryDecoder(hidden_dim=C, num_queries=N, num_heads=HEADS, num_layers=num_layers,
                             ffn_dim=FFN, mask_dim=MASK_DIM, num_levels=len(LEVEL_SIZES)).eval()


def make_inputs(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """text (B, 1, C) F̂_s^t, the multi-scale memory (coarse → fine) and the mask features."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, 1, C, generator=g)
    multi_scale = [torch.randn(batch, C, h, w, generator=g) for h, w in LEVEL_SIZES]
    mask_features = torch.randn(batch, MASK_DIM, *MASK_SIZE, generator=g)
    return text, multi_scale, mask_features


def test_output_shapes() -> None:
    dec = make_decoder()
    with torch.no_grad():  # a non-trivial head norm, so that "normed by the head" is observable
        dec.decoder_norm.weight.uniform_(0.5, 2.0)
        dec.decoder_norm.bias.normal_()
    out = dec(*make_inputs(batch=2))
    assert isinstance(out, FrameDecoderOutput)
    assert out.queries.shape == (2, N, C)
    assert out.class_logits.shape == (2, N, 2)
    assert out.mask_logits.shape == (2, N, *MASK_SIZE)
    assert len(out.aux_class_logits) == LAYERS and len(out.aux_mask_logits) == LAYERS
    for cls, mask in zip(out.aux_class_logits, out.aux_mask_logits, strict=True):
        assert cls.shape == (2, N, 2) and mask.shape == (2, N, *MASK_SIZE)
    # output queries are normed by the head's LayerNorm, and the head reproduces the final prediction
    assert torch.allclose(out.class_logits, dec.class_head(out.queries), atol=1e-6)
    assert out.mask_embed.shape == (2, N, dec.mask_dim)
    assert torch.allclose(out.mask_embed, dec.mask_head(out.queries), atol=1e-6)
    # the first aux prediction is the head on the initial queries: the text repeated N times
    text, _, mask_features = make_inputs(batch=2)
    _, cls0, mask0, _ = dec._predict(text.expand(2, N, C), mask_features)
    assert torch.allclose(out.aux_class_logits[0], cls0, atol=1e-6)
    assert torch.allclose(out.aux_mask_logits[0], mask0, atol=1e-5)
    for t in [out.queries, out.class_logits, out.mask_logits]:
        assert torch.isfinite(t).all()


def test_attention_mask_function() -> None:
    logits = torch.zeros(2, 3, 4, 4)
    logits[0, 0, :, :2] = 5.0  # query 0 of sample 0: left half allowed, right half blocked
    logits[0, 0, :, 2:] = -5.0
    logits[0, 1] = -1.0  # fully blocked -> released
    logits[0, 2] = 1.0  # fully allowed
    logits[1, 0] = -3.0  # fully blocked -> released
    logits[1, 1, :2] = -2.0  # top blocked
    logits[1, 1, 2:] = 2.0
    logits[1, 2, 0, 0] = -0.1  # one blocked position
    mask = attention_mask_from_logits(logits, (4, 4), num_heads=3)
    assert mask.dtype == torch.bool and mask.shape == (2 * 3, 3, 16)
    expected = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    expected[0, 0, :, 2:] = True
    expected[1, 1, :2] = True
    expected[1, 2, 0, 0] = True
    expected = expected.flatten(2)
    for b in range(2):
        for h in range(3):
            assert torch.equal(mask[b * 3 + h], expected[b]), (b, h)
    assert not mask.all(dim=-1).any()  # never a fully blocked row

    # resizing: bilinear, align_corners=False; block of 8x8 input pixels -> one output pixel
    big = torch.ones(1, 1, 16, 24)
    big[..., :, 8:] = -1.0
    small = attention_mask_from_logits(big, (2, 3), num_heads=1)
    assert torch.equal(small.view(2, 3), torch.tensor([[False, True, True]] * 2))


def test_queries_start_as_the_text_and_differ_only_by_their_positions() -> None:
    dec = make_decoder()
    inputs = make_inputs(batch=2)
    with torch.no_grad():
        out = dec(*inputs)
        # language as queries: before the first layer every query is the text
        for first in (out.aux_class_logits[0], out.aux_mask_logits[0]):
            assert torch.allclose(first, first[:, :1].expand_as(first), atol=1e-6)
        assert (out.queries[:, 0] - out.queries[:, 1]).abs().max() > 1e-3
        # permuting the query positions permutes the outputs: nothing else tells the queries apart
        perm = torch.tensor([3, 0, 4, 1, 2])
        original = dec.query_pos.weight.clone()
        dec.query_pos.weight.copy_(original[perm])
        permuted = dec(*inputs)
        torch.testing.assert_close(permuted.queries, out.queries[:, perm], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(permuted.mask_logits, out.mask_logits[:, perm], atol=1e-4, rtol=1e-4)
        # and with one position for all, the N queries stay identical to the end
        dec.query_pos.weight.copy_(original[:1].expand(N, C))
        same = dec(*inputs)
    for x in (same.queries, same.class_logits, same.mask_logits):
        torch.testing.assert_close(x, x[:, :1].expand_as(x), atol=1e-5, rtol=1e-5)


def _controlled_inputs(num_layers: int = 1):
    """A decoder and mask features whose sign pattern makes the initial prediction (the same for every
    query) allow exactly one side of level 0 (2x3): column 0 or columns 1-2."""
    dec = make_decoder(num_layers=num_layers)
    text, multi_scale, _ = make_inputs(batch=1)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(MASK_DIM, generator=g)
    sign = torch.ones(*MASK_SIZE)
    sign[:, 8:] = -1.0  # column 0 of the 2x3 level vs columns 1-2
    mask_features = (v[:, None, None] * sign)[None]  # (1, D, 16, 24)
    with torch.no_grad():
        _, _, mask0, _ = dec._predict(text.expand(1, N, C), mask_features)
    blocked = attention_mask_from_logits(mask0, LEVEL_SIZES[0], HEADS)[0]  # (N, 6)
    assert blocked.any() and not blocked.all(), "construction should partly block the memory"
    assert (blocked == blocked[:1]).all()  # identical queries, identical masks
    return dec, text, multi_scale, mask_features, blocked[0]


def test_attention_mask_restricts_cross_attention() -> None:
    dec, text, multi_scale, mask_features, blocked = _controlled_inputs()
    blocked_idx = int(blocked.nonzero()[0])
    allowed_idx = int((~blocked).nonzero()[0])
    noise = 10.0 * torch.randn(C, generator=torch.Generator().manual_seed(4))

    def perturbed(level: int, flat_idx: int) -> list[torch.Tensor]:
        ms = [m.clone() for m in multi_scale]
        width = LEVEL_SIZES[level][1]
        ms[level][0, :, flat_idx // width, flat_idx % width] += noise
        return ms

    captured: list[torch.Tensor] = []
    # the masked cross-attention's output is the self-attention's input (inference folds the
    # cross-attention into CrossAttentionLayer.forward_few_queries, which module hooks do not see)
    hook = dec.self_attn_layers[0].register_forward_pre_hook(lambda m, i: captured.append(i[0].detach()))
    try:
        with torch.no_grad():
            dec(text, multi_scale, mask_features)
            dec(text, perturbed(0, blocked_idx), mask_features)
            dec(text, perturbed(0, allowed_idx), mask_features)
            # the opposite masks: the position blocked before is now allowed
            dec(text, multi_scale, -mask_features)
            dec(text, perturbed(0, blocked_idx), -mask_features)
    finally:
        hook.remove()
    ref, after_blocked, after_allowed, flipped_ref, flipped_after = captured
    torch.testing.assert_close(after_blocked, ref, atol=1e-6, rtol=0)
    assert (after_allowed - ref).abs().max() > 1e-2
    assert (flipped_after - flipped_ref).abs().max() > 1e-2


def test_levels_are_read_round_robin() -> None:
    dec, text, multi_scale, mask_features, _ = _controlled_inputs(num_layers=2)  # reads levels 0, 1
    with torch.no_grad():
        base = dec(text, multi_scale, mask_features).queries
        changed = []
        for level in range(3):
            ms = [m.clone() for m in multi_scale]
            ms[level] = ms[level] + torch.randn(ms[level].shape)
            changed.append(dec(text, ms, mask_features).queries)
    assert (changed[0] - base).abs().max() > 1e-3
    assert (changed[1] - base).abs().max() > 1e-3
    torch.testing.assert_close(changed[2], base, atol=0, rtol=0)  # level 2 is never read


def test_fully_blocked_queries_are_released() -> None:
    dec = make_decoder()
    text, multi_scale, mask_features = make_inputs(batch=2)
    # every initial mask logit negative: all rows fully blocked -> released -> finite outputs
    with torch.no_grad():
        dec.mask_head.layers[-1].weight.zero_()
        dec.mask_head.layers[-1].bias.fill_(-1.0)
        out = dec(text, multi_scale, mask_features.abs() + 0.1)
        # released means "attend everywhere": the same as a decoder whose mask allows everything
        dec.mask_head.layers[-1].bias.fill_(1.0)
        allowed = dec(text, multi_scale, mask_features.abs() + 0.1)
    assert (out.aux_mask_logits[0] < 0).all() and (allowed.aux_mask_logits[0] > 0).all()
    assert torch.isfinite(out.queries).all() and torch.isfinite(out.mask_logits).all()
    torch.testing.assert_close(out.queries, allowed.queries, atol=1e-5, rtol=1e-5)


def test_memory_positions_are_encoded() -> None:
    # with nothing masked, attention without positions would be invariant to permuting the memory
    dec = make_decoder(num_layers=1)
    text, multi_scale, mask_features = make_inputs(batch=1)
    with torch.no_grad():
        dec.mask_head.layers[-1].weight.zero_()
        dec.mask_head.layers[-1].bias.fill_(1.0)
        mask_features = mask_features.abs() + 0.1  # every logit positive: nothing blocked
        out = dec(text, multi_scale, mask_features)
        flipped = dec(text, [multi_scale[0].flip(-1)] + multi_scale[1:], mask_features)
    assert not torch.allclose(out.queries, flipped.queries, atol=1e-4)


def test_text_cross_attention_reads_the_text() -> None:
    dec = make_decoder()
    text, multi_scale, mask_features = make_inputs(batch=2)
    layer = dec.text_attn_layers[1]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = layer.register_forward_hook(lambda m, i, o: seen.append((i[0].detach(), o.detach())))
    try:
        with torch.no_grad():
            out = dec(text, multi_scale, mask_features)
    finally:
        hook.remove()
    # one key: the attention weight is 1, every query adds the same projected text value
    x, y = seen[0]
    attn = layer.attn
    value = text @ attn.in_proj_weight[2 * C:].T + attn.in_proj_bias[2 * C:]  # (B, 1, C)
    expected = layer.norm(x + attn.out_proj(value))
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)

    # the same initial queries, another text memory in the text cross-attention of every layer
    other = make_inputs(batch=2, seed=7)[0]
    hooks = [m.register_forward_pre_hook(lambda m, args: (args[0], other)) for m in dec.text_attn_layers]
    try:
        with torch.no_grad():
            swapped = dec(text, multi_scale, mask_features)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(swapped.aux_class_logits[0], out.aux_class_logits[0], atol=0, rtol=0)
    assert (swapped.queries - out.queries).abs().max() > 1e-2


def test_batch_independence() -> None:
    dec = make_decoder()
    text, multi_scale, mask_features = make_inputs(batch=2)
    with torch.no_grad():
        both = dec(text, multi_scale, mask_features)
        for b in range(2):
            alone = dec(text[b:b + 1], [m[b:b + 1] for m in multi_scale], mask_features[b:b + 1])
            assert torch.allclose(both.queries[b], alone.queries[0], atol=1e-5)
            assert torch.allclose(both.class_logits[b], alone.class_logits[0], atol=1e-5)
            assert torch.allclose(both.mask_logits[b], alone.mask_logits[0], atol=1e-4)
            for x, y in zip(both.aux_mask_logits, alone.aux_mask_logits, strict=True):
                assert torch.allclose(x[b], y[0], atol=1e-4)
    assert not torch.allclose(both.queries[0], both.queries[1], atol=1e-3)


def test_gradients_reach_every_parameter() -> None:
    dec = make_decoder().train()
    text, multi_scale, mask_features = make_inputs(batch=2)
    text.requires_grad_(True)
    multi_scale[0].requires_grad_(True)
    out = dec(text, multi_scale, mask_features)
    g = torch.Generator().manual_seed(5)
    loss = (out.class_logits * torch.randn(out.class_logits.shape, generator=g)).sum() \
        + (out.mask_logits * torch.randn(out.mask_logits.shape, generator=g)).sum()
    loss.backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert text.grad is not None and text.grad.abs().sum() > 0
    assert multi_scale[0].grad is not None and multi_scale[0].grad.abs().sum() > 0
    # a single text key: its softmax is constant, so the text attention's q/k projections learn nothing
    for layer in dec.text_attn_layers:
        grad = layer.attn.in_proj_weight.grad
        assert grad[:2 * C].abs().max() < 1e-6 and grad[2 * C:].abs().max() > 1e-4


def test_input_validation() -> None:
    dec = make_decoder()
    text, multi_scale, mask_features = make_inputs(batch=2)
    with pytest.raises(ValueError, match="list of 3"):
        dec(text, multi_scale[:2], mask_features)
    with pytest.raises(ValueError, match=r"multi_scale\[1\]"):
        dec(text, [multi_scale[0], multi_scale[1][:, :16], multi_scale[2]], mask_features)
    with pytest.raises(ValueError, match=r"multi_scale\[2\]"):
        dec(text, [multi_scale[0], multi_scale[1], multi_scale[2][:1]], mask_features)
    with pytest.raises(ValueError, match="mask_features"):
        dec(text, multi_scale, mask_features[:, :8])
    with pytest.raises(ValueError, match="mask_features"):
        dec(text, multi_scale, mask_features[:1])
    for bad in (text.expand(2, 3, C), text[..., :16], text[:, 0]):
        with pytest.raises(ValueError, match="text"):
            dec(bad, multi_scale, mask_features)
    with pytest.raises(ValueError, match="divisible"):
        FrameQueryDecoder(hidden_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="num_queries"):
        FrameQueryDecoder(hidden_dim=C, num_heads=HEADS, num_queries=0)


def test_attention_masks_from_resized_features_equal_resized_logits() -> None:
    """The decoder resizes the mask features to each memory level and takes mask_embed · resize(F):
    bilinear resizing is linear in the channels, so the logits (and the blocked positions) are those of
    the official resize(mask_embed · F)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(5)
    embed = torch.randn(2, N, MASK_DIM, generator=g)
    features = torch.randn(2, MASK_DIM, *MASK_SIZE, generator=g)
    full = torch.einsum("bnd,bdhw->bnhw", embed, features)
    for size in LEVEL_SIZES:
        resized = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        small = torch.einsum("bnd,bdhw->bnhw", embed, resized)
        official = F.interpolate(full, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(small, official, atol=1e-5, rtol=1e-5)
        assert torch.equal(attention_mask_from_logits(small, size, HEADS),
                           attention_mask_from_logits(full, size, HEADS))


def test_without_masks_the_queries_are_the_same() -> None:
    """masks=False (inference: only the queries go on) skips the full-resolution mask logits and gives
    the same queries, class logits and mask embeddings."""
    dec = make_decoder()
    inputs = make_inputs(batch=2)
    with torch.no_grad():
        full = dec(*inputs)
        lean = dec(*inputs, masks=False)
    assert lean.mask_logits is None and lean.aux_mask_logits == []
    assert full.mask_logits is not None and len(full.aux_mask_logits) == LAYERS
    for name in ("queries", "class_logits", "mask_embed"):
        assert torch.equal(getattr(lean, name), getattr(full, name)), name
    assert all(torch.equal(a, b) for a, b in zip(lean.aux_queries, full.aux_queries, strict=True))


def test_resize_channels_equals_interpolate() -> None:
    """Each channel resized as its own image gives what F.interpolate gives on the whole map."""
    import torch.nn.functional as F

    from ssa.modeling.frame_decoder import _resize_channels

    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 40, 16, 24, generator=g)
    # even factors 8, 4, 2 (the two-tap sums), then sizes the per-channel kernel resizes
    for size in [*LEVEL_SIZES, (5, 7), (16, 12), (32, 48)]:
        torch.testing.assert_close(_resize_channels(x, size),
                                   F.interpolate(x, size=size, mode="bilinear", align_corners=False),
                                   atol=1e-6, rtol=1e-6)
    odd = torch.randn(1, 3, 18, 24, generator=g)  # factor 3 on both axes: not the two-tap case
    torch.testing.assert_close(_resize_channels(odd, (6, 8)),
                               F.interpolate(odd, size=(6, 8), mode="bilinear", align_corners=False),
                               atol=1e-6, rtol=1e-6)
