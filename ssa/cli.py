"""Command line: ``ssa segment | synth | evaluate | train | convert``.

``ssa segment VIDEO "expression" [more expressions] --model NAME_OR_DIR --out DIR`` segments a video,
``ssa segment --manifest FILE.jsonl`` many (also under torchrun);
``ssa synth --out DIR`` writes a synthetic split;
``ssa convert model_final.pth --out DIR`` converts the authors' checkpoint; see ``ssa COMMAND --help``.

Start-up is light: this module imports neither torch nor open_clip nor PyAV. Arguments are parsed and
the input and output paths checked first; the heavy modules are imported only when the work begins.
Ctrl-C ends a command with one line and exit code 130; outputs are written whole or not at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssa.version import __version__

__all__ = ["main"]

logger = logging.getLogger("ssa")

DEMO_MODEL = "ssa-tiny-synthetic"
"""The default --model: the demo model bundled in the package (ssa.hub.DEFAULT_MODEL)."""

_DEMO_HELP = (
    f"default: {DEMO_MODEL}, the bundled demo model, trained only on synthetic coloured shapes: its masks "
    "on real videos are meaningless. For real videos convert the authors' checkpoint "
    "(ssa convert model_final.pth --out DIR) and pass --model DIR"
)

_OFFICIAL_DATASETS = ("davis", "mevis", "ytvos")
"""The keys of ssa.official.OFFICIAL_DATASETS (that module imports torch; a test keeps them equal)."""

_OVERWRITE_HINT = "pass --overwrite to replace it"


def _selection_options(p: argparse.ArgumentParser) -> None:
    """--mode and --threshold: which objects a model's result keeps (SSAPipeline's options)."""
    p.add_argument("--mode", choices=["multi", "single"], default=None,
                   help="multi: every object scoring above --threshold (MeViS); single: the best one "
                        "(Ref-YouTube-VOS, Ref-DAVIS); default: the model's own (its config.selection)")
    p.add_argument("--threshold", type=float, default=None,
                   help="score threshold of --mode multi (default: the model's, 0.5 for the official models)")


def _segment_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment the object(s) that expressions refer to in a video, or in many (--manifest)",
        description=(
            "Segment the object(s) each expression refers to in VIDEO. Writes, per expression i, "
            "OUT/<i>/<frame>.png (palette PNGs, MeViS/DAVIS layout) and OUT/<i>.json (COCO RLE per "
            "frame), plus OUT/expressions.json listing the expressions and their object scores. "
            "With --manifest FILE.jsonl (no VIDEO, EXPRESSION or --out): segment every video it lists, "
            'one JSON object per line: {"video": PATH, "expressions": [...] or "...", "output": DIR} '
            "plus optional fps/stride/start/end/max_frames (relative paths: from the manifest's folder; "
            "an output outside that folder needs --allow-outside). "
            "Entries with a finished output are skipped (an interrupted run resumes); a failing entry "
            "is logged and the others go on (exit code 1 if any failed). Under torchrun entry i is done "
            "by rank i % WORLD_SIZE, each rank on cuda:LOCAL_RANK when CUDA is available. Every entry "
            "appends a JSON record to a progress log shared by the ranks (--progress-log). The other options "
            "apply to every entry; an entry's own frame options override --fps/--stride/--start/--end/"
            "--max-frames. "
            "Every output path is checked before any video is decoded or the model loaded; a run writes "
            "all its outputs (masks, overlays) or none of them. "
            f"Without --model the demo model {DEMO_MODEL} is used: trained only on synthetic shapes, it "
            "is useless on real video (see --model)."
        ),
    )
    p.add_argument("video", nargs="?", help="video file, folder of frames (not with --manifest)")
    p.add_argument("expressions", nargs="*",
                   help="one or more referring expressions (quote each; not with --manifest)")
    p.add_argument("--manifest", type=Path, default=None, metavar="FILE",
                   help="JSON Lines file listing videos, expressions and output folders to segment")
    p.add_argument("--progress-log", "--log", dest="log", type=Path, default=None, metavar="PATH",
                   help="progress log of --manifest (default: <manifest dir>/<stem>.progress.jsonl); "
                        "under torchrun spell it --progress-log (torchrun reads --log as its own --log-dir)")
    p.add_argument("--model", default=DEMO_MODEL,
                   help="bundled name, Hub repo id, local checkpoint directory or official .pth file "
                        f"({_DEMO_HELP})")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (must not exist or be empty; required without --manifest)")
    p.add_argument("--overlay", type=Path, default=None,
                   help="also write an overlay MP4 (with several expressions: NAME_<i>.mp4)")
    p.add_argument("--device", default=None,
                   help="cuda, cuda:1, cpu (default: cuda if available; cuda:LOCAL_RANK with --manifest)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_const", dest="precision", const="fp16",
                           help="fp16 autocast (CUDA; the default there)")
    precision.add_argument("--bf16", action="store_const", dest="precision", const="bf16",
                           help="bf16 autocast")
    precision.add_argument("--fp32", action="store_const", dest="precision", const="fp32",
                           help="full precision (the default on CPU)")
    p.add_argument("--fps", type=float, default=None, help="sample frames at this rate")
    p.add_argument("--stride", type=int, default=1, help="keep every k-th frame")
    p.add_argument("--start", type=float, default=None, help="start time in seconds")
    p.add_argument("--end", type=float, default=None, help="end time in seconds")
    p.add_argument("--max-frames", type=int, default=None, help="process at most this many frames")
    _selection_options(p)
    p.add_argument("--chunk-size", type=int, default=16, help="frames per chunk (memory vs speed)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (with --manifest: redo finished entries too); only "
                        "folders ssa wrote (expressions.json and nothing else) are replaced, never the "
                        "current or home directory or a folder holding an input")
    p.add_argument("--allow-outside", action="store_true",
                   help="with --manifest: allow outputs outside the manifest's folder (absolute paths, "
                        "'..', '~')")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_segment)


def _check_segment_args(args: argparse.Namespace) -> None:
    """The combinations argparse cannot express: a manifest or a video, and what goes with each."""
    if args.manifest is not None:
        if args.video is not None:
            raise ValueError("give either --manifest or a VIDEO with expressions, not both")
        for flag, value in (("--out", args.out), ("--overlay", args.overlay)):
            if value is not None:
                raise ValueError(f"{flag} does not apply to --manifest (each entry names its output)")
        return
    if args.video is None:
        raise ValueError("segment needs a VIDEO and expressions, or --manifest FILE")
    if not args.expressions:
        raise ValueError("segment needs at least one expression after VIDEO")
    if args.out is None:
        raise ValueError("segment needs --out DIR (or --manifest FILE)")
    if args.log is not None:
        raise ValueError("--progress-log applies only to --manifest")
    if args.allow_outside:
        raise ValueError("--allow-outside applies only to --manifest")


_PATH_LIKE = re.compile(r"^(\.{1,2}([/\\]|$)|~|/)|\\")  # as ssa.hub reads a --model that is a path


def _check_model_arg(model: str) -> None:
    """A --model that can only be a local path (./x, ../x, ~/x, /x, *.pth) must exist: said before the
    heavy imports. Names and Hub repo ids are resolved when the model is loaded."""
    path = Path(model).expanduser()
    if (_PATH_LIKE.search(model) or model.lower().endswith((".pth", ".pt"))) and not path.exists():
        raise FileNotFoundError(f"--model {model}: no such checkpoint directory or file")


def _check_segment_inputs(args: argparse.Namespace) -> None:
    if not Path(args.video).exists():
        raise FileNotFoundError(f"video not found: {args.video}")
    _check_model_arg(args.model)


def _overlay_paths(overlay: Path, count: int) -> list[Path]:
    """--overlay for ``count`` expressions: the path itself for one, NAME_<i>.mp4 for several."""
    if count == 1:
        return [overlay]
    return [overlay.with_name(f"{overlay.stem}_{i}{overlay.suffix or '.mp4'}") for i in range(count)]


def _check_segment_outputs(args: argparse.Namespace) -> None:
    """Before any decoding or model loading: --out and --overlay are places ssa may write (ssa.io's rule:
    its own outputs only, never the input video or a folder holding it, the current or home directory)."""
    import os

    from ssa.io import SEGMENTATION_LAYOUT, check_output_dir, check_output_file

    hint = _OVERWRITE_HINT
    inputs = [Path(args.video)]
    check_output_dir(args.out, overwrite=args.overwrite, layout=SEGMENTATION_LAYOUT, inputs=inputs, hint=hint)
    if args.overlay is None:
        return
    out = Path(os.path.realpath(args.out))
    for path in _overlay_paths(args.overlay, len(args.expressions)):
        real = Path(os.path.realpath(path))
        if real == out or out in real.parents:
            raise ValueError(f"--overlay {path} lies inside --out {args.out}, which ssa writes (and "
                             "replaces) as a whole; put the overlay elsewhere")
        check_output_file(path, overwrite=args.overwrite, inputs=inputs, hint=hint)


def _segment(args: argparse.Namespace) -> int:
    _check_segment_args(args)
    call_options = {"mode": args.mode, "threshold": args.threshold, "stride": args.stride, "fps": args.fps,
                    "start": args.start, "end": args.end, "max_frames": args.max_frames}
    if args.manifest is not None:
        from ssa.manifest import segment_manifest

        summary = segment_manifest(
            args.manifest, args.model, log=args.log, overwrite=args.overwrite,
            allow_outside=args.allow_outside, progress=not args.no_progress, device=args.device,
            precision=args.precision, chunk_size=args.chunk_size, **call_options,
        )
        return 0 if summary.ok else 1

    # everything that can be checked without the model, before importing torch and loading it
    _check_segment_inputs(args)
    _check_segment_outputs(args)
    from ssa.pipeline import SSAPipeline

    pipe = SSAPipeline.from_pretrained(args.model, device=args.device, precision=args.precision,
                                       chunk_size=args.chunk_size)
    count = len(args.expressions)
    logger.info("segmenting %s: %d expression%s on %s", args.video, count, "s" * (count != 1), pipe.device)
    results = pipe(args.video, list(args.expressions), progress=not args.no_progress, **call_options)
    _write_segment_outputs(args, results)
    return 0


def _new_parents(path: Path) -> list[Path]:
    """Create the missing folders above ``path``; return them, outermost first."""
    missing = [p for p in Path(os.path.abspath(path)).parents if not p.exists()][::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    return missing


def _write_segment_outputs(args: argparse.Namespace, results: list[Any]) -> None:
    """All the outputs or none: each overlay is encoded to a hidden temporary file beside its place
    (ssa.io.atomic_write), then the masks folder appears (atomically, ssa.io.write_segmentation), then
    the overlays are renamed into place. On any failure or Ctrl-C before that the temporary files and
    the folders made for them are removed."""
    from ssa.io import atomic_write, write_segmentation

    progress = not args.no_progress
    inputs = [Path(args.video)]
    made: list[Path] = []
    try:
        made += _new_parents(args.out)
        with contextlib.ExitStack() as overlays:  # each renamed into place on leaving, after the masks
            if args.overlay is not None:
                for result, path in zip(results, _overlay_paths(args.overlay, len(results)), strict=True):
                    made += _new_parents(path)
                    tmp = overlays.enter_context(atomic_write(
                        path, overwrite=args.overwrite, inputs=inputs, hint=_OVERWRITE_HINT,
                        suffix=path.suffix or ".mp4"))
                    result.save_overlay(tmp, progress=progress)
            write_segmentation([r.to_expression_masks() for r in results], args.out,
                               overwrite=args.overwrite, inputs=inputs, progress=progress)
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty
        raise
    logger.info("wrote %d expression(s) to %s", len(results), args.out)
    for path in _overlay_paths(args.overlay, len(results)) if args.overlay is not None else ():
        logger.info("wrote overlay %s", path)


def _synth_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic motion-referring split (MeViS layout)",
        description=(
            "Write a deterministic synthetic split of small videos of moving shapes with referring "
            "expressions (motion-only pairs, multi-object, static/moving, stop, enter/leave, occlusion) "
            "in the MeViS layout: OUT/JPEGImages, OUT/meta_expressions.json, OUT/mask_dict.json."
        ),
    )
    p.add_argument("--out", required=True, type=Path, help="output directory (must not exist or be empty)")
    p.add_argument("--videos", type=int, default=200, help="number of videos")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (same seed, same split)")
    p.add_argument("--frames", type=int, default=12, help="frames per video")
    p.add_argument("--height", type=int, default=96, help="frame height")
    p.add_argument("--width", type=int, default=128, help="frame width")
    p.add_argument("--mp4", action="store_true", help="also write OUT/videos/<video>.mp4 (H.264)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUT written by ssa synth (and holding nothing else)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from ssa.data.synthetic import write_split

    write_split(args.out, args.videos, args.seed, num_frames=args.frames, height=args.height,
                width=args.width, mp4=args.mp4, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="J, F and J&F of a model or of saved predictions on a MeViS-layout split",
        description=(
            "Score a model (--model) or a predictions folder (--predictions, <video>/<exp_id>/<frame>.png) "
            "on a MeViS-layout split with ground truth (JPEGImages/, meta_expressions.json, mask_dict.json). "
            "Writes OUT/per_expression.csv and OUT/summary.json (and, for a model, the predictions in "
            "OUT/predictions/<video>/<exp_id>/<frame>.png) and prints the summary JSON. An interrupted "
            "run resumes where it stopped. Under torchrun the videos are shared among the ranks."
        ),
    )
    p.add_argument("--data", required=True, type=Path, help="the split directory (MeViS layout)")
    p.add_argument("--out", required=True, type=Path,
                   help="output directory: new, empty or an earlier evaluation's (holding nothing else)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="bundled name, Hub repo id or local checkpoint directory to run")
    source.add_argument("--predictions", type=Path, help="folder of predicted masks to score")
    p.add_argument("--workers", type=int, default=0,
                   help="processes scoring --predictions in parallel (default 0: in this process)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    _selection_options(p)
    p.add_argument("--no-resume", action="store_true",
                   help="score every video again, even those an interrupted run finished (needed when the "
                        "model, the data or the options changed since: resuming then refuses)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    if not args.data.is_dir():
        raise FileNotFoundError(f"--data {args.data}: no such split directory")
    if args.predictions is not None:
        if not args.predictions.is_dir():
            raise FileNotFoundError(f"predictions directory not found: {args.predictions}")
        source: str | Path = args.predictions
    else:
        model = Path(args.model)
        if model.is_dir() and not (model / "config.json").is_file():
            raise FileNotFoundError(f"{model} is not a model checkpoint directory (no config.json)")
        _check_model_arg(args.model)
        source = args.model
    from ssa.eval import evaluate

    summary = evaluate(
        source, args.data, out_dir=args.out, workers=args.workers, progress=not args.no_progress,
        resume=not args.no_resume, device=args.device, mode=args.mode, threshold=args.threshold,
    )
    if os.environ.get("RANK", "0") == "0":
        sys.stdout.write(json.dumps(dict(summary), indent=2) + "\n")
    return 0


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model on a MeViS-layout dataset (also under torchrun)",
        description=(
            "Fine-tune SSA with ssa.train.finetune. CONFIG is a JSON file with 'model' (preset name, "
            "checkpoint dir or Hub repo id), 'train_data', 'output_dir', optionally 'val_data', and any "
            "TrainConfig field (iterations, batch_size, lr, ..., 'loss': {...}). Command-line options "
            "override the file. Run under torchrun for DDP. A preset without pretrained CLIP weights "
            "(ssa-tiny) trains with a random frozen CLIP, which the command warns about: pretrain its "
            "text tower first (README, Training). With --resume, the fields given must equal "
            "the checkpoint's training config (the others are taken from it); a difference is refused, "
            "naming the fields, unless they are allowed with --allow-change."
        ),
    )
    p.add_argument("--config", type=Path, default=None, help="JSON training config")
    p.add_argument("--model", default=None, help="preset name, checkpoint dir or Hub repo id")
    p.add_argument("--data", default=None, help="training split (MeViS layout)")
    p.add_argument("--val-data", default=None, help="validation split evaluated during training")
    p.add_argument("--out", default=None,
                   help="output directory: new or empty (with --resume: an earlier run's, nothing else)")
    p.add_argument("--iterations", type=int, default=None,
                   help="optimiser steps in all (default: the config's, else 75,000 as the official recipe)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per step over all ranks")
    p.add_argument("--lr", type=float, default=None,
                   help="base learning rate of AdamW (default: the config's, else 5e-5 as officially; "
                        "the adapters train at 0.1x)")
    p.add_argument("--device", default=None, help="cuda, cpu (default: cuda if available)")
    p.add_argument("--activation-checkpointing", choices=("off", "all", "trunk", "decoders"), default=None,
                   help="recompute activations in backward to fit a smaller GPU: the CLIP stages with "
                        "their adapters (trunk), the pixel and frame decoder layers (decoders) or both "
                        "(all); same gradients, more compute (default: off)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --out that reads back whole (a damaged one "
                        "is skipped with a warning), with its training config: options given must equal it")
    p.add_argument("--allow-change", action="append", default=[], metavar="FIELD[,FIELD]",
                   help="with --resume: let these fields differ from the checkpoint's config; only "
                        "iterations, eval_every, log_every, save_every, keep_checkpoints and num_workers "
                        "can (e.g. --allow-change iterations to extend a run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    values: dict = {}
    if args.config is not None:
        if not args.config.is_file():
            raise FileNotFoundError(f"training config {args.config} not found")
        try:
            values = json.loads(args.config.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{args.config} is not valid JSON: {e}") from e
        if not isinstance(values, dict):
            raise ValueError(f"{args.config} must hold a JSON object")
    for key, value in (("model", args.model), ("train_data", args.data), ("val_data", args.val_data),
                       ("output_dir", args.out), ("iterations", args.iterations),
                       ("batch_size", args.batch_size), ("lr", args.lr)):
        if value is not None:
            values[key] = value
    if args.activation_checkpointing is not None:
        values["activation_checkpointing"] = {"off": False, "all": True}.get(
            args.activation_checkpointing, args.activation_checkpointing)
    missing = [k for k in ("model", "train_data", "output_dir") if k not in values]
    if missing:
        raise ValueError(f"training needs {missing} (in --config or as --model/--data/--out)")
    model, data, out = values.pop("model"), values.pop("train_data"), values.pop("output_dir")
    val = values.pop("val_data", None)
    if not Path(data).exists():
        raise FileNotFoundError(f"training data {data} does not exist")
    output = Path(out)
    if not args.resume and output.is_dir() and any(output.iterdir()):  # said before importing torch
        raise FileExistsError(f"output directory {out} already exists and is not empty; choose a new "
                              "--out or pass --resume to continue the run it holds")
    allow = [name.strip() for item in args.allow_change for name in item.split(",") if name.strip()]
    if allow and not args.resume:
        raise ValueError("--allow-change applies only to --resume")
    from ssa.train import TrainConfig, finetune

    TrainConfig.from_dict(values)  # names a bad field before any work
    # the fields as given (not a whole config): a resumed run takes the others from its checkpoint
    finetune(model, data, output_dir=out, val_data=val, resume=args.resume, allow_changes=allow,
             device=args.device, progress=not args.no_progress, **values)
    return 0


_MEVIS_JOINT_JF = 49.37
"""J&F on MeViS val of the authors' MeViS + Ref-YouTube-VOS joint checkpoint."""


