"""Object selection (§3.4) and the official two-stage mask upsampling."""

import pytest
import torch
import torch.nn.functional as F

from ssa.modeling.selection import select_masks, select_queries, upsample_masks


def _logits(scores):
    p = torch.tensor(scores)
    return torch.stack([p.log(), (1 - p).log()], dim=-1)


def _resize_matrix(n_in, n_out):
    """(n_out, n_in) bilinear weights, align_corners=False: output pixel i reads the input at
    (i + 0.5) · n_in / n_out - 0.5, clamped at 0 on the low side and at n_in - 1 on the high side."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        m[i, i0] += 1 - frac
        m[i, i1] += frac
    return m


def _resize(x, size):
    """Bilinear resize of (..., h, w) by hand."""
    ry, rx = _resize_matrix(x.shape[-2], size[0]), _resize_matrix(x.shape[-1], size[1])
    return ry @ x.double() @ rx.T


def _two_stage(logits, model_size, size):
    h4, w4 = logits.shape[-2:]
    padded = _resize(logits, (4 * h4, 4 * w4))[..., :model_size[0], :model_size[1]]
    return _resize(padded, size)


def test_upsample_masks_is_the_two_stage_rule():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=g)  # (N, T, h4, w4): the padded input is 16x20
    model_size, size = (13, 18), (21, 25)
    reference = _two_stage(logits, model_size, size)
    assert reference.abs().min() > 1e-4  # no pixel on the fence
    masks = upsample_masks(logits, model_size, size)
    assert masks.shape == (2, 3, *size) and masks.dtype == torch.bool
    assert torch.equal(masks, reference > 0)
    assert 0 < masks.sum() < masks.numel()
    # a model input that fills the padded grid and an output of the same size: one x4 upsample
    same = upsample_masks(logits, (16, 20), (16, 20))
    assert torch.equal(same, _resize(logits, (16, 20)) > 0)


def test_the_crop_drops_the_padding():
    """Positive logits in the padding only: the official rule crops them away before resizing to the
    output; a one-stage upsample of the padded grid would smear them into the frame."""
    logits = -torch.ones(1, 4, 4)
    logits[:, 3, :] = 10.0  # last row of stride-4 cells: pixels 12-15 of the padded 16x16 input
    logits[:, :, 3] = 10.0
    model_size, size = (9, 9), (9, 9)
    two_stage = upsample_masks(logits, model_size, size)
    assert not two_stage.any()
    assert torch.equal(two_stage, _two_stage(logits, model_size, size) > 0)
    one_stage = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0] > 0
    assert one_stage[0, -1].all() and one_stage[0, :, -1].all()
    assert not torch.equal(one_stage, two_stage)


def test_upsample_masks_rejects_a_model_input_larger_than_the_grid():
    with pytest.raises(ValueError, match="model"):
        upsample_masks(torch.zeros(1, 4, 4), (17, 16), (20, 20))


def test_multi_selects_above_threshold_and_unions():
    cls = _logits([0.9, 0.2, 0.7])
    masks = -torch.ones(3, 2, 4, 4)
    masks[0, :, :2, :2] = 1
    masks[1, :, 2:, 2:] = 1  # not selected
    masks[2, 1, 3, 0] = 1
    union, objects, scores = select_masks(cls, masks, (16, 16), (16, 16), "multi", 0.5)
    assert select_queries(cls).tolist() == [0, 2]
    assert objects.shape == (2, 2, 16, 16) and torch.allclose(scores, torch.tensor([0.9, 0.7]))
    torch.testing.assert_close(scores, cls.softmax(-1)[[0, 2], 0])
    assert torch.equal(objects, _two_stage(masks[[0, 2]], (16, 16), (16, 16)) > 0)
    assert torch.equal(union, objects.any(0))
    # cells 0-1 positive, cell 2 negative: the sign changes half-way, between pixels 7 and 8
    assert union[0, :6, :6].all() and not union[0, 8:].any() and not union[0, :, 8:].any()
    # query 2: frame 1 only, bottom-left corner
    assert not objects[1, 0].any() and objects[1, 1, 15, 0] and not objects[1, 1, :8].any()
    assert union[1, 15, 0] and union.sum() == objects[0].sum() + objects[1, 1].sum()


def test_threshold_is_strict_and_configurable():
    cls = _logits([0.5, 0.6, 0.95])
    assert select_queries(cls, "multi", 0.5).tolist() == [1, 2]
    assert select_queries(cls, "multi", 0.9).tolist() == [2]
    assert select_queries(cls, "multi", 0.0).tolist() == [0, 1, 2]


def test_multi_none_selected_gives_empty_masks():
    union, objects, scores = select_masks(_logits([0.1, 0.3]), torch.ones(2, 3, 4, 4), (16, 16), (5, 6))
    assert union.shape == (3, 5, 6) and union.dtype == torch.bool and not union.any()
    assert objects.shape == (0, 3, 5, 6) and scores.numel() == 0


def test_single_takes_argmax():
    cls = _logits([0.1, 0.3, 0.2])
    assert select_queries(cls, "single").tolist() == [1]
    masks = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    union, objects, scores = select_masks(cls, masks, (14, 16), (7, 8), "single")
    assert objects.shape == (1, 2, 7, 8)
    torch.testing.assert_close(scores, torch.tensor([0.3]))
    assert torch.equal(objects[0], upsample_masks(masks[1], (14, 16), (7, 8)))
    assert torch.equal(union, objects[0])
    # single selection keeps a query even below the threshold
    assert select_queries(_logits([0.1, 0.05]), "single").tolist() == [0]


def test_bad_inputs():
    with pytest.raises(ValueError, match="mode"):
        select_queries(_logits([0.5]), "both")
    with pytest.raises(ValueError, match="threshold"):
        select_queries(_logits([0.5]), "multi", 2.0)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        select_queries(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="mask logits"):
        select_masks(_logits([0.9, 0.8]), torch.zeros(3, 1, 4, 4), (16, 16), (16, 16))


def test_mask_product_is_the_per_frame_product_without_copying_the_features():
    from ssa.modeling.selection import mask_product

    torch.manual_seed(0)
    features = torch.randn(2, 3, 8, 5, 7, requires_grad=True)  # (P, T, C, h, w)
    embeds = [torch.randn(2, 4, 8, requires_grad=True) for _ in range(3)]  # (P, K, C)
    reference = torch.einsum("pkc,ptchw->pkthw", embeds[0], features)
    torch.testing.assert_close(mask_product(embeds[0], features), reference)
    torch.testing.assert_close(mask_product(embeds[0][0], features[0]), reference[0])  # no lead dims
    # training: several products on the same features (the video decoder's layers) save the features
    # once, not one re-laid-out copy per call
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = [mask_product(e, features) for e in embeds]
    feature_bytes = features.numel() * features.element_size()
    assert sum(saved.values()) < 1.5 * feature_bytes
    sum(x.sum() for x in logits).backward()
    torch.testing.assert_close(features.grad, sum(e.detach().sum(1) for e in embeds)[:, None, :, None, None]
                               .expand_as(features))
