"""The GPU check of the paper's network, as one script for a lent machine (< 8 minutes on one H200).

    python benchmarks/gpu_check.py --json gpu_check.json            # CUDA: the real check
    python benchmarks/gpu_check.py --smoke --json smoke.json        # CPU, ssa-tiny, seconds (tests)

It writes a 720p H.264 MP4 (moving shapes, ``benchmarks/pipeline.py``'s generator) and, with the paper
preset (random CLIP weights: the cost of the real architecture; every trainable weight perturbed so that
the masks are not trivial) at short side 448, one expression, measures:

  fps_fp16, fps_fp32     end to end from the MP4 (decode → preprocess → model → masks), median of repeats
  fp16_speedup           fps_fp16 / fps_fp32 (target >= 1.8)
  mask_iou_fp16_fp32     mean over frames of the IoU of the fp16 and fp32 masks (target >= 0.99; a frame
                         where both are empty counts 1), with the masks' mean area
  logit_iou_median       the same on the best fp32 query's mask logits of the first chunk, thresholded
                         at the fp32 logits' median (random weights may leave the pipeline's masks
                         empty; this compares half of the pixels), and at 0
  trunk_tflops           the frozen CLIP trunk alone on the same frames in fp16: FLOPs / seconds
  stages_fp16            seconds per stage (ssa.profiling.StageTimer, which synchronises at each boundary)
  profile_fp16           torch.profiler's table of the top ops (device time) of one fp16 run
  options                each of channels_last, compile (torch.compile of the trunk stages, the pixel
                         and frame decoders), cudagraphs (the same with mode="reduce-overhead"): fps and
                         its gain over plain fp16, or the error it raised

``--smoke`` runs the same code paths on the CPU with ``ssa-tiny``, a few small frames, bf16 in place of
fp16, and only the options named by ``--options``: a test exercises the script without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import EXPRESSIONS, write_video  # noqa: E402

from ssa import SSAConfig, SSAModel, SSAPipeline  # noqa: E402
from ssa.io import read_frames  # noqa: E402
from ssa.preprocessing import preprocess_frames  # noqa: E402
from ssa.profiling import StageTimer  # noqa: E402

logger = logging.getLogger("gpu_check")

OPTIONS = ("channels_last", "compile", "cudagraphs")


def build_model(preset: str, short_side: int, seed: int = 0) -> SSAModel:
    """The preset with random weights, every trainable one perturbed (zero-initialised layers would
    make the outputs trivial), CLIP random too (no download)."""
    torch.manual_seed(seed)
    overrides: dict[str, Any] = {"image_size": short_side, "max_size": short_side * 16 // 9 + 32}
    if preset != "ssa-tiny":
        overrides["clip_pretrained"] = None
    model = SSAModel(SSAConfig.from_preset(preset, **overrides))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                scale = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.02
                p.add_(torch.randn(p.shape, generator=g) * 0.5 * scale)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fps(pipe: SSAPipeline, video: str, frames: int, repeats: int) -> tuple[float, list[Any]]:
    """Median frames/s of ``repeats`` end-to-end runs (after one warm-up run), and the last results."""
    pipe(video, EXPRESSIONS[:1], progress=False, max_frames=min(frames, 2 * pipe.chunk_size))  # warm-up
    times, results = [], None
    for _ in range(repeats):
        sync(pipe.device)
        start = time.perf_counter()
        results = pipe(video, EXPRESSIONS[:1], progress=False)
        sync(pipe.device)
        times.append(time.perf_counter() - start)
    return frames / statistics.median(times), results


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of IoU(a_t, b_t); a frame where both masks are empty counts 1."""
    inter = np.logical_and(a, b).reshape(len(a), -1).sum(1)
    union = np.logical_or(a, b).reshape(len(a), -1).sum(1)
    return float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).mean())


