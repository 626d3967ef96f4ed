"""Resumed training never gives a silently wrong run: the config must be the checkpoint's, a damaged
newest checkpoint falls back to an older intact one, ``log.jsonl`` is cut back to the checkpoint's step,
a full disk ends in one clear error, and the temporaries of killed writes are removed by the next run."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ssa.cli import main
from ssa.data.synthetic import write_split
from ssa.train import TrainConfig, finetune

FAST = {"num_frames": 4, "scales": [64], "log_every": 1, "warmup_iters": 1, "hflip": True,
        "loss": {"num_points": 256}}
OPTS = {"batch_size": 2, "save_every": 2, "lr_drops": [], **FAST}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "split"
    return write_split(root, num_videos=4, seed=11, num_frames=6, height=64, width=64, progress=False)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A finished 3-step run (checkpoints step-2 and step-3, log steps 1-3) and its final weights; copy
    the folder before changing it."""
    out = tmp_path_factory.mktemp("run") / "out"
    model = finetune("ssa-tiny", data, output_dir=out, iterations=3, progress=False, **OPTS)
    return out, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _copy(run: tuple[Path, dict], dst: Path) -> Path:
    shutil.copytree(run[0], dst)
    return dst


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the config of a resumed run ---------------------------------------------------------------------------
def test_resume_refuses_a_changed_config_naming_the_fields(run, data, tmp_path):
    out = _copy(run, tmp_path / "out")
    before = {name: (out / name).read_bytes() for name in ("log.jsonl", "train_config.json")}
    # was: accepted silently, the checkpoint's lr kept by the optimiser while train_config.json said 1e-3
    with pytest.raises(ValueError, match="differs from the checkpoint's in") as info:
        finetune("ssa-tiny", data, output_dir=out, iterations=3, resume=True, progress=False,
                 **{**OPTS, "lr": 1e-3, "batch_size": 4, "seed": 1, "num_frames": 3})
    message = str(info.value)
    for field in ("lr (5e-05 -> 0.001)", "batch_size (2 -> 4)", "seed (0 -> 1)", "num_frames (4 -> 3)"):
        assert field in message
    assert "cannot change in a resumed run" in message and "step-0000003" in message
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing written

    with pytest.raises(ValueError, match=r"iterations \(3 -> 5\).*allow_changes=\['iterations'\]"):
        finetune("ssa-tiny", data, output_dir=out, iterations=5, resume=True, progress=False, **OPTS)
    with pytest.raises(ValueError, match="'lr' cannot change in a resumed run"):
        finetune("ssa-tiny", data, output_dir=out, resume=True, allow_changes=["lr"], progress=False)
    with pytest.raises(ValueError, match=r"loss\.num_points \(256 -> 12544\)"):  # a config is compared whole
        finetune("ssa-tiny", data, output_dir=out, resume=True, progress=False,
                 config=TrainConfig(**{**OPTS, "iterations": 3, "loss": {}}))


def test_resume_without_a_config_takes_the_checkpoints(run, data, tmp_path, caplog):
    out = _copy(run, tmp_path / "out")
    with caplog.at_level(logging.INFO, logger="ssa"):
        model = finetune("ssa-tiny", data, output_dir=out, resume=True, progress=False)  # nothing to do
    assert "resumed from" in caplog.text and "step-0000003" in caplog.text
    assert json.loads((out / "train_config.json").read_text()) == json.loads(
        (out / "checkpoints" / "step-0000003" / "train_config.json").read_text())
    assert _same_weights({k: v for k, v in model.state_dict().items()}, run[1])


def test_resume_extends_a_run_with_an_allowed_change(run, data, tmp_path):
    out = _copy(run, tmp_path / "out")
    finetune("ssa-tiny", data, output_dir=out, iterations=4, resume=True, allow_changes=["iterations"],
             progress=False)
    assert _steps(out) == [1, 2, 3, 4]
    assert json.loads((out / "train_config.json").read_text())["iterations"] == 4
    assert json.loads((out / "train_config.json").read_text())["save_every"] == 2  # the checkpoint's


def test_cli_train_resume_compares_the_config(run, data, tmp_path, caplog, capsys):
    out = _copy(run, tmp_path / "out")
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": "ssa-tiny", "train_data": str(data), "output_dir": str(out),
                               "iterations": 3, **OPTS}))
    assert main(["train", "--config", str(cfg), "--resume", "--lr", "0.001", "--no-progress"]) == 2
    assert "lr (5e-05 -> 0.001)" in caplog.text
    assert main(["train", "--config", str(cfg), "--resume", "--iterations", "4", "--no-progress"]) == 2
    assert "--allow-change iterations" in caplog.text
    assert main(["train", "--config", str(cfg), "--resume", "--iterations", "4", "--allow-change",
                 "iterations", "--no-progress"]) == 0
    assert _steps(out) == [1, 2, 3, 4]
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--allow-change" in capsys.readouterr().out


# -- damaged checkpoints -----------------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan_weights(path: Path) -> None:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    state = load_file(path)
    key = next(k for k in state if k.startswith("video_decoder."))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, path, metadata=metadata)