def _convert_parser(sub: argparse._SubParsersAction) -> None:
    from ssa.config import PRESETS  # no torch there

    p = sub.add_parser(
        "convert",
        help="convert the authors' detectron2 checkpoint (model_final.pth) into an ssa checkpoint",
        description=(
            "Convert an official SSA checkpoint (github.com/Tavarich/SSA, a detectron2 model_final.pth) "
            "into an ssa checkpoint directory: OUT/config.json, OUT/model.safetensors (all weights, the "
            "frozen CLIP included, so it loads offline) and OUT/README.md (a model card naming the source "
            "file and its sha256). The file is read with torch.load(weights_only=True): nothing in it is "
            "unpickled. Every tensor must find its place in the network of the config, shapes equal."
        ),
    )
    p.add_argument("checkpoint", type=Path, help="the official checkpoint file (model_final.pth)")
    p.add_argument("--out", required=True, type=Path, help="output directory (must not exist or be empty)")
    p.add_argument("--dataset", choices=_OFFICIAL_DATASETS, default=None,
                   help="the benchmark the checkpoint was trained for: sets the official test-time short "
                        "side and query selection (default: the config's)")
    network = p.add_mutually_exclusive_group()
    network.add_argument("--preset", choices=sorted(PRESETS), default=None,
                         help="the checkpoint's network as a preset (default: ssa-convnext-large, the "
                              "network of every released checkpoint)")
    network.add_argument("--config", type=Path, default=None, metavar="CONFIG.json",
                         help="the checkpoint's network as an SSAConfig JSON file")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    p.set_defaults(func=_convert)


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert(args: argparse.Namespace) -> int:
    from ssa.config import SSAConfig

    # Everything cheap first: the conversion reads and builds the whole network.
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {args.checkpoint}")
    if args.out.exists() and not args.out.is_dir():
        raise NotADirectoryError(f"--out {args.out} exists and is not a directory")
    if args.out.is_dir() and any(args.out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"--out {args.out} exists and is not empty; pass --overwrite to write into it")
    config = None
    if args.config is not None:
        if not args.config.is_file():
            raise FileNotFoundError(f"config file not found: {args.config}")
        config = SSAConfig.from_json(args.config)
    elif args.preset is not None:
        config = SSAConfig.from_preset(args.preset)

    from ssa import convert, hub

    model = convert.convert_official(args.checkpoint, config, dataset=args.dataset)
    source: dict = {"checkpoint": args.checkpoint.name, "sha256": _sha256(args.checkpoint)}
    if args.dataset is not None:
        release = convert.OFFICIAL_DATASETS[args.dataset]
        source.update(dataset=release.name, benchmark=release.benchmark, jf=release.jf)
        if args.dataset == "mevis":
            source["note"] = (
                f"{release.jf} is the MeViS checkpoint's J&F; the authors' MeViS + Ref-YouTube-VOS joint "
                f"checkpoint reports {_MEVIS_JOINT_JF} on {release.benchmark}."
            )
    out = hub.save_pretrained(model, args.out, weights="full", overwrite=args.overwrite, source=source)
    logger.info("converted %s (sha256 %s) to %s", args.checkpoint, source["sha256"], out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssa",
        description="SSA: referring video object segmentation (Semantic and Sequential Alignment).",
        epilog=(f"Without --model, segment uses the bundled demo model {DEMO_MODEL}: trained only on "
                "synthetic coloured shapes, it is useless on real video. For real videos convert the "
                "authors' checkpoint: ssa convert model_final.pth --out DIR, then --model DIR "
                "(README: Using the authors' checkpoints)."),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _segment_parser(sub)
    _evaluate_parser(sub)
    _synth_parser(sub)
    _train_parser(sub)
    _convert_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `segment VIDEO --opt X "expr"`: argparse gives the optional EXPRESSION list its (empty) share
        # before the options, so expressions after them come back here; anything else is an error.
        if args.command == "segment" and args.video is not None and not any(a.startswith("-") for a in extra):
            args.expressions = [*args.expressions, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    with warnings.catch_warnings():
        warnings.showwarning = _log_warning
        try:
            return args.func(args)
        except KeyboardInterrupt:
            logger.error("interrupted")
            return 130
        except (FileNotFoundError, FileExistsError, ValueError, TypeError, OSError) as err:
            logger.error("%s", err)
            return 2


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """Warnings as one log line each (the demo model's, a truncated video's, ...), without the source
    line Python's default display adds."""
    logger.warning("%s", message)


if __name__ == "__main__":
    sys.exit(main())
