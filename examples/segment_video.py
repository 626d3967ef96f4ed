"""Segment what one expression refers to in a video: palette PNGs per frame + an overlay MP4.

    python examples/segment_video.py VIDEO "the cat jumping away" --model NAME_OR_DIR --out out/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ssa import SSAPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("expression")
    parser.add_argument("--model", required=True, help="Hub repo id or local checkpoint directory")
    parser.add_argument("--out", type=Path, default=Path("ssa_output"))
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    pipe = SSAPipeline.from_pretrained(args.model, device=args.device)
    result = pipe(args.video, args.expression)
    result.save_pngs(args.out / "masks")
    result.save_overlay(args.out / "overlay.mp4")
    found = ", ".join(f"{s:.2f}" for s in result.object_scores) or "none"
    print(f"{len(result)} frames, {result.size[1]}x{result.size[0]}; object scores: {found}")
    print(f"wrote {args.out / 'masks'} and {args.out / 'overlay.mp4'}")


if __name__ == "__main__":
    main()
