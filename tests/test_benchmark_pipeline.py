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
    report = _run(tmp_path, "--frames", "6", "--expressions", "1", "2", "--flops")
    assert set(report["runs"]) == {"1", "2"}
    for run in report["runs"].values():
        assert run["frames"] == 6
        assert set(run["stages"]) == set(STAGES)
        assert all(run["stages"][s] > 0 for s in STAGES), run["stages"]
        assert run["wall"] >= sum(run["stages"][s] for s in STAGES if s not in ("decode", "preprocess"))
        assert run["peak_bytes"] > 0
    assert report["clip_alone"] > 0
    one, two = report["runs"]["1"]["flops"], report["runs"]["2"]["flops"]
    # stem and stage 0 run once for every expression; stages 1-3 follow an adapter: once per expression
    assert 0 < one["clip_visual"] < two["clip_visual"] < 2 * one["clip_visual"]
    assert two["pixel_decoder"] == 2 * one["pixel_decoder"] > 0
    md = (tmp_path / "report.md").read_text()
    assert "end to end" in md and "clip_visual" in md and "FLOPs of the whole run" in md
    assert "end to end / floor" in md
    # the headline figures (E = 1)
    assert report["end_to_end_s"] == report["runs"]["1"]["wall"]
    assert report["clip_alone_s"] == report["clip_alone"]
    rate = one["clip_visual"] / report["clip_alone_s"]
    assert report["flop_floor_s"] == pytest.approx(sum(one.values()) / rate)
    assert report["ratio_to_floor"] == pytest.approx(report["end_to_end_s"] / report["flop_floor_s"])
    assert set(report["per_stage"]) == set(STAGES)
    for stage, row in report["per_stage"].items():
        assert row["s"] == report["runs"]["1"]["stages"][stage]
        assert row["gflop"] == pytest.approx(one[stage] / 1e9)
        if one[stage] > 0:
            assert row["gflop_per_s"] == pytest.approx(row["gflop"] / row["s"])
    extra = report["per_expression"]["2"]
    assert extra["extra_gflop"] == pytest.approx((sum(two.values()) - sum(one.values())) / 1e9)
    assert extra["ratio_to_floor"] == pytest.approx(extra["extra_s"] / (extra["extra_gflop"] * 1e9 / rate))


def test_paired_ratio_to_floor():
    """Each repeat's end to end against its own CLIP pass; the median of those is the paired ratio."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from pipeline import summarize
    finally:
        sys.path.remove(str(SCRIPT.parent))
    flops = {s: 0.0 for s in STAGES}
    flops.update(clip_visual=100e9, pixel_decoder=20e9)  # the run: 1.2 x the CLIP pass's FLOPs
    run = {"wall": 15.0, "stages": {s: 1.0 for s in STAGES}, "flops": flops,
           "wall_per_repeat": [12.0, 15.0, 30.0]}
    report = {"runs": {1: run}, "clip_alone": 10.0, "clip_alone_per_repeat": [10.0, 10.0, 20.0]}
    out = summarize(report)
    assert out["ratio_to_floor"] == pytest.approx(15.0 / 12.0)  # medians against medians
    assert out["ratio_to_floor_per_repeat"] == pytest.approx([1.0, 1.25, 1.25])
    assert out["ratio_to_floor_paired"] == pytest.approx(1.25)


def test_ratio_to_floor_in_run():
    """Each repeat against the CLIP stages' rate inside the same run, for the first E and for each further
    expression (its extra seconds against its extra FLOPs at the E=2 run's own CLIP rate)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from pipeline import summarize
    finally:
        sys.path.remove(str(SCRIPT.parent))
    one = {s: 0.0 for s in STAGES}
    one.update(clip_visual=100e9, pixel_decoder=20e9)  # 1.2 x the CLIP's FLOPs
    two = {s: 0.0 for s in STAGES}
    two.update(clip_visual=180e9, pixel_decoder=40e9)  # the second expression: +80 + 20 GFLOP
    runs = {
        1: {"wall": 15.0, "stages": {s: 1.0 for s in STAGES} | {"clip_visual": 10.0}, "flops": one,
            "wall_per_repeat": [12.0, 15.0, 18.0], "clip_in_run_per_repeat": [10.0, 10.0, 12.0]},
        2: {"wall": 30.0, "stages": {s: 1.0 for s in STAGES} | {"clip_visual": 18.0}, "flops": two,
            "wall_per_repeat": [24.0, 30.0, 33.0], "clip_in_run_per_repeat": [18.0, 18.0, 27.0]},
    }
    out = summarize({"runs": runs})
    # floors 12, 12, 14.4 s (120 GFLOP at 10, 10, 8.33 GFLOP/s)
    assert out["ratio_to_floor_in_run_per_repeat"] == pytest.approx([1.0, 1.25, 1.25])
    assert out["ratio_to_floor_in_run"] == pytest.approx(1.25)
    assert out["clip_in_run_gflop_per_s"] == pytest.approx(10.0)
    extra = out["per_expression"][2]
    # each run's seconds at its own CLIP rate: E=1 120, 150, 150 GFLOP; E=2 240, 300, 220 GFLOP;
    # the differences against the +100 GFLOP (a machine slower in the third E=2 run cancels)
    assert extra["ratio_to_floor_in_run_per_repeat"] == pytest.approx([1.2, 1.5, 0.7])
    assert extra["ratio_to_floor_in_run"] == pytest.approx(1.2)


def test_memory_sweep_in_fresh_processes(tmp_path):
    report = _run(tmp_path, "--sweep-frames", "3", "7", "--stream", "--expressions", "1",
                  "--malloc-mmap-threshold", "131072")
    assert [r["frames"] for r in report["sweep"]] == [3, 7]
    assert all(r["peak_bytes"] > 0 and len(r["rss_quarters"]) == 3 for r in report["sweep"])
    # each fresh process reports the allocator setting it ran with (read from its own environment)
    assert [r["malloc_mmap_threshold"] for r in report["sweep"]] == ["131072", "131072"]


def test_malloc_threshold_needs_a_sweep(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--malloc-mmap-threshold", "131072"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "applies to --sweep-frames" in proc.stderr, proc.stderr[-1000:]


def test_stage_flops_agree_with_torch_flop_counter(tiny_checkpoint):
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ssa import SSAPipeline
    from ssa.preprocessing import preprocess_frames
    from ssa.profiling import StageFlops

    pipe = SSAPipeline.from_pretrained(tiny_checkpoint, device="cpu")
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 96, 3), dtype=np.uint8)
    with StageFlops(pipe) as counter:
        pipe(frames, "a red square", progress=False)
    flops = counter.stages()
    model = pipe.model
    pixels = preprocess_frames(list(frames), pipe.config.image_size, pipe.config.max_size)
    pixels = torch.nn.functional.pad(pixels, (0, -pixels.shape[-1] % 32, 0, -pixels.shape[-2] % 32))
    with torch.no_grad(), FlopCounterMode(display=False) as reference:
        model.backbone.encode_image(pixels)  # the four stages; with one expression, each runs once
    assert flops["clip_visual"] == reference.get_total_flops() > 0
    for stage in ("text", "adapters", "pixel_decoder", "frame_decoder", "video_decoder"):
        assert flops[stage] > 0, stage
    assert flops["decode"] == flops["preprocess"] == 0  # wall-time reports of the pipeline are not FLOPs


