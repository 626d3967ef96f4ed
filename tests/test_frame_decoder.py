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
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(batch, N, C, generator=g)
    multi_scale = [torch.randn(batch, C, h, w, generator=g) for h, w in LEVEL_SIZES]
    mask_features = torch.randn(batch, MASK_DIM, *MASK_SIZE, generator=g)
    return queries, multi_scale, mask_features


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
    # the first aux prediction is the head on the initial queries
    queries, _, mask_features = make_inputs(batch=2)
    _, cls0, mask0, _ = dec._predict(queries, mask_features)
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


def _controlled_inputs() -> tuple[FrameQueryDecoder, torch.Tensor, list[torch.Tensor], torch.Tensor, int]:
    """1-layer decoder (uses level 0, 2x3) and mask features whose sign pattern makes every query's
    initial prediction allow exactly one side of the frame (left column or right two columns)."""
    dec = make_decoder(num_layers=1)
    queries, multi_scale, _ = make_inputs(batch=1)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(MASK_DIM, generator=g)
    sign = torch.ones(*MASK_SIZE)
    sign[:, 8:] = -1.0  # column 0 of the 2x3 level vs columns 1-2
    mask_features = (v[:, None, None] * sign)[None]  # (1, D, 16, 24)
    with torch.no_grad():
        _, _, mask0, _ = dec._predict(queries, mask_features)
    attn = attention_mask_from_logits(mask0, LEVEL_SIZES[0], HEADS)[0]  # (N, 6)
    mixed = [n for n in range(N) if attn[n].any() and not attn[n].all()]
    assert mixed, "construction should give queries with partly blocked memory"
    return dec, queries, multi_scale, mask_features, mixed[0]


def test_attention_mask_restricts_cross_attention() -> None:
    dec, queries, multi_scale, mask_features, n = _controlled_inputs()
    with torch.no_grad():
        _, _, mask0, _ = dec._predict(queries, mask_features)
    blocked = attention_mask_from_logits(mask0, LEVEL_SIZES[0], HEADS)[0, n]  # (6,)
    blocked_idx = int(blocked.nonzero()[0])
    allowed_idx = int((~blocked).nonzero()[0])
    w = LEVEL_SIZES[0][1]

    captured: list[torch.Tensor] = []
    hook = dec.cross_attn_layers[0].register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    try:
        with torch.no_grad():
            base = dec(queries, multi_scale, mask_features)

            def run_with(level: int, flat_idx: int, width: int) -> FrameDecoderOutput:
                ms = [m.clone() for m in multi_scale]
                ms[level][0, :, flat_idx // width, flat_idx % width] += 10.0 * torch.randn(C)
                return dec(queries, ms, mask_features)

            run_with(0, blocked_idx, w)
            out_allowed = run_with(0, allowed_idx, w)
            out_other_level = run_with(1, 0, LEVEL_SIZES[1][1])  # level 1 is not used by layer 0
    finally:
        hook.remove()
    ref, after_blocked, after_allowed, after_other = captured
    # query n: a blocked memory position has no influence, an allowed one does
    assert torch.allclose(after_blocked[0, n], ref[0, n], atol=1e-6)
    assert not torch.allclose(after_allowed[0, n], ref[0, n], atol=1e-3)
    # the perturbation does reach queries that may attend to it (sanity check of the setup)
    assert not torch.allclose(after_blocked, ref, atol=1e-3)
    # round robin: layer 0 reads level 0 only
    assert torch.allclose(out_other_level.queries, base.queries, atol=1e-6)
    assert not torch.allclose(out_allowed.queries[0, n], base.queries[0, n], atol=1e-3)


def test_fully_blocked_queries_are_released() -> None:
    dec = make_decoder()
    queries, multi_scale, mask_features = make_inputs(batch=2)
    # every initial mask logit negative: all rows fully blocked -> released -> finite outputs
    with torch.no_grad():
        dec.mask_head.layers[-1].weight.zero_()
        dec.mask_head.layers[-1].bias.fill_(-1.0)
    out = dec(queries, multi_scale, mask_features.abs() + 0.1)
    assert (out.aux_mask_logits[0] < 0).all()
    assert torch.isfinite(out.queries).all() and torch.isfinite(out.mask_logits).all()


def test_memory_positions_are_encoded() -> None:
    # with nothing masked, attention without positions would be invariant to permuting the memory
    dec = make_decoder(num_layers=1)
    queries, multi_scale, mask_features = make_inputs(batch=1)
    with torch.no_grad():
        dec.mask_head.layers[-1].weight.zero_()
        dec.mask_head.layers[-1].bias.fill_(1.0)
        mask_features = mask_features.abs() + 0.1  # every logit positive: nothing blocked
        out = dec(queries, multi_scale, mask_features)
        flipped = dec(queries, [multi_scale[0].flip(-1)] + multi_scale[1:], mask_features)
    assert not torch.allclose(out.queries, flipped.queries, atol=1e-4)


def test_batch_independence() -> None:
    dec = make_decoder()
    queries, multi_scale, mask_features = make_inputs(batch=2)
    with torch.no_grad():
        both = dec(queries, multi_scale, mask_features)
        for b in range(2):
            alone = dec(queries[b:b + 1], [m[b:b + 1] for m in multi_scale], mask_features[b:b + 1])
            assert torch.allclose(both.queries[b], alone.queries[0], atol=1e-5)
            assert torch.allclose(both.class_logits[b], alone.class_logits[0], atol=1e-5)
            assert torch.allclose(both.mask_logits[b], alone.mask_logits[0], atol=1e-4)
            for x, y in zip(both.aux_mask_logits, alone.aux_mask_logits, strict=True):
                assert torch.allclose(x[b], y[0], atol=1e-4)


def test_gradients_reach_every_parameter() -> None:
    dec = make_decoder().train()
    queries, multi_scale, mask_features = make_inputs(batch=2)
    queries.requires_grad_(True)
    out = dec(queries, multi_scale, mask_features)
    g = torch.Generator().manual_seed(5)
    loss = (out.class_logits * torch.randn(out.class_logits.shape, generator=g)).sum() \
        + (out.mask_logits * torch.randn(out.mask_logits.shape, generator=g)).sum()
    loss.backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert queries.grad is not None and torch.isfinite(queries.grad).all()


def test_input_validation() -> None:
    dec = make_decoder()
    queries, multi_scale, mask_features = make_inputs(batch=2)
    with pytest.raises(ValueError, match="list of 3"):
        dec(queries, multi_scale[:2], mask_features)
    with pytest.raises(ValueError, match=r"multi_scale\[1\]"):
        dec(queries, [multi_scale[0], multi_scale[1][:, :16], multi_scale[2]], mask_features)
    with pytest.raises(ValueError, match=r"multi_scale\[2\]"):
        dec(queries, [multi_scale[0], multi_scale[1], multi_scale[2][:1]], mask_features)
    with pytest.raises(ValueError, match="mask_features"):
        dec(queries, multi_scale, mask_features[:, :8])
    with pytest.raises(ValueError, match="mask_features"):
        dec(queries, multi_scale, mask_features[:1])
    with pytest.raises(ValueError, match="queries"):
        dec(queries[:, :3], multi_scale, mask_features)
    with pytest.raises(ValueError, match="divisible"):
        FrameQueryDecoder(hidden_dim=30, num_heads=4)
