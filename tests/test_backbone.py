import pytest
import timm
import torch
from conftest import build

from ssa import SSAConfig
from ssa.modeling.backbone import FrozenCLIP, convnext_trunk, validate_expressions

EXPRESSIONS = ["the cat jumping away", "a dog", "the two red squares moving left and then stopping"]
MAX_WORDS = 40


def _open_clip_text(clip, tokens):
    """open_clip's own text pass on the full 77-token context: (per-token features projected into the
    joint space, captured after ``ln_final``; ``CLIP.encode_text``)."""
    captured = []
    hook = clip.ln_final.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        with torch.no_grad():
            sentence = clip.encode_text(tokens)
    finally:
        hook.remove()
    return captured[0] @ clip.text_projection, sentence


def _check_text_matches_open_clip(model):
    clip = model.backbone.clip
    feats = model.encode_text(EXPRESSIONS)
    tokens = model.backbone.tokenizer(EXPRESSIONS)  # (3, 77), as open_clip uses
    per_token, reference = _open_clip_text(clip, tokens)
    dim = reference.shape[1]
    assert feats.sentence.shape == (3, dim) and feats.expressions == EXPRESSIONS
    torch.testing.assert_close(feats.sentence, reference, atol=1e-5, rtol=1e-5)  # unnormalised
    assert not torch.allclose(feats.sentence.norm(dim=-1), torch.ones(3))
    # F_w: the first 40 positions whatever the expressions' lengths, padding masked by token id 0
    assert feats.words.shape == (3, MAX_WORDS, dim)
    assert torch.equal(feats.word_mask, tokens[:, :MAX_WORDS] != 0)
    assert feats.word_mask.sum(-1).tolist() == (tokens.argmax(-1) + 1).tolist()
    torch.testing.assert_close(feats.words, per_token[:, :MAX_WORDS], atol=1e-5, rtol=1e-5)
    # F_s is the projected end-of-text token of F_w (all three end before position 40)
    eot = tokens.argmax(-1)
    torch.testing.assert_close(feats.words[torch.arange(3), eot], feats.sentence, atol=1e-5, rtol=1e-5)


def _check_stages_match_trunk(model, size):
    trunk = model.backbone.clip.visual.trunk
    images = torch.randn(2, 3, *size)
    ours = model.backbone.encode_image(images)
    with torch.no_grad():
        reference = trunk.forward_intermediates(images, intermediates_only=True)
    assert len(ours) == len(reference) == 4
    for i, (a, b) in enumerate(zip(ours, reference, strict=True)):
        assert a.shape == b.shape, i
        assert a.shape[1] == model.backbone.stage_channels[i]
        assert a.shape[-1] == size[1] // (4 * 2**i)
        assert torch.allclose(a, b, atol=1e-5), i


def test_tiny_text_features_equal_open_clip(tiny_model):
    _check_text_matches_open_clip(tiny_model)


def test_tiny_stage_features_equal_trunk(tiny_model):
    _check_stages_match_trunk(tiny_model, (64, 96))


@pytest.mark.slow
def test_large_text_features_equal_open_clip(large_model):
    _check_text_matches_open_clip(large_model)


@pytest.mark.slow
def test_large_stage_features_equal_trunk(large_model):
    assert large_model.backbone.stage_channels == (192, 384, 768, 1536)
    _check_stages_match_trunk(large_model, (64, 96))


def test_stem_then_stages_equal_encode_image(tiny_model):
    backbone = tiny_model.backbone
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    plain = backbone.encode_image(images)
    x = backbone.encode_stem(images)
    torch.testing.assert_close(x, plain[0], atol=0, rtol=0)
    for i in (1, 2, 3):
        x = backbone.run_stage(i, x)
        torch.testing.assert_close(x, plain[i], atol=1e-6, rtol=1e-6)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="stage index"):
            backbone.run_stage(bad, plain[0])


