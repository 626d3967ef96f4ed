"""Mask formats: COCO RLE, DAVIS palette PNGs, and one video's segmentation folder.

* :func:`encode_rle` / :func:`decode_rle` — COCO compressed RLE, byte-for-byte what pycocotools writes
  (MeViS ``mask_dict.json`` entries), without depending on pycocotools.
* :func:`write_palette_png` / :func:`read_palette_png` — indexed PNGs with :data:`DAVIS_PALETTE`
  (DAVIS / MeViS / Ref-YouTube-VOS annotation format); :func:`write_mask_pngs` a folder of them.
* :func:`write_segmentation` — one video's masks for several expressions (PNGs, RLE JSON,
  ``expressions.json``), written atomically; :func:`is_segmentation_output` tells a finished one.

The writers take arrays (label maps, RLE records), never pipeline results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ssa.io.files import OutputLayout, PathLike, atomic_output_dir

__all__ = [
    "DAVIS_PALETTE",
    "PALETTE_RGB",
    "as_labels",
    "encode_rle",
    "decode_rle",
    "write_palette_png",
    "read_palette_png",
    "write_binary_png",
    "read_mask_png",
    "write_mask_pngs",
    "MASKS_LAYOUT",
    "SEGMENTATION_LAYOUT",
    "SEGMENTATION_INDEX",
    "rle_record",
    "ExpressionMasks",
    "write_segmentation",
    "is_segmentation_output",
]


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

PALETTE_RGB = np.frombuffer(DAVIS_PALETTE, dtype=np.uint8).reshape(256, 3)
""":data:`DAVIS_PALETTE` as a (256, 3) uint8 array: the RGB colour of each label."""


def as_labels(labels: np.ndarray, what: str) -> np.ndarray:
    """An (H, W) uint8 label map from bool or integer labels in 0..255; ``what`` names it in errors."""
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
    labels = np.ascontiguousarray(as_labels(labels, str(path)))
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


def write_binary_png(path: PathLike, mask: np.ndarray) -> None:
    """Write an ``(H, W)`` mask (bool, or integers: non-zero is foreground) as a 0/255 grayscale ("L")
    PNG, the MeViS / Ref-YouTube-VOS submission format."""
    from PIL import Image

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: expected an (H, W) mask, got shape {mask.shape}")
    Image.fromarray(np.where(mask != 0, 255, 0).astype(np.uint8)).save(path, format="PNG")


def read_mask_png(path: PathLike) -> np.ndarray:
    """An (H, W) bool mask from a PNG of any mode: non-zero (palette index / gray / any colour channel,
    alpha ignored) is foreground."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image)
            if image.mode in ("LA", "PA", "RGBA"):
                pixels = pixels[..., :-1]  # drop alpha
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read mask image {path}: {e}") from e
    if pixels.ndim == 3:
        return pixels.any(axis=-1)
    return pixels != 0



# ---------------------------------------------------------------------------------------------------
# one video's segmentation

SEGMENTATION_INDEX = "expressions.json"  # written last: its presence marks a finished output

SEGMENTATION_LAYOUT = OutputLayout(
    "segmentation output", markers=(SEGMENTATION_INDEX,), files=(re.escape(SEGMENTATION_INDEX), r"\d+\.json"),
    dirs=((r"\d+", MASKS_LAYOUT),))
"""What :func:`write_segmentation` writes: ``expressions.json``, ``<i>.json`` and ``<i>/<frame>.png``."""


def rle_record(expression: str, masks: Iterable[np.ndarray], *, size: tuple[int, int],
               frame_names: Sequence[str], frame_indices: Sequence[int],
               timestamps: Sequence[float | None], object_scores: Sequence[float]) -> dict[str, Any]:
    """The JSON record of one expression's masks (what ``RVOSResult.save_rle`` and ``<i>.json`` of
    :func:`write_segmentation` hold): the expression, the frames, the object scores and one COCO RLE per
    frame of ``masks`` ((H, W) bool, in order)."""
    return {
        "expression": expression,
        "size": list(size),
        "frames": list(frame_names),
        "frame_indices": list(frame_indices),
        "timestamps": list(timestamps),
        "object_scores": [float(s) for s in object_scores],
        "masks": [encode_rle(m) for m in masks],
    }


def write_mask_pngs(folder: PathLike, frame_names: Sequence[str], labels: Iterable[np.ndarray],
                    bar: tqdm | None = None) -> None:
    """Write ``<folder>/<name>.png`` palette PNGs, one per frame name, of ``labels`` ((H, W) label maps,
    in order; may be lazy). Into an existing (temporary) folder: make it atomic with
    :func:`~ssa.io.files.atomic_output_dir` and :data:`MASKS_LAYOUT`."""
    folder = Path(folder)
    for name, frame_labels in zip(frame_names, labels, strict=True):
        write_palette_png(folder / f"{name}.png", frame_labels)
        if bar is not None:
            bar.update(1)


@dataclass(frozen=True)
class ExpressionMasks:
    """One expression's masks over a video as :func:`write_segmentation` takes them: plain arrays."""

    expression: str
    frame_names: Sequence[str]
    labels: Iterable[np.ndarray]  # (H, W) uint8 label map per frame, in order (may be lazy)
    record: dict[str, Any]  # its :func:`rle_record`
    object_scores: Sequence[float]


def write_segmentation(entries: Sequence[ExpressionMasks], out: PathLike, *, overwrite: bool = False,
                       inputs: Iterable[PathLike] = (), progress: bool = False) -> Path:
    """Write one video's masks, one :class:`ExpressionMasks` per expression, to the directory ``out``.

    Per expression ``i``: ``out/<i>/<frame>.png`` (palette PNGs) and ``out/<i>.json`` (its
    :func:`rle_record`); then ``out/expressions.json`` listing each expression, its object scores and
    frame count. The directory appears only when complete (:func:`atomic_output_dir`); an existing
    non-empty one is refused unless ``overwrite``, and even then unless it is an earlier
    :func:`write_segmentation` output and nothing else (:func:`check_output_dir`). ``out`` may not be or
    contain ``inputs`` (the source video). ``progress``: a tqdm "writing" bar (frames times expressions).
    """
    out = Path(out)
    frames = sum(len(e.frame_names) for e in entries)
    with atomic_output_dir(out, overwrite=overwrite, layout=SEGMENTATION_LAYOUT, inputs=inputs) as tmp, \
            tqdm(total=frames, desc="writing", unit="frame", disable=not progress) as bar:
        summary = []
        for i, entry in enumerate(entries):
            folder = tmp / str(i)  # tmp as a whole appears atomically
            folder.mkdir()
            write_mask_pngs(folder, entry.frame_names, entry.labels, bar)
            (tmp / f"{i}.json").write_text(json.dumps(entry.record))
            summary.append({"id": i, "expression": entry.expression,
                            "object_scores": [round(float(s), 4) for s in entry.object_scores],
                            "frames": len(entry.frame_names)})
        (tmp / SEGMENTATION_INDEX).write_text(json.dumps(summary, indent=2))
    return out


def is_segmentation_output(path: PathLike) -> bool:
    """Whether ``path`` is a finished :func:`write_segmentation` directory (it holds ``expressions.json``)."""
    return (Path(path) / SEGMENTATION_INDEX).is_file()


