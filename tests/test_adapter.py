"""The semantic alignment refine module (official ``ClipStageAdapterV2``, Eq. 3-4), on tiny inputs."""

import math

import pytest
import torch

from ssa.modeling.adapter import SemanticAlignmentAdapter

C_V, D_TEXT, DIM, HEADS = 16, 12, 8, 2


def _inputs(b=2, c=C_V, h=5, w=7, l=6, d=D_TEXT, seed=0):
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(b, c, h, w, generator=g)
    words = torch.randn(b, l, d, generator=g)
    mask = torch.ones(b, l, dtype=torch.bool)
    mask[1, 4:] = False
    sentence = torch.randn(b, d, generator=g)
    return visual, words, mask, sentence


def _adapter(seed=0):
    torch.manual_seed(seed)
    return SemanticAlignmentAdapter(C_V, D_TEXT, DIM, HEADS).eval()


# -- a hand computation of Eq. 3-4 from the submodules' weights ------------------------------------------
def _sine_2d(h, w, dim):
    """Raw (unnormalised) DETR positions 1..H, 1..W: first half y, second half x, channel 2k sin and
    2k+1 cos of p / 10000^(2k/half)."""
    half = dim // 2
    pos = torch.zeros(h, w, dim, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            for k in range(half):
                freq = 10000 ** (2 * (k // 2) / half)
                trig = math.sin if k % 2 == 0 else math.cos
                pos[y, x, k] = trig((y + 1) / freq)
                pos[y, x, half + k] = trig((x + 1) / freq)
    return pos.reshape(h * w, dim)


def _sine_1d(length, dim):
    """Positions 1..L: channel 2i sin, 2i+1 cos of p / 10000^(2i/dim)."""
    pos = torch.zeros(length, dim, dtype=torch.float64)
    for p in range(length):
        for i in range(dim // 2):
            pos[p, 2 * i] = math.sin((p + 1) / 10000 ** (2 * i / dim))
            pos[p, 2 * i + 1] = math.cos((p + 1) / 10000 ** (2 * i / dim))
    return pos


def _mha(attn, q, k, v, key_mask=None):
    """nn.MultiheadAttention written out: (B, Lq, D), (B, Lk, D) → (B, Lq, D)."""
    d = attn.embed_dim
    wq, wk, wv = attn.in_proj_weight.double().split(d)
    bq, bk, bv = attn.in_proj_bias.double().split(d)
    heads = attn.num_heads

    def split(x):
        return x.unflatten(-1, (heads, d // heads)).transpose(1, 2)  # (B, h, L, d/h)

    qh, kh, vh = split(q @ wq.T + bq), split(k @ wk.T + bk), split(v @ wv.T + bv)
    logits = qh @ kh.transpose(-2, -1) / math.sqrt(d // heads)
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    out = (logits.softmax(-1) @ vh).transpose(1, 2).flatten(2)
    return out @ attn.out_proj.weight.double().T + attn.out_proj.bias.double()


def _reference(adapter, visual, words, mask, sentence):
    a = adapter.double()
    visual, words, sentence = visual.double(), words.double(), sentence.double()
    b, c, h, w = visual.shape
    conv = torch.nn.functional.conv2d
    f_mr = torch.relu(conv(torch.relu(conv(visual, a.conv1.weight, a.conv1.bias)), a.conv2.weight,
                           a.conv2.bias)) + visual
    tokens = conv(visual, a.linear_v.weight, a.linear_v.bias).flatten(2).transpose(1, 2)  # (B, HW, D)
    queries = tokens + _sine_2d(h, w, a.dim)
    lw = words @ a.linear_l.weight.T + a.linear_l.bias
    norm = a.cross_attention.norm
    word = norm(tokens + _mha(a.cross_attention.attn, queries, lw + _sine_1d(lw.shape[1], a.dim), lw, mask))
    ls = (sentence @ a.linear_l.weight.T + a.linear_l.bias)[:, None]
    sent = norm(tokens + _mha(a.cross_attention.attn, queries, ls, ls))

    def to_map(x):
        return (x @ a.up_v.weight.T + a.up_v.bias).transpose(1, 2).reshape(b, c, h, w)

    f_ms, f_mw = to_map(sent), to_map(word)
    pooled = torch.cat([f.mean((2, 3)) for f in (f_ms, f_mw, f_mr)], dim=1)  # (B, 3 C_v)
    hidden = torch.relu(pooled @ a.gate.layers[0].weight.T + a.gate.layers[0].bias)
    weights = (hidden @ a.gate.layers[1].weight.T + a.gate.layers[1].bias).softmax(-1)  # (B, 3)
    out = sum(weights[:, i, None, None, None] * f for i, f in enumerate((f_ms, f_mw, f_mr)))
    a.float()
    return out, weights


def test_output_is_the_gated_sum_of_the_three_streams():
    adapter = _adapter()
    visual, words, mask, sentence = _inputs()
    with torch.no_grad():
        out, weights = adapter(visual, words, mask, sentence)
        ref, ref_weights = _reference(adapter, visual, words, mask, sentence)
    assert out.shape == visual.shape and weights.shape == (2, 3)
    torch.testing.assert_close(weights.double(), ref_weights, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert (weights > 0).all() and not torch.allclose(weights[0], weights[1])


def test_padding_words_change_nothing():
    adapter = _adapter()
    visual, words, mask, sentence = _inputs()
    with torch.no_grad():
        out, weights = adapter(visual, words, mask, sentence)
        changed = words.clone()
        changed[1, 4:] += 10.0 * torch.randn(2, D_TEXT)  # sample 1's padding
        out2, weights2 = adapter(visual, changed, mask, sentence)
        # more padding positions at the end: the real words keep their positions 1..L
        longer = torch.cat([words, torch.randn(2, 3, D_TEXT)], dim=1)
        longer_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1)
        out3, _ = adapter(visual, longer, longer_mask, sentence)
        # a real word does matter
        real = words.clone()
        real[1, 1] += 1.0
        out4, _ = adapter(visual, real, mask, sentence)
    torch.testing.assert_close(out2, out, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights2, weights, atol=1e-7, rtol=0)
    torch.testing.assert_close(out3, out, atol=1e-6, rtol=0)
    torch.testing.assert_close(out4[0], out[0], atol=1e-6, rtol=0)  # other sample untouched
    assert (out4[1] - out[1]).abs().max() > 1e-3


def test_sentence_stream_has_a_single_key():
    """The sentence stream attends to one key: its weight is 1 whatever the pixels' queries and the
    key are, so the attention's q/k projections do not affect it (they do affect the word stream).
    Inference computes it without them (``forward_single_key``), equal to the full attention."""
    adapter = _adapter()
    visual, words, mask, sentence = _inputs()
    a = adapter.cross_attention
    d = adapter.dim
    with torch.no_grad():
        tokens = adapter.linear_v(visual).flatten(2).transpose(1, 2)
        key = adapter.linear_l(sentence)[:, None]
        pos = torch.randn(1, tokens.shape[1], d)
        full = a(tokens, key, pos=pos)
        out, _ = adapter(visual, words, mask, sentence)
        word = a(tokens, adapter.linear_l(words), key_padding_mask=~mask)
        a.attn.in_proj_weight[:2 * d].normal_()  # q and k projections
        a.attn.in_proj_bias[:2 * d].normal_()
        full2 = a(tokens, key, pos=pos)
        fast = a.forward_single_key(tokens, key)
        out2, _ = adapter(visual, words, mask, sentence)
        word2 = a(tokens, adapter.linear_l(words), key_padding_mask=~mask)
    torch.testing.assert_close(full2, full, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    assert (word2 - word).abs().max() > 1e-3
    assert (out2 - out).abs().max() > 1e-4
    # so the sentence stream is LN(W_v F_v + out_proj(v_proj(W_l F_s))): the same text for every pixel
    with torch.no_grad():
        value = key @ a.attn.in_proj_weight[2 * d:].T + a.attn.in_proj_bias[2 * d:]
        expected = a.norm(tokens + a.attn.out_proj(value))
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one memory token"):
        a.forward_single_key(tokens, torch.cat([key, key], dim=1))


def test_training_path_with_dropout_off_equals_inference():
    """In training with attention dropout the sentence stream runs the full attention; with the
    dropout off (eval) the single-key path: both give the same output and gate weights."""
    adapter = _adapter()
    visual, words, mask, sentence = _inputs()
    with torch.no_grad():
        out, weights = adapter(visual, words, mask, sentence)
        adapter.train()
        for m in adapter.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        adapter.cross_attention.attn.dropout = 1e-12  # the full path, no element dropped in practice
        torch.manual_seed(0)
        out_train, weights_train = adapter(visual, words, mask, sentence)
    torch.testing.assert_close(out_train, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights_train, weights, atol=1e-6, rtol=1e-5)


def test_output_depends_on_the_sentence_and_the_visual_input_per_sample():
    adapter = _adapter()
    visual, words, mask, sentence = _inputs()
    with torch.no_grad():
        out, _ = adapter(visual, words, mask, sentence)
        other_sentence = sentence.clone()
        other_sentence[0] += 1.0
        out2, _ = adapter(visual, words, mask, other_sentence)
        alone, _ = adapter(visual[1:], words[1:], mask[1:], sentence[1:])
    assert (out2[0] - out[0]).abs().max() > 1e-3
    torch.testing.assert_close(out2[1], out[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(alone[0], out[1], atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter_and_input():
    adapter = _adapter().train()
    visual, words, mask, sentence = _inputs()
    for x in (visual, words, sentence):
        x.requires_grad_(True)
    out, weights = adapter(visual, words, mask, sentence)
    g = torch.Generator().manual_seed(5)
    loss = (out * torch.randn(out.shape, generator=g)).sum()
    loss = loss + (weights * torch.randn(2, 3, generator=g)).sum()
    loss.backward()
    for name, p in adapter.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    for x in (visual, words, sentence):
        assert x.grad is not None and x.grad.abs().sum() > 0
    assert words.grad[1, 4:].abs().max() == 0  # padding words get no gradient


def test_shapes_and_errors():
    adapter = _adapter()
    visual, words, mask, sentence = _inputs(h=3, w=4, l=2)
    out, weights = adapter(visual, words, mask, sentence)
    assert out.shape == (2, C_V, 3, 4) and weights.shape == (2, 3)
    with pytest.raises(ValueError, match="channels"):
        adapter(torch.randn(2, C_V + 1, 3, 4), words, mask, sentence)
    with pytest.raises(ValueError, match="divisible by 4"):
        SemanticAlignmentAdapter(C_V, D_TEXT, dim=6)


def test_few_keys_path_equals_the_attention():
    """``forward_few_keys`` (projections folded into the keys and values) equals the full cross-attention,
    with positions, rows padded differently and keys padded in every row (dropped)."""
    from ssa.modeling.common import CrossAttentionLayer

    g = torch.Generator().manual_seed(3)
    layer = CrossAttentionLayer(16, 4).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x, memory = torch.randn(3, 13, 16, generator=g), torch.randn(3, 7, 16, generator=g)
    pos, memory_pos = torch.randn(1, 13, 16, generator=g), torch.randn(1, 7, 16, generator=g)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, 3:] = True
    padding[1, 5:] = True
    padding[:, 6] = True  # padded everywhere
    with torch.no_grad():
        full = layer(x, memory, pos=pos, memory_pos=memory_pos, key_padding_mask=padding)
        fast = layer.forward_few_keys(x, memory, pos=pos, memory_pos=memory_pos, key_padding_mask=padding)
        fast_unmasked = layer.forward_few_keys(x, memory)
        full_unmasked = layer(x, memory)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_unmasked, full_unmasked, atol=1e-5, rtol=1e-5)
    assert (fast - fast_unmasked).abs().max() > 1e-2  # the padding and positions matter


@pytest.mark.parametrize("chunk", [1, 8, 35, 512])
def test_inference_in_token_chunks_equals_the_whole_map_path(monkeypatch, chunk):
    """CPU inference runs the adapter a few tokens at a time (``_forward_in_token_chunks``); with
    chunks that split the 5×7 map unevenly, one token each or the whole map, it gives the outputs and
    gate weights of the whole-map path that training takes, and of the Eq. 3-4 reference."""
    import ssa.modeling.adapter as adapter_module

    adapter = _adapter()
    visual, words, mask, sentence = _inputs()
    with torch.no_grad():
        ref, ref_weights = _reference(adapter, visual, words, mask, sentence)
    whole, whole_weights = adapter(visual, words, mask, sentence)  # autograd on: the whole-map path
    assert whole.requires_grad
    calls = []
    original = adapter_module.SemanticAlignmentAdapter._forward_in_token_chunks

    def spy(self, *args):
        calls.append(args[0].shape)
        return original(self, *args)

    monkeypatch.setattr(adapter_module, "_TOKEN_CHUNK", chunk)
    monkeypatch.setattr(adapter_module.SemanticAlignmentAdapter, "_forward_in_token_chunks", spy)
    with torch.no_grad():
        out, weights = adapter(visual, words, mask, sentence)
    assert calls == [visual.shape]
    torch.testing.assert_close(out, whole.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, whole_weights.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    # frozen parameters and inputs without gradients: nothing to differentiate, chunked as well
    for p in adapter.parameters():
        p.requires_grad_(False)
    out_frozen, _ = adapter(visual, words, mask, sentence)
    assert len(calls) == 2 and not out_frozen.requires_grad
    torch.testing.assert_close(out_frozen, out, atol=0, rtol=0)


def test_cpu_autocast_takes_the_whole_map_path():
    """Under CPU autocast the products come out in bfloat16, which the chunked path's in-place writes
    into float32 buffers cannot take (``gpu_check --smoke`` runs this way): the adapter takes the
    whole-map path and gives features close to float32's, rounded by the bfloat16 products."""
    adapter = _adapter().eval()
    visual, words, mask, sentence = _inputs()
    with torch.no_grad():
        full, full_weights = adapter(visual, words, mask, sentence)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, weights = adapter(visual, words, mask, sentence)
    assert not torch.equal(out.float(), full)  # autocast did round the products
    torch.testing.assert_close(out.float(), full, atol=0.1, rtol=0.05)
    torch.testing.assert_close(weights.float(), full_weights, atol=0.02, rtol=0.05)