def logit_iou(pipe32: SSAPipeline, pipe16: SSAPipeline, video: str, max_frames: int) -> dict[str, float]:
    """fp16 against fp32 on the model's own outputs, where random weights make the pipeline's masks
    trivial: the best fp32 query's mask logits (T, H/4, W/4) in both precisions, thresholded at the
    fp32 logits' median (half the pixels) and at 0, mean IoU over frames; and the largest logit gap."""
    frames = [f.image for f in read_frames(video, max_frames=max_frames)]
    pixels = preprocess_frames(frames, pipe32.config.image_size, pipe32.config.max_size).to(pipe32.device)
    outs = []
    for pipe in (pipe32, pipe16):
        with torch.no_grad(), pipe._autocast():
            outs.append(pipe.model(pixels, EXPRESSIONS[0], with_frames=False))
    best = int(outs[0].class_logits[0, :, 0].float().argmax())
    a, b = (o.mask_logits[0, best].float().cpu() for o in outs)  # (T, h4, w4)
    median = float(a.median())
    return {"logit_iou_median": mask_iou((a > median).numpy(), (b > median).numpy()),
            "logit_iou_zero": mask_iou((a > 0).numpy(), (b > 0).numpy()),
            "logit_area_zero_fp32": float((a > 0).float().mean()),
            "logit_max_abs_diff": float((a - b).abs().max()), "logit_std_fp32": float(a.std()),
            "best_query_agrees": best == int(outs[1].class_logits[0, :, 0].float().argmax())}


def trunk_tflops(pipe: SSAPipeline, video: str, repeats: int) -> dict[str, float]:
    """The frozen CLIP trunk alone (stem + 4 stages) on the video's frames, in the pipeline's chunks
    and precision: FLOPs (torch.utils.flop_counter) / seconds."""
    from torch.utils.flop_counter import FlopCounterMode

    frames = [f.image for f in read_frames(video)]
    pixels = preprocess_frames(frames, pipe.config.image_size, pipe.config.max_size)
    h, w = pixels.shape[-2:]
    pixels = torch.nn.functional.pad(pixels, (0, -w % 32, 0, -h % 32)).to(pipe.device)
    chunks = [pixels[s:s + pipe.chunk_size] for s in range(0, len(pixels), pipe.chunk_size)]
    backbone = pipe.model.backbone
    with torch.no_grad(), pipe._autocast():
        with FlopCounterMode(display=False) as counter:
            backbone.encode_image(chunks[0])
        flops = counter.get_total_flops() * len(pixels) / len(chunks[0])
        backbone.encode_image(chunks[0])  # warm-up
        times = []
        for _ in range(repeats):
            sync(pipe.device)
            start = time.perf_counter()
            for chunk in chunks:
                backbone.encode_image(chunk)
            sync(pipe.device)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"trunk_flops": flops, "trunk_s": seconds, "trunk_tflops": flops / seconds / 1e12,
            "trunk_fps": len(pixels) / seconds}


def profile_table(pipe: SSAPipeline, video: str, rows: int = 25) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if pipe.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        pipe(video, EXPRESSIONS[:1], progress=False)
        sync(pipe.device)
    key = "self_cuda_time_total" if pipe.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


