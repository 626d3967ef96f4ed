"""CrossAttentionLayer's reordered inference paths equal the plain attention."""

from __future__ import annotations

import pytest
import torch

from ssa.modeling.common import CrossAttentionLayer


def _layer(seed: int, dim: int = 16, heads: int = 4) -> CrossAttentionLayer:
    g = torch.Generator().manual_seed(seed)
    layer = CrossAttentionLayer(dim, heads).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return layer


def _output_and_gradients(seed: int, x: torch.Tensor, run) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``run(layer, x)`` on a fresh layer ``_layer(seed)``, backward of the squared sum: the output and the
    gradients of x and of every parameter."""
    layer = _layer(seed)
    xg = x.clone().requires_grad_()
    out = run(layer, xg)
    out.square().sum().backward()
    return out.detach(), [xg.grad, *(p.grad for p in layer.parameters())]


def test_few_queries_path_equals_the_attention():
    """``forward_few_queries`` (key/value projections folded into the queries) equals the attention,
    with query positions and memory positions that repeat every P tokens (the video decoder's slots)."""
    layer = _layer(5)
    g = torch.Generator().manual_seed(6)
    x, memory = torch.randn(2, 3, 16, generator=g), torch.randn(2, 5 * 4, 16, generator=g)
    pos, slot = torch.randn(1, 3, 16, generator=g), torch.randn(1, 4, 16, generator=g)
    with torch.no_grad():
        full = layer(x, memory, pos=pos, memory_pos=slot.repeat(1, 5, 1))
        fast = layer.forward_few_queries(x, memory, pos=pos, memory_pos=slot)
        whole_pos = torch.randn(2, 20, 16, generator=g)
        full_b = layer(x, memory, memory_pos=whole_pos)
        fast_b = layer.forward_few_queries(x, memory, memory_pos=whole_pos)
        plain = layer.forward_few_queries(x, memory)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_b, full_b, atol=1e-5, rtol=1e-5)
    assert (plain - fast).abs().max() > 1e-2  # the positions matter
    with pytest.raises(ValueError, match="repeat evenly"):
        layer.forward_few_queries(x, memory, memory_pos=torch.randn(1, 3, 16))


def test_few_keys_path_trains_like_the_attention():
    """With gradients (training with attention dropout off takes this path), the folded word stream
    gives the attention's gradients."""
    grads = []
    for folded in (False, True):
        layer = _layer(7)
        g = torch.Generator().manual_seed(8)
        x = torch.randn(2, 9, 16, generator=g).requires_grad_()
        memory = torch.randn(2, 5, 16, generator=g)
        padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
        run = layer.forward_few_keys if folded else layer.forward
        run(x, memory, key_padding_mask=padding).square().sum().backward()
        grads.append([x.grad, *(p.grad for p in layer.parameters())])
    for plain, fast in zip(*grads, strict=True):
        torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)


def test_few_queries_path_takes_the_attention_mask():
    """The frame decoder's masked cross-attention (a bool mask (B·H, N, M), True = blocked, as
    ``attention_mask_from_logits`` makes it) on the folded path equals the attention, in values and in
    gradients (training with attention dropout off takes this path)."""
    g = torch.Generator().manual_seed(9)
    x, memory = torch.randn(2, 3, 16, generator=g), torch.randn(2, 20, 16, generator=g)
    pos, memory_pos = torch.randn(1, 3, 16, generator=g), torch.randn(1, 20, 16, generator=g)
    mask = torch.rand(2 * 4, 3, 20, generator=g) < 0.6  # 4 heads
    mask[:, :, 0] = False  # no row blocked everywhere
    kwargs = {"pos": pos, "memory_pos": memory_pos, "attn_mask": mask}
    plain, plain_grads = _output_and_gradients(10, x, lambda layer, xq: layer(xq, memory, **kwargs))
    fast, fast_grads = _output_and_gradients(
        10, x, lambda layer, xq: layer.forward_few_queries(xq, memory, **kwargs))
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    for a, b in zip(plain_grads, fast_grads, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # the mask matters
        unmasked = _layer(10).forward_few_queries(x, memory, pos=pos, memory_pos=memory_pos)
    assert (unmasked - fast).abs().max() > 1e-2


def test_few_queries_path_with_keys_and_a_mask_shared_by_the_heads():
    """``keys`` (memory + positions added by the caller) gives what ``memory_pos`` gives; a (B, N, M)
    mask shared by the heads gives what the same mask repeated per head gives, in values and gradients;
    without gradients (the key bias's row constant left out) the output is the same."""
    g = torch.Generator().manual_seed(11)
    x, memory = torch.randn(2, 3, 16, generator=g), torch.randn(2, 20, 16, generator=g)
    pos, memory_pos = torch.randn(1, 3, 16, generator=g), torch.randn(1, 20, 16, generator=g)
    shared = torch.rand(2, 3, 20, generator=g) < 0.6
    shared[:, :, 0] = False
    per_head = shared.repeat_interleave(4, dim=0)  # (B·H, N, M), 4 heads
    per_head_run = _output_and_gradients(12, x, lambda layer, xq: layer.forward_few_queries(
        xq, memory, pos=pos, memory_pos=memory_pos, attn_mask=per_head))
    shared_run = _output_and_gradients(12, x, lambda layer, xq: layer.forward_few_queries(
        xq, memory, pos=pos, keys=memory + memory_pos, attn_mask=shared))
    torch.testing.assert_close(shared_run[0], per_head_run[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(per_head_run[1], shared_run[1], strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    layer = _layer(12)
    with torch.no_grad():
        inference = layer.forward_few_queries(x, memory, pos=pos, keys=memory + memory_pos, attn_mask=shared)
        unmasked = layer.forward_few_queries(x, memory, pos=pos, keys=memory + memory_pos)
    torch.testing.assert_close(inference, per_head_run[0], atol=1e-5, rtol=1e-5)
    assert (unmasked - inference).abs().max() > 1e-2  # the shared mask matters
    with pytest.raises(ValueError, match="not both"):
        layer.forward_few_queries(x, memory, keys=memory, memory_pos=memory_pos)
