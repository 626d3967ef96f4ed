"""Overlay videos: masks tinted over the frames, with an optional caption band, as an H.264 MP4."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ssa.io.files import PathLike, atomic_write, check_output_file
from ssa.io.masks import PALETTE_RGB, as_labels

__all__ = ["write_overlay_video", "h264_encoder"]

logger = logging.getLogger(__name__)

_PALETTE_LUTS = [np.ascontiguousarray(PALETTE_RGB[:, c]) for c in range(3)]  # per channel, for cv2.LUT


_H264_CANDIDATES = ("libx264", "libopenh264", "h264")
_END = object()


def _encoder_works(name: str) -> bool:
    import av

    try:
        ctx = av.CodecContext.create(name, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 64, 64, "yuv420p"
        ctx.time_base = Fraction(1, 25)
        ctx.framerate = Fraction(25, 1)
        ctx.open()
        return True
    except Exception:  # any failure means "not usable here"
        return False


@functools.lru_cache(maxsize=1)
def h264_encoder() -> str:
    """The first usable H.264 encoder of the installed PyAV/FFmpeg (``libx264``, ``libopenh264`` or
    ``h264``), else ``"mpeg4"`` (with a logged warning)."""
    for name in _H264_CANDIDATES:
        if _encoder_works(name):
            return name
    logger.warning("no H.264 encoder in this PyAV/FFmpeg build; overlay videos use MPEG-4 part 2")
    return "mpeg4"


def _wrap(text: str, width: int, measure: Callable[[str], int]) -> list[str]:
    """Greedy word wrap of ``text`` into lines ``measure``-ing at most ``width`` (a word too long for a
    line is split between characters)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if measure(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while len(word) > 1 and measure(word) > width:
            cut = 1
            while cut < len(word) and measure(word[:cut + 1]) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    return lines or [""]


def _caption_band(width: int, caption: str) -> np.ndarray:
    """An ``(h, width, 3)`` dark band holding ``caption`` in white, wrapped on as many lines as needed,
    the font scaled to the width; it goes above the frame, so the picture keeps all its pixels."""
    import cv2

    text = caption.encode("ascii", "replace").decode("ascii")  # Hershey fonts are ASCII-only
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.35, min(1.2, width / 900))
    thickness = 1 if scale < 0.8 else 2
    margin = max(3, round(width / 160))
    (_, th), base = cv2.getTextSize("Ag", font, scale, thickness)
    line_height = th + base + max(2, th // 3)
    lines = _wrap(text, width - 2 * margin, lambda s: cv2.getTextSize(s, font, scale, thickness)[0][0])
    band = np.full((2 * margin + len(lines) * line_height, width, 3), 24, np.uint8)
    for k, line in enumerate(lines):
        cv2.putText(band, line, (margin, margin + k * line_height + th), font, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)
    return band


def _overlay(image: np.ndarray, labels: np.ndarray | None, band: np.ndarray | None = None) -> np.ndarray:
    """Tint labels over ``image`` (palette colour at 50%) with contours; a caption ``band`` (from
    :func:`_caption_band`) goes above it."""
    import cv2

    out = np.array(image, dtype=np.uint8, order="C", copy=True)
    if labels is not None:
        labels = np.ascontiguousarray(labels)
        histogram = cv2.calcHist([labels], [0], None, [256], [0, 256]).reshape(-1)
        present = np.flatnonzero(histogram[1:]) + 1
        if present.size:
            colour = cv2.merge([cv2.LUT(labels, _PALETTE_LUTS[c]) for c in range(3)])
            blended = cv2.addWeighted(out, 0.5, colour, 0.5, 0)
            out = cv2.copyTo(blended, (labels > 0).view(np.uint8), out)
            thickness = max(1, round(min(out.shape[:2]) / 300))
            for k in present:
                binary = (labels == k).view(np.uint8)
                contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                rgb = tuple(int(v) for v in PALETTE_RGB[k])
                cv2.drawContours(out, contours, -1, rgb, thickness, cv2.LINE_AA)
    if band is not None:
        out = np.concatenate([band, out], axis=0)
    return out


def _as_image(frame: Any, index: int) -> np.ndarray:
    image = getattr(frame, "image", frame)  # accept ssa.io.video.Frame
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"frame {index}: expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}"
        )
    return image


