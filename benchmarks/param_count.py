"""Parameter breakdown of an SSA preset, per module (frozen vs trainable).

    python benchmarks/param_count.py [--preset ssa-convnext-large] [--no-adapter]

The model is built on the meta device: no weights are allocated or downloaded.
"""

from __future__ import annotations

import argparse

import torch

from ssa import SSAConfig
from ssa.modeling.model import SSAModel


def breakdown(preset: str, **overrides) -> list[tuple[str, int, int]]:
    cfg = SSAConfig.from_preset(preset, clip_pretrained=None, **overrides)
    with torch.device("meta"):
        model = SSAModel(cfg)
    rows = []
    for name, module in model.named_children():
        params = list(module.parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        rows.append((name, total, trainable))
        if name in ("adapters", "backbone"):
            continue
        for sub, child in module.named_children():
            n = sum(p.numel() for p in child.parameters())
            if n:
                trainable = sum(p.numel() for p in child.parameters() if p.requires_grad)
                rows.append((f"  {name}.{sub}", n, trainable))
    if model.adapters is not None:
        for i, adapter in enumerate(model.adapters):
            n = sum(p.numel() for p in adapter.parameters())
            rows.append((f"  adapters.{i} (C={model.backbone.stage_channels[i]})", n, n))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ssa-convnext-large")
    parser.add_argument("--no-adapter", action="store_true",
                        help="only the network without the adapters (Tab. 6's ablation; default: both)")
    args = parser.parse_args(argv)
    for use_adapter in (False,) if args.no_adapter else (True, False):
        rows = breakdown(args.preset, use_adapter=use_adapter)
        print(f"\n{args.preset}  use_adapter={use_adapter}")
        print(f"{'module':<44}{'total':>14}{'trainable':>14}")
        top = [r for r in rows if not r[0].startswith(" ")]
        for name, total, trainable in rows:
            print(f"{name:<44}{total:>14,}{trainable:>14,}")
        total = sum(r[1] for r in top)
        trainable = sum(r[2] for r in top)
        print(f"{'TOTAL':<44}{total:>14,}{trainable:>14,}")
        print(f"frozen: {total - trainable:,}   trainable: {trainable / 1e6:.2f}M")


if __name__ == "__main__":
    main()
