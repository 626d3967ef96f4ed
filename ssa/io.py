"""Writing results: COCO RLE, DAVIS palette PNGs, overlay MP4s, and safe output directories.

* :func:`encode_rle` / :func:`decode_rle` — COCO compressed RLE, byte-for-byte what pycocotools writes
  (MeViS ``mask_dict.json`` entries), without depending on pycocotools.
* :func:`write_palette_png` / :func:`read_palette_png` — indexed PNGs with :data:`DAVIS_PALETTE`
  (DAVIS / MeViS / Ref-YouTube-VOS annotation format).
* :func:`write_overlay_video` — masks tinted over the frames, H.264 MP4 via PyAV, written atomically.
* :func:`check_output_dir` / :func:`check_output_file` — the one rule of what ssa may write or replace
  (its own outputs only, never an input or the folders around them); :func:`prepare_output_dir` /
  :func:`atomic_output_dir` apply it to result folders.
* :func:`write_segmentation` — one video's results (PNGs, RLE JSON, ``expressions.json``), written
  atomically; :func:`is_segmentation_output` tells a finished one.
* :func:`temp_prefix` / :func:`remove_stale_temporaries` — the names of every temporary an atomic
  write of ssa makes next to its target (``.<name>.tmp-p<pid>h<host>_*``; ``ssa-tmp`` for checkpoints,
  ``old`` for the backup of a replaced folder) and their removal once their writer is gone: each writer
  removes the stale temporaries of its own target before writing (training and evaluation runs clean
  their whole folders when they start), logging each one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "DAVIS_PALETTE",
    "encode_rle",
    "decode_rle",
    "write_palette_png",
    "read_palette_png",
    "OutputLayout",
    "MASKS_LAYOUT",
    "SEGMENTATION_LAYOUT",
    "check_output_dir",
    "check_output_file",
    "prepare_output_dir",
    "atomic_output_dir",
    "write_overlay_video",
    "h264_encoder",
    "atomic_write_text",
    "temp_prefix",
    "remove_stale_temporaries",
    "is_leftover",
    "write_segmentation",
    "is_segmentation_output",
    "SEGMENTATION_INDEX",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------------------
# COCO RLE


def _run_lengths(mask: np.ndarray) -> np.ndarray:
    """Column-major run lengths of a 2-D boolean mask, starting with a (possibly empty) 0-run."""
    flat = np.ascontiguousarray(mask.T).reshape(-1)  # Fortran order
    n = flat.size
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [n]))
    runs = np.diff(bounds).astype(np.int64)
    if flat[0]:
        runs = np.concatenate(([0], runs))
    return runs


def _counts_to_string(counts: np.ndarray) -> str:
    """pycocotools ``rleToString``: deltas against the run two back (i > 2), 5-bit little-endian groups
    with a continuation bit (0x20), each + 48 (vectorised)."""
    x = counts.astype(np.int64).copy()
    if x.size > 3:
        x[3:] -= counts[1:-2].astype(np.int64)
    # a value takes k characters, k minimal with -2^(5k-1) <= x < 2^(5k-1)
    max_chars = 13  # enough for any int64
    k = np.ones(x.shape, dtype=np.int64)
    for j in range(1, max_chars):
        limit = 1 << (5 * j - 1)
        k += (x < -limit) | (x >= limit)
    groups = np.arange(max_chars, dtype=np.int64)
    chars = (x[:, None] >> (5 * groups[None, :])) & 0x1F
    chars |= np.where(groups[None, :] < (k[:, None] - 1), 0x20, 0)
    chars += 48
    valid = groups[None, :] < k[:, None]
    return chars[valid].astype(np.uint8).tobytes().decode("ascii")


def _string_to_counts(s: bytes) -> np.ndarray:
    """pycocotools ``rleFrString`` (vectorised)."""
    c = np.frombuffer(s, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (c < 0).any() or (c > 63).any():
        raise ValueError("RLE counts string contains characters outside the COCO alphabet ('0'..'o')")
    last = (c & 0x20) == 0  # a character without the continuation bit ends a value
    if not last[-1]:
        raise ValueError("RLE counts string is truncated (its last value is incomplete)")
    value_id = np.concatenate(([0], np.cumsum(last)[:-1]))
    starts = np.flatnonzero(np.concatenate(([True], last[:-1])))
    position = np.arange(c.size) - starts[value_id]
    if position.max() >= 13:
        raise ValueError("RLE counts string has a value longer than 13 characters")
    parts = (c & 0x1F) << (5 * position)
    x = np.add.reduceat(parts, starts)
    ends = np.flatnonzero(last)
    lengths = ends - starts + 1
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * lengths[negative])
    counts = x.copy()
    counts[1::2] = np.cumsum(x[1::2])
    if counts.size > 2:
        counts[2::2] = np.cumsum(x[2::2])
    return counts


def encode_rle(mask: np.ndarray) -> dict:
    """Encode an ``(H, W)`` mask as COCO compressed RLE ``{"size": [H, W], "counts": str}``.

    Identical to ``pycocotools.mask.encode(np.asfortranarray(mask.astype(np.uint8)))`` (with the
    counts decoded to ``str``, as stored in JSON). Accepts bool or integer masks (non-zero = True).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle expects an (H, W) mask, got shape {mask.shape}")
    if mask.dtype != bool:
        if not np.issubdtype(mask.dtype, np.integer):
            raise TypeError(
                f"encode_rle expects a bool (or integer) mask, got {mask.dtype}; threshold it first"
            )
        mask = mask != 0
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": _counts_to_string(_run_lengths(mask))}