def test_frozen_stages_still_pass_gradients_to_their_input(tiny_model):
    """The adapters sit between frozen stages: the stem records no graph, a later stage does (to
    reach the adapter before it) while CLIP's own weights get no gradient."""
    backbone = tiny_model.backbone
    images = torch.randn(1, 3, 64, 64, requires_grad=True)
    stem = backbone.encode_stem(images)
    assert not stem.requires_grad
    x = stem.clone().requires_grad_(True)
    backbone.run_stage(1, x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_words_are_cut_at_40_and_the_sentence_reads_the_full_context(tiny_model):
    long = " ".join(["red"] * 50)  # 52 tokens with start and end-of-text
    tokens = tiny_model.backbone.tokenizer([long, "a cat"])
    assert int(tokens[0].argmax()) == 51
    feats = tiny_model.encode_text([long, "a cat"])
    per_token, reference = _open_clip_text(tiny_model.backbone.clip, tokens)
    assert feats.words.shape[:2] == (2, MAX_WORDS)
    assert feats.word_mask[0].all() and feats.word_mask[1].sum() == 4
    torch.testing.assert_close(feats.sentence, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.words, per_token[:, :MAX_WORDS], atol=1e-5, rtol=1e-5)
    # the sentence is not any of the 40 kept positions: it is the end-of-text token at position 51
    assert (feats.words[0] - feats.sentence[0]).abs().amax(-1).min() > 1e-3


def test_long_expression_is_truncated_with_warning(tiny_model):
    long = " ".join(["very"] * 100) + " long cat"
    with pytest.warns(UserWarning, match="truncated"):
        feats = tiny_model.encode_text([long, "a cat"])
    tokens = tiny_model.backbone.tokenizer([long, "a cat"])  # open_clip truncates: end-of-text at 76
    assert int(tokens[0].argmax()) == 76
    assert feats.words.shape[:2] == (2, MAX_WORDS)
    assert feats.word_mask[0].all() and feats.word_mask[1].sum() == 4
    _, reference = _open_clip_text(tiny_model.backbone.clip, tokens)
    torch.testing.assert_close(feats.sentence, reference, atol=1e-5, rtol=1e-5)


def test_convnext_trunk_registers_a_timm_model_that_open_clip_builds():
    depths, dims = [1, 1, 2, 1], [16, 32, 48, 64]
    name = convnext_trunk(depths, dims)
    assert timm.is_model(name) and convnext_trunk(tuple(depths), tuple(dims)) == name  # registered once
    trunk = timm.create_model(name)
    assert [len(stage.blocks) for stage in trunk.stages] == depths
    assert [info["num_chs"] for info in trunk.feature_info] == dims
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(name, pretrained=True)

    torch.manual_seed(0)
    config = SSAConfig.from_preset("ssa-tiny", clip_trunk={"depths": depths, "dims": dims})
    backbone = FrozenCLIP(config)
    assert backbone.stage_channels == tuple(dims)
    assert [len(stage.blocks) for stage in backbone.clip.visual.trunk.stages] == depths
    gamma = backbone.clip.visual.trunk.stages[0].blocks[0].gamma
    torch.testing.assert_close(gamma, torch.full_like(gamma, 1e-6))  # default layer scale
    features = backbone.encode_image(torch.randn(1, 3, 64, 96))
    shapes = [(1, 16, 16, 24), (1, 32, 8, 12), (1, 48, 4, 6), (1, 64, 2, 3)]
    assert [tuple(f.shape) for f in features] == shapes
    assert backbone.clip.encode_image(torch.randn(1, 3, 64, 64)).shape == (1, 128)


def test_convnext_trunk_with_a_decimal_layer_scale():
    # the registered name must not contain '.' (timm reads it as a pretrained tag)
    name = convnext_trunk([1, 1, 1, 1], [8, 16, 24, 32], ls_init_value=0.1)
    gamma = timm.create_model(name).stages[0].blocks[0].gamma
    torch.testing.assert_close(gamma, torch.full_like(gamma, 0.1))


def test_clip_is_frozen_its_text_tower_stays_in_eval(tiny_model):
    tiny_model.train()
    try:
        clip = tiny_model.backbone.clip
        assert clip.visual.training  # the official training leaves the frozen trunk in train mode
        assert not any(m.training for m in [clip.transformer, clip.token_embedding, clip.ln_final])
        assert tiny_model.pixel_decoder.training
        assert all(not p.requires_grad for p in tiny_model.backbone.parameters())
    finally:
        tiny_model.eval()
    assert not any(m.training for m in tiny_model.backbone.clip.modules())


def test_frozen_trunk_drop_path_is_active_in_training_only():
    # the paper preset's trunk has open_clip's timm_drop_path 0.1, active in the official training
    from ssa import SSAConfig
    from ssa.modeling.model import SSAModel

    base = SSAConfig.from_preset("ssa-tiny")
    vision = {**base.clip_config["vision_cfg"], "timm_drop_path": 0.5}
    clip_config = {**base.clip_config, "vision_cfg": vision}
    model = SSAModel(SSAConfig.from_dict({**base.to_dict(), "clip_config": clip_config}))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model.backbone.encode_image(x)[-1], model.backbone.encode_image(x)[-1])
        model.train()
        torch.manual_seed(0)
        a = model.backbone.encode_image(x)[-1]
        b = model.backbone.encode_image(x)[-1]
    assert not torch.allclose(a, b)
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_unfreezing_the_visual_tower_only():
    from ssa import SSAConfig
    from ssa.modeling.model import SSAModel

    model = SSAModel(SSAConfig.from_preset("ssa-tiny"))
    backbone = model.backbone.unfreeze(text=False)
    model.train()
    clip = backbone.clip
    assert not backbone.frozen and backbone.text_frozen and not backbone.visual_frozen
    assert all(p.requires_grad for p in clip.visual.parameters())
    text = [p for n, p in clip.named_parameters() if not n.startswith("visual.")]
    assert text and not any(p.requires_grad for p in text)
    assert clip.visual.training and not clip.transformer.training and not clip.token_embedding.training
    feats = model.encode_text(["a cat", "the red square"])
    assert not feats.sentence.requires_grad and not feats.words.requires_grad
    assert all(f.requires_grad for f in backbone.encode_image(torch.randn(1, 3, 64, 64)))
    backbone.unfreeze()  # then both towers
    assert all(p.requires_grad for p in clip.parameters()) and clip.transformer.training
    assert model.encode_text("a cat").sentence.requires_grad