def write_overlay_video(
    path: PathLike,
    frames: Iterable[np.ndarray],
    masks: Iterable[np.ndarray | None],
    *,
    fps: float,
    caption: str | None = None,
    progress: bool = False,
    overwrite: bool = False,
    inputs: Iterable[PathLike] = (),
    total: int | None = None,
) -> Path:
    """Write an MP4 of ``frames`` with ``masks`` tinted over them; returns the path.

    Args:
        path: output file (``.mp4``; the container format follows the extension).
        frames: ``(H, W, 3)`` uint8 RGB images (or :class:`ssa.io.video.Frame`), consumed one at a time.
        masks: one per frame: ``(H, W)`` bool (drawn with palette colour 1) or uint8 labels (label k in
            ``DAVIS_PALETTE`` colour k at 50% alpha, with a contour), or None for no overlay.
        fps: frame rate of the output.
        caption: text (e.g. the expression; non-ASCII shown as "?") on a dark band added above the
            frames, wrapped on as many lines as it needs: the video is taller by the band, the frames
            keep all their pixels.
        progress: show a tqdm "overlay" bar.
        overwrite: replace an existing file; otherwise FileExistsError.
        inputs: files the video must not replace (e.g. the source video): ValueError, also with
            ``overwrite`` (:func:`check_output_file`).
        total: the number of frames, for the progress bar (default: ``len(frames)`` when it has one).

    H.264 (:func:`h264_encoder`), yuv420p; an odd width/height is padded by one black pixel on the
    right/bottom. The video is written to a temporary file in the same directory and renamed on success,
    so a failure never leaves a partial file at ``path``.
    """
    import av

    path = Path(path)
    inputs = list(inputs)
    check_output_file(path, overwrite=overwrite, inputs=inputs)
    try:
        fps_ok = float(fps) > 0 and np.isfinite(float(fps))
    except (TypeError, ValueError):
        fps_ok = False
    if not fps_ok:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    codec = h264_encoder()
    rate = Fraction(fps).limit_denominator(1001)
    if total is None and hasattr(frames, "__len__"):
        total = len(frames)
    frame_iter, mask_iter = iter(frames), iter(masks)
    with atomic_write(path, overwrite=overwrite, inputs=inputs, suffix=path.suffix or ".mp4") as tmp:
        try:
            container = av.open(str(tmp), mode="w")
        except (av.error.FFmpegError, ValueError) as e:
            raise ValueError(f"cannot write a video to {path} (unknown extension?): {e}") from e
        try:
            stream = None
            size: tuple[int, int] | None = None
            band: np.ndarray | None = None
            count = 0
            with tqdm(total=total, desc="overlay", unit="frame", disable=not progress) as bar:
                for count, frame in enumerate(frame_iter):
                    image = _as_image(frame, count)
                    try:
                        mask = next(mask_iter)
                    except StopIteration:
                        raise ValueError(f"masks ran out at frame {count}: fewer masks than frames") from None
                    labels = None if mask is None else as_labels(mask, f"mask {count}")
                    if labels is not None and labels.shape != image.shape[:2]:
                        raise ValueError(
                            f"mask {count} has shape {labels.shape} but frame {count} is {image.shape[:2]}"
                        )
                    if size is None:
                        size = image.shape[:2]
                        band = _caption_band(size[1], caption) if caption else None
                        oh, ow = size[0] + (0 if band is None else band.shape[0]), size[1]
                        options = {"crf": "20", "preset": "veryfast"} if codec == "libx264" else {}
                        stream = container.add_stream(codec, rate=rate, options=options)
                        stream.height, stream.width = oh + oh % 2, ow + ow % 2
                        stream.pix_fmt = "yuv420p"
                        stream.thread_type = "AUTO"
                    elif image.shape[:2] != size:
                        raise ValueError(f"frame {count} is {image.shape[:2]} but frame 0 is {size} (H, W)")
                    out = _overlay(image, labels, band)
                    if out.shape[0] % 2 or out.shape[1] % 2:
                        out = np.pad(out, ((0, out.shape[0] % 2), (0, out.shape[1] % 2), (0, 0)))
                    video_frame = av.VideoFrame.from_ndarray(out, format="rgb24")
                    for packet in stream.encode(video_frame):
                        container.mux(packet)
                    bar.update(1)
            if stream is None:
                raise ValueError("no frames to write")
            if next(mask_iter, _END) is not _END:
                raise ValueError(f"more masks than frames ({count + 1} frames)")
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()
    logger.debug("wrote %s (%s)", path, codec)
    return path


