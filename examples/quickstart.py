"""Quick start: make a synthetic video, segment it with the bundled demo model, write an overlay MP4 and
palette PNGs, and score the masks against the video's ground truth.

    python examples/quickstart.py                 # writes into a new temporary folder (printed)
    python examples/quickstart.py --out DIR --seed 7

Runs offline on a CPU in a few seconds: the demo model ``ssa-tiny-synthetic`` ships inside the package.
It knows only synthetic coloured shapes (it warns so when loaded); for real videos see the README,
"Using the authors' checkpoints". The video holds two shapes that look exactly alike and move
differently, so the expressions about them can only be resolved over time. DIR is written whole or not
at all; an existing one is replaced only with --overwrite (and only if this script wrote it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from ssa import SSAPipeline
from ssa.data.synthetic import generate_video
from ssa.eval import jf
from ssa.io import MASKS_LAYOUT, OutputLayout, atomic_output_dir, check_output_dir, write_overlay_video

LAYOUT = OutputLayout("quick start output", markers=("video.mp4",),
                      files=(r"video\.mp4", r"overlay_\d+\.mp4"), dirs=((r"masks_\d+", MASKS_LAYOUT),))
"""What this script writes into --out (what --overwrite may replace)."""


def run(args: argparse.Namespace) -> None:
    out = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="ssa-quickstart-"))
    options = {"overwrite": args.overwrite, "layout": LAYOUT, "hint": "pass --overwrite to replace it"}
    check_output_dir(out, **options)  # before the model is loaded
    pipe = SSAPipeline.from_pretrained(args.model)

    # 1. a synthetic video (12 frames, 96x128) with expressions and their ground-truth masks
    video = generate_video(args.seed, 0, story="twins")
    with atomic_output_dir(out, **options) as tmp:  # appears only when complete
        source = write_overlay_video(tmp / "video.mp4", list(video.frames), [None] * len(video.frames),
                                     fps=10)

        # 2. segment it: one decode and one visual pass for all the expressions
        expressions = [e.text for e in video.expressions]
        results = pipe(source, expressions, progress=False)

        # 3. write the masks and score them
        print(f"{out / 'video.mp4'}: {len(video.frames)} frames, {len(expressions)} expressions")
        for i, (expression, result) in enumerate(zip(video.expressions, results, strict=True)):
            result.save_overlay(tmp / f"overlay_{i}.mp4")
            result.save_pngs(tmp / f"masks_{i}")
            scores = jf(video.target(expression), result.masks)
            tag = " (motion only)" if expression.motion_only else ""
            print(f"  [{i}] {expression.text!r}{tag}: J&F {scores['J&F']:.3f}  (J {scores['J']:.3f}, "
                  f"F {scores['F']:.3f})  -> {out / f'overlay_{i}.mp4'}")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: a new temporary folder)")
    parser.add_argument("--seed", type=int, default=2026, help="seed of the synthetic video")
    parser.add_argument("--model", default="ssa-tiny-synthetic", help="bundled name, Hub repo id or dir")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output of this script")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
