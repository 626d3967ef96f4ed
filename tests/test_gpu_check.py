"""benchmarks/gpu_check.py: its CPU smoke mode runs every code path of the GPU check (ssa-tiny, a few
small frames, bf16 in place of fp16) and writes the figures' JSON; the figures are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _libx264() -> None:
    import av

    try:
        av.codec.Codec("libx264", "w")
    except Exception:
        pytest.skip("the check writes its input with libx264, which this PyAV lacks")


def test_smoke_run_writes_every_figure(tmp_path):
    _libx264()
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--repeats", "1", "--options", "channels_last",
           "--json", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=300)
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["preset"] == "ssa-tiny" and report["half"] == "bf16"
    assert report["fps_fp32"] > 0 and report["fps_bf16"] > 0
    assert report["fp16_speedup"] == pytest.approx(report["fps_bf16"] / report["fps_fp32"])
    assert 0 <= report["mask_iou_fp16_fp32"] <= 1 and 0 <= report["logit_iou_median"] <= 1
    assert report["logit_std_fp32"] > 0  # the perturbed weights give non-constant mask logits
    assert report["trunk_flops"] > 0 and report["trunk_tflops"] > 0
    assert report["stages_bf16"]["clip_visual"] > 0 and report["stages_bf16"]["pixel_decoder"] > 0
    assert "aten::" in report["profile_bf16"]
    assert set(report["met"]) >= {"fps_fp16", "fp16_speedup", "mask_iou_fp16_fp32"}
    option = report["options"]["channels_last"]
    assert option.get("fps", 0) > 0 or "error" in option
    assert set(report["options"]) == {"channels_last"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the real check runs where CUDA is")
def test_without_cuda_it_asks_for_smoke():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0 and "--smoke" in done.stderr
