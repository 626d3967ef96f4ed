import json

import pytest

from ssa import PRESETS, SSAConfig


def test_presets_exist_and_roundtrip_json():
    assert set(PRESETS) == {"ssa-convnext-large", "ssa-convnext-base", "ssa-tiny"}
    for name in PRESETS:
        cfg = SSAConfig.from_preset(name)
        assert cfg.preset == name
        again = SSAConfig.from_json(cfg.to_json())
        assert again == cfg
        assert json.loads(cfg.to_json())["hidden_dim"] == cfg.hidden_dim


def test_paper_preset_values():
    cfg = SSAConfig.from_preset("ssa-convnext-large")
    assert cfg.clip_model == "convnext_large_d_320"
    assert cfg.clip_pretrained == "laion2b_s29b_b131k_ft_soup"
    assert (cfg.hidden_dim, cfg.num_queries, cfg.frame_decoder_layers) == (256, 20, 9)
    assert (cfg.pixel_decoder_layers, cfg.pixel_decoder_heads, cfg.pixel_decoder_points) == (6, 8, 4)
    assert cfg.pixel_decoder_ffn_dim == 1024 and cfg.video_decoder_layers == 3
    assert cfg.use_adapter and cfg.bidirectional and cfg.ensemble and cfg.trajectory


def test_overrides_and_file(tmp_path):
    cfg = SSAConfig.from_preset("ssa-tiny", use_adapter=False)
    assert not cfg.use_adapter
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    assert SSAConfig.from_json(path) == cfg


@pytest.mark.parametrize("name", ["ssa-huge", "", "SSA-TINY", None, 3])
def test_unknown_preset(name):
    with pytest.raises(ValueError, match="unknown SSA preset"):
        SSAConfig.from_preset(name)


def test_unknown_override_and_field():
    with pytest.raises(TypeError, match="no field"):
        SSAConfig.from_preset("ssa-tiny", num_querys=3)
    with pytest.raises(ValueError, match="unknown SSAConfig field"):
        SSAConfig.from_dict({"hidden_dim": 256, "bogus": 1})


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("hidden_dim", 0, "hidden_dim"),
        ("num_queries", -1, "num_queries"),
        ("hidden_dim", 250, "divisible"),
        ("temporal_kernel", 4, "odd"),
        ("dropout", 1.5, "dropout"),
        ("num_heads", True, "num_heads"),
    ],
)
def test_invalid_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        SSAConfig(**{field: value})


def test_invalid_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SSAConfig.from_json(path)
