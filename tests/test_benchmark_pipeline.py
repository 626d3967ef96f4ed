"""benchmarks/pipeline.py runs end to end on a tiny model and reports every stage (a smoke test: the
figures themselves are measured, never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssa.profiling import STAGES

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pipeline.py"


def _run(tmp_path: Path, *args: str) -> dict:
    import av

    try:
        av.codec.Codec("libx264", "w")
    except Exception:
        pytest.skip("the benchmark writes its input with libx264, which this PyAV lacks")
    out = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--preset", "ssa-tiny", "--height", "96", "--repeats", "1",
           "--chunk-size", "4", "--json", str(out), "--markdown", str(tmp_path / "report.md"), *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=300)
    return json.loads(out.read_text())


def test_stage_report(tmp_path):
    report = _run(tmp_path, "--frames", "6", "--expressions", "1", "2")
    assert set(report["runs"]) == {"1", "2"}
    for run in report["runs"].values():
        assert run["frames"] == 6
        assert set(run["stages"]) == set(STAGES)
        assert all(run["stages"][s] > 0 for s in STAGES), run["stages"]
        assert run["wall"] >= sum(run["stages"][s] for s in STAGES if s not in ("decode", "preprocess"))
        assert run["peak_bytes"] > 0
    assert report["clip_alone"] > 0
    md = (tmp_path / "report.md").read_text()
    assert "end to end" in md and "clip_visual" in md


def test_memory_sweep_in_fresh_processes(tmp_path):
    report = _run(tmp_path, "--sweep-frames", "3", "7", "--stream", "--expressions", "1")
    assert [r["frames"] for r in report["sweep"]] == [3, 7]
    assert all(r["peak_bytes"] > 0 and len(r["rss_quarters"]) == 3 for r in report["sweep"])
