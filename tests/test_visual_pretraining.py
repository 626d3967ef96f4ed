"""pretrain_visual_tower(): it learns to pick the referred object of a frame, changes the visual trunk
only, leaves requires_grad and train/eval as they were, is deterministic, and rejects bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssa import SSAConfig
from ssa.data.synthetic import write_split
from ssa.modeling.model import SSAModel
from ssa.train.visual_pretraining import pretrain_visual_tower, region_embeddings


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("visual") / "split"
    return write_split(root, num_videos=6, seed=5, num_frames=6, height=64, width=64, progress=False)


def _model() -> SSAModel:
    torch.manual_seed(0)
    return SSAModel(SSAConfig.from_preset("ssa-tiny", image_size=64, max_size=64))


def test_learns_to_refer_and_changes_the_visual_trunk_only(data):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = pretrain_visual_tower(model, data, steps=1, batch_size=16, progress=False)
    model = _model()
    last = pretrain_visual_tower(model, data, steps=40, batch_size=16, lr=2e-3, progress=False)
    assert last["loss"] < 0.8 * first["loss"], (first, last)
    assert last["refer_loss"] < first["refer_loss"]
    after = model.state_dict()
    trunk = {k for k in after if k.startswith("backbone.clip.visual.trunk.")}
    assert any(not torch.equal(before[k], after[k]) for k in trunk)
    unchanged = [k for k in after if k not in trunk and not torch.equal(before[k], after[k])]
    assert unchanged == []
    # frozen as before: no gradient, eval mode
    assert not any(p.requires_grad for p in model.backbone.clip.parameters())
    assert not model.backbone.clip.visual.trunk.training


def test_keeps_an_unfrozen_trunk_trainable_and_is_deterministic(data):
    a, b = _model(), _model()
    for m in (a, b):
        m.backbone.unfreeze(text=False)
        m.train()
        pretrain_visual_tower(m, data, steps=3, batch_size=8, progress=False, seed=3)
    assert all(p.requires_grad for p in a.backbone.clip.visual.parameters())
    assert a.backbone.clip.visual.trunk.training
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


def test_region_embeddings_average_inside_the_mask():
    stages = [torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4),
              torch.arange(4.0).reshape(1, 1, 2, 2), torch.full((1, 2, 1, 1), 5.0)]
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, :16, 16:] = True  # the top-right quarter: stage-3 cell (0, 1)
    out = region_embeddings(stages, mask)
    assert out.shape == (1, 3)
    assert out.tolist() == [[1.0, 5.0, 5.0]]


def test_rejects_bad_input(data, tmp_path):
    model = _model()
    with pytest.raises(ValueError, match="steps"):
        pretrain_visual_tower(model, data, steps=0, progress=False)
    with pytest.raises(FileNotFoundError):
        pretrain_visual_tower(model, tmp_path / "missing", steps=1, progress=False)
    # a split whose expressions all refer to two objects has no single-object region to learn from
    meta = json.loads((data / "meta_expressions.json").read_text())
    for video in meta["videos"].values():
        ids = list(video["objects"])[:2]
        for exp in video["expressions"].values():
            exp["obj_id"] = [int(i) for i in ids]
            exp["anno_id"] = [video["objects"][i] for i in ids]
    multi = tmp_path / "multi"
    multi.mkdir()
    (multi / "meta_expressions.json").write_text(json.dumps(meta))
    for name in ("JPEGImages", "mask_dict.json"):
        (multi / name).symlink_to(data / name)
    with pytest.raises(ValueError, match="single referred object"):
        pretrain_visual_tower(model, multi, steps=1, batch_size=4, progress=False)
