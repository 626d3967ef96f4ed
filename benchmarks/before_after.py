"""Per-stage time of the pipeline before and after a change of the model's code, in one process.

    python benchmarks/before_after.py --before-rev f206ecd --frames 4 --repeats 3 --threads 1 \
        --json out.json --markdown out.md

The "before" variant swaps in the functions of the modules below as they were at ``--before-rev``
(read with ``git show``; they must keep the same signatures), the "after" variant is the working tree.
The two alternate on the same model, frames and process (``before, after, before, after, ...``), so
that a busy machine slows both alike; medians over repeats. Outputs are the same up to float rounding
(the largest mask-logit difference between the variants is reported). FLOPs per stage come from one
more, untimed run per variant (:class:`ssa.profiling.StageFlops`).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import inspect
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import EXPRESSIONS, build_pipeline, clip_alone, write_video  # noqa: E402

import ssa.modeling.adapter  # noqa: E402
import ssa.modeling.backbone  # noqa: E402
import ssa.modeling.common  # noqa: E402
import ssa.modeling.frame_decoder  # noqa: E402
import ssa.modeling.fusion  # noqa: E402
import ssa.modeling.pixel_decoder  # noqa: E402
import ssa.modeling.selection  # noqa: E402
from ssa.profiling import STAGES, StageFlops, StageTimer  # noqa: E402

logger = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]

# (module, attribute path) swapped between the variants
SWAPS = [
    (ssa.modeling.fusion, "_BiAttention.forward"),
    (ssa.modeling.fusion, "TextFusionBlock.forward"),
    (ssa.modeling.adapter, "SemanticAlignmentAdapter.forward"),
    (ssa.modeling.pixel_decoder, "MSDeformAttn.forward"),
    (ssa.modeling.pixel_decoder, "MSDeformAttn._sample_on_cpu"),
    (ssa.modeling.pixel_decoder, "MSDeformAttn._sample_chunk"),
    (ssa.modeling.pixel_decoder, "DeformableEncoderLayer._forward_in_query_chunks"),
    (ssa.modeling.pixel_decoder, "DeformableEncoderLayer.forward"),
    (ssa.modeling.common, "FFNLayer.forward"),
    (ssa.modeling.pixel_decoder, "PixelDecoder.forward"),
    (ssa.modeling.frame_decoder, "FrameQueryDecoder.forward"),
    (ssa.modeling.frame_decoder, "FrameQueryDecoder._layer"),
    (ssa.modeling.common, "CrossAttentionLayer.forward_few_queries"),
    (ssa.modeling.backbone, "FrozenCLIP.encode_stem"),
    (ssa.modeling.backbone, "FrozenCLIP.run_stage"),
    (ssa.modeling.backbone, "FrozenCLIP._encode_image"),
    (ssa.modeling.selection, "mask_product"),  # as query_masks (the pipeline's masks) calls it
]


def _old_module(module: types.ModuleType, rev: str) -> types.ModuleType:
    rel = Path(module.__file__).resolve().relative_to(ROOT)
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{rel.as_posix()}"], check=True,
                            capture_output=True, text=True).stdout
    name = f"_before_{module.__name__.replace('.', '_')}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    old = importlib.util.module_from_spec(spec)
    old.__file__ = str(rel)
    sys.modules[name] = old  # dataclasses look their module up
    exec(compile(source, str(rel), "exec"), old.__dict__)
    return old


def _get(owner: Any, path: str) -> tuple[Any, str, Any]:
    *parents, attr = path.split(".")
    for p in parents:
        owner = getattr(owner, p)
    return owner, attr, getattr(owner, attr)


def _dropping_new_keywords(fn: Any) -> Any:
    """``fn`` (an old revision's function) called with the keywords the new callers pass, less those it
    does not know (e.g. ``FrameQueryDecoder.forward(masks=...)``): the old code then does what it did."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **{k: v for k, v in kwargs.items() if k in params})

    return call


class Variants:
    """Switch the swapped functions between the working tree's and ``rev``'s."""

    def __init__(self, rev: str) -> None:
        self.after, self.before = [], []
        olds: dict[str, types.ModuleType] = {}
        for module, path in SWAPS:
            old = olds.setdefault(module.__name__, _old_module(module, rev))
            owner, attr, current = _get(module, path)
            self.after.append((owner, attr, current))
            self.before.append((owner, attr, _dropping_new_keywords(_get(old, path)[2])))

    def use(self, which: str) -> None:
        for owner, attr, fn in (self.before if which == "before" else self.after):
            setattr(owner, attr, fn)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before-rev", required=True, help="git revision of the 'before' code")
    p.add_argument("--preset", default="ssa-convnext-large")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--short-side", type=int, default=448)
    p.add_argument("--expressions", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    ns = argparse.Namespace(short_side=args.short_side, max_size=None, preset=args.preset,
                            channels_last=False, device="cpu", precision=None, chunk_size=16)
    pipe = build_pipeline(ns)
    variants = Variants(args.before_rev)
    texts = EXPRESSIONS[:args.expressions]
    with tempfile.TemporaryDirectory() as tmp:
        video = str(write_video(Path(tmp) / "input.mp4", args.frames, args.height))
        pipe(video, texts[:1], max_frames=1, progress=False)  # warm-up
        rows: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        flops: dict[str, dict[str, float]] = {}
        logits: dict[str, torch.Tensor] = {}
        for which in ("before", "after"):
            variants.use(which)
            with StageFlops(pipe) as counter:
                pipe(video, texts, progress=False)
            flops[which] = counter.stages()
            with torch.no_grad():  # the model's mask logits, to compare the variants' outputs
                from ssa.io import read_frames
                from ssa.preprocessing import preprocess_frames

                frames = [f.image for f in read_frames(video, max_frames=2)]
                pixels = preprocess_frames(frames, pipe.config.image_size, pipe.config.max_size)
                logits[which] = pipe.model(pixels, texts[0]).mask_logits
        clips = []
        for r in range(args.repeats):
            # in every repeat (the same machine load as the runs); the faster of chunks and frame batches
            clips.append(min(clip_alone(pipe, video, None, b) for b in {pipe.chunk_size, pipe.frame_batch}))
            for which in ("before", "after") if r % 2 == 0 else ("after", "before"):
                variants.use(which)
                with StageTimer(pipe) as timer:
                    start = time.perf_counter()
                    pipe(video, texts, progress=False)
                    wall = time.perf_counter() - start
                rows[which].append({"wall": wall, "stages": timer.stages()})
                logger.info("repeat %d %s: %.2f s", r, which, wall)
        variants.use("after")
        clip = statistics.median(clips)
    report: dict[str, Any] = {"before_rev": args.before_rev, "preset": args.preset, "frames": args.frames,
                              "expressions": args.expressions, "threads": torch.get_num_threads(),
                              "date": time.strftime("%Y-%m-%d"), "clip_alone_s": clip,
                              "max_mask_logit_diff": float((logits["before"] - logits["after"]).abs().max())}
    for which in ("before", "after"):
        stages = {s: statistics.median(r["stages"][s] for r in rows[which]) for s in STAGES}
        wall = statistics.median(r["wall"] for r in rows[which])
        rate = flops["after"]["clip_visual"] / clip
        report[which] = {
            "end_to_end_s": wall, "total_gflop": sum(flops[which].values()) / 1e9,
            "flop_floor_s": sum(flops[which].values()) / rate,
            "ratio_to_floor": wall / (sum(flops[which].values()) / rate),
            "per_stage": {s: {"s": stages[s], "gflop": flops[which][s] / 1e9,
                              "gflop_per_s": flops[which][s] / 1e9 / stages[s] if stages[s] > 0 else None}
                          for s in STAGES}}
    lines = [f"{args.preset}, {args.frames} frames at short side {args.short_side}, E={args.expressions}, "
             f"{report['threads']} thread(s), before = {args.before_rev}, after = working tree; medians of "
             f"{args.repeats} alternating repeats", "",
             "| stage | before s | GFLOP | GFLOP/s | after s | GFLOP | GFLOP/s | time after/before |",
             "|---|---|---|---|---|---|---|---|"]
    for s in STAGES:
        b, a = report["before"]["per_stage"][s], report["after"]["per_stage"][s]
        if b["gflop"] == 0 and a["gflop"] == 0 and b["s"] < 0.005:
            continue

        def rate(x: dict[str, Any]) -> str:
            return "–" if x["gflop_per_s"] is None or x["gflop"] == 0 else f"{x['gflop_per_s']:.1f}"

        ratio = f"{a['s'] / b['s']:.2f}" if b["s"] > 0 else "–"
        lines.append(f"| {s} | {b['s']:.3f} | {b['gflop']:.1f} | {rate(b)} | {a['s']:.3f} | "
                     f"{a['gflop']:.1f} | {rate(a)} | {ratio} |")
    b, a = report["before"], report["after"]
    lines.append(f"| **end to end** | **{b['end_to_end_s']:.3f}** | {b['total_gflop']:.1f} | | "
                 f"**{a['end_to_end_s']:.3f}** | {a['total_gflop']:.1f} | | "
                 f"{a['end_to_end_s'] / b['end_to_end_s']:.2f} |")
    clip_rate = flops["after"]["clip_visual"] / clip / 1e9
    lines += ["", f"- CLIP visual pass alone: {clip:.3f} s ({clip_rate:.1f} GFLOP/s)",
              f"- end to end / FLOP floor: before {b['ratio_to_floor']:.3f} (its own FLOPs), after "
              f"{a['ratio_to_floor']:.3f}; end to end / CLIP alone: before {b['end_to_end_s'] / clip:.2f}, "
              f"after {a['end_to_end_s'] / clip:.2f}",
              f"- largest mask-logit difference between the variants: {report['max_mask_logit_diff']:.2e}"]
    md = "\n".join(lines)
    print(md)
    if args.markdown:
        args.markdown.write_text(md + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