@pytest.mark.parametrize("bad,err", [
    ("", ValueError), ("   \n", ValueError), ([], ValueError), (["ok", ""], ValueError),
    (None, TypeError), (3, TypeError), (["ok", 5], TypeError), (b"bytes", TypeError),
])
def test_bad_expressions(bad, err):
    with pytest.raises(err, match="expression"):
        validate_expressions(bad)


@pytest.mark.parametrize("invisible", ["\x00", "\u200b", " \u200b\t\u200d", "\ufeff", "\u0301", "\x1b\x07"])
def test_expressions_without_a_visible_character_are_refused(invisible):
    with pytest.raises(ValueError, match="expression 1 is empty or has no visible character"):
        validate_expressions(["the cat", invisible])


def test_visible_characters_of_any_script_are_expressions():
    assert validate_expressions(["猫", "?", "€", "7", "é\u200b"]) == ["猫", "?", "€", "7", "é\u200b"]


def test_whitespace_is_normalised():
    assert validate_expressions("  the   cat\n") == ["the cat"]


def _paper_kind_stage(seed: int = 0):
    """A timm ConvNeXt stage with the paper preset's kind of block (channels-last MLP, layer scale)."""
    from timm.layers import LayerNorm, LayerNorm2d
    from timm.models.convnext import ConvNeXtStage

    torch.manual_seed(seed)
    stage = ConvNeXtStage(16, 24, stride=2, depth=2, conv_mlp=False, ls_init_value=0.5,
                          norm_layer=LayerNorm2d, norm_layer_cl=LayerNorm).eval()
    for block in stage.blocks:
        block.gamma.data.uniform_(0.1, 1.0)
    return stage


def test_convnext_stage_in_token_chunks_equals_timm(monkeypatch):
    import ssa.modeling.backbone as backbone_module

    stage = _paper_kind_stage()
    x = torch.randn(2, 16, 18, 22)
    with torch.no_grad():
        expected = stage(x)
        monkeypatch.setattr(backbone_module, "_TOKEN_CHUNK", 29)  # 2·9·11 = 198 tokens: a partial chunk
        got = backbone_module._convnext_blocks_in_token_chunks(stage.blocks, stage.downsample(x))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.stride()[1] == 1  # channels-last memory, as timm's blocks leave it


def test_convnext_stage_takes_token_chunks_only_for_large_cpu_inference(monkeypatch):
    import ssa.modeling.backbone as backbone_module

    stage = _paper_kind_stage()
    chunked = []
    monkeypatch.setattr(backbone_module, "_convnext_blocks_in_token_chunks",
                        lambda blocks, x: chunked.append(1) or blocks(x))
    x = torch.randn(1, 16, 16, 16)
    run = backbone_module._run_convnext_stage
    with torch.no_grad():
        run(stage, x)  # 64 tokens x 96 hidden: far below the threshold
    assert chunked == []
    monkeypatch.setattr(backbone_module, "_CHUNKED_MLP_BYTES", 0)
    run(stage, x)  # gradients recorded: the stage itself (training through it keeps timm's graph)
    assert chunked == []
    with torch.no_grad():
        stage.train()
        run(stage, x)  # stochastic depth may be active
        stage.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            run(stage, x)
        assert chunked == []
        run(stage, x)
    assert chunked == [1]
    tiny_block = build("ssa-tiny").backbone.clip.visual.trunk.stages[0].blocks[0]
    assert not backbone_module._plain_block(tiny_block)  # conv MLP (ssa-tiny): the stage itself
