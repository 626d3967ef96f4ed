"""Several expressions about one video: decoded once, one frozen visual pass for all of them.

    python examples/multi_expression.py VIDEO "the cat" "the dog on the left" --out out/ [--model NAME_OR_DIR]

Without --model this runs the bundled demo model ``ssa-tiny-synthetic``, which knows only synthetic
coloured shapes (README, "Using the authors' checkpoints", for real weights). OUT gets one
``expression_<i>.json`` (COCO RLE per frame) per expression, all or none; an existing OUT is checked
before the model is loaded and replaced only with --overwrite (and only if this script wrote it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssa import SSAPipeline
from ssa.io import OutputLayout, atomic_output_dir, check_output_dir

LAYOUT = OutputLayout("multi_expression.py output", files=(r"expression_\d+\.json",))
"""What this script writes into --out (what --overwrite may replace)."""


def run(args: argparse.Namespace) -> None:
    video = Path(args.video)
    if not video.exists():
        raise FileNotFoundError(f"video not found: {video}")
    options = {"overwrite": args.overwrite, "layout": LAYOUT, "inputs": [video],
               "hint": "pass --overwrite to replace it"}
    check_output_dir(args.out, **options)  # before the model is loaded

    pipe = SSAPipeline.from_pretrained(args.model)
    results = pipe(video, args.expressions, mode=args.mode)
    with atomic_output_dir(args.out, **options) as tmp:  # appears only when complete
        for i, result in enumerate(results):
            result.save_rle(tmp / f"expression_{i}.json")
    for i, result in enumerate(results):
        area = result.masks.mean(axis=(1, 2))  # fraction of each frame covered
        print(f"[{i}] {result.expression!r}: {len(result.object_ids)} object(s), "
              f"mean coverage {area.mean():.1%}, frames {len(result)} -> {args.out / f'expression_{i}.json'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("expressions", nargs="+")
    parser.add_argument("--model", default="ssa-tiny-synthetic",
                        help="bundled name, Hub repo id or local checkpoint directory (default: the demo "
                             "model, synthetic shapes only)")
    parser.add_argument("--out", type=Path, default=Path("ssa_output"), help="output directory")
    parser.add_argument("--mode", choices=["multi", "single"], default=None,
                        help="which objects to keep (default: the model's)")
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
