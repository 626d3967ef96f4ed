"""Pixel motion features (``SSAConfig.motion_features``): temporal differences, the paper model at
initialisation, look-alikes told apart by motion, and the previous frame carried across chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build

from ssa import SSAPipeline
from ssa.modeling.motion import PixelMotionEncoder, temporal_differences


def motion_model(seed: int = 0):
    """A tiny model with motion features whose (zero-initialised) projections are made non-zero."""
    model = build("ssa-tiny", seed=seed, motion_features=True)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for proj in (model.motion_encoder.to_mask, model.motion_encoder.to_stride8):
            proj.weight.copy_(0.2 * torch.randn(proj.weight.shape, generator=g))
    return model


def square_clip(offsets: list[int], h: int = 64, w: int = 96) -> torch.Tensor:
    """(T, 3, H, W): a bright square on a dark background, left edge at ``offsets[t]``."""
    frames = torch.full((len(offsets), 3, h, w), -1.0)
    for t, x in enumerate(offsets):
        frames[t, :, 20:40, x:x + 20] = 1.0
    return frames


def test_temporal_differences_by_hand():
    x = torch.arange(4.0).reshape(1, 4, 1, 1, 1).expand(1, 4, 3, 2, 2) ** 2  # values 0, 1, 4, 9
    got = temporal_differences(x)
    assert got[0, :, 0, 0, 0].tolist() == [1.0, 1.0, 3.0, 5.0]  # first frame: the forward difference
    prev = torch.full((1, 3, 2, 2), -2.0)
    assert temporal_differences(x, prev)[0, :, 0, 0, 0].tolist() == [2.0, 1.0, 3.0, 5.0]
    assert not temporal_differences(x[:, :1]).any()  # one frame, nothing known: no motion


def test_encoder_shapes_and_errors():
    enc = PixelMotionEncoder(hidden_dim=16, mask_dim=8)
    m4, m8 = enc(torch.zeros(2, 3, 3, 32, 48))
    assert m4.shape == (6, 8, 8, 12) and m8.shape == (6, 16, 4, 6)
    with pytest.raises(ValueError, match="divisible by 8"):
        enc(torch.zeros(1, 2, 3, 30, 48))
    with pytest.raises(ValueError, match="previous frames"):
        enc(torch.zeros(1, 2, 3, 32, 48), torch.zeros(2, 3, 32, 48))


def test_encoder_reads_motion_not_appearance():
    enc = PixelMotionEncoder(hidden_dim=16, mask_dim=8)
    torch.nn.init.normal_(enc.to_mask.weight)
    still = [square_clip([x] * 3) for x in (10, 50)]  # the square elsewhere, not moving
    moving = square_clip([10, 14, 18])
    with torch.no_grad():
        a, b, c = (enc(clip[None])[0] for clip in (*still, moving))
    assert torch.equal(a, b)  # no motion, same features wherever the square is
    assert not torch.allclose(a, c)


def test_zero_initialised_model_is_the_paper_model():
    paper = build("ssa-tiny", seed=3)
    motion = build("ssa-tiny", seed=3, motion_features=True)
    missing = motion.load_state_dict(paper.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("motion_encoder.") for k in missing)
    frames = square_clip([10, 13, 16, 19])
    with torch.no_grad():
        a, b = paper(frames, "a square"), motion(frames, "a square")
    assert torch.equal(a.mask_logits, b.mask_logits) and torch.equal(a.class_logits, b.class_logits)
    trained = motion_model(3)
    with torch.no_grad():
        assert not torch.allclose(trained(frames, "a square").mask_logits, a.mask_logits)


def test_the_same_frame_moving_left_or_right_gets_different_mask_features():
    """Frame 1 is identical in both clips (square at x=40); only where it came from differs. Frame by
    frame (the paper) its mask features are equal; with motion features they are not."""
    right, left = square_clip([34, 40]), square_clip([46, 40])
    assert torch.equal(right[1], left[1])
    for model, equal in ((build("ssa-tiny", seed=2), True), (motion_model(2), False)):
        text = model.encode_text("a square")
        with torch.no_grad():
            feats = [model.encode_mask_features(model.encode_video(clip), text)[0, 1]
                     for clip in (right, left)]
        assert torch.allclose(*feats, atol=1e-5) is equal


def test_previous_frame_and_frame_chunks_give_the_whole_clips_features():
    model = motion_model(4)
    clip = square_clip([10, 14, 18, 22, 26, 30])
    text = model.encode_text("a square")
    with torch.no_grad():
        whole = model.encode_mask_features(model.encode_video(clip), text)  # (1, 6, Cm, h, w)
        chunked = model.encode_mask_features(model.encode_video(clip), text, frame_chunk=2)
        second = model.encode_mask_features(model.encode_video(clip[3:], previous=clip[2]), text)
        cold = model.encode_mask_features(model.encode_video(clip[3:]), text)
        frames_whole = model.decode_frames(model.encode_video(clip), text).mask_logits
        frames_chunked = model.decode_frames(model.encode_video(clip), text, frame_chunk=4).mask_logits
    assert torch.allclose(chunked, whole, atol=1e-5)
    assert torch.allclose(second, whole[:, 3:], atol=1e-5)
    assert not torch.allclose(cold[:, 0], whole[:, 3], atol=1e-3)  # without it frame 3 guesses its motion
    assert torch.allclose(frames_chunked, frames_whole, atol=1e-4)
    with pytest.raises(ValueError, match="previous frames"):
        model.encode_video(clip, previous=torch.zeros(3, 32, 32))


def test_pipeline_chunks_carry_the_previous_frame():
    model = motion_model(5)
    frames = []
    for i in range(11):
        img = np.full((64, 96, 3), 40, dtype=np.uint8)
        img[20:44, 4 + 5 * i:28 + 5 * i] = (220, 60, 60)
        frames.append(img)
    whole = SSAPipeline(model, device="cpu", chunk_size=64)(frames, "a square", threshold=0.0, progress=False)
    small = SSAPipeline(model, device="cpu", chunk_size=3)(frames, "a square", threshold=0.0, progress=False)
    recompute = SSAPipeline(model, device="cpu", chunk_size=3, mask_feature_budget=0)(
        frames, "a square", threshold=0.0, progress=False)
    assert whole.masks.any()
    for other in (small, recompute):
        assert (other.object_masks == whole.object_masks).mean() > 0.999
        assert np.allclose(other.scores, whole.scores, atol=1e-5)