def apply_option(model: SSAModel, option: str) -> SSAModel:
    """The model with ``option`` applied (in place)."""
    if option == "channels_last":
        return model.to(memory_format=torch.channels_last)
    mode = {"compile": "default", "cudagraphs": "reduce-overhead"}[option]
    trunk = model.backbone.clip.visual.trunk
    for i in range(len(trunk.stages)):
        trunk.stages[i] = torch.compile(trunk.stages[i], mode=mode, dynamic=False)
    trunk.stem = torch.compile(trunk.stem, mode=mode, dynamic=False)
    model.pixel_decoder = torch.compile(model.pixel_decoder, mode=mode, dynamic=False)
    model.frame_decoder = torch.compile(model.frame_decoder, mode=mode, dynamic=False)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, ssa-tiny, few small frames (a test)")
    p.add_argument("--preset", default=None, help="default: ssa-convnext-large (ssa-tiny with --smoke)")
    p.add_argument("--frames", type=int, default=None, help="frames of the MP4 (default 240; 6 with --smoke)")
    p.add_argument("--height", type=int, default=None, help="MP4 lines (default 720; 96 with --smoke)")
    p.add_argument("--short-side", type=int, default=None, help="model short side (default 448; 64 smoke)")
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--options", nargs="*", default=None, choices=OPTIONS,
                   help=f"options to time (default: all of {', '.join(OPTIONS)}; none with --smoke)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="skip the remaining options once this many seconds have passed")
    p.add_argument("--json", type=Path, default=None, help="write the figures here ('-' for stdout)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    began = time.perf_counter()

    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --smoke for the CPU smoke run")
    device = torch.device("cpu" if smoke else "cuda")
    half = "bf16" if smoke else "fp16"
    preset = args.preset or ("ssa-tiny" if smoke else "ssa-convnext-large")
    frames = args.frames or (6 if smoke else 240)
    height = args.height or (96 if smoke else 720)
    short = args.short_side or (64 if smoke else 448)
    options = args.options if args.options is not None else ([] if smoke else list(OPTIONS))
    report: dict[str, Any] = {
        "smoke": smoke, "preset": preset, "device": torch.cuda.get_device_name() if not smoke else "cpu",
        "frames": frames, "video": f"{height * 16 // 9 // 2 * 2}x{height} H.264", "short_side": short,
        "chunk_size": args.chunk_size, "half": half, "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "machine": platform.node(), "targets": {
            "fps_fp16": ">= 150", "fp16_speedup": ">= 1.8", "mask_iou_fp16_fp32": ">= 0.99"},
    }

    def write() -> None:
        if args.json is None:
            return
        text = json.dumps(report, indent=2, default=str)
        if str(args.json) == "-":
            print(text)
        else:
            args.json.write_text(text + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        video = str(write_video(Path(tmp) / "input.mp4", frames, height))
        model = build_model(preset, short)
        pipes = {prec: SSAPipeline(model, device=device, precision=prec, chunk_size=args.chunk_size)
                 for prec in ("fp32", half)}
        fps32, res32 = fps(pipes["fp32"], video, frames, args.repeats)
        fps16, res16 = fps(pipes[half], video, frames, args.repeats)
        masks32, masks16 = res32[0].masks, res16[0].masks
        report.update({
            "fps_fp32": fps32, f"fps_{half}": fps16, "fps_fp16": fps16 if half == "fp16" else None,
            "fp16_speedup": fps16 / fps32,
            "mask_iou_fp16_fp32": mask_iou(masks16, masks32),
            "mask_area_fp32": float(masks32.mean()), f"mask_area_{half}": float(masks16.mean()),
        })
        report.update(logit_iou(pipes["fp32"], pipes[half], video, args.chunk_size))
        logger.info("fp32 %.1f fps, %s %.1f fps (x%.2f), mask IoU %.4f, logit-median IoU %.4f", fps32, half,
                    fps16, fps16 / fps32, report["mask_iou_fp16_fp32"], report["logit_iou_median"])
        report.update(trunk_tflops(pipes[half], video, args.repeats))
        with StageTimer(pipes[half]) as timer:
            pipes[half](video, EXPRESSIONS[:1], progress=False)
        report[f"stages_{half}"] = timer.stages()
        report[f"frames_wait_{half}"] = timer.totals.get("frames_wait", 0.0)
        report[f"profile_{half}"] = profile_table(pipes[half], video)
        report["met"] = {
            "fps_fp16": report["fps_fp16"] is not None and report["fps_fp16"] >= 150,
            "fp16_speedup": report["fp16_speedup"] >= 1.8,
            "mask_iou_fp16_fp32": report["mask_iou_fp16_fp32"] >= 0.99,
            "logit_iou_median": report["logit_iou_median"] >= 0.99,
        }
        write()  # the main figures are safe before the options are tried

        report["options"] = {}
        for option in options:
            if time.perf_counter() - began > args.budget_s:
                report["options"][option] = {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
                continue
            start = time.perf_counter()
            try:
                variant = apply_option(build_model(preset, short), option)
                pipe = SSAPipeline(variant, device=device, precision=half, chunk_size=args.chunk_size)
                value, results = fps(pipe, video, frames, args.repeats)
                report["options"][option] = {
                    "fps": value, "gain": value / fps16,
                    "mask_iou_vs_plain": mask_iou(results[0].masks, masks16),
                    "seconds_with_warmup": time.perf_counter() - start}
                logger.info("%s: %.1f fps (x%.2f)", option, value, value / fps16)
            except Exception as err:  # an option that fails is a figure too
                report["options"][option] = {"error": f"{type(err).__name__}: {err}"[:500],
                                             "trace": traceback.format_exc(limit=3)[-1500:]}
                logger.warning("%s failed: %s", option, err)
            finally:
                with contextlib.suppress(Exception):
                    torch._dynamo.reset()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        report["total_s"] = time.perf_counter() - began
        write()
    summary = {k: report[k] for k in ("fps_fp32", f"fps_{half}", "fp16_speedup", "mask_iou_fp16_fp32",
                                      "logit_iou_median", "trunk_tflops", "total_s")}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
