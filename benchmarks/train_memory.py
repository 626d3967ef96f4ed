"""Memory of one fine-tuning step: the paper preset, one clip of T frames at several short sides, with and
without activation checkpointing (``TrainConfig.activation_checkpointing``).

    python benchmarks/train_memory.py --sizes 384 448 600 --frames 8 --json out.json    # CUDA: measured
    python benchmarks/train_memory.py --sizes 384 448 600 --measure-frames 1 2 --frames 8 --json out.json

On CUDA each (size, mode) runs a real step (forward under fp16 autocast, backward, AdamW step) on one
clip and reports ``torch.cuda.max_memory_allocated``. The loss is a stand-in (means of the mask, class
and auxiliary outputs, which every prediction reaches), not the matching criterion: the criterion's own
tensors are small (point-sampled masks).

Without CUDA the script estimates what ``max_memory_allocated`` would be, from a forward pass that
records gradients (no backward: it would take minutes per frame on a CPU):

  weights          every parameter (the frozen CLIP included), fp32
  gradients        the trainable parameters, fp32
  AdamW states     two per trainable parameter, fp32
  saved            the tensors autograd keeps for the backward pass (``saved_tensors_hooks``), each
                   storage counted once, parameters excluded
  recompute        with checkpointing: the largest checkpointed segment's own saved tensors, which exist
                   again while that segment is recomputed in the backward pass

  estimate = weights + gradients + AdamW states + saved + recompute

It leaves out the gradients of activations in flight during the backward pass and the allocator's
fragmentation, and a CPU forward saves fp32 (``--precision bf16`` runs CPU autocast to 2-byte types, as
CUDA's fp16 autocast would). Saved bytes are measured at ``--measure-frames`` (few frames: time) and
extrapolated linearly in T to ``--frames``. CLIP weights are random (no download): the memory is that
of the real architecture.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import platform
import sys
import time
from typing import Any

import torch
from torch import nn

from ssa import SSAConfig, SSAModel
from ssa.profiling import MethodShadows

logger = logging.getLogger("bench")

MODES = {"off": (False, False), "trunk": (True, False), "decoders": (False, True), "all": (True, True)}


def build(preset: str, size: int, max_size: int) -> SSAModel:
    torch.manual_seed(0)
    config = SSAConfig.from_preset(preset, clip_pretrained=None, image_size=size, max_size=max_size)
    return SSAModel(config).train()


def frame_size(short: int) -> tuple[int, int]:
    """A 16:9 training frame with short side ``short``, padded to multiples of 32 as the model pads."""
    long = short * 16 // 9
    return short + -short % 32, long + -long % 32


def surrogate_loss(out: Any) -> torch.Tensor:
    """A loss reaching every output the criterion reads."""
    loss = out.mask_logits.float().sigmoid().mean() + out.class_logits.float().mean()
    for m in out.frames.aux_mask_logits:
        loss = loss + m.float().sigmoid().mean()
    return loss


class SavedBytes:
    """Bytes of the tensors autograd saves while entered, each storage once, parameters excluded; and
    per kind of segment (``segments``: the callables that activation checkpointing runs as one
    segment, as (owner, method name)) the bytes first saved inside each call."""

    def __init__(self, model: nn.Module, segments: dict[str, list[tuple[Any, str]]]) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.total = 0
        self.segment_bytes: dict[str, list[int]] = {name: [] for name in segments}
        # the model calls ``self.method``, checkpointed or not, so each shadow sees every call
        self._shadows = MethodShadows()
        for name, methods in segments.items():
            for owner, method in methods:
                self._shadows.around(owner, method, lambda: self.total, functools.partial(self._saved, name))

    def _saved(self, name: str, start: int) -> None:
        self.segment_bytes[name].append(self.total - start)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.params and ptr not in self.seen:
            self.seen.add(ptr)
            self.total += storage.nbytes()
        return t

    def __enter__(self) -> SavedBytes:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)
        self._shadows.restore()


def segments_of(model: SSAModel) -> dict[str, list[tuple[Any, str]]]:
    """The checkpointed segments, as the callables :meth:`SSAModel.set_activation_checkpointing` runs
    under ``torch.utils.checkpoint``: CLIP stage i with adapter i (``trunk``), and a pixel-decoder layer
    (fusion block + deformable layer) or a frame-decoder layer (``decoders``)."""
    return {
        "trunk": [(model, "_stage_and_adapter")],
        "decoders": [(model.pixel_decoder, "_layer"), (model.frame_decoder, "_layer")],
    }


def static_bytes(model: SSAModel) -> dict[str, int]:
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    return {"weights": weights, "gradients": trainable, "adamw_states": 2 * trainable}


def measure_cpu(args: argparse.Namespace, size: int) -> dict[str, Any]:
    model = build(args.preset, size, args.max_size)
    h, w = frame_size(size)
    static = static_bytes(model)
    rows: dict[str, Any] = {"frame": [h, w], "static_bytes": static, "modes": {}}
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
    segments: dict[int, dict[str, int]] = {}  # T → largest segment of each kind, without checkpointing
    for mode in ["off"] + [m for m in args.modes if m != "off"]:  # "off" first: it measures the segments
        trunk, decoders = MODES[mode]
        model.set_activation_checkpointing(trunk=trunk, decoders=decoders)
        per_t = {}
        for t in args.measure_frames:
            frames = torch.randn(1, t, 3, h, w, generator=torch.Generator().manual_seed(t))
            counter = SavedBytes(model, segments_of(model))
            start = time.perf_counter()
            with counter, autocast:
                surrogate_loss(model(frames, ["the red square moving right"], with_frames=True))
            if mode == "off":
                segments[t] = {name: max(v, default=0) for name, v in counter.segment_bytes.items()}
            # a checkpointed segment saves nothing of its own in the forward pass (only its input); in
            # the backward pass its tensors exist again while it is recomputed, one segment at a time
            recompute = max([segments[t]["trunk"]] * trunk + [segments[t]["decoders"]] * decoders, default=0)
            per_t[t] = {"saved": counter.total, "recompute": recompute}
            logger.info("%d px, %s, T=%d: saved %.2f GB, recompute %.2f GB (%.0f s)", size, mode, t,
                        counter.total / 1e9, recompute / 1e9, time.perf_counter() - start)
            del counter
        if mode in args.modes:
            rows["modes"][mode] = {"measured": {str(t): r for t, r in per_t.items()},
                                   **_extrapolate(per_t, args.frames, static)}
    return rows


def _extrapolate(per_t: dict[int, dict[str, int]], frames: int, static: dict[str, int]) -> dict[str, Any]:
    """Saved and recompute bytes at ``frames`` frames: linear in T through the measured points."""
    ts = sorted(per_t)

    def at(key: str) -> float:
        if len(ts) == 1:
            return per_t[ts[0]][key] * frames / ts[0]  # proportional to T
        t0, t1 = ts[0], ts[-1]
        slope = (per_t[t1][key] - per_t[t0][key]) / (t1 - t0)
        return per_t[t0][key] + slope * (frames - t0)

    saved, recompute = at("saved"), at("recompute")
    estimate = sum(static.values()) + saved + recompute
    return {"frames": frames, "saved_bytes": saved, "recompute_bytes": recompute, "estimate_bytes": estimate,
            "estimate_gib": estimate / 2**30}


def measure_cuda(args: argparse.Namespace, size: int) -> dict[str, Any]:
    h, w = frame_size(size)
    rows: dict[str, Any] = {"frame": [h, w], "modes": {}}
    for mode in args.modes:
        trunk, decoders = MODES[mode]
        model = build(args.preset, size, args.max_size).cuda()
        model.set_activation_checkpointing(trunk=trunk, decoders=decoders)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        frames = torch.randn(1, args.frames, 3, h, w, device="cuda")
        dtype = torch.float16 if args.precision in ("fp16", "auto") else (
            torch.bfloat16 if args.precision == "bf16" else None)
        try:
            for _ in range(2):  # the second step has the AdamW states allocated
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss = surrogate_loss(model(frames, ["the red square moving right"], with_frames=True))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated()
            rows["modes"][mode] = {"max_memory_allocated": peak, "gib": peak / 2**30, "step_s": seconds}
            logger.info("%d px, %s: %.2f GiB, %.2f s/step", size, mode, peak / 2**30, seconds)
        except torch.cuda.OutOfMemoryError as err:
            rows["modes"][mode] = {"error": f"out of memory: {err}"[:300]}
        del model, optimizer
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ssa-convnext-large")
    p.add_argument("--sizes", type=int, nargs="+", default=[384, 448, 600], help="training short sides")
    p.add_argument("--max-size", type=int, default=1333, help="long-side cap (detectron2's default)")
    p.add_argument("--frames", type=int, default=8, help="frames of the clip (T)")
    p.add_argument("--measure-frames", type=int, nargs="+", default=[1, 2],
                   help="CPU: frames actually run; saved bytes are extrapolated linearly to --frames")
    p.add_argument("--modes", nargs="+", default=["off", "trunk", "all"], choices=list(MODES))
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto: fp16 autocast on CUDA (as finetune), fp32 on the CPU")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the report here ('-' for stdout)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    report: dict[str, Any] = {
        "preset": args.preset, "frames": args.frames, "device": device, "precision": args.precision,
        "method": "cuda max_memory_allocated" if device == "cuda" else "estimate from saved tensors",
        "measure_frames": args.measure_frames if device == "cpu" else [args.frames],
        "threads": torch.get_num_threads(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(), "sizes": {},
    }
    for size in args.sizes:
        rows = measure_cuda(args, size) if device == "cuda" else measure_cpu(args, size)
        report["sizes"][str(size)] = rows
    lines = [f"{args.preset}, one clip of {args.frames} frames, {report['method']}", "",
             "| short side | frame | " + " | ".join(args.modes) + " |",
             "|---|---|" + "---|" * len(args.modes)]
    for size, rows in report["sizes"].items():
        cells = []
        for mode in args.modes:
            r = rows["modes"][mode]
            gib = r.get("gib", r.get("estimate_gib"))
            cells.append("error" if gib is None else f"{gib:.1f} GiB")
        lines.append(f"| {size} | {rows['frame'][1]}x{rows['frame'][0]} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")


if __name__ == "__main__":
    main()
