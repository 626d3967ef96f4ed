"""Does a model pick the referred look-alike, or segment both? A probe of the motion-only expressions.

For every motion-only expression of a synthetic split (the referred object has a twin of identical
appearance that only its motion tells apart), runs the pipeline and measures how much of the target and
how much of its look-alike the predicted masks cover (over all frames). Each expression is counted as

- ``right``: covers > 60% of the target and < 30% of the look-alike;
- ``wrong``: the reverse;
- ``both``: > 60% of each (the masks do not use motion);
- ``other``: anything else (partial or empty masks).

    python experiments/lookalike_coverage.py                        # the bundled demo model, seed 1000
    python experiments/lookalike_coverage.py runs/tiny/model --seed 3000 --videos 60 --json
"""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np
import torch

from ssa import SSAPipeline
from ssa.data.synthetic import SyntheticExpression, SyntheticVideo, generate_videos


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _category(target_cover: float, other_cover: float) -> str:
    if target_cover > 0.6 and other_cover < 0.3:
        return "right"
    if other_cover > 0.6 and target_cover < 0.3:
        return "wrong"
    if target_cover > 0.6 and other_cover > 0.6:
        return "both"
    return "other"


def target_and_lookalike(video: SyntheticVideo,
                         expression: SyntheticExpression) -> tuple[np.ndarray, np.ndarray]:
    """The expression's target (T, H, W) and the union of the objects that look like one of its
    referents but are not referred to (all False when there is none)."""
    looks = {video.objects[i - 1].appearance() for i in expression.obj_ids}
    twins = [o.obj_id for o in video.objects
             if o.obj_id not in expression.obj_ids and o.appearance() in looks]
    target = video.target(expression)
    twin = np.any([video.masks[i] for i in twins], axis=0) if twins else np.zeros_like(target)
    return target, twin


def coverage(pipe: SSAPipeline, seed: int, videos: int) -> dict:
    """Counts per category and mean IoU / coverage of target and look-alike over the motion-only
    expressions of ``videos`` synthetic videos of split ``seed``."""
    counts: collections.Counter[str] = collections.Counter()
    rows = []
    for video in generate_videos(videos, seed=seed):
        for expression in video.expressions:
            if not expression.motion_only:
                continue
            target, twin = target_and_lookalike(video, expression)
            pred = pipe(video.frames, expression.text, progress=False).masks.astype(bool)
            target_cover = float((pred & target).sum() / max(target.sum(), 1))
            twin_cover = float((pred & twin).sum() / max(twin.sum(), 1))
            counts[_category(target_cover, twin_cover)] += 1
            rows.append((_iou(pred, target), _iou(pred, twin), target_cover, twin_cover))
    mean = np.mean(rows, axis=0) if rows else np.zeros(4)
    return {"expressions": len(rows), "counts": dict(counts),
            "iou_target": float(mean[0]), "iou_lookalike": float(mean[1]),
            "cover_target": float(mean[2]), "cover_lookalike": float(mean[3])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="ssa-tiny-synthetic", help="model directory or name")
    p.add_argument("--seed", type=int, default=1000, help="synthetic split seed (1000: the held-out one)")
    p.add_argument("--videos", type=int, default=60)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args()
    torch.set_num_threads(1)
    result = coverage(SSAPipeline.from_pretrained(args.model, device="cpu"), args.seed, args.videos)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['expressions']} motion-only expressions: " + ", ".join(
        f"{k} {result['counts'].get(k, 0)}" for k in ("right", "wrong", "both", "other")))
    print(f"mean IoU with the target {result['iou_target']:.3f}, with the look-alike "
          f"{result['iou_lookalike']:.3f}; coverage {result['cover_target']:.3f} / "
          f"{result['cover_lookalike']:.3f}")


if __name__ == "__main__":
    main()
