"""Test media written with PyAV: the encoder the machine has and a frame writer."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

H, W, T, RATE = 97, 131, 30, 30


def pick_encoder(pix_fmt: str = "yuv420p") -> str:
    for name in ("libx264", "libopenh264", "h264", "mpeg4"):
        try:
            codec = av.codec.Codec(name, "w")
        except Exception:
            continue
        if pix_fmt in {f.name for f in (codec.video_formats or [])}:
            return name
    pytest.skip(f"no encoder for {pix_fmt}")


def encode(
    path: Path,
    frames: list[np.ndarray],
    *,
    codec: str | None = None,
    pix_fmt: str = "yuv420p",
    rate: int = RATE,
    pts_ms: list[int] | None = None,
    matrix: list[int] | None = None,
    rotation: int | None = None,
) -> Path:
    """Write RGB frames with PyAV; ``pts_ms`` gives irregular timestamps (VFR)."""
    codec = codec or pick_encoder(pix_fmt)
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=rate)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = pix_fmt
    if pts_ms is not None:
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
    if matrix is not None:
        stream.set_display_matrix(matrix)
    if rotation is not None:
        stream.set_display_rotation(rotation)
    for i, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        if pts_ms is not None:
            frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


