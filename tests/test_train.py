"""finetune(): frozen CLIP stays bit-identical, exact resume, DDP (gloo, 2 processes) equals one process,
atomic checkpoints, clear errors, and the ``ssa train`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssa.cli import main
from ssa.config import SSAConfig
from ssa.data.synthetic import write_split
from ssa.train import TrainConfig, finetune, latest_checkpoint
from ssa.train.data import batch_keys, flip_expression
from ssa.train.finetune import lr_factor

FAST = {"num_frames": 4, "scales": [64], "log_every": 1, "warmup_iters": 1, "hflip": True,
        "loss": {"num_points": 256}}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train") / "split"
    return write_split(root, num_videos=4, seed=11, num_frames=6, height=64, width=64, progress=False)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_frozen_clip_is_bit_identical_and_the_rest_moves(data, tmp_path):
    torch.manual_seed(0)
    from ssa import SSAConfig
    from ssa.modeling.model import SSAModel

    model = SSAModel(SSAConfig.from_preset("ssa-tiny"))
    before = _state(model)
    trained = finetune(model, data, output_dir=tmp_path / "run", iterations=3, batch_size=2, progress=False,
                       **FAST)
    after = _state(trained)
    clip = [k for k in before if k.startswith("backbone.")]
    rest = [k for k in before if not k.startswith("backbone.") and before[k].is_floating_point()]
    assert clip and rest
    assert all(torch.equal(before[k], after[k]) for k in clip)
    assert sum(not torch.equal(before[k], after[k]) for k in rest) > len(rest) // 2
    assert not trained.training and trained.backbone.clip.training is False
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert latest_checkpoint(tmp_path / "run").name == "step-0000003"


@pytest.mark.parametrize("unfreeze", [True, "visual"])
def test_unfrozen_clip_trains(data, tmp_path, unfreeze):
    model = finetune("ssa-tiny", data, output_dir=tmp_path / "u", iterations=2, batch_size=2, progress=False,
                     unfreeze_clip=unfreeze, **FAST)
    torch.manual_seed(FAST.get("seed", 0))
    from ssa import SSAConfig
    from ssa.modeling.model import SSAModel

    fresh = SSAModel(SSAConfig.from_preset("ssa-tiny"))
    trained = model.state_dict()
    moved = {k for k, v in fresh.state_dict().items()
             if k.startswith("backbone.") and v.is_floating_point() and not torch.equal(v, trained[k])}
    visual = {k for k in moved if k.startswith("backbone.clip.visual.")}
    assert visual  # the visual tower's weights changed
    if unfreeze == "visual":  # ... and the text tower's did not
        assert moved == visual
    else:
        assert moved - visual


def test_unfreeze_clip_is_validated(data, tmp_path):
    with pytest.raises(ValueError, match="unfreeze_clip"):
        finetune("ssa-tiny", data, output_dir=tmp_path / "v", iterations=1, batch_size=2, progress=False,
                 unfreeze_clip="text", **FAST)


def test_resume_equals_an_uninterrupted_run(data, tmp_path):
    opts = dict(batch_size=2, progress=False, save_every=2, lr_drops=[], **FAST)
    straight = finetune("ssa-tiny", data, output_dir=tmp_path / "a", iterations=4, **opts)
    finetune("ssa-tiny", data, output_dir=tmp_path / "b", iterations=2, **opts)  # "killed" after step 2
    resumed = finetune("ssa-tiny", data, output_dir=tmp_path / "b", iterations=4, resume=True,
                       allow_changes=["iterations"], **opts)  # extending the run
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_checkpoints_are_atomic(data, tmp_path, monkeypatch):
    out = tmp_path / "c"
    finetune("ssa-tiny", data, output_dir=out, iterations=1, batch_size=2, progress=False, **FAST)
    good = latest_checkpoint(out)
    # a write killed half-way leaves only a hidden temporary directory, which is never picked up
    (out / "checkpoints" / ".step-0000009.tmp-abc").mkdir()
    assert latest_checkpoint(out) == good

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        finetune("ssa-tiny", data, output_dir=out, iterations=2, batch_size=2, progress=False, resume=True,
                 allow_changes=["iterations"], **FAST)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == [".step-0000009.tmp-abc", "step-0000001"]


def test_errors(data, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    with pytest.raises(FileExistsError, match="resume"):
        finetune("ssa-tiny", data, output_dir=tmp_path / "full", iterations=1, batch_size=2, progress=False)
    assert (tmp_path / "full" / "mine.txt").read_text() == "x"
    with pytest.raises(ValueError, match="divisible"):
        finetune("ssa-tiny", data, output_dir=tmp_path / "x", iterations=1, batch_size=3, grad_accum=2,
                 progress=False)
    with pytest.raises(TypeError, match="learning_rate"):
        finetune("ssa-tiny", data, output_dir=tmp_path / "x", learning_rate=1.0)
    with pytest.raises(FileNotFoundError):
        finetune("ssa-tiny", tmp_path / "nothing", output_dir=tmp_path / "x", iterations=1, batch_size=2)
    with pytest.raises(ValueError, match="lr"):
        finetune("ssa-tiny", data, output_dir=tmp_path / "x", lr=-1.0)
    with pytest.raises(ValueError, match="unknown TrainConfig"):
        TrainConfig.from_dict({"iterationz": 3})
    with pytest.raises(ValueError, match="fp16"):
        finetune("ssa-tiny", data, output_dir=tmp_path / "x", iterations=1, batch_size=2, precision="fp16",
                 device="cpu", progress=False)
    assert not (tmp_path / "x").exists()


def test_schedule_and_flip():
    cfg = TrainConfig(iterations=100, warmup_iters=10, lr_drops=[0.5, 0.9], lr_gamma=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.01)
    assert lr_factor(10, cfg) == 1.0 and lr_factor(49, cfg) == 1.0
    assert lr_factor(50, cfg) == pytest.approx(0.1) and lr_factor(95, cfg) == pytest.approx(0.01)
    assert flip_expression("the cat moving left, then Right") == "the cat moving right, then Left"
    assert flip_expression("the leftmost bird") == "the rightmost bird"
    assert flip_expression("the leftover cake") == "the leftover cake"


def test_batches_do_not_depend_on_the_number_of_ranks():
    one = batch_keys(10, 4, rank=0, world_size=1, seed=3)
    two = [batch_keys(10, 2, rank=r, world_size=2, seed=3) for r in range(2)]
    for _ in range(5):  # crosses an epoch boundary (2 global batches per epoch)
        assert sorted(next(one)) == sorted(next(two[0]) + next(two[1]))
    resumed = batch_keys(10, 4, rank=0, world_size=1, seed=3, start_batch=3)
    fresh = batch_keys(10, 4, rank=0, world_size=1, seed=3)
    for _ in range(3):
        next(fresh)
    assert next(resumed) == next(fresh)


_DDP_SCRIPT = """
import sys, torch
from ssa.train import finetune
import json
opts = json.loads(sys.argv[3])
finetune(sys.argv[4], sys.argv[1], output_dir=sys.argv[2], progress=False, **opts)
"""


def test_ddp_two_processes_equal_one(data, tmp_path):
    # Without dropout (the official network's 0.1 in the adapters, the fusion and the text resizer draws
    # from each process's own generator), two ranks must give exactly one process's update.
    from ssa.modeling.model import SSAModel

    start = tmp_path / "start"
    torch.manual_seed(0)
    SSAModel(SSAConfig.from_preset("ssa-tiny", adapter_dropout=0.0, fusion_dropout=0.0, text_dropout=0.0)
             ).save_pretrained(start, weights="full")
    opts = dict(iterations=3, batch_size=2, **FAST)
    single = finetune(str(start), data, output_dir=tmp_path / "single", **opts, progress=False)
    script = tmp_path / "run.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(data), str(tmp_path / "ddp"), json.dumps(opts), str(start)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = SSAModel.from_pretrained(tmp_path / "ddp" / "model")
    a, b = single.state_dict(), ddp.state_dict()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-5, worst  # measured < 1e-6; per-pair point seeds make it exact up to fp order
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]  # rank 0 alone writes the log


def test_cli_train(data, tmp_path):
    cfg = {"model": "ssa-tiny", "train_data": str(data), "output_dir": str(tmp_path / "cli"), "iterations": 1,
           "batch_size": 2, **FAST}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    assert (tmp_path / "cli" / "model" / "config.json").is_file()
    assert main(["train", "--config", str(path), "--no-progress"]) == 2  # output exists, no --resume
    path.write_text(json.dumps({**cfg, "iterationz": 1}))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "cli2")]) == 2


def test_periodic_evaluation_on_a_validation_split(data, tmp_path):
    out = tmp_path / "v"
    finetune("ssa-tiny", data, output_dir=out, iterations=2, batch_size=2, progress=False, val_data=data,
             eval_every=1, **FAST)
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()
             if "eval" in json.loads(line)]
    assert [e["step"] for e in evals] == [1, 2]
    for e in evals:
        assert 0.0 <= e["eval"]["J&F"] <= 1.0 and e["eval"]["expressions"] > 0
    summary = json.loads((out / "eval" / "step-0000002" / "summary.json").read_text())
    assert summary["J&F"] == evals[-1]["eval"]["J&F"]


def test_optimiser_groups_follow_the_official_weight_decay_rule():
    # WEIGHT_DECAY_NORM 0 and WEIGHT_DECAY_EMBED 0; biases, layer scales and level_embed keep the decay
    from ssa.modeling.model import SSAModel
    from ssa.train.finetune import _param_groups

    model = SSAModel(SSAConfig.from_preset("ssa-tiny"))
    cfg = TrainConfig(lr=1e-4, adapter_lr_mult=0.1, weight_decay=0.05)
    groups = _param_groups(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay
    assert "frame_decoder.query_pos.weight" in no_decay and "frame_decoder.decoder_norm.weight" in no_decay
    assert "frame_decoder.decoder_norm.bias" in no_decay
    assert "pixel_decoder.level_embed" in decay and "frame_decoder.class_head.bias" in decay
    assert any(".gamma_l" in n for n in decay)
    adapter_lrs = {g["lr"] for g in groups for p in g["params"] if names[id(p)].startswith("adapters.")}
    assert adapter_lrs == {1e-5}


def test_a_preset_without_clip_weights_warns(tmp_path):
    """Issue 23: `ssa train --model ssa-tiny` trained a random frozen CLIP without a word."""
    import warnings

    with pytest.warns(UserWarning, match="no pretrained CLIP weights.*pretrain_text_tower"):
        with pytest.raises(FileNotFoundError):  # raised once the model is built
            finetune("ssa-tiny", tmp_path / "nothing", output_dir=tmp_path / "x", iterations=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FileNotFoundError):
            finetune("ssa-tiny", tmp_path / "nothing", output_dir=tmp_path / "x", iterations=1,
                     unfreeze_clip=True)  # both towers train: nothing random stays frozen
    assert not [w for w in caught if "pretrained CLIP" in str(w.message)]


def test_cli_train_warns_in_one_line_and_logs_no_temporary_path(data, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    cfg = {"model": "ssa-tiny", "train_data": str(data), "output_dir": str(tmp_path / "run"), "iterations": 1,
           "batch_size": 2, **FAST}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "pretrained CLIP" in r.getMessage()]
    assert len(warned) == 1
    assert not [r.getMessage() for r in caplog.records if ".tmp-" in r.getMessage()]
    assert any("saved checkpoint" in r.getMessage() and "step-0000001" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    assert main(["train", "--config", str(path), "--no-progress"]) == 2  # the message names the flag
    assert "--resume" in caplog.text and "resume=True" not in caplog.text


@pytest.mark.parametrize("values,field", [
    ({"hflip": "false"}, "hflip"),  # a string for a bool was taken as True
    ({"lr": "x"}, "lr"),  # failed with a bare "'>' not supported" TypeError
    ({"scales": ["64"]}, "scales"),
    ({"iterations": 10.0}, "iterations"),
    ({"unfreeze_clip": 1}, "unfreeze_clip"),
    ({"weight_decay": float("nan")}, "weight_decay"),
    ({"loss": {"deep_supervision": "false"}}, "deep_supervision"),
    ({"loss": {"sim_weight": True}}, "sim_weight"),
])
def test_train_config_fields_are_type_checked(values, field):
    with pytest.raises((TypeError, ValueError), match=rf"(TrainConfig|LossConfig)\.{field}\b"):
        TrainConfig.from_dict(values)
    with pytest.raises((TypeError, ValueError), match=rf"(TrainConfig|LossConfig)\.{field}\b"):
        TrainConfig(**{k: v for k, v in values.items()})


def test_cli_train_names_a_mistyped_field_before_any_work(data, tmp_path, caplog):
    cfg = {"model": "ssa-tiny", "train_data": str(data), "output_dir": str(tmp_path / "cli"), "iterations": 1,
           "batch_size": 2, **FAST, "hflip": "false"}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 2
    assert "TrainConfig.hflip must be bool, got str 'false'" in caplog.text
    assert not (tmp_path / "cli").exists()