def decode_rle(rle: dict) -> np.ndarray:
    """Decode a COCO RLE to an ``(H, W)`` bool mask.

    ``counts`` may be the compressed string (``str`` or ``bytes``) or an uncompressed list of run
    lengths (starting with the 0-run).
    """
    try:
        h, w = (int(v) for v in rle["size"])
        counts_in = rle["counts"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a COCO RLE dict with 'size': [H, W] and 'counts': {rle!r:.100}") from e
    if isinstance(counts_in, str):
        counts = _string_to_counts(counts_in.encode("ascii"))
    elif isinstance(counts_in, (bytes, bytearray)):
        counts = _string_to_counts(bytes(counts_in))
    else:
        counts = np.asarray(counts_in, dtype=np.int64).reshape(-1)
    if (counts < 0).any():
        raise ValueError("RLE has negative run lengths")
    total = int(counts.sum())
    if total != h * w:
        raise ValueError(f"RLE run lengths sum to {total}, but size {h}x{w} has {h * w} pixels")
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return np.ascontiguousarray(flat.reshape(w, h).T)


# ---------------------------------------------------------------------------------------------------
# palette PNGs


def _davis_palette() -> bytes:
    palette = bytearray()
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += bytes((r, g, b))
    return bytes(palette)


DAVIS_PALETTE: bytes = _davis_palette()
"""The DAVIS / PASCAL VOC colour map, 256 RGB triples (768 bytes): 0 black, 1 (128, 0, 0), 2 (0, 128, 0),
3 (128, 128, 0), 4 (0, 0, 128), ..."""

_PALETTE_RGB = np.frombuffer(DAVIS_PALETTE, dtype=np.uint8).reshape(256, 3)
_PALETTE_LUTS = [np.ascontiguousarray(_PALETTE_RGB[:, c]) for c in range(3)]


def _as_labels(labels: np.ndarray, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{what}: expected an (H, W) label map, got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if labels.dtype == np.uint8:
        return labels
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{what}: expected bool or integer labels, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"{what}: labels must be in 0..255, got {labels.min()}..{labels.max()}")
    return labels.astype(np.uint8)


def write_palette_png(path: PathLike, labels: np.ndarray) -> None:
    """Write ``(H, W)`` labels (uint8, or bool → 0/1) as an indexed ("P") PNG with :data:`DAVIS_PALETTE`.

    Parent directories are created.
    """
    from PIL import Image

    path = Path(path)
    labels = np.ascontiguousarray(_as_labels(labels, str(path)))
    h, w = labels.shape
    image = Image.frombytes("P", (w, h), labels.tobytes())
    image.putpalette(DAVIS_PALETTE)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def read_palette_png(path: PathLike) -> np.ndarray:
    """The ``(H, W)`` uint8 indices of a palette ("P") PNG (a grayscale "L" PNG is read as is)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "1"):
                raise ValueError(f"{path}: expected a palette (P) or grayscale PNG, got mode {image.mode!r}")
            return np.array(image.convert("L") if image.mode == "1" else image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read mask image {path}: {e}") from e


# ---------------------------------------------------------------------------------------------------
# output directories


def _umask() -> int:
    """The process umask, read from /proc on Linux: ``os.umask`` can only tell it by setting it, which
    would, for a moment, give files other threads create meanwhile the wrong mode."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    umask = os.umask(0o077)  # elsewhere: set (to the most private value) and restore at once
    os.umask(umask)
    return umask


def default_permissions(path: PathLike) -> None:
    """Give a file or directory made by ``tempfile`` (0600 / 0700, private) the mode a plain ``open()`` or
    ``mkdir()`` would have given it under the process umask, before it is renamed into a user's place."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


# Leftovers of ssa's own atomic writes killed midway (mkdtemp / mkstemp / uuid names): owned anywhere.
_LEFTOVER = re.compile(r"\..+\.(?:(?:ssa-)?tmp|old)-\w+(?:\.[A-Za-z0-9]+)?|\..+\.\w{8}\.tmp")
# Those named by temp_prefix: the target's name, the kind, the writer's process id and host.
_TAGGED = re.compile(r"\.(?P<name>.+)\.(?P<kind>ssa-tmp|tmp|old)-p(?P<pid>\d+)h(?P<host>[0-9a-f]{6})_\w*"
                     r"(?:\.[A-Za-z0-9]+)?")
_KINDS = ("tmp", "ssa-tmp", "old")


def is_leftover(name: str) -> bool:
    """Whether ``name`` is that of a temporary or backup an atomic write of ssa makes (and may leave
    when killed): such entries are never results, inputs or foreign files."""
    return _LEFTOVER.fullmatch(name) is not None


@functools.cache
def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def temp_prefix(name: str, kind: str = "tmp") -> str:
    """The start of the name of a temporary sibling written on the way to the entry ``name``:
    ``.<name>.<kind>-p<pid>h<host>_`` (``kind``: "tmp", "ssa-tmp" or "old" for a backup), so that a later
    run can tell when its writer is gone (:func:`remove_stale_temporaries`)."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    return f".{name}.{kind}-p{os.getpid()}h{_host_tag()}_"


def _writer_alive(pid: int) -> bool:
    """Whether the process ``pid`` of this host still runs (True when that cannot be told)."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def _entry_size(path: str) -> int:
    if not os.path.isdir(path) or os.path.islink(path):
        return os.lstat(path).st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def remove_stale_temporaries(folder: PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporaries that killed ssa writers left in ``folder``; return their paths.

    Only entries named by :func:`temp_prefix` (for the target ``name`` only, when given) whose writer
    process no longer runs on this host are removed, each logged with its size; a temporary of a live
    writer, of another host or of an unknown writer (names without the tag) is kept. The backup
    (``old``) of an interrupted replacement is kept while its target is missing (it then holds the only
    copy of the previous output; a warning says so).
    """
    folder = Path(folder)
    try:
        with os.scandir(folder) as it:
            entries = [(e, m) for e in it if (m := _TAGGED.fullmatch(e.name))]
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry, m in entries:
        if name is not None and m["name"] != name:
            continue
        if m["host"] != _host_tag() or _writer_alive(int(m["pid"])):
            continue
        if m["kind"] == "old" and not os.path.lexists(folder / m["name"]):
            logger.warning("%s is the previous %s, kept aside by a replacement that was interrupted before "
                           "the new one was in place; keeping it", entry.path, m["name"])
            continue
        try:
            size = _entry_size(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError as e:
            logger.warning("could not remove the stale temporary %s: %s", entry.path, e)
            continue
        logger.info("removed %s (%.1f MB), a temporary left by an ssa process that is gone (pid %s)",
                    entry.path, size / 1e6, m["pid"])
        removed.append(Path(entry.path))
    return removed
_SHOWN = 5  # foreign entries named in a refusal


@dataclass(frozen=True)
class OutputLayout:
    """What ssa writes into one kind of output folder: how it tells its own folders from anyone else's.

    ``files`` and the keys of ``dirs`` are regular expressions matched against whole entry names; a
    matching directory is checked against its nested layout (None: its contents are not looked at).
    ``markers``: names of which one must be present for a folder to count as ssa's (none: a non-empty
    folder of owned entries only counts). ``file_check``: an optional test of each owned file's content.
    Symbolic links are never owned.
    """

    kind: str
    markers: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    dirs: tuple[tuple[str, OutputLayout | None], ...] = ()
    file_check: Callable[[Path], bool] | None = None

    def foreign(self, folder: PathLike) -> list[str]:
        """Paths (relative to ``folder``; folders end with "/") under ``folder`` that ssa does not write
        there, sorted; a folder that is foreign as a whole is listed without its contents."""
        return _foreign_entries(Path(folder), self, "")


def _foreign_entries(folder: Path, layout: OutputLayout, prefix: str) -> list[str]:
    found: list[str] = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        name = prefix + entry.name
        if _LEFTOVER.fullmatch(entry.name):
            continue
        if entry.is_symlink():
            found.append(f"{name} (a symbolic link)")
        elif entry.is_dir(follow_symlinks=False):
            sub = next((s for pattern, s in layout.dirs if re.fullmatch(pattern, entry.name)), False)
            if sub is False:
                found.append(name + "/")
            elif sub is not None:
                found += _foreign_entries(Path(entry.path), sub, name + "/")
        elif not (entry.is_file(follow_symlinks=False)
                  and any(re.fullmatch(pattern, entry.name) for pattern in layout.files)
                  and (layout.file_check is None or layout.file_check(Path(entry.path)))):
            found.append(name)
    return found


def _is_mask_png(path: Path) -> bool:
    """A PNG whose header says grayscale or palette (colour type 0 or 3): what ssa's mask writers make."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return False
    return (len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
            and head[25] in (0, 3))


MASKS_LAYOUT = OutputLayout("mask folder", files=(r".+\.png",), file_check=_is_mask_png)
"""A folder of mask PNGs (``RVOSResult.save_pngs``, one expression of a submission): nothing else."""


def _real(path: PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def _same(a: Path, b: Path) -> bool:
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_not_protected(path: Path, inputs: Iterable[PathLike]) -> None:
    """Refuse an output folder that is, or contains, the current or home directory, the filesystem root
    or one of ``inputs``."""
    target = _real(path)
    if target == Path(target.anchor):
        raise ValueError(f"refusing to write to {path}: it is the filesystem root")
    places: list[tuple[PathLike, str]] = []
    for where, what in ((Path.cwd, "the current directory"), (Path.home, "the home directory")):
        with contextlib.suppress(OSError, RuntimeError, KeyError):  # deleted cwd, no home: nothing to keep
            places.append((where(), what))
    places += [(p, f"the input {p}") for p in inputs]
    for place, what in places:
        real = _real(place)
        if real == target:
            raise ValueError(f"refusing to write to {path}: it is {what}; choose a new output folder")
        if target in real.parents:
            raise ValueError(f"refusing to write to {path}: it contains {what}; choose a new output folder")


def check_output_dir(
    path: PathLike,
    *,
    overwrite: bool = False,
    layout: OutputLayout | None = None,
    inputs: Iterable[PathLike] = (),
    hint: str = "pass overwrite=True to replace it",
    verb: str = "replace",
) -> Path:
    """Raise unless ssa may write the output folder ``path`` (replacing what is there); return it.

    The one rule every ssa writer of a folder follows:

    * never the current directory, the home directory, the filesystem root, or a folder that is or
      contains one of ``inputs`` (the run's video, manifest, dataset, ...; also with ``overwrite``):
      ``ValueError``;
    * a missing or empty folder is fine; a file there raises ``NotADirectoryError``;
    * a non-empty folder raises ``FileExistsError`` (saying ``hint``) unless ``overwrite``, and even
      then unless it is recognisably ssa's own output of this ``layout`` (its marker present) holding
      nothing else: the refusal names the foreign files. Without a ``layout`` ssa cannot tell, and a
      symbolic link is not a folder ssa wrote: both are refused. ``verb`` says what ssa would do to
      the folder in those messages (writers that add to a folder say "write into").
    """
    path = Path(path)
    inputs = list(inputs)
    _check_not_protected(path, inputs)
    if not (path.exists() or path.is_symlink()):
        return path
    if not path.is_dir():
        raise NotADirectoryError(f"output path {path} exists and is not a directory")
    if not any(path.iterdir()):
        return path
    if not overwrite:
        raise FileExistsError(f"output directory {path} already exists and is not empty; {hint}")
    if path.is_symlink():
        raise FileExistsError(f"output directory {path} is a symbolic link, not a folder ssa wrote; "
                              f"refusing to {verb} it")
    if layout is None:
        raise FileExistsError(f"refusing to {verb} the non-empty directory {path}: no output layout was "
                              "given, so ssa cannot tell whether it wrote it")
    foreign = layout.foreign(path)
    shown = ", ".join(foreign[:_SHOWN]) + (f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN
                                           else "")
    if layout.markers and not any((path / m).exists() for m in layout.markers):
        raise FileExistsError(
            f"refusing to {verb} {path}: it is not an ssa {layout.kind} (no {' or '.join(layout.markers)})"
            + (f"; it holds {shown}" if foreign else ""))
    if foreign:
        raise FileExistsError(
            f"refusing to {verb} {path}: it holds files ssa did not write there: {shown}; move them "
            "away or choose another output folder")
    return path


def check_output_file(
    path: PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable[PathLike] = (),
    hint: str = "pass overwrite=True to replace it",
) -> Path:
    """Raise unless ssa may write the file ``path``; return it.

    A directory there raises ``IsADirectoryError``; one of ``inputs`` (the video an overlay is drawn
    from, ...) ``ValueError``, also with ``overwrite``; an existing file ``FileExistsError`` (saying
    ``hint``) unless ``overwrite``, and even then unless it is a regular file (not a link or device).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, expected a file path")
    for source in inputs:
        if _same(path, Path(source)):
            raise ValueError(f"refusing to write {path}: it is the input {source}")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} already exists; {hint}")
        if path.is_symlink() or not path.is_file():
            raise FileExistsError(f"refusing to replace {path}: it is not a regular file (a link or a "
                                  "device), so ssa did not write it")
    return path


def prepare_output_dir(path: PathLike, overwrite: bool = False, *, layout: OutputLayout | None = None,
                       inputs: Iterable[PathLike] = ()) -> Path:
    """Create the output directory ``path`` (and its parents) and return it.

    Checked by :func:`check_output_dir` (a non-empty one needs ``overwrite`` and a ``layout`` it
    matches); its contents are kept (files are overwritten as they are written; use
    :func:`atomic_output_dir` to replace a directory wholesale).
    """
    path = check_output_dir(path, overwrite=overwrite, layout=layout, inputs=inputs)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_output_dir(path: PathLike, overwrite: bool = False, *, layout: OutputLayout | None = None,
                      inputs: Iterable[PathLike] = (),
                      hint: str = "pass overwrite=True to replace it") -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it is renamed to ``path``.

    ``path`` is checked by :func:`check_output_dir` first and again just before the rename: an existing
    non-empty one is replaced only with ``overwrite`` and when it is ssa's own output of ``layout``. If
    the block raises, the temporary directory is removed and ``path`` is left untouched::

        with atomic_output_dir("out/video1", overwrite=True, layout=MASKS_LAYOUT) as tmp:
            write_palette_png(tmp / "00000.png", labels)
    """
    path = Path(path)
    inputs = list(inputs)
    check_output_dir(path, overwrite=overwrite, layout=layout, inputs=inputs, hint=hint)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), dir=path.parent))
    try:
        yield tmp
        default_permissions(tmp)
        check_output_dir(path, overwrite=overwrite, layout=layout, inputs=inputs, hint=hint)  # it may
        if path.exists():  # have appeared or changed meanwhile
            backup = path.parent / (temp_prefix(path.name, "old") + uuid.uuid4().hex[:8])
            os.replace(path, backup)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(backup, path)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------------
# one video's segmentation

SEGMENTATION_INDEX = "expressions.json"  # written last: its presence marks a finished output

SEGMENTATION_LAYOUT = OutputLayout(
    "segmentation output", markers=(SEGMENTATION_INDEX,), files=(re.escape(SEGMENTATION_INDEX), r"\d+\.json"),
    dirs=((r"\d+", MASKS_LAYOUT),))
"""What :func:`write_segmentation` writes: ``expressions.json``, ``<i>.json`` and ``<i>/<frame>.png``."""


def write_segmentation(results: Sequence[Any], out: PathLike, *, overwrite: bool = False,
                       inputs: Iterable[PathLike] = (), progress: bool = False) -> Path:
    """Write one video's :class:`~ssa.RVOSResult` list (one per expression) to the directory ``out``.

    Per expression ``i``: ``out/<i>/<frame>.png`` (palette PNGs) and ``out/<i>.json`` (COCO RLE per
    frame); then ``out/expressions.json`` listing each expression, its object scores and frame count.
    The directory appears only when complete (:func:`atomic_output_dir`); an existing non-empty one is
    refused unless ``overwrite``, and even then unless it is an earlier :func:`write_segmentation`
    output and nothing else (:func:`check_output_dir`). ``out`` may not be or contain ``inputs`` (the
    results' source video files are added to them). ``progress``: a tqdm "writing" bar (frames times
    expressions).
    """
    out = Path(out)
    inputs = [*inputs, *(p for r in results for p in _result_inputs(r))]
    frames = sum(len(r) for r in results)
    with atomic_output_dir(out, overwrite=overwrite, layout=SEGMENTATION_LAYOUT, inputs=inputs) as tmp, \
            tqdm(total=frames, desc="writing", unit="frame", disable=not progress) as bar:
        summary = []
        for i, result in enumerate(results):
            folder = tmp / str(i)  # the PNGs result.save_pngs writes; tmp as a whole appears atomically
            folder.mkdir()
            for t, name in enumerate(result.frame_names):
                write_palette_png(folder / f"{name}.png", result.labels(t))
                bar.update(1)
            result.save_rle(tmp / f"{i}.json")
            summary.append({"id": i, "expression": result.expression,
                            "object_scores": [round(float(s), 4) for s in result.object_scores],
                            "frames": len(result)})
        (tmp / SEGMENTATION_INDEX).write_text(json.dumps(summary, indent=2))
    return out


def _result_inputs(result: Any) -> list[Path]:
    """The source video file or frame folder of an :class:`~ssa.RVOSResult`, when it came from a path."""
    source = getattr(result, "_source", None)
    video = source[0] if isinstance(source, tuple) and source else None
    return [Path(video)] if isinstance(video, (str, os.PathLike)) else []


def is_segmentation_output(path: PathLike) -> bool:
    """Whether ``path`` is a finished :func:`write_segmentation` directory (it holds ``expressions.json``)."""
    return (Path(path) / SEGMENTATION_INDEX).is_file()


# ---------------------------------------------------------------------------------------------------
# overlay video

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
                rgb = tuple(int(v) for v in _PALETTE_RGB[k])
                cv2.drawContours(out, contours, -1, rgb, thickness, cv2.LINE_AA)
    if band is not None:
        out = np.concatenate([band, out], axis=0)
    return out


def _as_image(frame: Any, index: int) -> np.ndarray:
    image = getattr(frame, "image", frame)  # accept ssa.video.Frame
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
        frames: ``(H, W, 3)`` uint8 RGB images (or :class:`ssa.video.Frame`), consumed one at a time.
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
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=path.suffix or ".mp4",
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    frame_iter, mask_iter = iter(frames), iter(masks)
    try:
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
                    labels = None if mask is None else _as_labels(mask, f"mask {count}")
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
        check_output_file(path, overwrite=overwrite, inputs=inputs)  # it may have appeared meanwhile
        default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.debug("wrote %s (%s)", path, codec)
    return path


def atomic_write_text(path: PathLike, text: str, *, overwrite: bool = False,
                      inputs: Iterable[PathLike] = ()) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling file renamed into place; an existing file
    is refused unless ``overwrite`` is True, and always when it is a link or one of ``inputs``
    (:func:`check_output_file`)."""
    path = check_output_file(path, overwrite=overwrite, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
