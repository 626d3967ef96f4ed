import pytest
import torch

from ssa.modeling.selection import select_masks, select_queries


def _logits(scores):
    p = torch.tensor(scores)
    return torch.stack([p.log(), (1 - p).log()], dim=-1)


def test_multi_selects_above_threshold_and_unions():
    cls = _logits([0.9, 0.2, 0.7])
    masks = -torch.ones(3, 2, 4, 4)
    masks[0, :, :2, :2] = 1
    masks[1, :, 2:, 2:] = 1  # not selected
    masks[2, 1, 3, 0] = 1
    union, objects, scores = select_masks(cls, masks, (8, 8), "multi", 0.5)
    assert select_queries(cls).tolist() == [0, 2]
    assert objects.shape == (2, 2, 8, 8) and torch.allclose(scores, torch.tensor([0.9, 0.7]))
    assert union[0, :4, :4].all() and not union[0, 4:, 4:].any()
    assert union[1, 6:, :2].all()
    assert union.sum() == 2 * 16 + 4


def test_multi_none_selected_gives_empty_masks():
    union, objects, scores = select_masks(_logits([0.1, 0.3]), torch.ones(2, 3, 4, 4), (5, 6))
    assert union.shape == (3, 5, 6) and not union.any()
    assert objects.shape == (0, 3, 5, 6) and scores.numel() == 0


def test_single_takes_argmax():
    cls = _logits([0.1, 0.3, 0.2])
    assert select_queries(cls, "single").tolist() == [1]
    union, objects, _ = select_masks(cls, torch.randn(3, 2, 4, 4), (4, 4), "single")
    assert objects.shape[0] == 1


def test_bad_mode_and_threshold():
    with pytest.raises(ValueError, match="mode"):
        select_queries(_logits([0.5]), "both")
    with pytest.raises(ValueError, match="threshold"):
        select_queries(_logits([0.5]), "multi", 2.0)
