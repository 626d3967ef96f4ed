import pytest
import torch

from ssa.modeling.backbone import validate_expressions

EXPRESSIONS = ["the cat jumping away", "a dog", "the two red squares moving left and then stopping"]


def _check_text_matches_open_clip(model):
    clip = model.backbone.clip
    feats = model.encode_text(EXPRESSIONS)
    tokens = model.backbone.tokenizer(EXPRESSIONS)  # full 77-token context, as open_clip uses
    with torch.no_grad():
        reference = clip.encode_text(tokens)
    assert feats.sentence.shape == reference.shape
    assert torch.allclose(feats.sentence, reference, atol=1e-5, rtol=0)
    # context trimmed to the longest expression; mask covers start..end-of-text
    length = int(tokens.argmax(-1).max()) + 1
    assert feats.words.shape == (3, length, reference.shape[1])
    assert feats.word_mask.sum(-1).tolist() == (tokens.argmax(-1) + 1).tolist()
    # F_s is the projected end-of-text token of F_w
    eot = tokens.argmax(-1)
    assert torch.allclose(feats.words[torch.arange(3), eot], feats.sentence)


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


def test_tiny_sentence_feature_equals_encode_text(tiny_model):
    _check_text_matches_open_clip(tiny_model)


def test_tiny_stage_features_equal_trunk(tiny_model):
    _check_stages_match_trunk(tiny_model, (64, 96))


@pytest.mark.slow
def test_large_sentence_feature_equals_encode_text(large_model):
    _check_text_matches_open_clip(large_model)


@pytest.mark.slow
def test_large_stage_features_equal_trunk(large_model):
    assert large_model.backbone.stage_channels == (192, 384, 768, 1536)
    _check_stages_match_trunk(large_model, (64, 96))


def test_clip_is_frozen_and_stays_in_eval(tiny_model):
    tiny_model.train()
    try:
        assert not tiny_model.backbone.clip.training
        assert all(not m.training for m in tiny_model.backbone.clip.modules())
        assert tiny_model.pixel_decoder.training
        assert all(not p.requires_grad for p in tiny_model.backbone.parameters())
    finally:
        tiny_model.eval()


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


def test_long_expression_is_truncated_with_warning(tiny_model):
    long = " ".join(["very"] * 100) + " long cat"
    with pytest.warns(UserWarning, match="truncated"):
        feats = tiny_model.encode_text([long, "a cat"])
    assert feats.words.shape[1] == 77
    assert feats.word_mask[0].all()


@pytest.mark.parametrize("bad,err", [
    ("", ValueError), ("   \n", ValueError), ([], ValueError), (["ok", ""], ValueError),
    (None, TypeError), (3, TypeError), (["ok", 5], TypeError), (b"bytes", TypeError),
])
def test_bad_expressions(bad, err):
    with pytest.raises(err, match="expression"):
        validate_expressions(bad)


def test_whitespace_is_normalised():
    assert validate_expressions("  the   cat\n") == ["the cat"]
