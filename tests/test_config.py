import dataclasses
import json

import pytest

from ssa import PRESETS, SSAConfig


def test_presets_exist_and_roundtrip_json():
    assert set(PRESETS) == {"ssa-convnext-large", "ssa-convnext-base", "ssa-tiny"}
    for name in PRESETS:
        cfg = SSAConfig.from_preset(name)
        assert cfg.preset == name
        again = SSAConfig.from_json(cfg.to_json())
        assert again == cfg and again.preset == name
        assert again.to_dict() == cfg.to_dict()
        values = json.loads(cfg.to_json())
        assert set(values) == {f.name for f in dataclasses.fields(SSAConfig)}
        assert values["hidden_dim"] == cfg.hidden_dim and values["clip_config"] == cfg.clip_config


def test_paper_preset_values():
    cfg = SSAConfig.from_preset("ssa-convnext-large")
    assert cfg == SSAConfig()  # the defaults are the paper's network
    assert cfg.clip_model == "convnext_large_d_320" and cfg.clip_config is None and cfg.clip_trunk is None
    assert cfg.clip_pretrained == "laion2b_s29b_b131k_ft_soup"
    assert (cfg.image_size, cfg.max_size, cfg.max_words) == (448, 1333, 40)
    assert (cfg.hidden_dim, cfg.mask_dim, cfg.num_queries, cfg.num_heads) == (256, 256, 20, 8)
    assert cfg.dropout == 0.0
    assert (cfg.adapter_dim, cfg.adapter_heads, cfg.adapter_dropout, cfg.text_dropout) == (256, 8, 0.1, 0.1)
    assert (cfg.pixel_decoder_layers, cfg.pixel_decoder_heads, cfg.pixel_decoder_points) == (6, 8, 4)
    assert cfg.pixel_decoder_ffn_dim == 1024
    assert (cfg.fusion_dim, cfg.fusion_heads, cfg.fusion_dropout) == (512, 4, 0.1)
    assert (cfg.frame_decoder_layers, cfg.frame_decoder_ffn_dim) == (9, 2048)
    assert (cfg.video_decoder_layers, cfg.video_decoder_ffn_dim) == (6, 2048)
    assert (cfg.selection, cfg.threshold) == ("multi", 0.5)
    assert cfg.use_adapter and cfg.bidirectional and cfg.ensemble and cfg.trajectory


def test_removed_fields_are_gone():
    names = {f.name for f in dataclasses.fields(SSAConfig)}
    for old in ("temporal_kernel", "query_positions", "motion_features", "trajectory_masks"):
        assert old not in names
        with pytest.raises(ValueError, match="unknown SSAConfig field"):
            SSAConfig.from_dict({**SSAConfig().to_dict(), old: 1})


def test_overrides_and_file(tmp_path):
    cfg = SSAConfig.from_preset("ssa-tiny", use_adapter=False, selection="single")
    assert not cfg.use_adapter and cfg.selection == "single" and cfg.hidden_dim == 64
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    assert SSAConfig.from_json(path) == cfg
    assert SSAConfig.from_json(str(path)) == cfg


@pytest.mark.parametrize("name", ["ssa-huge", "", "SSA-TINY", None, 3])
def test_unknown_preset(name):
    with pytest.raises(ValueError, match="unknown SSA preset"):
        SSAConfig.from_preset(name)


def test_unknown_override_and_field():
    with pytest.raises(TypeError, match="no field"):
        SSAConfig.from_preset("ssa-tiny", num_querys=3)
    with pytest.raises(ValueError, match="unknown SSAConfig field"):
        SSAConfig.from_dict({"hidden_dim": 256, "bogus": 1})
    with pytest.raises(ValueError, match="bogus"):
        SSAConfig.from_json(json.dumps({"bogus": 1}))
    with pytest.raises(TypeError, match="dict"):
        SSAConfig.from_dict([("hidden_dim", 256)])


@pytest.mark.parametrize(
    "field,value",
    [
        ("use_adapter", "yes"),  # a string for a bool
        ("bidirectional", 1),  # an int for a bool
        ("num_heads", True),  # a bool for an int
        ("hidden_dim", 256.0),  # a float for an int
        ("max_words", "40"),
        ("dropout", "0.1"),
        ("dropout", False),  # a bool for a float
        ("selection", None),
        ("clip_pretrained", 3),
        ("clip_config", "tiny"),
    ],
)
def test_wrong_types(field, value):
    with pytest.raises(TypeError, match=field):
        SSAConfig(**{field: value})


def test_an_int_is_a_float_and_none_where_allowed():
    cfg = SSAConfig(dropout=0, threshold=1, clip_pretrained=None)
    assert cfg.dropout == 0 and cfg.threshold == 1 and cfg.clip_pretrained is None


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"num_queries": -1}, "num_queries"),
        ({"max_words": 0}, "max_words"),
        ({"frame_decoder_layers": 0}, "frame_decoder_layers"),
        ({"hidden_dim": 250}, "divisible"),
        ({"adapter_dim": 250}, "adapter_dim"),
        ({"adapter_dim": 18, "adapter_heads": 2}, "divisible by 4"),
        ({"fusion_dim": 510}, "fusion_dim"),
        ({"dropout": 1.5}, "dropout"),
        ({"adapter_dropout": 1.0}, "adapter_dropout"),
        ({"fusion_dropout": -0.1}, "fusion_dropout"),
        ({"threshold": 1.5}, "threshold"),
        ({"selection": "best"}, "selection"),
        ({"max_size": 400}, "max_size"),
        ({"clip_model": ""}, "clip_model or clip_config"),
        ({"clip_config": {"embed_dim": 64}}, "lacks keys"),
        ({"clip_trunk": {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 64]}}, "clip_trunk"),
    ],
)
def test_invalid_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        SSAConfig(**overrides)


@pytest.mark.parametrize(
    "trunk",
    [
        {"depths": [1, 1, 2], "dims": [8, 16, 32, 64]},
        {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 0]},
        {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, True]},
        {"depths": [1, 1, 2, 1]},
        {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 64], "width": 3},
    ],
)
def test_invalid_clip_trunk(trunk):
    with pytest.raises(ValueError, match="clip_trunk"):
        SSAConfig.from_preset("ssa-tiny", clip_trunk=trunk)
    good = {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 64], "ls_init_value": 1e-6}
    assert SSAConfig.from_preset("ssa-tiny", clip_trunk=good).clip_trunk == good


def test_invalid_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SSAConfig.from_json(path)
