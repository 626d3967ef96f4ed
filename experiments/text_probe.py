"""Does a model's text side tell the synthetic benchmark's words apart? A probe of the grounding.

For minimal pairs of synthetic expressions that differ in one factor only (colour, shape or motion, e.g.
"the red square moving left" / "the blue square moving left"), prints the mean cosine similarity of
their CLIP sentence features F_s (in ssa's text side, the end-of-text token's F_w is the same vector). A
cosine near 1 means the model cannot use that factor: whatever the rest of the network does, "the red
square moving left" and "the red square that stops moving" reach it as one sentence.

    python experiments/text_probe.py                       # the bundled demo model
    python experiments/text_probe.py runs/tiny/model --json
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F

from ssa.data.synthetic import _PHRASES as MOTION_PHRASES  # the generator's own wording of each motion
from ssa.data.synthetic import COLORS, MOTIONS, SHAPES
from ssa.modeling.model import SSAModel


def _sentence(color: str, shape: str, motion: str) -> str:
    return f"the {color} {shape} {MOTION_PHRASES[motion]}"


def minimal_pairs() -> dict[str, list[tuple[str, str]]]:
    """Expression pairs that differ in exactly one factor, per factor."""
    pairs: dict[str, list[tuple[str, str]]] = {"colour": [], "shape": [], "motion": []}
    for color, shape, motion in itertools.product(COLORS, SHAPES, MOTIONS):
        base = _sentence(color, shape, motion)
        pairs["colour"] += [(base, _sentence(c, shape, motion)) for c in COLORS if c > color]
        pairs["shape"] += [(base, _sentence(color, s, motion)) for s in SHAPES if s > shape]
        pairs["motion"] += [(base, _sentence(color, shape, m)) for m in MOTIONS if m > motion]
    return pairs


@torch.no_grad()
def probe(model: SSAModel) -> dict[str, dict[str, float]]:
    """Per factor: the number of minimal pairs and the mean cosine of their F_s."""
    out = {}
    for factor, pairs in minimal_pairs().items():
        a = model.encode_text([p[0] for p in pairs]).sentence  # (E, D)
        b = model.encode_text([p[1] for p in pairs]).sentence
        out[factor] = {"pairs": len(pairs), "sentence_cos": float(F.cosine_similarity(a, b, dim=-1).mean())}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="ssa-tiny-synthetic",
                   help="checkpoint dir, Hub id or bundled name (default: the demo model)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = p.parse_args()
    result = probe(SSAModel.from_pretrained(args.model).eval())
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"text probe of {args.model}: mean cosine over minimal pairs (1.0 = the factor is invisible)\n")
    print("| factor | pairs | F_s cosine |")
    print("|---|---|---|")
    for factor, r in result.items():
        print(f"| {factor} | {r['pairs']} | {r['sentence_cos']:.3f} |")


if __name__ == "__main__":
    main()
