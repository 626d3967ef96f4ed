"""Reading frames: video files (PyAV), folders of frames, image lists and arrays.

Every source yields :class:`Frame` objects holding an ``(H, W, 3)`` uint8 RGB image::

    from ssa.io.video import iter_frames, probe
    info = probe("clip.mp4")                       # size after rotation, fps, duration, ...
    for frame in iter_frames("clip.mp4", fps=5, start=2.0, end=10.0):
        frame.image, frame.index, frame.timestamp, frame.name

Sources
    * a path to a video file (anything FFmpeg reads), decoded with PyAV using threaded decoding;
      rotation metadata (the display matrix) is applied so frames come out upright; timestamps are
      ``pts * time_base`` relative to the stream start, so variable frame rate is handled;
    * a path to a single image file (jpg/jpeg/png/bmp/webp): a one-frame video;
    * a directory of frames (jpg/jpeg/png/bmp/webp, natural sort by name so ``2.jpg < 10.jpg``; the
      MeViS / YouTube-VOS ``JPEGImages/<video>/`` layout); files starting with ``.`` are ignored;
    * a list/tuple of PIL images and/or numpy arrays (``(H, W)``, ``(H, W, 1|3|4)`` uint8);
    * a numpy array ``(T, H, W, 3)``, ``(T, H, W, 4)`` (alpha dropped) or ``(T, H, W)`` (grayscale)
      of uint8, or a torch uint8 tensor of the same shapes (channel-last).

Images are converted to RGB: grayscale is repeated over three channels, alpha is dropped (not
composited), palette images are expanded. One rule for bit depth: 8 bits per channel only. 16-bit and
float images raise :class:`TypeError`, whatever their colour type (grayscale, RGB or RGBA PNGs alike,
numpy or torch arrays of another dtype): convert them to uint8 first, as the right scaling depends on
your data (``x >> 8`` for full-range 16-bit, ``x >> 4`` for 12-bit data, ...). EXIF orientation of image
files is applied.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "Frame",
    "VideoInfo",
    "VideoDecodeError",
    "IMAGE_EXTENSIONS",
    "probe",
    "count_frames",
    "iter_frames",
    "read_frames",
    "check_bit_depth",
    "natural_key",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
"""Extensions (case-insensitive) recognised as frames in a folder, or as a one-frame video."""

_EPS = 1e-6  # seconds; tolerance when comparing timestamps with start/end/fps ticks

Source = str | os.PathLike | np.ndarray | Sequence[Any]  # or a torch uint8 tensor


class VideoDecodeError(ValueError):
    """A file is not a readable video, or no frame of it could be decoded."""


@dataclass
class Frame:
    """One decoded frame."""

    image: np.ndarray = field(repr=False)
    """``(H, W, 3)`` uint8 RGB, upright (rotation metadata already applied), C-contiguous."""
    index: int
    """Index of this frame in the source (0-based, counted before stride / fps / start sampling)."""
    timestamp: float | None
    """Seconds from the stream start (``pts * time_base`` for files, ``index / source_fps`` for
    folders and arrays, None when unknown)."""
    name: str
    """Name for output files: the file stem for folders (``"00012"``), else ``f"{index:05d}"``."""


@dataclass
class VideoInfo:
    """What :func:`probe` knows about a source without decoding it all."""

    width: int
    """Width of the frames as yielded (after rotation)."""
    height: int
    """Height of the frames as yielded (after rotation)."""
    fps: float | None
    """Average frame rate (the container's claim for files; ``source_fps`` for folders / arrays)."""
    num_frames: int | None
    """Number of frames: exact for folders and arrays, the container's count or ``duration * fps``
    (an estimate) for files, None when unknown."""
    duration: float | None
    """Seconds, None when unknown."""
    rotation: int
    """Counter-clockwise rotation in degrees (0, 90, 180, 270) applied to the decoded pictures to
    display them upright; PyAV's ``VideoFrame.rotation`` convention (a phone video shot in portrait
    typically has 270, i.e. it is turned 90 degrees clockwise)."""
    source: str
    """The path, or a description of an in-memory source."""


# ---------------------------------------------------------------------------------------------------
# options and sampling


@dataclass
class _Options:
    stride: int = 1
    fps: float | None = None
    start: float | None = None
    end: float | None = None
    max_frames: int | None = None
    source_fps: float | None = None

    def validate(self) -> None:
        if isinstance(self.stride, bool) or not isinstance(self.stride, (int, np.integer)) or self.stride < 1:
            raise ValueError(f"stride must be an integer >= 1, got {self.stride!r}")
        for name in ("fps", "source_fps"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.fps is not None and self.stride != 1:
            raise ValueError("pass either stride or fps, not both")
        if self.start is not None and not (math.isfinite(self.start) and self.start >= 0):
            raise ValueError(f"start must be a time >= 0 in seconds, got {self.start!r}")
        if self.end is not None:
            if not math.isfinite(self.end) or self.end <= (self.start or 0.0):
                raise ValueError(f"end ({self.end!r} s) must be after start ({self.start or 0.0!r} s)")
        if self.max_frames is not None and (
            isinstance(self.max_frames, bool)
            or not isinstance(self.max_frames, (int, np.integer))
            or self.max_frames < 1
        ):
            raise ValueError(f"max_frames must be an integer >= 1, got {self.max_frames!r}")

    @property
    def needs_timestamps(self) -> bool:
        return self.fps is not None or self.start is not None or self.end is not None


class _Sampler:
    """Decides, frame by frame in presentation order, which frames to keep."""

    KEEP, SKIP, STOP = "keep", "skip", "stop"

    def __init__(self, opts: _Options) -> None:
        self.opts = opts
        self.in_window = 0  # frames seen inside [start, end)
        self.kept = 0
        self.origin: float | None = opts.start
        self.next_tick: float | None = None

    def decide(self, timestamp: float | None) -> str:
        o = self.opts
        if o.max_frames is not None and self.kept >= o.max_frames:
            return self.STOP
        if o.needs_timestamps and timestamp is None:
            raise ValueError("frames have no timestamps; pass source_fps to use fps/start/end")
        if o.end is not None and timestamp >= o.end - _EPS:
            return self.STOP
        if o.start is not None and timestamp < o.start - _EPS:
            return self.SKIP
        position = self.in_window
        self.in_window += 1
        if o.fps is not None:
            # keep the first frame whose timestamp reaches each 1/fps tick (never one frame twice)
            if self.origin is None:
                self.origin = timestamp
            if self.next_tick is not None and timestamp < self.next_tick - _EPS:
                return self.SKIP
            ticks_passed = math.floor((timestamp - self.origin) * o.fps + _EPS * o.fps)
            self.next_tick = self.origin + (max(ticks_passed, 0) + 1) / o.fps
        elif position % o.stride != 0:
            return self.SKIP
        self.kept += 1
        return self.KEEP

    @property
    def done(self) -> bool:
        """True once ``max_frames`` frames were kept (no need to decode further)."""
        return self.opts.max_frames is not None and self.kept >= self.opts.max_frames


# ---------------------------------------------------------------------------------------------------
# image conversion


def natural_key(name: str) -> tuple:
    """Sort key of a name with numbers compared as numbers (``2.jpg`` before ``10.jpg``), case-insensitive."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def _as_rgb(array: np.ndarray, what: str) -> np.ndarray:
    """``(H, W)``, ``(H, W, 1|3|4)`` uint8 → C-contiguous ``(H, W, 3)`` uint8 (always a copy)."""
    if array.dtype != np.uint8:
        raise TypeError(
            f"{what}: expected uint8 pixels, got {array.dtype}; convert to uint8 first "
            "(e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1], x >> 8 for 16-bit)"
        )
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.array(array[:, :, :3], order="C", copy=True)
    raise ValueError(f"{what}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")


_HIGH_DEPTH_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def _stored_depth(image: Any) -> str | None:
    """The high bit depth an image file stores (e.g. ``"RGB;16B"``), which PIL hides for RGB(A) PNGs
    by opening them in 8-bit modes; None for 8-bit data (or an image already loaded)."""
    for tile in getattr(image, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
        if isinstance(rawmode, str) and ";16" in rawmode:
            return rawmode
    return None


def check_bit_depth(image: Any, what: str) -> None:
    """Raise ``TypeError`` unless the PIL image (opened, not yet loaded) holds 8 bits per channel: the
    one bit-depth rule of every frame reader (see the module docstring)."""
    stored = _stored_depth(image)
    if image.mode in _HIGH_DEPTH_MODES or stored is not None:
        raise TypeError(
            f"{what}: {stored or image.mode!r} images (16-bit / 32-bit) are not supported; convert them to "
            "8 bits per channel first (the scaling depends on your data, e.g. x >> 8 for full-range "
            "16-bit)"
        )


def _pil_to_rgb(image: Any, what: str) -> np.ndarray:
    from PIL import ImageOps

    check_bit_depth(image, what)
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8, order="C")


def _read_image_file(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return _pil_to_rgb(image, str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"frame file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise VideoDecodeError(f"cannot read image {path}: {e}") from e


def _image_file_size(path: Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
            return width, height
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise VideoDecodeError(f"cannot read image {path}: {e}") from e


def _is_torch_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _tensor_to_numpy(tensor: Any) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _list_frame_files(folder: Path) -> list[Path]:
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    if not files:
        raise ValueError(f"no frame images ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}")
    return sorted(files, key=lambda p: natural_key(p.name))


def _check_video_array(array: np.ndarray) -> None:
    if array.dtype != np.uint8:
        raise TypeError(
            f"video array: expected uint8 pixels, got {array.dtype}; convert to uint8 first "
            "(e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1])"
        )
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        raise ValueError(
            f"video array of shape {array.shape} looks like a single (H, W, C) image; pass array[None] "
            "for a one-frame video ((T, H, W) arrays are read as grayscale videos)"
        )
    if not (array.ndim == 3 or (array.ndim == 4 and array.shape[-1] in (1, 3, 4))):
        hint = ""
        if array.ndim == 4 and array.shape[1] in (1, 3, 4):
            hint = "; channel-first? transpose to (T, H, W, C)"
        raise ValueError(
            f"video array: expected shape (T, H, W, 3), (T, H, W, 4) or (T, H, W), got {array.shape}{hint}"
        )
    if array.shape[0] == 0:
        raise ValueError("video array has no frames (T = 0)")


# ---------------------------------------------------------------------------------------------------
# in-memory and folder sources


class _Item:
    """A not-yet-loaded frame of an in-memory or folder source."""

    __slots__ = ("index", "name", "load", "what")

    def __init__(self, index: int, name: str, load: Any, what: str) -> None:
        self.index, self.name, self.load, self.what = index, name, load, what


def _items(source: Source) -> tuple[list[_Item], str]:
    """The frames of a non-video-file source as lazy items, and a description of the source."""
    if _is_torch_tensor(source):
        source = _tensor_to_numpy(source)
    if isinstance(source, np.ndarray):
        _check_video_array(source)
        array = source
        desc = f"array {tuple(array.shape)} {array.dtype}"
        items = [
            _Item(i, f"{i:05d}", (lambda i=i: _as_rgb(array[i], f"frame {i}")), f"frame {i} of the array")
            for i in range(array.shape[0])
        ]
        return items, desc
    if isinstance(source, (list, tuple)):
        if len(source) == 0:
            raise ValueError("empty list of frames")
        items = [
            _Item(i, f"{i:05d}", (lambda x=x, i=i: _load_any(x, f"frame {i}")), f"frame {i} of the list")
            for i, x in enumerate(source)
        ]
        return items, f"list of {len(source)} frames"
    path = Path(source)
    if path.is_dir():
        files = _list_frame_files(path)
        items = [_Item(i, f.stem, (lambda f=f: _read_image_file(f)), str(f)) for i, f in enumerate(files)]
        return items, str(path)
    # a single image file
    return [_Item(0, path.stem, lambda: _read_image_file(path), str(path))], str(path)


def _load_any(x: Any, what: str) -> np.ndarray:
    if _is_torch_tensor(x):
        x = _tensor_to_numpy(x)
    if isinstance(x, np.ndarray):
        return _as_rgb(x, what)
    if hasattr(x, "mode") and hasattr(x, "convert"):  # a PIL image
        return _pil_to_rgb(x, what)
    raise TypeError(f"{what}: expected a PIL image, numpy array or torch tensor, got {type(x).__name__}")


def _check_item_options(opts: _Options) -> None:
    if opts.needs_timestamps and opts.source_fps is None:
        raise ValueError(
            "fps/start/end need timestamps, which folders, lists and arrays do not have: "
            "pass source_fps (the frame rate the frames were sampled at)"
        )


def _iter_items(items: list[_Item], opts: _Options, progress: bool) -> Iterator[Frame]:
    sampler = _Sampler(opts)
    first_shape: tuple[int, ...] | None = None
    first_what = ""
    with tqdm(total=len(items), desc="decoding", unit="frame", disable=not progress) as bar:
        for item in items:
            timestamp = item.index / opts.source_fps if opts.source_fps else None
            decision = sampler.decide(timestamp)
            if decision == _Sampler.STOP:
                break
            if decision == _Sampler.KEEP:
                image = item.load()
                if first_shape is None:
                    first_shape, first_what = image.shape, item.what
                elif image.shape != first_shape:
                    raise ValueError(
                        f"frames have different sizes: {item.what} is {image.shape[1]}x{image.shape[0]} "
                        f"but {first_what} is {first_shape[1]}x{first_shape[0]} (width x height)"
                    )
                bar.update(1)
                yield Frame(image=image, index=item.index, timestamp=timestamp, name=item.name)
                if sampler.done:
                    break
            else:
                bar.update(1)


# ---------------------------------------------------------------------------------------------------
# video files


def _av() -> Any:
    import av

    return av


def _open_container(path: Path) -> Any:
    av = _av()
    try:
        container = av.open(str(path), mode="r", metadata_errors="replace")
    except PermissionError as e:
        raise PermissionError(f"cannot read {path}: permission denied") from e
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoDecodeError(f"{path} is not a readable video file: {e}") from e
    if container.format.name == "tty" or not container.streams.video:
        container.close()
        what = "a text file" if container.format.name == "tty" else "a file with no video stream"
        raise VideoDecodeError(f"{path} is not a video: it is {what}")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise VideoDecodeError(f"{path}: this FFmpeg build has no decoder for its video codec")
    logger.debug(
        "opened %s: %s, %s %dx%d, %s frames, %s fps",
        path,
        container.format.name,
        stream.codec_context.name,
        stream.codec_context.width,
        stream.codec_context.height,
        stream.frames or "?",
        stream.average_rate,
    )
    return container


def _stream_fps(stream: Any) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return None


def _stream_duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


def _metadata_rotation(stream: Any) -> int:
    """Legacy ``rotate`` tag (clockwise degrees) as a counter-clockwise angle."""
    try:
        return -int(float(stream.metadata.get("rotate", 0)))
    except (TypeError, ValueError):
        return 0


def _frame_rotation(frame: Any, stream: Any) -> int:
    """Counter-clockwise display rotation of a decoded frame, a multiple of 90 in [0, 360)."""
    rotation = getattr(frame, "rotation", None)
    if rotation is None:  # PyAV without VideoFrame.rotation
        rotation = _metadata_rotation(stream)
    rotation = int(rotation)
    if rotation % 90:
        warnings.warn(f"rotation of {rotation} degrees is not a multiple of 90; rounding", stacklevel=3)
    return int(round(rotation / 90)) % 4 * 90


def _to_upright_rgb(frame: Any, rotation: int) -> np.ndarray:
    image = frame.to_ndarray(format="rgb24")
    if rotation:
        image = np.rot90(image, k=rotation // 90)  # np.rot90 turns counter-clockwise for k > 0
    return np.ascontiguousarray(image)


def _iter_video_file(container: Any, path: Path, opts: _Options, progress: bool) -> Iterator[Frame]:
    """Decode ``container`` (opened by the caller; closed here when the generator ends)."""
    av = _av()
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = stream.time_base
        fps = _stream_fps(stream)
        rate = opts.source_fps or fps
        duration = _stream_duration(container, stream)
        declared = stream.frames or None  # frame count in the header (0: unknown)
        expected = declared or (round(duration * fps) if duration and fps else None)  # for the bar
        origin: int | None = stream.start_time
        sampler = _Sampler(opts)
        decoded = 0
        last_ts: float | None = None
        errors: list[str] = []
        stopped = False
        raw_rotation: Any = object()  # rotation metadata of the previous frame (recomputed on change)
        rotation = 0
        demuxer = container.demux(stream)
        with tqdm(total=expected, desc="decoding", unit="frame", disable=not progress) as bar:
            while not stopped:
                try:
                    packet = next(demuxer)
                except StopIteration:
                    break
                except av.error.FFmpegError as e:
                    errors.append(f"read error: {e}")
                    break
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as e:
                    errors.append(f"decode error: {e}")
                    continue
                for frame in frames:
                    index = decoded
                    decoded += 1
                    bar.update(1)
                    pts = frame.pts if frame.pts is not None else frame.dts
                    if pts is not None and time_base is not None:
                        if origin is None:
                            origin = pts
                        timestamp: float | None = float((pts - origin) * time_base)
                    elif rate:
                        timestamp = index / rate
                    else:
                        timestamp = None
                    last_ts = timestamp
                    decision = sampler.decide(timestamp)
                    if decision == _Sampler.STOP:
                        stopped = True
                        break
                    if decision == _Sampler.KEEP:
                        if getattr(frame, "rotation", None) != raw_rotation:
                            raw_rotation = getattr(frame, "rotation", None)
                            rotation = _frame_rotation(frame, stream)
                        image = _to_upright_rgb(frame, rotation)
                        yield Frame(image=image, index=index, timestamp=timestamp, name=f"{index:05d}")
                        if sampler.done:
                            stopped = True
                            break
        if decoded == 0:
            detail = f" ({errors[0]})" if errors else ""
            raise VideoDecodeError(f"{path}: no frame could be decoded{detail}")
        if not stopped:
            shortfall = _shortfall(decoded, last_ts, declared, duration, fps)
            if errors or shortfall:
                reason = "; ".join(errors[:3]) if errors else shortfall
                warnings.warn(
                    f"{path} looks truncated or corrupt: read {decoded} frame(s) "
                    f"({reason}); using the frames that could be decoded",
                    stacklevel=2,
                )
    finally:
        container.close()


def _shortfall(
    decoded: int, last_ts: float | None, expected: int | None, duration: float | None, fps: float | None
) -> str | None:
    """Why the decoded stream looks shorter than the container header says, or None."""
    if expected and decoded < expected - max(2, 0.05 * expected):
        return f"the container declares {expected} frames"
    if duration and fps and last_ts is not None:
        decoded_end = last_ts + 1 / fps
        if duration - decoded_end > max(2 / fps, 0.05 * duration):
            return f"frames end at {decoded_end:.3f} s but the stream lasts {duration:.3f} s"
    return None


def _probe_video_file(path: Path) -> VideoInfo:
    av = _av()
    container = _open_container(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        first = None
        try:
            for frame in container.decode(stream):
                first = frame
                break
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"{path}: no frame could be decoded ({e})") from e
        if first is None:
            raise VideoDecodeError(f"{path}: no frame could be decoded")
        rotation = _frame_rotation(first, stream)
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        fps = _stream_fps(stream)
        duration = _stream_duration(container, stream)
        num_frames = stream.frames or (round(duration * fps) if duration and fps else None)
        return VideoInfo(width, height, fps, num_frames, duration, rotation, str(path))
    finally:
        container.close()


# ---------------------------------------------------------------------------------------------------
# public API


def _video_path(source: Source) -> Path | None:
    """The path if ``source`` is a video file, None for the other kinds; FileNotFoundError if missing."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"video source not found: {path}")
        if path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS:
            return None
        return path
    if isinstance(source, (bytes, bytearray)):
        raise TypeError("pass a path, not the file's bytes")
    if isinstance(source, (np.ndarray, list, tuple)) or _is_torch_tensor(source):
        return None
    raise TypeError(
        f"unsupported video source {type(source).__name__}: expected a path (video file, image or folder "
        "of frames), a list of PIL images / arrays, or a (T, H, W, 3) uint8 array"
    )


def probe(source: Source, *, source_fps: float | None = None) -> VideoInfo:
    """Describe a source (size after rotation, fps, frame count, duration) without decoding it all.

    Video files: the first frame is decoded (for the size and rotation); ``fps``, ``num_frames`` and
    ``duration`` come from the container and may be estimates. Folders, lists and arrays: ``fps`` is
    ``source_fps`` and ``duration`` is ``num_frames / source_fps`` (None without ``source_fps``).
    """
    _Options(source_fps=source_fps).validate()
    path = _video_path(source)
    if path is not None:
        return _probe_video_file(path)
    items, desc = _items(source)
    if isinstance(source, (str, os.PathLike)):
        width, height = _image_file_size(Path(items[0].what))
    else:
        first = items[0].load()
        height, width = first.shape[:2]
    n = len(items)
    return VideoInfo(width, height, source_fps, n, n / source_fps if source_fps else None, 0, desc)


def _selected_count(total: int, rate: float | None, opts: _Options) -> int | None:
    """How many of ``total`` frames at ``rate`` frames/s the options keep (as :class:`_Sampler` does,
    assuming a constant rate); None when that needs a rate that is unknown."""
    first, last = 0, total
    if opts.needs_timestamps and not rate:
        return None
    if opts.start is not None:
        first = min(total, math.ceil(opts.start * rate - _EPS))
    if opts.end is not None:
        last = min(total, math.ceil(opts.end * rate - _EPS))
    window = max(0, last - first)
    if opts.fps is not None:
        kept = min(window, math.ceil(window / rate * opts.fps - _EPS))
    else:
        kept = -(-window // opts.stride)
    return kept if opts.max_frames is None else min(kept, opts.max_frames)


def count_frames(
    source: Source,
    *,
    stride: int = 1,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    max_frames: int | None = None,
    source_fps: float | None = None,
) -> int | None:
    """About how many frames :func:`iter_frames` yields with these options, without decoding any.

    Exact for folders, lists and arrays; for video files an estimate from the container (its frame
    count, else duration × frame rate, assuming a constant rate), as for progress bars; None when the
    container says neither. Raises as :func:`iter_frames` does for a missing or unreadable source.
    """
    opts = _Options(stride=stride, fps=fps, start=start, end=end, max_frames=max_frames,
                    source_fps=source_fps)
    opts.validate()
    path = _video_path(source)
    if path is None:
        items, _ = _items(source)
        return _selected_count(len(items), source_fps, opts)
    container = _open_container(path)
    try:
        stream = container.streams.video[0]
        rate = _stream_fps(stream) or source_fps
        duration = _stream_duration(container, stream)
        total = stream.frames or (round(duration * rate) if duration and rate else None)
    finally:
        container.close()
    return None if total is None else _selected_count(total, rate, opts)


def iter_frames(
    source: Source,
    *,
    stride: int = 1,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    max_frames: int | None = None,
    progress: bool = False,
    source_fps: float | None = None,
) -> Iterator[Frame]:
    """Yield the frames of a video file, folder, image list or array as upright RGB :class:`Frame` s.

    Args:
        source: see the module docstring.
        stride: keep every ``stride``-th frame (of those in ``[start, end)``), starting with the first.
        fps: target frame rate: for each tick ``origin + k / fps`` (``origin`` = ``start``, else the
            first frame's timestamp) keep the first frame whose timestamp reaches it. Selection is by
            timestamp, so variable-frame-rate videos are sampled evenly in time; no frame is repeated
            (a target above the source rate keeps every frame). Exclusive with ``stride``.
        start, end: keep frames with ``start <= timestamp < end`` (seconds from the stream start).
            Frames before ``start`` are decoded and dropped (no seeking), so indices stay exact.
        max_frames: stop after this many frames have been yielded.
        progress: show a tqdm "decoding" bar (counts decoded frames).
        source_fps: frame rate of a folder / list / array (its timestamps become ``index / source_fps``;
            required there for ``fps``, ``start`` and ``end``). For files it is only used for frames
            without timestamps.

    Errors:
        FileNotFoundError for a missing path; VideoDecodeError for a file that is not a video (a text
        file, an image format FFmpeg cannot read, a file without a video stream) or when no frame
        decodes; ValueError for an empty folder / list, frames of different sizes, or invalid options.

    Truncated / corrupt files: every frame that can be decoded is yielded; when the demuxer or decoder
    reports errors, or the stream ends clearly earlier than the container header announces, a
    ``UserWarning`` naming the file and the number of frames read is emitted after the last frame
    (only if iteration ran to the end of the stream). Zero decodable frames raise VideoDecodeError.

    The source is checked when this is called (missing file, not a video, empty folder, bad options
    raise here); frames are decoded lazily while iterating. The container is closed when the iterator
    is exhausted, closed or garbage-collected.
    """
    opts = _Options(
        stride=stride, fps=fps, start=start, end=end, max_frames=max_frames, source_fps=source_fps
    )
    opts.validate()
    path = _video_path(source)
    if path is not None:
        return _iter_video_file(_open_container(path), path, opts, progress)
    items, _ = _items(source)
    _check_item_options(opts)
    return _iter_items(items, opts, progress)


def read_frames(source: Source, **options: Any) -> list[Frame]:
    """All selected frames as a list; ``options`` as for :func:`iter_frames` (mind the memory for long
    videos)."""
    return list(iter_frames(source, **options))
