import pytest
import torch
from conftest import build, random_frames

from ssa import SSAConfig
from ssa.modeling.model import SSAModel


def test_tiny_forward_backward_shapes_and_frozen_clip():
    model = build("ssa-tiny").train()
    cfg = model.config
    frames = random_frames(6, 64, 96)
    out = model(frames, "the square moving left")
    loss = out.mask_logits.sigmoid().mean() + out.class_logits.logsumexp(-1).mean()
    for m in out.aux_mask_logits:
        loss = loss + m.mean()
    loss = loss + out.frames.mask_logits.mean() + sum(x.mean() for x in out.frames.aux_class_logits)
    loss = loss + out.frame_embed.mean() + out.video_embed.mean()  # the similarity heads (training only)
    loss.backward()
    n, c = cfg.num_queries, cfg.hidden_dim
    assert out.class_logits.shape == (1, n, 2)
    assert out.mask_logits.shape == (1, n, 6, 16, 24)
    assert out.trajectories.shape == (1, 6, n, c)
    assert out.frame_embed.shape == (1, 6, n, c) and out.video_embed.shape == (1, n, c)
    assert out.frame_queries.shape == (1, 6, n, c)
    assert out.trajectory_order.shape == (1, 6, n)
    assert out.ensemble_weights.shape == (1, 6, n)
    assert out.video_queries.shape == (1, n, c)
    # deep supervision when training
    assert len(out.aux_mask_logits) == cfg.video_decoder_layers - 1
    assert len(out.frames.aux_mask_logits) == cfg.frame_decoder_layers
    assert out.frames.mask_logits.shape == (1, 6, n, 16, 24)
    assert out.frames.adapter_weights.shape == (1, 6, 4, 3)
    # CLIP gets no gradient; every trainable parameter does
    assert all(p.grad is None for p in model.backbone.parameters())
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_eval_output_has_no_deep_supervision(tiny_model):
    with torch.no_grad():
        out = tiny_model(random_frames(3, 64, 64), "a cat")
    assert out.frames is None and out.aux_mask_logits == []
    with torch.no_grad():
        out = tiny_model(random_frames(3, 64, 64), "a cat", with_frames=True)
    assert out.frames is not None
    assert out.frames.mask_logits.shape[:3] == (1, 3, tiny_model.config.num_queries)


def test_frames_without_frame_masks_give_the_same_video_output(tiny_model):
    """decode_frames(frame_masks=False) (what the pipeline and eval forward run) skips the frame
    decoder's full-resolution mask logits; the video output is the same, and asking for the training
    outputs from such frames is a clear error."""
    frames = random_frames(3, 64, 64)
    with torch.no_grad():
        visual = tiny_model.encode_video(frames)
        text = tiny_model.encode_text(["a cat", "a dog"])
        full = tiny_model.decode_frames(visual, text)
        lean = tiny_model.decode_frames(visual, text, frame_masks=False, frame_chunk=2)
        assert lean.mask_logits is None and lean.aux_mask_logits == []
        assert full.mask_logits is not None and full.aux_mask_logits
        torch.testing.assert_close(tiny_model.decode_video(lean, text).mask_logits,
                                   tiny_model.decode_video(full, text).mask_logits, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="frame_masks=True"):
            tiny_model.decode_video(lean, text, with_frames=True)


def test_odd_sizes_are_padded_and_masks_cover_the_padded_frames(tiny_model):
    with torch.no_grad():
        out = tiny_model(random_frames(2, 50, 77), "a cat")
    assert out.mask_logits.shape[-2:] == (16, 24)  # (64, 96) / 4: the frames padded to 32


def test_one_visual_pass_serves_several_expressions(tiny_model):
    frames = random_frames(4, 64, 64)
    exprs = ["the cat on the left", "a dog", "the bird flying away first"]
    calls, stage1 = [], []
    trunk = tiny_model.backbone.clip.visual.trunk
    handles = [trunk.stem.register_forward_hook(lambda *a: calls.append(1)),
               trunk.stages[1].register_forward_hook(lambda m, i, o: stage1.append(o.shape[0]))]
    try:
        with torch.no_grad():
            visual = tiny_model.encode_video(frames)
            text = tiny_model.encode_text(exprs)
            frame_out = tiny_model.decode_frames(visual, text)
            joint = tiny_model.decode_video(frame_out, text)
            # the stem and stage 0 run once; stages 1-3 see every (expression, frame) row (the adapters
            # before them make them expression-dependent), batched
            assert len(calls) == 1 and stage1 == [3 * 4]
            separate = [tiny_model(frames, e) for e in exprs]
    finally:
        for handle in handles:
            handle.remove()
    assert joint.mask_logits.shape[0] == 3 and joint.expressions == exprs
    for i, single in enumerate(separate):
        assert torch.allclose(joint.mask_logits[i], single.mask_logits[0], atol=1e-4)
        assert torch.allclose(joint.class_logits[i], single.class_logits[0], atol=1e-4)
    # forward with a list is the same as the split API
    with torch.no_grad():
        listed = tiny_model(frames, exprs)
    assert torch.allclose(listed.mask_logits, joint.mask_logits, atol=1e-5)


