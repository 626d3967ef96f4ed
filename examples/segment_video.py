"""Segment what one expression refers to in a video: palette PNGs per frame + an overlay MP4.

    python examples/segment_video.py VIDEO "the cat jumping away" --out out/ [--model NAME_OR_DIR]

Without --model this runs the bundled demo model ``ssa-tiny-synthetic``, which knows only synthetic
coloured shapes: for real videos pass a converted checkpoint of the authors (README, "Using the authors'
checkpoints"). OUT gets ``masks/<frame>.png`` and ``overlay.mp4``, both or neither; an existing OUT is
checked before the model is loaded and replaced only with --overwrite (and only if this script wrote it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssa import SSAPipeline
from ssa.io import MASKS_LAYOUT, OutputLayout, atomic_output_dir, check_output_dir

LAYOUT = OutputLayout("segment_video.py output", markers=("overlay.mp4",), files=(r"overlay\.mp4",),
                      dirs=((r"masks", MASKS_LAYOUT),))
"""What this script writes into --out (what --overwrite may replace)."""


def run(args: argparse.Namespace) -> None:
    video = Path(args.video)
    if not video.exists():
        raise FileNotFoundError(f"video not found: {video}")
    options = {"overwrite": args.overwrite, "layout": LAYOUT, "inputs": [video],
               "hint": "pass --overwrite to replace it"}
    check_output_dir(args.out, **options)  # before the model is loaded

    pipe = SSAPipeline.from_pretrained(args.model, device=args.device)
    result = pipe(video, args.expression)
    with atomic_output_dir(args.out, **options) as tmp:  # appears only when complete
        result.save_pngs(tmp / "masks")
        result.save_overlay(tmp / "overlay.mp4", progress=True)
    found = ", ".join(f"{s:.2f}" for s in result.object_scores) or "none"
    print(f"{len(result)} frames, {result.size[1]}x{result.size[0]}; object scores: {found}")
    print(f"wrote {args.out / 'masks'} and {args.out / 'overlay.mp4'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("expression")
    parser.add_argument("--model", default="ssa-tiny-synthetic",
                        help="bundled name, Hub repo id or local checkpoint directory (default: the demo "
                             "model, synthetic shapes only)")
    parser.add_argument("--out", type=Path, default=Path("ssa_output"), help="output directory")
    parser.add_argument("--device", default=None, help="cuda, cpu (default: cuda if available)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output of this script")
    args = parser.parse_args(argv)
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
