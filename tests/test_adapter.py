import torch

from ssa.modeling.adapter import SemanticAlignmentAdapter


def _inputs(b=2, c=16, h=5, w=7, l=6, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(b, c, h, w, generator=g)
    words = torch.randn(b, l, d, generator=g)
    mask = torch.ones(b, l, dtype=torch.bool)
    mask[1, 4:] = False
    sentence = torch.randn(b, d, generator=g)
    return visual, words, mask, sentence


def test_adapter_is_near_identity_at_init():
    torch.manual_seed(0)
    adapter = SemanticAlignmentAdapter(16, 12, 8)
    visual, words, mask, sentence = _inputs()
    out, weights = adapter(visual, words, mask, sentence)
    assert out.shape == visual.shape
    assert torch.allclose(weights.sum(-1), torch.ones(2))
    assert (weights[:, 1] > 0.99).all()
    assert torch.allclose(out, visual, rtol=0, atol=0.01 * visual.abs().max())


def _randomise(adapter):
    torch.manual_seed(1)
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.3)


def test_streams_depend_on_text_and_padding_is_ignored():
    adapter = SemanticAlignmentAdapter(16, 12, 8)
    _randomise(adapter)
    visual, words, mask, sentence = _inputs()
    out, _ = adapter(visual, words, mask, sentence)
    # Changing a padded word of sample 1 changes nothing.
    words2 = words.clone()
    words2[1, 5] += 10.0
    out2, _ = adapter(visual, words2, mask, sentence)
    assert torch.allclose(out, out2, atol=1e-6)
    # Changing a real word or the sentence changes the output.
    words3 = words.clone()
    words3[1, 1] += 1.0
    assert not torch.allclose(out, adapter(visual, words3, mask, sentence)[0], atol=1e-4)
    assert not torch.allclose(out, adapter(visual, words, mask, sentence + 1.0)[0], atol=1e-4)


def test_gradients_reach_every_parameter():
    adapter = SemanticAlignmentAdapter(16, 12, 8)
    visual, words, mask, sentence = _inputs()
    opt = torch.optim.SGD(adapter.parameters(), lr=0.1)

    def step():
        opt.zero_grad()
        out, weights = adapter(visual, words, mask, sentence)
        (out.square().mean() + weights[:, 0].sum()).backward()
        grads = {name: p.grad for name, p in adapter.named_parameters()}
        opt.step()
        return grads

    first = step()
    # At step 0 the zero-initialised output projections and the gate already receive a signal
    # (the streams upstream of them only start learning once those are non-zero, as with LoRA).
    for name in ("word_out.weight", "sentence_out.weight", "conv_out.weight", "gate.2.weight"):
        assert first[name].abs().sum() > 0, name
    second = step()
    for name, grad in second.items():
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name


def _reference(adapter, visual, words, mask, sentence):
    """Eq. 3-4 written out stream by stream, each projected back to C_i after its own sum."""
    b, _, h, w = visual.shape
    d = adapter.dim
    v = adapter.visual_in(visual).flatten(2).transpose(1, 2)  # (B, HW, D)
    wt = adapter.word_in(words)
    logits = (v @ wt.transpose(1, 2) / d ** 0.5).masked_fill(~mask[:, None], float("-inf"))
    f_mw = (logits.softmax(-1) @ wt).transpose(1, 2).reshape(b, d, h, w)
    s = adapter.sentence_in(sentence)
    f_ms = (torch.sigmoid((v * s[:, None]).sum(-1) / d ** 0.5)[..., None] * s[:, None]).transpose(1, 2)
    f_mw = adapter.word_out(f_mw)
    f_ms = adapter.sentence_out(f_ms.reshape(b, d, h, w))
    vmap = v.transpose(1, 2).reshape(b, d, h, w)
    f_mr = adapter.conv_out(torch.nn.functional.gelu(adapter.conv(vmap))) + visual
    pooled = torch.cat([x.mean((2, 3)) for x in (f_mw, f_mr, f_ms)], 1)
    a = adapter.gate(pooled).softmax(-1)
    mixed = sum(a[:, i, None, None, None] * f for i, f in enumerate((f_mw, f_mr, f_ms)))
    return mixed, a


def test_folded_projections_and_shared_frames_match_the_equations():
    adapter = SemanticAlignmentAdapter(16, 12, 8)
    _randomise(adapter)
    visual, words, mask, sentence = _inputs(b=2)
    with torch.no_grad():
        out, weights = adapter(visual, words, mask, sentence)
        ref, ref_weights = _reference(adapter, visual, words, mask, sentence)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)
        # Three text rows reading frames [1, 0, 1]: the same as gathering the frames first.
        rows = torch.tensor([1, 0, 1])
        texts = words[[0, 1, 1]], mask[[0, 1, 1]], sentence[[0, 1, 1]]
        shared, _ = adapter(visual, *texts, rows=rows)
        gathered, _ = adapter(visual[rows], *texts)
        torch.testing.assert_close(shared, gathered, atol=1e-6, rtol=1e-6)
