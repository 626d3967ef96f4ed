"""The paper's network (ssa-convnext-large) at full size, with random CLIP weights (no download)."""

import pytest
import torch
from conftest import random_frames

from ssa import SSAConfig
from ssa.modeling.model import SSAModel

CLIP_PARAMS = 351_772_609


def _meta_model(**overrides) -> SSAModel:
    cfg = SSAConfig.from_preset("ssa-convnext-large", clip_pretrained=None, **overrides)
    with torch.device("meta"):  # shapes only: counts parameters without allocating 1.6 GB
        return SSAModel(cfg)


def test_frozen_clip_has_exactly_open_clips_parameter_count():
    model = _meta_model()
    clip = model.parameter_breakdown()["backbone"]
    assert clip["total"] == CLIP_PARAMS
    assert clip["trainable"] == 0


def test_trainable_parameters_equal_the_official_network():
    # the official SSAlignment at the MeViS config (the paper rounds them to 46.5M / 39.4M)
    assert _meta_model().num_parameters(trainable_only=True) == 46_847_569
    assert _meta_model(use_adapter=False).num_parameters(trainable_only=True) == 39_832_517


@pytest.mark.slow
def test_paper_preset_forward_on_cpu(large_model):
    frames = random_frames(2, 128, 160)
    with torch.no_grad():
        out = large_model(frames, ["the cat jumping away", "two dogs"])
    assert out.class_logits.shape == (2, 20, 2)
    assert out.mask_logits.shape == (2, 20, 2, 32, 40)
    assert out.trajectories.shape == (2, 2, 20, 256)
    assert out.frame_queries.shape == (2, 2, 20, 256)
    assert out.video_queries.shape == (2, 20, 256)
    assert torch.isfinite(out.mask_logits).all() and torch.isfinite(out.class_logits).all()
    assert torch.allclose(out.ensemble_weights.sum(1), torch.ones(2, 20), atol=1e-5)


@pytest.mark.slow
def test_paper_preset_clip_gets_no_gradient(large_model):
    large_model.train()
    try:
        out = large_model(random_frames(2, 64, 64), "a cat")
        out.mask_logits.mean().backward()
        assert all(p.grad is None for p in large_model.backbone.parameters())
        # gradients reach adapter 0 through the frozen stages 1-3
        assert large_model.adapters[0].linear_v.weight.grad is not None
        assert large_model.adapters[3].up_v.weight.grad is not None
    finally:
        large_model.zero_grad(set_to_none=True)
        large_model.eval()
