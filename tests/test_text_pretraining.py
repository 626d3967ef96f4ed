"""pretrain_text_tower(): it separates expressions that differ in one word, changes the text tower only,
leaves requires_grad as it was, is deterministic, and rejects bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssa import SSAConfig
from ssa.modeling.model import SSAModel
from ssa.train.text_pretraining import pretrain_text_tower

EXPRESSIONS = [f"the {c} {s} moving {d}" for c in ("red", "blue") for s in ("square", "circle")
               for d in ("left", "right")]
PAIRS = [("the red square moving left", "the red circle moving left"),
         ("the red square moving left", "the red square moving right"),
         ("the blue circle moving right", "the blue circle moving left")]


def _model() -> SSAModel:
    torch.manual_seed(0)
    return SSAModel(SSAConfig.from_preset("ssa-tiny"))


def _pair_cosine(model: SSAModel) -> float:
    with torch.no_grad():
        a = model.encode_text([p[0] for p in PAIRS]).sentence
        b = model.encode_text([p[1] for p in PAIRS]).sentence
    return float(F.cosine_similarity(a, b, dim=-1).mean())


def test_separates_one_word_pairs_and_touches_the_text_tower_only():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cos_before = _pair_cosine(model)
    losses = pretrain_text_tower(model, EXPRESSIONS * 3, steps=60, batch_size=8, progress=False)
    cos_after = _pair_cosine(model)
    assert cos_after < cos_before - 0.2, (cos_before, cos_after)
    assert losses["bow"] < 0.1 and losses["token"] < 0.1
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    text = {"backbone.clip.token_embedding.weight", "backbone.clip.positional_embedding",
            "backbone.clip.text_projection", "backbone.clip.ln_final.weight"}
    assert text <= changed
    assert all(k.startswith("backbone.clip.") and not k.startswith("backbone.clip.visual.") for k in changed)
    assert not any(p.requires_grad for p in model.backbone.parameters())  # still frozen


def test_is_deterministic_and_keeps_a_trainable_tower_trainable():
    a, b = _model(), _model()
    b.backbone.unfreeze()
    pretrain_text_tower(a, EXPRESSIONS, steps=3, batch_size=4, progress=False, seed=1)
    pretrain_text_tower(b, EXPRESSIONS, steps=3, batch_size=4, progress=False, seed=1)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(p.requires_grad for p in b.backbone.parameters())


@pytest.mark.parametrize("expressions,options,match", [
    (["a cat", "a cat"], {}, "2 distinct"),
    (["a cat", ""], {}, "expression"),
    (EXPRESSIONS, {"steps": 0}, "steps"),
    (EXPRESSIONS, {"batch_size": 1}, "batch_size"),
])
def test_bad_input(expressions, options, match):
    with pytest.raises(ValueError, match=match):
        pretrain_text_tower(_model(), expressions, progress=False, **options)