def test_batch_of_clips(tiny_model):
    clips = random_frames(3, 64, 64, b=2)
    with torch.no_grad():
        out = tiny_model(clips, [["a cat", "a dog"], "a bird"])
        alone = tiny_model(clips[1], "a bird")
    assert out.clip_index.tolist() == [0, 0, 1]
    assert out.expressions == ["a cat", "a dog", "a bird"]
    assert torch.allclose(out.mask_logits[2], alone.mask_logits[0], atol=1e-4)


def test_frame_chunking_gives_the_same_result(tiny_model):
    frames = random_frames(5, 64, 64)
    with torch.no_grad():
        visual = tiny_model.encode_video(frames)
        text = tiny_model.encode_text(["a cat", "a dog"])
        whole_frames = tiny_model.decode_frames(visual, text)
        whole = tiny_model.decode_video(whole_frames, text)
        for frame_chunk, row_chunk in [(2, None), (None, 3), (2, 1)]:
            frame_out = tiny_model.decode_frames(visual, text, frame_chunk=frame_chunk, row_chunk=row_chunk)
            for a, b in zip(whole_frames.aux_mask_logits + whole_frames.aux_class_logits,
                            frame_out.aux_mask_logits + frame_out.aux_class_logits, strict=True):
                assert torch.allclose(a, b, atol=1e-5)
            chunked = tiny_model.decode_video(frame_out, text)
            assert torch.allclose(whole.mask_logits, chunked.mask_logits, atol=1e-5)
            assert torch.equal(whole.trajectory_order, chunked.trajectory_order)
            features = tiny_model.encode_mask_features(visual, text, frame_chunk=frame_chunk,
                                                       row_chunk=row_chunk)
            assert torch.allclose(features, frame_out.mask_features, atol=1e-5)
        with pytest.raises(ValueError, match="row_chunk must be positive"):
            tiny_model.decode_frames(visual, text, row_chunk=0)
        for stem_chunk in (1, 2):  # the stem and stage 0 a few frames at a time
            assert torch.allclose(tiny_model.encode_video(frames, frame_chunk=stem_chunk).stem, visual.stem,
                                  atol=1e-5)
        with pytest.raises(ValueError, match="frame_chunk must be >= 1"):
            tiny_model.encode_video(frames, frame_chunk=0)


def _params(model, prefix):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


@pytest.mark.parametrize("switch", ["use_adapter", "bidirectional", "ensemble", "trajectory"])
def test_ablation_switches_change_computation_and_parameters(switch):
    full = build("ssa-tiny", seed=0)
    ablated = build("ssa-tiny", seed=0, **{switch: False})
    # give both the same weights where they share parameters, so only the code path differs
    ablated.load_state_dict(full.state_dict(), strict=False)
    diff = full.num_parameters(trainable_only=True) - ablated.num_parameters(trainable_only=True)
    c = full.config.hidden_dim
    expected = {
        "use_adapter": _params(full, "adapters"),
        "bidirectional": sum(_params(full, f"pixel_decoder.fusion_layers.{i}.{name}")
                             for i in range(full.config.pixel_decoder_layers)
                             for name in ("attn.values_l_proj", "attn.out_v_proj", "gamma_v")),
        "ensemble": c + 1,
        "trajectory": _params(full, "temporal_enhancement"),
    }[switch]
    assert diff == expected > 0
    # Perturb the weights as a little training would (the fusion's layer scales start at 1e-4), so
    # that every switch is visible in the outputs.
    torch.manual_seed(3)
    for p in full.parameters():
        if p.requires_grad:
            p.data.add_(0.1 * torch.randn_like(p))
    ablated.load_state_dict(full.state_dict(), strict=False)
    frames = random_frames(4, 64, 64)
    with torch.no_grad():
        a = full(frames, "the cat jumping away")
        b = ablated(frames, "the cat jumping away")
    assert not torch.allclose(a.mask_logits, b.mask_logits, atol=1e-3)
    if switch == "ensemble":
        assert torch.allclose(b.ensemble_weights, torch.full_like(b.ensemble_weights, 0.25))
    if switch == "trajectory":
        assert torch.equal(b.trajectory_order, torch.arange(full.config.num_queries).expand(1, 4, -1))


