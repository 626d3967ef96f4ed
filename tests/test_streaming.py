"""SSAPipeline.stream (frame-by-frame masks, flat memory), the background decoding thread and the stage
timer used by benchmarks/pipeline.py."""

from __future__ import annotations

import platform
import sys
import threading

import numpy as np
import pytest
import torch
from conftest import build

from ssa import SSAPipeline
from ssa.pipeline import FrameMasks
from ssa.preprocessing import preprocess_frames
from ssa.profiling import STAGES, PeakMemory, StageTimer


def two_squares(t: int = 13, h: int = 45, w: int = 70) -> list[np.ndarray]:
    frames = []
    for i in range(t):
        img = np.full((h, w, 3), 30, dtype=np.uint8)
        img[5:20, 2 + 3 * i:17 + 3 * i] = (220, 60, 60)
        img[25:40, 50 - 2 * i:65 - 2 * i] = (60, 60, 220)
        frames.append(img)
    return frames


@pytest.fixture(scope="module")
def model():
    m = build("ssa-tiny", seed=1)
    torch.manual_seed(5)  # a little "training" so that masks and scores are not all alike
    for p in m.parameters():
        if p.requires_grad:
            p.data.add_(0.05 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("budget", [0, 1 << 30])
def test_stream_gives_the_masks_of_a_call(model, budget):
    pipe = SSAPipeline(model, device="cpu", chunk_size=4)
    frames = two_squares()
    exprs = ["the red square", "the blue square moving left"]
    whole = pipe(frames, exprs, threshold=0.0, progress=False)
    streamed = list(pipe.stream(frames, exprs, threshold=0.0, mask_feature_budget=budget, progress=False))
    assert [f.t for f in streamed] == list(range(len(frames)))
    assert all(isinstance(f, FrameMasks) for f in streamed)
    assert any(r.masks.any() for r in whole)
    for e, result in enumerate(whole):
        assert [f.name for f in streamed] == result.frame_names
        assert np.array_equal(streamed[0].object_ids[e], result.object_ids)
        objects = np.stack([f.object_masks[e] for f in streamed], axis=1)  # (K, T, H, W)
        agree = (objects == result.object_masks).mean() if objects.size else 1.0
        assert agree > 0.999  # float summation order differs between the passes
        assert (np.stack([f.masks[e] for f in streamed]) == result.masks).mean() > 0.999
        for t in (0, len(frames) - 1):
            assert np.array_equal(streamed[t].labels(e) > 0, streamed[t].masks[e])


def test_stream_without_budget_reads_the_video_twice_and_keeps_no_mask_features(model, monkeypatch):
    pipe = SSAPipeline(model, device="cpu", chunk_size=4)
    passes = []
    stem = model.backbone.clip.visual.trunk.stem
    handle = stem.register_forward_hook(lambda module, args, out: passes.append(args[0].shape[0]))
    kept = []
    original = SSAPipeline._keep_mask_features

    def keep(state, features, budget):
        original(state, features, budget)
        kept.append(state.mask_features)

    monkeypatch.setattr(SSAPipeline, "_keep_mask_features", staticmethod(keep))
    try:
        stream = pipe.stream(two_squares(), "the red square", progress=False)
        assert passes == []  # lazy: nothing runs before the first frame is asked for
        first = next(stream)
        rest = list(stream)
    finally:
        handle.remove()
    assert first.t == 0 and len(rest) == 12
    assert sum(passes) == 2 * 13  # every frame, twice
    assert kept and all(k is None for k in kept)


def test_errors_on_the_decoding_thread_reach_the_caller(model):
    pipe = SSAPipeline(model, device="cpu", chunk_size=2)
    frames = two_squares(8)
    frames[5] = frames[5].astype(np.float32)  # fails when the thread loads frame 5
    before = threading.active_count()
    with pytest.raises(TypeError, match="uint8"):
        pipe(frames, "a square", progress=False)
    assert threading.active_count() == before  # the thread was joined


def test_leaving_a_stream_early_stops_the_thread(model):
    pipe = SSAPipeline(model, device="cpu", chunk_size=2, prefetch=1)
    before = threading.active_count()
    stream = pipe.stream(two_squares(), "a square", progress=False)
    next(stream)
    stream.close()
    assert threading.active_count() == before


def test_stage_timer_covers_every_stage(model):
    pipe = SSAPipeline(model, device="cpu", chunk_size=4, mask_feature_budget=0)
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with StageTimer(pipe) as timer, PeakMemory("cpu") as memory:
        pipe(two_squares(), ["the red square", "the blue one"], progress=False)
    stages = timer.stages()
    assert list(stages) == list(STAGES)
    for name in STAGES:
        if name != "writing":  # the pipeline writes nothing; benchmarks time their writers
            assert stages[name] > 0, name
    assert timer.totals["frames_wait"] >= 0
    assert pipe.timer is None
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks_before
    assert not {"encode_stem", "run_stage"} & set(vars(model.backbone))  # the timed entry points restored
    assert memory.peak > 10 * 2**20 and memory.samples


def test_chunks_carry_model_size_pixels_not_the_decoded_frames(model):
    """The decoding thread resizes each frame as it is decoded: the queue holds model-size pixels and
    frame metadata, never the full-size frames (prefetch × chunk_size of them at 720p: ~130 MB)."""
    from ssa.pipeline import _Call

    pipe = SSAPipeline(model, device="cpu", chunk_size=4)
    frames = two_squares(9)
    options = {"stride": 1, "fps": None, "start": None, "end": None, "max_frames": None}
    call = _Call("single", 0.5, model.config.image_size, None)
    chunks = list(pipe._chunks(frames, options, call, False, "test"))
    assert [len(c.frames) for c in chunks] == [1, 4, 4]  # the first chunk is one frame batch
    assert all(c.size == (45, 70) for c in chunks)
    assert [f.name for c in chunks for f in c.frames] == [f"{i:05d}" for i in range(9)]
    assert not any(hasattr(f, "image") for c in chunks for f in c.frames)
    torch.testing.assert_close(torch.cat([c.pixels for c in chunks]),
                               preprocess_frames(frames, model.config.image_size, model.config.max_size),
                               rtol=0, atol=0)


def test_free_heap_is_released_after_every_chunk(model, monkeypatch):
    import ssa.pipeline as pipeline_module

    released = []
    monkeypatch.setattr(pipeline_module, "_release_free_heap", lambda: released.append(1))
    pipe = SSAPipeline(model, device="cpu", chunk_size=4)
    list(pipe.stream(two_squares(9), "a square", progress=False))
    assert len(released) == 2 * 3  # both passes, chunks of 1, 4, 4 frames


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_release_free_heap_uses_glibc_malloc_trim():
    from ssa.pipeline import _malloc_trim, _release_free_heap

    assert _malloc_trim() is not None
    assert _malloc_trim()(0) in (0, 1)
    _release_free_heap()
