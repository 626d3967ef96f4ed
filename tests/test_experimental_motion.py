"""The experimental pixel motion features (ssa.experimental.motion; not in the official network)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import build, random_frames

from ssa import SSAConfig, SSAPipeline
from ssa.experimental.motion import PixelMotionEncoder, temporal_differences
from ssa.hub import expected_shapes
from ssa.modeling.model import SSAModel


def _with_motion(model: SSAModel, scale: float = 0.0, seed: int = 1) -> SSAModel:
    """``model`` with the motion features switched on; its projections at ``scale`` (0: as added)."""
    torch.manual_seed(seed)
    grown = SSAModel(dataclasses.replace(model.config, experimental_motion_features=True)).eval()
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("experimental_motion.") for k in missing)
    if scale:
        for p in grown.experimental_motion.parameters():
            p.data.normal_(0.0, scale)
    return grown


def test_off_by_default_and_absent_from_the_official_network():
    config = SSAConfig.from_preset("ssa-tiny")
    assert config.experimental_motion_features is False
    assert build("ssa-tiny").experimental_motion is None
    assert not [k for k in expected_shapes(SSAConfig(clip_pretrained=None), SSAModel)
                if "motion" in k]  # the authors' checkpoints hold no such keys


def test_switched_on_it_starts_as_the_model_it_was_added_to():
    model = build("ssa-tiny")
    frames = random_frames(4, 64, 96)
    grown = _with_motion(model)
    with torch.no_grad():
        before = model(frames, ["a cat", "the dog"]).mask_logits
        after = grown(frames, ["a cat", "the dog"]).mask_logits
        moved = _with_motion(model, scale=0.05)(frames, ["a cat", "the dog"]).mask_logits
    assert torch.equal(before, after)
    assert (moved - before).abs().max() > 1e-3  # trained projections do change the masks


def test_it_reads_motion_not_appearance():
    enc = PixelMotionEncoder(hidden_dim=16, mask_dim=8, width=8)
    for p in enc.parameters():
        p.data.normal_(0.0, 0.2)
    still = random_frames(1, 32, 32)[None].expand(1, 3, 3, 32, 32)  # (B, T, 3, H, W), no motion
    other_still = random_frames(1, 32, 32, seed=5)[None].expand(1, 3, 3, 32, 32)
    assert torch.allclose(enc.encode(still), enc.encode(other_still))  # only differences are read
    square = torch.zeros(3, 3, 32, 32)
    for t in range(3):
        square[t, :, 8:16, 8 + 4 * t:16 + 4 * t] = 1.0  # moving right
    left = square.flip(0)  # the same frames, played backwards: moving left
    assert (enc.encode(square[None]) - enc.encode(left[None])).abs().max() > 1e-3
    diffs = temporal_differences(square[None])
    assert torch.equal(diffs[0, 0], diffs[0, 1])  # the first frame takes the forward difference


def test_chunks_with_the_frame_before_give_what_the_whole_clip_gives():
    model = _with_motion(build("ssa-tiny"), scale=0.05)
    frames = random_frames(5, 64, 96)
    text = model.encode_text(["the left one"])
    with torch.no_grad():
        whole = model.decode_frames(model.encode_video(frames), text)
        first = model.decode_frames(model.encode_video(frames[:2]), text)
        rest = model.decode_frames(model.encode_video(frames[2:], frames[1]), text)
        cold = model.decode_frames(model.encode_video(frames[2:]), text)
    chunked = torch.cat([first.mask_features, rest.mask_features], dim=1)
    torch.testing.assert_close(chunked, whole.mask_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([first.queries, rest.queries], dim=1), whole.queries,
                               rtol=1e-4, atol=1e-4)
    assert (cold.mask_features - whole.mask_features[:, 2:]).abs().max() > 1e-4  # the frame before matters


def test_the_pipeline_hands_each_chunk_the_frame_before_it():
    model = _with_motion(build("ssa-tiny"), scale=0.05)
    rng = np.random.default_rng(0)
    frames = list((rng.random((7, 64, 96, 3)) * 255).astype(np.uint8))
    whole = SSAPipeline(model, device="cpu", chunk_size=7)(frames, "the cat", progress=False)
    chunked = SSAPipeline(model, device="cpu", chunk_size=3)(frames, "the cat", progress=False)
    np.testing.assert_allclose(chunked.scores, whole.scores, rtol=1e-4, atol=1e-5)


def test_previous_frames_of_the_wrong_shape_are_refused():
    model = _with_motion(build("ssa-tiny"))
    frames = random_frames(3, 64, 96)
    with pytest.raises(ValueError, match="previous frames"):
        model.encode_video(frames, torch.zeros(3, 64, 64))


def test_saved_and_loaded_with_its_weights(tmp_path):
    model = _with_motion(build("ssa-tiny"), scale=0.05)
    model.save_pretrained(tmp_path / "m")
    loaded = SSAModel.from_pretrained(tmp_path / "m")
    assert loaded.config.experimental_motion_features
    for name, p in model.experimental_motion.state_dict().items():
        assert torch.equal(loaded.experimental_motion.state_dict()[name], p)


def test_it_is_trained():
    model = _with_motion(build("ssa-tiny")).train()
    out = model(random_frames(3, 64, 96), ["the cat"])
    (out.mask_logits.sigmoid().mean() + out.frames.mask_logits.sigmoid().mean()).backward()
    grads = {n: p.grad for n, p in model.experimental_motion.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert grads["to_mask.weight"].abs().sum() > 0 and grads["to_video_mask.weight"].abs().sum() > 0
    assert grads["to_stride8.weight"].abs().sum() > 0
