"""Several expressions about one video: decoded once, one frozen visual pass for all of them.

    python examples/multi_expression.py VIDEO "the cat" "the dog on the left" --model NAME_OR_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ssa import SSAPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("expressions", nargs="+")
    parser.add_argument("--model", required=True, help="Hub repo id or local checkpoint directory")
    parser.add_argument("--out", type=Path, default=Path("ssa_output"))
    parser.add_argument("--mode", choices=["multi", "single"], default="multi")
    args = parser.parse_args()

    pipe = SSAPipeline.from_pretrained(args.model)
    results = pipe(args.video, args.expressions, mode=args.mode)
    for i, result in enumerate(results):
        result.save_rle(args.out / f"expression_{i}.json")
        area = result.masks.mean(axis=(1, 2))  # fraction of each frame covered
        print(f"[{i}] {result.expression!r}: {len(result.object_ids)} object(s), "
              f"mean coverage {area.mean():.1%}, frames {len(result)}")


if __name__ == "__main__":
    main()
