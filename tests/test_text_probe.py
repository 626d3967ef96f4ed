"""experiments/text_probe.py: minimal pairs and the probe's figures."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from conftest import build

_SPEC = importlib.util.spec_from_file_location(
    "text_probe", Path(__file__).resolve().parent.parent / "experiments" / "text_probe.py")
text_probe = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(text_probe)


def test_minimal_pairs_differ_in_one_factor_only():
    pairs = text_probe.minimal_pairs()
    # 4 colours, 3 shapes, 8 motions: C(4,2)*3*8, C(3,2)*4*8, C(8,2)*4*3 unordered pairs
    assert {k: len(v) for k, v in pairs.items()} == {"colour": 144, "shape": 96, "motion": 336}
    for factor, members in pairs.items():
        for a, b in members:
            wa, wb = a.split(), b.split()
            assert a != b
            # colour and shape are one word each, at the same place: exactly one word differs
            if factor != "motion":
                assert len(wa) == len(wb) and sum(x != y for x, y in zip(wa, wb, strict=True)) == 1
            else:
                assert wa[:3] == wb[:3]


def test_probe_sees_a_factor_only_when_the_text_side_does():
    model = build("ssa-tiny", seed=0)
    result = text_probe.probe(model)
    assert set(result) == {"colour", "shape", "motion"}
    assert all(-1.0 <= r["sentence_cos"] <= 1.0 and math.isfinite(r["sentence_cos"]) for r in result.values())
    # Make the text side blind to the shape words: their token embeddings made identical to "square"'s
    ids = [int(model.backbone.tokenize([w])[0][0, 1]) for w in ("square", "circle", "triangle")]
    with torch.no_grad():
        emb = model.backbone.clip.token_embedding.weight
        emb[ids[1]] = emb[ids[0]]
        emb[ids[2]] = emb[ids[0]]
    blind = text_probe.probe(model)
    assert blind["shape"]["sentence_cos"] > 0.9999
    assert blind["colour"]["sentence_cos"] < 0.9999


def test_the_demo_model_text_tower_tells_every_word_group_apart():
    """The shipped demo model's F_s separates colour, shape and motion (its first version, whose text
    tower was trained with the segmentation losses, had shape 1.000 and motion 0.999)."""
    from ssa.modeling.model import SSAModel

    result = text_probe.probe(SSAModel.from_pretrained().eval())
    assert all(r["sentence_cos"] < 0.85 for r in result.values()), result
