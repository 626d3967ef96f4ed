"""benchmarks/train_memory.py's CPU estimate on a tiny model: its segment measurement sees every
checkpointed segment, and checkpointing lowers the saved bytes (the figures themselves are measured,
never asserted)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_memory  # noqa: E402


def test_saved_bytes_sees_every_checkpointed_segment():
    model = train_memory.build("ssa-tiny", 64, 128)
    counter = train_memory.SavedBytes(model, train_memory.segments_of(model))
    frames = torch.randn(1, 2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with counter:
        train_memory.surrogate_loss(model(frames, ["a square"], with_frames=True))
    pd, fd = model.pixel_decoder, model.frame_decoder
    assert len(counter.segment_bytes["trunk"]) == 4  # adapter 0, then CLIP stage i + adapter i
    assert len(counter.segment_bytes["decoders"]) == len(pd.layers) + fd.num_layers
    assert all(b > 0 for bs in counter.segment_bytes.values() for b in bs)
    assert sum(counter.segment_bytes["trunk"]) < counter.total
    assert "_layer" not in vars(fd) and "_stage_and_adapter" not in vars(model)  # unwrapped on exit


def test_cpu_estimate_falls_with_checkpointing():
    args = argparse.Namespace(preset="ssa-tiny", max_size=128, measure_frames=[1, 2], frames=8,
                              modes=["off", "trunk", "all"], precision="fp32")
    rows = train_memory.measure_cpu(args, 64)
    saved = {m: rows["modes"][m]["saved_bytes"] for m in args.modes}
    assert saved["off"] > saved["trunk"] > saved["all"] > 0
    assert rows["modes"]["off"]["recompute_bytes"] == 0
    assert rows["modes"]["all"]["recompute_bytes"] > 0
    static = sum(rows["static_bytes"].values())
    for m in args.modes:
        r = rows["modes"][m]
        assert r["estimate_bytes"] == static + r["saved_bytes"] + r["recompute_bytes"]