DAMAGE = {
    "truncated weights": (lambda c: _truncate(c / "model" / "model.safetensors"), "corrupt"),
    "no weights": (lambda c: (c / "model" / "model.safetensors").unlink(), "has no model.safetensors"),
    "NaN weights": (lambda c: _nan_weights(c / "model" / "model.safetensors"), "NaN or infinite"),
    "truncated state": (lambda c: _truncate(c / "training_state.pt"), "training_state.pt"),
    "state without its keys": (lambda c: torch.save({"step": 3}, c / "training_state.pt"), "lacks the"),
    "garbage state": (lambda c: (c / "training_state.pt").write_bytes(b"\0" * 100), "training_state.pt"),
    "broken train_config.json": (lambda c: (c / "train_config.json").write_text("{"), "not valid JSON"),
    "mistyped train_config.json": (lambda c: (c / "train_config.json").write_text('{"hflip": "false"}'),
                                   "TrainConfig.hflip"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(run, data, tmp_path, caplog, damage):
    out = _copy(run, tmp_path / "out")
    make, reason = DAMAGE[damage]
    make(out / "checkpoints" / "step-0000003")
    with caplog.at_level(logging.INFO, logger="ssa"):
        model = finetune("ssa-tiny", data, output_dir=out, iterations=3, resume=True, progress=False, **OPTS)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step-0000003" in w and reason in w for w in warnings), warnings
    assert "step-0000002 (step 2)" in caplog.text
    assert _same_weights(model.state_dict(), run[1])  # step 3 trained again: exactly the same
    assert _steps(out) == [1, 2, 3]


def test_no_readable_checkpoint_is_a_clear_error(run, data, tmp_path):
    out = _copy(run, tmp_path / "out")
    DAMAGE["truncated state"][0](out / "checkpoints" / "step-0000003")
    DAMAGE["no weights"][0](out / "checkpoints" / "step-0000002")
    with pytest.raises(ValueError, match="none of its 2 checkpoint") as info:
        finetune("ssa-tiny", data, output_dir=out, iterations=3, resume=True, progress=False, **OPTS)
    assert "step-0000003: " in str(info.value) and "step-0000002: " in str(info.value)


# -- log.jsonl -----------------------------------------------------------------------------------------------
def test_log_is_cut_back_to_the_checkpoint_step(run, data, tmp_path):
    out = _copy(run, tmp_path / "out")
    shutil.rmtree(out / "checkpoints" / "step-0000003")  # killed after logging step 3, before saving it
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # and in the middle of a line
    finetune("ssa-tiny", data, output_dir=out, iterations=3, resume=True, progress=False, **OPTS)
    assert _steps(out) == [1, 2, 3]  # was [1, 2, 3, <the cut line>, 3]


# -- a full disk ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs /dev/full")
def test_full_disk_is_one_clear_error(data, tmp_path, monkeypatch, caplog):
    """The checkpoint's training_state.pt is a link to /dev/full: its writes get the kernel's ENOSPC, as on a
    full disk (where torch.save raises a RuntimeError, to a path and to a Python file alike)."""
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        folder = real_mkdtemp(*args, **kwargs)
        if Path(folder).name.startswith(".step-"):
            os.symlink("/dev/full", Path(folder) / "training_state.pt")
        return folder

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    out = tmp_path / "out"
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"model": "ssa-tiny", "train_data": str(data), "output_dir": str(out),
                               "iterations": 2, **OPTS, "save_every": 1}))
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 2  # was: a RuntimeError traceback
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    message = errors[0].getMessage()
    assert "\n" not in message and "No space left on device" in message and "step-0000001" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == []  # no temporary left behind
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # written through, never replaced


# -- temporaries of killed writes ----------------------------------------------------------------------------
KILLED = textwrap.dedent("""
    import os, sys, torch
    from ssa.train import TrainConfig, finetune
    torch.save = lambda *a, **k: os._exit(17)  # killed while writing the checkpoint
    finetune("ssa-tiny", sys.argv[1], output_dir=sys.argv[2], iterations=1, progress=False,
             **{OPTS!r})
""")


def test_a_rerun_removes_the_temporaries_of_a_killed_checkpoint_write(data, tmp_path, caplog):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", KILLED.replace("{OPTS!r}", repr(OPTS)), str(data), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 17, proc.stderr[-2000:]
    (left,) = (out / "checkpoints").iterdir()
    assert left.name.startswith(".step-0000001.tmp-") and (left / "model" / "model.safetensors").is_file()
    with caplog.at_level(logging.INFO, logger="ssa"):
        finetune("ssa-tiny", data, output_dir=out, iterations=1, resume=True, progress=False, **OPTS)
    assert not left.exists()
    assert f"removed {left}" in caplog.text
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001"]


KILLED_SAVE = textwrap.dedent("""
    import os, sys
    import safetensors.torch
    from conftest import build
    safetensors.torch.save_file = lambda *a, **k: os._exit(17)  # killed while writing the weights
    build("ssa-tiny").save_pretrained(sys.argv[1])
""")


def test_save_pretrained_removes_the_temporaries_of_a_killed_save(tmp_path, caplog):
    from conftest import build

    target = tmp_path / "model"
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{tests.parent}{os.pathsep}{tests}"}
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(target)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 17, proc.stderr[-2000:]
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".model.ssa-tmp-")
    with caplog.at_level(logging.INFO, logger="ssa"):
        build("ssa-tiny").save_pretrained(target)
    assert not left.exists() and f"removed {left}" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
