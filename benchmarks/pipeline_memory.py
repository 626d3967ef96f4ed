"""Peak memory of SSAPipeline on a long video: is it bounded in the video's length?

    python benchmarks/pipeline_memory.py --frames 150 600 --height 480 --width 640

Writes a synthetic H.264 video of each length (a square moving over a textured background), then runs
``ssa-tiny`` on it in a fresh process and prints that process's peak RSS and wall time. Peak RSS is
the whole process: Python, torch, the model, decoding and the results.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_video(path: Path, frames: int, height: int, width: int) -> None:
    import av

    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for i in range(frames):
            img = background.copy()
            x = (5 * i) % (width - 80)
            img[height // 3: height // 3 + 80, x: x + 80] = (230, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def child(video: str, chunk_size: int) -> None:
    import torch

    from ssa import SSAConfig, SSAModel, SSAPipeline

    torch.manual_seed(0)
    pipe = SSAPipeline(SSAModel(SSAConfig.from_preset("ssa-tiny")), device="cpu", chunk_size=chunk_size)
    start = time.perf_counter()
    result = pipe(video, ["the red square moving right", "the background"], progress=False)
    elapsed = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"frames": len(result[0]), "seconds": elapsed, "peak_rss_mb": peak_mb,
                      "fps": len(result[0]) / elapsed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[150, 600])
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.chunk_size)
        return
    print(f"ssa-tiny, 2 expressions, {args.width}x{args.height} H.264, chunk {args.chunk_size}")
    print(f"{'frames':>8}{'peak RSS (MB)':>16}{'time (s)':>12}{'frames/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.frames:
            path = Path(tmp) / f"v{n}.mp4"
            write_video(path, n, args.height, args.width)
            out = subprocess.run([sys.executable, __file__, "--child", str(path), "--chunk-size",
                                  str(args.chunk_size)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{row['frames']:>8}{row['peak_rss_mb']:>16.0f}{row['seconds']:>12.1f}{row['fps']:>10.1f}")


if __name__ == "__main__":
    main()