def test_sparse_products_count_their_nonzeros():
    import torch

    from ssa.profiling import _mm_flops

    dense = torch.zeros(50, 40)
    dense[torch.arange(50), torch.arange(50) % 40] = 1.0
    values = torch.randn(40, 8)
    assert _mm_flops(dense, values) == 2 * 50 * 40 * 8
    assert _mm_flops(dense.to_sparse_csr(), values) == 2 * 50 * 8


def test_deformable_sampling_flops_are_the_same_on_both_paths():
    """The CPU inference path of the deformable sampling (a weighted gather-sum over the 4 corners of
    every sample) counts what grid_sample's path (training, CUDA) counts: 4 multiply-adds per sample,
    head channel and query."""
    import torch

    from ssa.modeling.pixel_decoder import multi_scale_deformable_attention
    from ssa.profiling import _FlopCount

    torch.manual_seed(0)
    shapes = [(4, 6), (2, 3)]
    b, q, m, d, p = 2, 7, 4, 8, 3
    value = torch.randn(b, sum(h * w for h, w in shapes), m, d)
    locations = torch.rand(b, q, m, len(shapes), p, 2)
    weights = torch.rand(b, q, m, len(shapes), p)
    counts, outs = [], []
    for grad in (False, True):  # the CPU inference path, then grid_sample's
        with _FlopCount() as counter:
            outs.append(multi_scale_deformable_attention(value.requires_grad_(grad), shapes, locations,
                                                         weights))
        counts.append(counter.total)
    torch.testing.assert_close(outs[0], outs[1].detach(), atol=1e-5, rtol=1e-5)
    assert counts[0] == counts[1] == 2 * 4 * b * q * m * len(shapes) * p * d


def test_adapter_flops_are_the_same_in_token_chunks():
    """The CPU inference path of the adapter (products per token chunk, U accumulated in place with
    ``addmm_``) counts the FLOPs of the whole-map path: no product goes uncounted."""
    import torch

    from ssa.modeling.adapter import SemanticAlignmentAdapter
    from ssa.profiling import _FlopCount

    torch.manual_seed(0)
    adapter = SemanticAlignmentAdapter(24, 16, dim=32, heads=4).eval()
    visual, words, sentence = torch.randn(2, 24, 9, 70), torch.randn(2, 5, 16), torch.randn(2, 16)
    mask = torch.ones(2, 5, dtype=torch.bool)
    counts = []
    for grad in (False, True):  # chunked (nothing to differentiate), then the whole-map path
        with torch.set_grad_enabled(grad), _FlopCount() as counter:
            out, _ = adapter(visual, words, mask, sentence)
        assert out.requires_grad == grad
        counts.append(counter.total)
    assert counts[0] == counts[1] > 2 * 2 * 630 * (24 * 32 * 3 + 32 * 24)  # Φ_1, W_v, Φ_2, U at least


def test_plot_needs_matplotlib(tmp_path):
    """--plot without matplotlib stops at once with the install hint (a stub package that fails to
    import stands in for the missing one)."""
    stub = tmp_path / "stub" / "matplotlib"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stub.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(SCRIPT), "--preset", "ssa-tiny", "--plot", str(tmp_path / "p.png")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    assert "pip install 'ssa[bench]'" in done.stderr
    assert not (tmp_path / "p.png").exists()


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    _run(tmp_path, "--frames", "3", "--expressions", "1", "--flops", "--plot", str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
