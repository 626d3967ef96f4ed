"""Time one forward of an SSA preset on random frames (CPU or CUDA).

    python benchmarks/model_forward.py --preset ssa-convnext-large --frames 2 --height 128 --width 160
    python benchmarks/model_forward.py --preset ssa-tiny --frames 6 --height 128 --width 128 --backward

Prints the median over --repeats runs (after one warm-up), split into the frozen visual pass and the
rest. CLIP weights are random (no download); the cost does not depend on their values.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ssa import SSAConfig
from ssa.modeling.model import SSAModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ssa-convnext-large")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--expressions", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backward", action="store_true", help="time forward + backward (training)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = SSAModel(SSAConfig.from_preset(args.preset, clip_pretrained=None)).to(args.device)
    model.train(args.backward)
    print(f"built {args.preset} in {time.perf_counter() - t0:.1f}s on {args.device} "
          f"({torch.get_num_threads()} threads)")
    frames = torch.randn(args.frames, 3, args.height, args.width, device=args.device)
    base = ["the cat jumping away", "two dogs chasing each other", "the bird flying away first",
            "the person on the left"]
    exprs = [f"{base[i % 4]} {'again ' * (i // 4)}".strip() for i in range(args.expressions)]

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    visual_times, total_times = [], []
    for i in range(args.repeats + 1):
        model.zero_grad(set_to_none=True)
        sync()
        start = time.perf_counter()
        with torch.set_grad_enabled(args.backward):
            visual = model.encode_video(frames)
            sync()
            mid = time.perf_counter()
            text = model.encode_text(exprs)
            out = model.decode_video(model.decode_frames(visual, text), text)
            if args.backward:
                out.mask_logits.float().mean().backward()
        sync()
        end = time.perf_counter()
        if i:  # first run is warm-up
            visual_times.append(mid - start)
            total_times.append(end - start)
    vis, tot = statistics.median(visual_times), statistics.median(total_times)
    what = "forward+backward" if args.backward else "forward"
    print(f"{args.preset} {what}, T={args.frames}, {args.height}x{args.width}, "
          f"{args.expressions} expression(s): median {tot * 1000:.0f} ms "
          f"(frozen visual pass {vis * 1000:.0f} ms, rest {(tot - vis) * 1000:.0f} ms) "
          f"over {args.repeats} runs")


if __name__ == "__main__":
    main()
