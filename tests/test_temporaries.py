"""Temporaries of killed writes (ssa.io.temp_prefix / remove_stale_temporaries): a later writer of the same
target removes those whose writer is gone, and logs it; nothing else is touched."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssa.io import atomic_output_dir, atomic_write_text, is_leftover, remove_stale_temporaries, temp_prefix
from ssa.io import files as ssa_io


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _make(folder: Path, name: str, *, directory: bool = True, size: int = 1000) -> Path:
    path = folder / name
    if directory:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"\0" * size)
    else:
        path.write_bytes(b"\0" * size)
    return path


def test_temp_names_carry_the_writer(tmp_path):
    prefix = temp_prefix("step-0000004")
    assert prefix.startswith(f".step-0000004.tmp-p{os.getpid()}h") and prefix.endswith("_")
    assert temp_prefix("model", "ssa-tmp").startswith(".model.ssa-tmp-p")
    assert is_leftover(prefix + "abcd1234") and is_leftover(temp_prefix("x.json") + "abcd1234.tmp")
    with pytest.raises(ValueError, match="kind"):
        temp_prefix("x", "bak")


def test_only_stale_temporaries_of_the_target_are_removed(tmp_path, dead_pid, caplog):
    host = ssa_io._host_tag()
    other_host = "000000" if host != "000000" else "111111"
    stale = _make(tmp_path, f".step-0000004.tmp-p{dead_pid}h{host}_ab12cd34", size=48_000)
    stale_file = _make(tmp_path, f".x.json.tmp-p{dead_pid}h{host}_ab12cd34.tmp", directory=False)
    keep = [
        _make(tmp_path, f".step-0000004.tmp-p{os.getpid()}h{host}_live1234"),  # its writer runs
        _make(tmp_path, f".step-0000004.tmp-p{dead_pid}h{other_host}_far12345"),  # another machine's
        _make(tmp_path, ".step-0000004.tmp-k2j4h5l6"),  # an older name: the writer is unknown
        _make(tmp_path, "step-0000004"),  # a result
        _make(tmp_path, f".x.old-p{dead_pid}h{host}_ab12cd34"),  # the only copy of x (x is missing)
    ]
    with caplog.at_level(logging.INFO, logger="ssa"):
        assert remove_stale_temporaries(tmp_path, "step-0000004") == [stale]
        assert not stale.exists() and stale_file.exists()  # another target's: kept
        assert f"removed {stale} (0.0 MB)" in caplog.text and f"(pid {dead_pid})" in caplog.text
        assert remove_stale_temporaries(tmp_path) == [stale_file]  # any target
    assert all(p.exists() for p in keep)
    assert "interrupted before the new one was in place" in caplog.text
    (tmp_path / "x").mkdir()  # once x is back, its old backup goes
    assert remove_stale_temporaries(tmp_path) == [keep[-1]]
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_writers_remove_their_own_stale_temporaries(tmp_path, dead_pid, caplog):
    host = ssa_io._host_tag()
    text = _make(tmp_path, f".summary.json.tmp-p{dead_pid}h{host}_ab12cd34.tmp", directory=False)
    folder = _make(tmp_path, f".video1.tmp-p{dead_pid}h{host}_ab12cd34")
    with caplog.at_level(logging.INFO, logger="ssa"):
        atomic_write_text(tmp_path / "summary.json", "{}")
        with atomic_output_dir(tmp_path / "video1") as tmp:
            (tmp / "0.png").write_bytes(b"x")
    assert not text.exists() and not folder.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "video1"]
    assert caplog.text.count("a temporary left by an ssa process that is gone") == 2
