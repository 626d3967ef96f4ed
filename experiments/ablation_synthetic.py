"""Ablation of sequential alignment on the synthetic benchmark (the direction of the paper's Table 7).

Trains ``ssa-tiny`` twice on the same data, seed and budget, with the demo model's recipe (text tower
pretrained on the training expressions and then frozen, visual tower trained with the rest): with
sequential alignment (Hungarian trajectories, temporal enhancement, ensemble) and without it
(``trajectory=False``: video queries from a plain mean over frames). Evaluates both on a held-out split
and prints J, F, J&F overall and on the motion-only expressions as a Markdown table (and JSON with
``--json``).

    python experiments/ablation_synthetic.py --work /tmp/ssa-ablation --iterations 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from ssa import SSAConfig, SSAPipeline
from ssa.data import MeViSDataset
from ssa.data.synthetic import score_breakdown, write_split
from ssa.eval import evaluate
from ssa.modeling.model import SSAModel
from ssa.train import finetune, pretrain_text_tower

VARIANTS = {
    "SSA (sequential alignment)": {},
    "trajectory=False (mean of frame queries)": {"trajectory": False},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="scratch directory")
    p.add_argument("--train-videos", type=int, default=400)
    p.add_argument("--val-videos", type=int, default=60)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-frames", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trajectory-masks", action="store_true",
                   help="both variants with SSAConfig.trajectory_masks (as the demo model; not in the paper)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    train, val = args.work / "train", args.work / "val"
    if not train.exists():
        write_split(train, args.train_videos, seed=0, progress=False)
    if not val.exists():
        write_split(val, args.val_videos, seed=1000, progress=False)
    results = {}
    for name, overrides in VARIANTS.items():
        tag = "ssa" if not overrides else "no_trajectory"
        torch.manual_seed(args.seed)
        config = SSAConfig.from_preset("ssa-tiny", image_size=96, max_size=128,
                                       trajectory_masks=args.trajectory_masks, **overrides)
        model = SSAModel(config)
        start = time.perf_counter()
        pretrain_text_tower(model, [text for _, _, text in MeViSDataset(train).expressions()],
                            seed=args.seed, progress=False)
        model = finetune(model, train, output_dir=args.work / tag, iterations=args.iterations,
                         batch_size=args.batch_size, num_frames=args.num_frames, unfreeze_clip="visual",
                         seed=args.seed, loss={"num_points": 2048}, save_every=max(args.iterations, 1),
                         resume=(args.work / tag).exists())
        minutes = (time.perf_counter() - start) / 60
        summary = evaluate(SSAPipeline(model, device="cpu"), val, out_dir=args.work / f"eval_{tag}",
                           progress=False, resume=False)
        table = score_breakdown(summary.rows, val)
        results[name] = {"trainable_parameters": model.num_parameters(trainable_only=True),
                         "train_minutes": minutes, **table}

    print(f"\nsynthetic held-out split ({args.val_videos} videos), {args.iterations} iterations x "
          f"{args.batch_size} clips x {args.num_frames} frames, seed {args.seed}\n")
    print("| variant | J&F all | J&F motion-only | J&F multi-object | train min |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['all']['J&F']:.3f} | {r['motion-only']['J&F']:.3f} | "
              f"{r.get('multi-object', {}).get('J&F', float('nan')):.3f} | {r['train_minutes']:.1f} |")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
