"""Stage-by-stage time and peak memory of SSAPipeline on one video, and peak memory against length.

    python benchmarks/pipeline.py --preset ssa-convnext-large --frames 16 --short-side 448 \
        --expressions 1 2 --repeats 3 --json out.json --markdown out.md --plot out.png
    python benchmarks/pipeline.py --preset ssa-tiny --frames 2000 --height 480 --stream --repeats 1
    python benchmarks/pipeline.py --preset ssa-tiny --sweep-frames 250 500 1000 2000 --height 480 --stream
    python benchmarks/pipeline.py --preset ssa-tiny --sweep-frames 250 2000 --height 480 --stream \
        --malloc-mmap-threshold 131072    # glibc: blocks > 128 KiB mapped (docs/performance.md)

The input is an H.264 MP4 written first (moving shapes over a textured background, ``--height`` lines,
16:9; or ``--video FILE``). Each repeat runs the pipeline end to end (decode → preprocess → model →
masks → writing PNGs + RLE, as ``ssa segment`` does) under :class:`ssa.profiling.StageTimer`, which
reports per stage:

  decode, preprocess      time on the background decoding thread (overlapped with the model)
  clip_visual … masks     the model's stages and the mask upsampling / selection
  writing                 PNG + RLE writers
  frames_wait             time the model waited for frames: the part of decode + preprocess not hidden

The same process also times the frozen CLIP visual pass alone on the same (already preprocessed) frames,
in the pipeline's chunks and in its frame batches (the faster counts: the best the trunk reaches), so
``end-to-end / CLIP`` compares like with like; each repeat runs every E and
then the CLIP pass, so that a changing machine load slows them alike. Medians over repeats.
Peak memory: RSS sampled every 10 ms (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA).
``--sweep-frames`` runs each length in a fresh process (RSS is per process) and plots peak memory
against T; ``--malloc-mmap-threshold BYTES`` runs those processes with glibc's ``MALLOC_MMAP_THRESHOLD_``
set (a fixed threshold: blocks above it are mapped and unmapped, not left to fragment the heap; for a
single run, set the variable in the environment). CLIP weights are random (no download): the cost is
that of the real architecture.

``--flops`` also counts each stage's floating-point operations in one more (untimed) run per E
(:class:`ssa.profiling.StageFlops`): the FLOP ratio of the whole run to the CLIP pass is what
``end-to-end / CLIP`` would be if every stage ran at the CLIP's arithmetic throughput, and
GFLOP/s per stage shows which stages run below it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssa import SSAConfig, SSAModel, SSAPipeline
from ssa.io.video import read_frames
from ssa.preprocessing import preprocess_frames, resized_size
from ssa.profiling import STAGES, PeakMemory, StageFlops, StageTimer

logger = logging.getLogger("bench")

EXPRESSIONS = ["the red square moving right", "the blue circle", "the object that stops",
               "the triangle moving down", "the biggest shape", "the square on the left",
               "the circle moving up", "the shape entering from the left"]


def write_video(path: Path, frames: int, height: int, fps: int = 30) -> Path:
    """A 16:9 H.264 MP4: shapes moving over a smooth textured background (encoder: libx264)."""
    import av

    width = (height * 16 // 9) // 2 * 2
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)),
                           ((xx + yy) * 3) % 256], axis=-1).astype(np.uint8)
    side = max(8, height // 6)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(frames):
            img = background.copy()
            x = (4 * i) % (width - side)
            y = (3 * i) % (height - side)
            img[height // 3: height // 3 + side, x: x + side] = (230, 40, 40)
            img[y: y + side, width // 2: width // 2 + side] = (40, 40, 230)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def build_pipeline(args: argparse.Namespace) -> SSAPipeline:
    overrides: dict[str, Any] = {}
    if args.short_side:
        overrides["image_size"] = args.short_side
        overrides["max_size"] = max(args.max_size or 0, args.short_side * 16 // 9 + 32)
    if args.preset != "ssa-tiny":
        overrides["clip_pretrained"] = None  # random CLIP weights: no download, same cost
    torch.manual_seed(0)
    model = SSAModel(SSAConfig.from_preset(args.preset, **overrides))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return SSAPipeline(model, device=args.device, precision=args.precision, chunk_size=args.chunk_size)


def run_once(pipe: SSAPipeline, video: str, expressions: list[str], stream: bool, out: Path,
             mode: str = "single") -> dict[str, Any]:
    """One end-to-end run: per-stage seconds, wall seconds, peak memory."""
    with StageTimer(pipe) as timer, PeakMemory(pipe.device) as memory:
        start = time.perf_counter()
        if stream:
            frames = 0
            for frame in pipe.stream(video, expressions, mode=mode, progress=False):
                with timer.section("writing", sync=False):
                    _write_frame(frame, out)
                frames += 1
        else:
            results = pipe(video, expressions, mode=mode, progress=False)
            with timer.section("writing", sync=False):
                for i, result in enumerate(results):
                    result.save_pngs(out / str(i), overwrite=True)
                    result.save_rle(out / f"{i}.json", overwrite=True)
            frames = len(results[0])
        wall = time.perf_counter() - start
    rss = memory.samples
    return {"wall": wall, "frames": frames, "stages": timer.stages(),
            "frames_wait": timer.totals.get("frames_wait", 0.0), "peak_bytes": memory.peak,
            # RSS at a quarter, half and the end of the run: flat when memory does not grow with T
            "rss_quarters": [rss[int(q * (len(rss) - 1))][1] for q in (0.25, 0.5, 1.0)] if rss else []}


def _write_frame(frame: Any, out: Path) -> None:
    from ssa.io import write_palette_png

    for e in range(len(frame.expressions)):
        folder = out / str(e)
        folder.mkdir(parents=True, exist_ok=True)
        write_palette_png(folder / f"{frame.name}.png", frame.labels(e))


def clip_alone(pipe: SSAPipeline, video: str, max_frames: int | None, batch: int | None = None) -> float:
    """Seconds of the frozen CLIP visual pass alone over the video's frames, ``batch`` frames at a time
    (default: the pipeline's chunks)."""
    model = pipe.model
    frames = [f.image for f in read_frames(video, max_frames=max_frames)]
    pixels = preprocess_frames(frames, pipe.config.image_size, pipe.config.max_size)
    h, w = pixels.shape[-2:]
    pixels = torch.nn.functional.pad(pixels, (0, -w % 32, 0, -h % 32))
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    with torch.no_grad(), pipe._autocast():
        sync()
        start = time.perf_counter()
        step = batch or pipe.chunk_size
        for s in range(0, len(pixels), step):
            model.backbone.encode_image(pixels[s:s + step].to(pipe.device))  # no adapters
        sync()
    return time.perf_counter() - start


def measure(args: argparse.Namespace, video: str) -> dict[str, Any]:
    pipe = build_pipeline(args)
    report: dict[str, Any] = {
        "preset": args.preset, "device": str(pipe.device), "precision": pipe.precision,
        "model_size": list(resized_size(*_video_size(video), pipe.config.image_size, pipe.config.max_size)),
        "video": video,
        "chunk_size": pipe.chunk_size, "stream": args.stream, "threads": torch.get_num_threads(),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "runs": {},
    }
    pipe(video, EXPRESSIONS[:1], max_frames=2, progress=False)  # warm-up (lazy init, allocator), not timed
    # Repeat by repeat, every E and the CLIP pass alone one after the other: a load that changes over
    # the measurement slows them alike, so their ratios hold.
    all_rows: dict[int, list[dict[str, Any]]] = {e: [] for e in args.expressions}
    clip_times = []
    # the faster of whole chunks and the pipeline's frame batches: the best the trunk reaches (on a CPU,
    # batches of 1 frame: 16 at once measured ~30% slower, so only those run there)
    batches = sorted({pipe.frame_batch} if pipe.device.type == "cpu" else {pipe.chunk_size, pipe.frame_batch})
    for r in range(args.repeats):

        def clip_pass() -> None:
            times = {b: clip_alone(pipe, video, None, b) for b in batches}
            clip_times.append(min(times.values()))
            logger.info("CLIP pass alone: %s",
                        ", ".join(f"{s:.2f} s in batches of {b}" for b, s in times.items()))

        if r % 2 and not args.no_clip_alone:  # every other repeat the CLIP pass first: drift cancels
            clip_pass()
        for e in args.expressions:
            with tempfile.TemporaryDirectory() as tmp:
                all_rows[e].append(run_once(pipe, video, EXPRESSIONS[:e], args.stream, Path(tmp), args.mode))
            logger.info("E=%d: %.2f s", e, all_rows[e][-1]["wall"])
        if r % 2 == 0 and not args.no_clip_alone:
            clip_pass()
    for e in args.expressions:
        rows = all_rows[e]
        report["runs"][e] = {
            "wall": statistics.median(r["wall"] for r in rows),
            "frames": rows[0]["frames"],
            "stages": {s: statistics.median(r["stages"][s] for r in rows) for s in STAGES},
            "frames_wait": statistics.median(r["frames_wait"] for r in rows),
            "peak_bytes": max(r["peak_bytes"] for r in rows),
            "rss_quarters": rows[-1]["rss_quarters"],
        }
        report["runs"][e]["clip_in_run_per_repeat"] = [r["stages"]["clip_visual"] for r in rows]
        report["runs"][e]["wall_per_repeat"] = [r["wall"] for r in rows]
        if args.flops:
            with StageFlops(pipe) as flops:
                pipe(video, EXPRESSIONS[:e], mode=args.mode, progress=False)
            report["runs"][e]["flops"] = flops.stages()
    if clip_times:
        report["clip_alone"] = statistics.median(clip_times)
        report["clip_alone_per_repeat"] = clip_times
    report.update(summarize(report))
    return report


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a report (E = the first of ``--expressions``):

    end_to_end_s     wall time of the whole run
    clip_alone_s     the frozen CLIP visual pass alone on the same frames, same process
    flop_floor_s     the run's FLOPs / the GFLOP/s of that CLIP pass: the time if every stage ran at the
                     CLIP's arithmetic throughput (needs ``--flops``)
    ratio_to_floor   end_to_end_s / flop_floor_s
    ratio_to_floor_paired
                     the median over repeats of each repeat's end to end / its own floor (its own CLIP
                     pass, run right before or after it): robust to the machine's drift between repeats
    ratio_to_floor_in_run
                     the median over repeats of end to end / the floor at the GFLOP/s the CLIP stages
                     reach inside that same run (timed by hooks, interleaved frame by frame with the other
                     stages): drift within a repeat cancels too. Inside a run the trunk shares the caches
                     with the other stages, so its rate can sit a little below the pass alone's (a more
                     lenient floor) or, with the machine's noise, above it. For each further expression:
                     (E's seconds x its CLIP stages' FLOP/s - the first run's, likewise) / the extra FLOPs
    per_stage        {stage: {"s", "gflop", "gflop_per_s"}}
    per_expression   each expression beyond the first: its extra seconds, extra GFLOP, its own floor
                     (extra FLOPs at the CLIP's throughput), ratio_to_floor, and its time and FLOP shares
                     of the first run
    """
    runs = report["runs"]
    es = sorted(runs, key=int)
    first = runs[es[0]]
    clip_s = report.get("clip_alone")
    out: dict[str, Any] = {"expressions": int(es[0]), "end_to_end_s": first["wall"], "clip_alone_s": clip_s,
                           "flop_floor_s": None, "ratio_to_floor": None, "clip_alone_gflop_per_s": None}
    flops = first.get("flops")
    out["per_stage"] = {
        stage: {"s": first["stages"][stage],
                "gflop": None if flops is None else flops[stage] / 1e9,
                "gflop_per_s": (flops[stage] / 1e9 / first["stages"][stage]
                                if flops is not None and first["stages"][stage] > 0 else None)}
        for stage in STAGES
    }
    rate = None
    if flops is not None and clip_s:
        rate = flops["clip_visual"] / clip_s  # FLOP/s of the CLIP pass alone
        out["clip_alone_gflop_per_s"] = rate / 1e9
        out["flop_floor_s"] = sum(flops.values()) / rate
        out["ratio_to_floor"] = first["wall"] / out["flop_floor_s"]
        walls, clips = first.get("wall_per_repeat"), report.get("clip_alone_per_repeat")
        if walls and clips and len(walls) == len(clips):
            # each repeat against its own CLIP pass (run right before or after it): the machine's drift
            # between repeats cancels
            out["ratio_to_floor_per_repeat"] = _ratios_to_floor(walls, clips, flops)
            out["ratio_to_floor_paired"] = statistics.median(out["ratio_to_floor_per_repeat"])
    if flops is not None and first.get("clip_in_run_per_repeat"):
        in_run = _ratios_to_floor(first["wall_per_repeat"], first["clip_in_run_per_repeat"], flops)
        out["ratio_to_floor_in_run_per_repeat"] = in_run
        out["ratio_to_floor_in_run"] = statistics.median(in_run)
        out["clip_in_run_gflop_per_s"] = flops["clip_visual"] / first["stages"]["clip_visual"] / 1e9
    out["per_expression"] = {}
    for e in es[1:]:
        n = int(e) - int(es[0])
        extra_s = (runs[e]["wall"] - first["wall"]) / n
        row: dict[str, Any] = {"extra_s": extra_s, "time_share": extra_s / first["wall"]}
        if flops is not None and "flops" in runs[e]:
            extra = (sum(runs[e]["flops"].values()) - sum(flops.values())) / n
            row.update(extra_gflop=extra / 1e9, flop_share=extra / sum(flops.values()))
            if rate is not None:
                row.update(floor_s=extra / rate, ratio_to_floor=extra_s / (extra / rate))
            walls, clips = runs[e].get("wall_per_repeat"), runs[e].get("clip_in_run_per_repeat")
            if walls and clips and len(walls) == len(first.get("wall_per_repeat", [])):
                # per repeat, each run's seconds times its own CLIP stages' FLOP/s (the FLOPs it would
                # have done at that rate, so a machine faster in one run than in the other cancels);
                # the difference against the extra FLOPs
                clip_e, clip_1 = runs[e]["flops"]["clip_visual"], flops["clip_visual"]
                ratios = [(w * clip_e / c - w1 * clip_1 / c1) / n / extra
                          for w, c, w1, c1 in zip(walls, clips, first["wall_per_repeat"],
                                                  first["clip_in_run_per_repeat"], strict=True)]
                row.update(ratio_to_floor_in_run_per_repeat=ratios,
                           ratio_to_floor_in_run=statistics.median(ratios))
        out["per_expression"][e] = row
    return out


def _ratios_to_floor(walls: list[float], clips: list[float], flops: dict[str, float]) -> list[float]:
    """Each repeat's end to end / its floor: the run's FLOPs at the rate of that repeat's CLIP time
    (the pass alone's, or the CLIP stages' inside the run)."""
    total = sum(flops.values())
    return [w / (total * c / flops["clip_visual"]) for w, c in zip(walls, clips, strict=True)]


def _video_size(video: str) -> tuple[int, int]:
    from ssa.io.video import probe

    info = probe(video)
    return info.height, info.width


def markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    es = sorted(runs, key=int)
    first = runs[es[0]]
    lines = [
        f"{report['preset']}, {report['device']} {report['precision']}, model input "
        f"{report['model_size'][1]}x{report['model_size'][0]}, {first['frames']} frames, chunk "
        f"{report['chunk_size']}{', stream' if report['stream'] else ''} ({report['threads']} threads)",
        "",
        "| stage | " + " | ".join(f"E={e} (s)" for e in es) + " |",
        "|---|" + "---|" * len(es),
    ]
    def row(label: str, cell: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(runs[e]) for e in es) + " |")

    for stage in STAGES:
        note = " (background thread)" if stage in ("decode", "preprocess") else ""
        row(stage + note, lambda r, stage=stage: f"{r['stages'][stage]:.3f}")
    row("waiting for frames (exposed decode)", lambda r: f"{r['frames_wait']:.3f}")
    row("**end to end**", lambda r: f"**{r['wall']:.3f}**")
    row("frames/s", lambda r: f"{r['frames'] / r['wall']:.1f}")
    row("peak memory (MB)", lambda r: f"{r['peak_bytes'] / 2**20:.0f}")
    lines.append("")
    if "flops" in first:
        lines += _flops_table(runs, es)
    if "clip_alone" in report:
        clip = report["clip_alone"]
        lines.append(f"- frozen CLIP visual pass alone, same frames: {clip:.3f} s; "
                     f"end to end (E={es[0]}) / CLIP = **{first['wall'] / clip:.2f}**")
    for e in es[1:]:
        extra = (runs[e]["wall"] - first["wall"]) / (int(e) - int(es[0])) / first["wall"]
        lines.append(f"- each expression beyond {es[0]} (E={e}): +{100 * extra:.1f}% of the E={es[0]} time")
    if report.get("ratio_to_floor") is not None:
        rate = report["clip_alone_gflop_per_s"]
        lines.append(f"- FLOP floor (the run's FLOPs at the CLIP pass's {rate:.1f} GFLOP/s): "
                     f"{report['flop_floor_s']:.3f} s; end to end / floor = "
                     f"**{report['ratio_to_floor']:.3f}**")
        if report.get("ratio_to_floor_paired") is not None:
            per = ", ".join(f"{x:.3f}" for x in report["ratio_to_floor_per_repeat"])
            lines.append(f"- each repeat against its own CLIP pass: {per}; median "
                         f"**{report['ratio_to_floor_paired']:.3f}**")
    if report.get("ratio_to_floor_in_run") is not None:
        per = ", ".join(f"{x:.3f}" for x in report["ratio_to_floor_in_run_per_repeat"])
        lines.append(f"- against the CLIP stages inside each run ({report['clip_in_run_gflop_per_s']:.1f} "
                     f"GFLOP/s in the median run): {per}; median **{report['ratio_to_floor_in_run']:.3f}**")
    for e, row in report.get("per_expression", {}).items():
        if row.get("ratio_to_floor") is not None:
            lines.append(f"- each expression beyond {es[0]} (E={e}): {row['extra_s']:.3f} s for "
                         f"{row['extra_gflop']:.1f} GFLOP, its own floor {row['floor_s']:.3f} s: "
                         f"**{row['ratio_to_floor']:.3f}** x")
        if row.get("ratio_to_floor_in_run") is not None:
            per = ", ".join(f"{x:.3f}" for x in row["ratio_to_floor_in_run_per_repeat"])
            lines.append(f"- the same against the CLIP stages inside each run: {per}; median "
                         f"**{row['ratio_to_floor_in_run']:.3f}** x")
    io = first["stages"]["decode"] + first["stages"]["preprocess"]
    lines.append(f"- exposed decode + preprocess: {100 * first['frames_wait'] / first['wall']:.1f}% of wall "
                 f"time (the thread spent {io:.3f} s)")
    if first["rss_quarters"]:
        q = [f"{b / 2**20:.0f}" for b in first["rss_quarters"]]
        lines.append(f"- RSS at 25% / 50% / 100% of the run: {' / '.join(q)} MB")
    return "\n".join(lines)


def _flops_table(runs: dict[Any, dict[str, Any]], es: list[Any]) -> list[str]:
    """GFLOP and GFLOP/s per stage, and the FLOP ratios that bound the time ratios."""
    counted = [s for s in STAGES if runs[es[0]]["flops"][s] > 0]
    lines = ["| stage | " + " | ".join(f"E={e} GFLOP | GFLOP/s" for e in es) + " |",
             "|---|" + "---|---|" * len(es)]
    for stage in counted:
        cells = []
        for e in es:
            gflop, seconds = runs[e]["flops"][stage] / 1e9, runs[e]["stages"][stage]
            cells.append(f"{gflop:.1f} | {gflop / seconds:.1f}" if seconds > 0 else f"{gflop:.1f} | –")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    total = {e: sum(runs[e]["flops"].values()) for e in es}
    clip = runs[es[0]]["flops"]["clip_visual"]
    lines += ["", f"- FLOPs of the whole run (E={es[0]}) / FLOPs of the CLIP pass = "
              f"**{total[es[0]] / clip:.3f}**: the end-to-end / CLIP ratio if every stage ran at the "
              "CLIP's throughput"]
    for e in es[1:]:
        extra = (total[e] - total[es[0]]) / (int(e) - int(es[0])) / total[es[0]]
        lines.append(f"- FLOPs of each expression beyond {es[0]} (E={e}): **+{100 * extra:.1f}%**")
    return lines + [""]


def _require_matplotlib() -> None:
    """Raise SystemExit with the install hint when matplotlib is missing (``--plot`` needs it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("--plot needs matplotlib, which is not installed: pip install 'ssa[bench]' "
                         "(or pip install matplotlib)") from None


def plot(report: dict[str, Any], sweep: list[dict[str, Any]], path: Path) -> None:
    """Time per stage (and GFLOP/s per stage with ``--flops``) of the first run; peak memory against T
    of a ``--sweep-frames`` run."""
    _require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = {s: v["gflop_per_s"] for s, v in report.get("per_stage", {}).items()
             if v.get("gflop_per_s") is not None and v["gflop"] > 0}
    panels = bool(report) + bool(rates) + bool(sweep)
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    if rates:
        ax = axes[0][1]
        names = list(rates)
        ax.barh(names[::-1], [rates[s] for s in names][::-1], color="tab:green")
        if report.get("clip_alone_gflop_per_s"):
            ax.axvline(report["clip_alone_gflop_per_s"], color="k", ls="--", label="CLIP pass alone")
            ax.legend(fontsize=8)
        ax.set_xlabel("GFLOP/s")
        ax.set_title(f"throughput per stage; end to end / FLOP floor = {report['ratio_to_floor']:.2f}"
                     if report.get("ratio_to_floor") else "throughput per stage", fontsize=10)
    if report:
        run = report["runs"][sorted(report["runs"], key=int)[0]]
        names = list(STAGES) + ["frames_wait"]
        values = [run["stages"][s] for s in STAGES] + [run["frames_wait"]]
        ax = axes[0][0]
        ax.barh(names[::-1], values[::-1], color="tab:blue")
        ax.set_xlabel("seconds (median)")
        ax.set_title(f"{report['preset']} ({report['device']}): {run['frames']} frames, end to end "
                     f"{run['wall']:.2f} s", fontsize=10)
    if sweep:
        ax = axes[0][-1]
        ax.plot([r["frames"] for r in sweep], [r["peak_bytes"] / 2**20 for r in sweep], "o-")
        ax.set_xlabel("frames (T)")
        ax.set_ylabel("peak memory (MB)")
        ax.set_ylim(0, 1.15 * max(r["peak_bytes"] for r in sweep) / 2**20)
        ax.set_title("peak memory against video length", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    logger.info("wrote %s", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ssa-convnext-large")
    p.add_argument("--video", default=None, help="an existing video (default: write a synthetic H.264 MP4)")
    p.add_argument("--frames", type=int, default=16, help="frames of the synthetic video")
    p.add_argument("--height", type=int, default=720, help="lines of the synthetic video (16:9)")
    p.add_argument("--short-side", type=int, default=None, help="model short side (default: the preset's)")
    p.add_argument("--max-size", type=int, default=None, help="model long-side cap")
    p.add_argument("--expressions", type=int, nargs="+", default=[1, 2], help="numbers of expressions to run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"])
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--stream", action="store_true", help="use pipe.stream (flat memory) and write per frame")
    p.add_argument("--mode", default="single", choices=["single", "multi"],
                   help="object selection (single: one object per expression, as a trained model would give)")
    p.add_argument("--no-clip-alone", action="store_true", help="skip timing the CLIP pass alone")
    p.add_argument("--flops", action="store_true",
                   help="also count FLOPs per stage (one more, untimed run per E)")
    p.add_argument("--sweep-frames", type=int, nargs="+", default=None,
                   help="peak memory against T: each length in a fresh process (E = first of --expressions)")
    p.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                   help="with --sweep-frames: run each length with glibc's MALLOC_MMAP_THRESHOLD_=BYTES")
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON ('-' for stdout)")
    p.add_argument("--markdown", type=Path, default=None, help="write the Markdown table here too")
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG of time (and GFLOP/s) per stage, and memory against T (needs matplotlib)")
    args = p.parse_args()
    if args.malloc_mmap_threshold is not None and not args.sweep_frames:
        p.error("--malloc-mmap-threshold applies to --sweep-frames (fresh processes); for one run set "
                "MALLOC_MMAP_THRESHOLD_ in the environment")
    if args.malloc_mmap_threshold is not None and args.malloc_mmap_threshold < 0:
        p.error(f"--malloc-mmap-threshold must be >= 0 bytes, got {args.malloc_mmap_threshold}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.plot:
        _require_matplotlib()  # fail before the (long) measurement, not after it
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        report: dict[str, Any] = {}
        sweep: list[dict[str, Any]] = []
        if args.sweep_frames:
            sweep = [_sweep_point(args, t, Path(tmp)) for t in args.sweep_frames]
            rows = []
            for r in sweep:
                quarters = " / ".join(f"{b / 2**20:.0f}" for b in r["rss_quarters"])
                peak = r["peak_bytes"] / 2**20
                rows.append(f"| {r['frames']} | {peak:.0f} | {quarters} | {r['wall']:.1f} |")
            report_md = "\n".join(["| frames | peak memory (MB) | RSS 25/50/100% (MB) | end to end (s) |",
                                   "|---|---|---|---|", *rows])
            out = {"sweep": sweep}
        else:
            video = args.video or str(write_video(Path(tmp) / "input.mp4", args.frames, args.height))
            report = measure(args, video)
            report_md = markdown(report)
            out = report
        print(report_md)
        if args.markdown:
            args.markdown.write_text(report_md + "\n")
        if args.json:
            text = json.dumps(out, indent=2)
            if str(args.json) == "-":
                print(text)
            else:
                args.json.write_text(text)
        if args.plot:
            plot(report, sweep, args.plot)


def _sweep_point(args: argparse.Namespace, frames: int, tmp: Path) -> dict[str, Any]:
    video = write_video(tmp / f"sweep-{frames}.mp4", frames, args.height)
    cmd = [sys.executable, __file__, "--preset", args.preset, "--video", str(video), "--repeats", "1",
           "--expressions", str(args.expressions[0]), "--chunk-size", str(args.chunk_size), "--no-clip-alone",
           "--mode", args.mode,
           "--json", "-"]
    for flag, value in (("--short-side", args.short_side), ("--max-size", args.max_size),
                        ("--device", args.device), ("--precision", args.precision)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += ["--stream"] if args.stream else []
    env = dict(os.environ)
    if args.malloc_mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    threshold = env.get("MALLOC_MMAP_THRESHOLD_")
    logger.info("T=%d: %s%s", frames, " ".join(cmd),
                f" (MALLOC_MMAP_THRESHOLD_={threshold})" if threshold else "")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    report = json.loads(out[out.index("\n{") + 1:])
    run = next(iter(report["runs"].values()))
    return {"frames": run["frames"], "peak_bytes": run["peak_bytes"], "wall": run["wall"],
            "rss_quarters": run["rss_quarters"], "malloc_mmap_threshold": report["malloc_mmap_threshold"]}


if __name__ == "__main__":
    main()