@pytest.mark.parametrize("frames,match", [
    (torch.randn(3, 64, 64), "rank"),
    (torch.randn(1, 1, 1, 3, 64, 64), "rank"),
    (torch.randn(2, 4, 64, 64), "3 \\(RGB\\) channels"),
    (torch.randn(2, 1, 64, 64), "channels"),
    (torch.randn(0, 3, 64, 64), "no frame"),
    (torch.randn(2, 0, 3, 64, 64), "no frame"),
    (torch.randn(0, 2, 3, 64, 64), "no clip"),
])
def test_bad_frames_raise_value_error(tiny_model, frames, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(frames, "a cat")


def test_bad_frame_types_raise_type_error(tiny_model):
    with pytest.raises(TypeError, match="torch.Tensor"):
        tiny_model([[1.0]], "a cat")
    with pytest.raises(TypeError, match="floating point"):
        tiny_model(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), "a cat")


@pytest.mark.parametrize("expr,err", [
    ("", ValueError), ("  ", ValueError), (None, TypeError), (42, TypeError), ([], ValueError),
    (["a cat", ""], ValueError), (["a cat", 7], TypeError),
])
def test_bad_expressions_raise(tiny_model, expr, err):
    with pytest.raises(err, match="expression"):
        tiny_model(random_frames(2, 64, 64), expr)


def test_wrong_number_of_clip_entries(tiny_model):
    with pytest.raises(ValueError, match="2 clips need 2"):
        tiny_model(random_frames(2, 64, 64, b=2), ["a", "b", "c"])


def test_model_requires_config():
    with pytest.raises(TypeError, match="SSAConfig"):
        SSAModel("ssa-tiny")


def test_config_of_model_is_the_one_given():
    cfg = SSAConfig.from_preset("ssa-tiny", num_queries=5)
    model = SSAModel(cfg)
    assert model.config is cfg and model.frame_decoder.query_pos.num_embeddings == 5


def test_mask_features_alone_equal_the_frame_stage(tiny_model):
    frames = random_frames(3, 64, 96)
    with torch.no_grad():
        visual = tiny_model.encode_video(frames)
        text = tiny_model.encode_text(["a cat", "a dog"])
        full = tiny_model.decode_frames(visual, text)
        alone = tiny_model.encode_mask_features(visual, text)
    assert alone.shape == full.mask_features.shape == (2, 3, tiny_model.config.mask_dim, 16, 24)
    assert torch.allclose(alone, full.mask_features, atol=1e-6)


def test_expressions_change_the_visual_pass_from_stage_one(tiny_model):
    frames = random_frames(2, 64, 64)
    with torch.no_grad():
        visual = tiny_model.encode_video(frames)
        text = tiny_model.encode_text(["a red square", "the blue circle moving up"])
        rows = visual.stem.repeat(2, 1, 1, 1)
        pair = torch.arange(2).repeat_interleave(2)
        features, weights = tiny_model.encode_stages(rows, text.words[pair], text.word_mask[pair],
                                                     text.sentence[pair])
    assert weights.shape == (4, 4, 3) and torch.allclose(weights.sum(-1), torch.ones(4, 4), atol=1e-6)
    for f in features:  # every stage output differs between the two expressions
        assert (f[:2] - f[2:]).abs().max() > 1e-4
    without = build("ssa-tiny", use_adapter=False)
    with torch.no_grad():
        plain, none = without.encode_stages(rows, text.words[pair], text.word_mask[pair], text.sentence[pair])
    assert none is None and torch.equal(plain[3][:2], plain[3][2:])


@pytest.mark.parametrize("layers", [1, 3, 4])
def test_training_runs_the_video_stage_on_the_last_frame_decoder_layers(layers):
    # the official LAST_LAYER_NUM: the video stage also decodes the frame queries of earlier predictions
    model = build("ssa-tiny", train_frame_layers=layers).train()
    frames = random_frames(3, 64, 64)
    out = model(frames, ["the red square", "the circle"])
    assert len(out.earlier_layers) == layers - 1
    aux = out.frames.aux_queries
    assert len(aux) == model.config.frame_decoder_layers
    for i, version in enumerate(out.earlier_layers):  # latest first
        model.eval()  # the same stage, deterministic: compare with a direct decode of that layer
        direct = model.decode_sequence(aux[-1 - i], out.frames.sentences)
        model.train()
        torch.testing.assert_close(version.class_logits, direct.class_logits)
        assert version.mask_logits.shape == out.mask_logits.shape
        assert version.frame_embed.shape == out.frame_embed.shape
        assert len(version.aux_class_logits) == model.config.video_decoder_layers - 1
    with torch.no_grad():
        assert model.eval()(frames, "the red square").earlier_layers == []


def test_train_frame_layers_is_checked():
    with pytest.raises(ValueError, match="train_frame_layers"):
        SSAConfig.from_preset("ssa-tiny", train_frame_layers=5)  # 3 layers: 4 predictions
    with pytest.raises(ValueError, match="train_frame_layers"):
        SSAConfig.from_preset("ssa-tiny", train_frame_layers=0)
