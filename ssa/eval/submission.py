"""Prediction files in the MeViS / Ref-YouTube-VOS submission layout, and the upload zip.

Layout: ``<root>/<video>/<exp_id>/<frame>.png``, one binary PNG per frame of every expression. Masks are
written as 8-bit grayscale ("L") PNGs with 0 for background and 255 for foreground, which is what the
official evaluation servers read; on reading, any non-zero pixel is foreground (so palette 0/1 PNGs,
0/1 grayscale or RGB masks read the same way).

* :func:`write_prediction` / :func:`read_prediction` — one expression's (T, H, W) masks.
* :func:`zip_submission` — the zip to upload, entries ``[prefix/]<video>/<exp_id>/<frame>.png``.

Nothing that already exists is replaced unless ``overwrite=True`` is passed, and then only what ssa
wrote (:func:`ssa.io.check_output_dir` / :func:`ssa.io.check_output_file`).
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssa.io import MASKS_LAYOUT, OutputLayout, atomic_output_dir, atomic_write, check_output_file, is_leftover
from ssa.io.masks import read_mask_png, write_binary_png

__all__ = ["prediction_path", "write_prediction", "read_prediction", "read_mask_png", "zip_submission",
           "PREDICTIONS_LAYOUT"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

PREDICTIONS_LAYOUT = OutputLayout(
    "predictions folder", dirs=((r".+", OutputLayout("video's predictions", dirs=((r".+", MASKS_LAYOUT),))),))
"""``<video>/<exp_id>/<frame>.png`` mask PNGs and nothing else."""


# A fixed timestamp makes the zip a function of the masks only (byte-identical for identical inputs).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _check_name(value: str, what: str) -> str:
    """A video / expression / frame name usable as one path component."""
    name = str(value)
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{what} {value!r} cannot be used as a file or folder name")
    return name


def prediction_path(root: PathLike, video: str, exp_id: str, frame: str) -> Path:
    """Where the mask of ``frame`` for expression ``exp_id`` of ``video`` lives under ``root``."""
    return (
        Path(root)
        / _check_name(video, "video")
        / _check_name(exp_id, "expression id")
        / f"{_check_name(frame, 'frame name')}.png"
    )


def write_prediction(
    root: PathLike,
    video: str,
    exp_id: str,
    frame_names: Sequence[str],
    masks: np.ndarray,
    *,
    overwrite: bool = False,
) -> Path:
    """Write one expression's masks as ``<root>/<video>/<exp_id>/<frame>.png`` (0/255 "L" PNGs).

    ``masks`` is (T, H, W) bool (or 0/1 integers), one per entry of ``frame_names``. The expression's
    folder is written completely or not at all; an existing non-empty one raises FileExistsError unless
    ``overwrite`` is True and it holds mask PNGs only. Returns the folder.
    """
    masks = np.asarray(masks)
    names = [_check_name(n, "frame name") for n in frame_names]
    if masks.ndim != 3:
        raise ValueError(
            f"video {video!r}, expression {exp_id!r}: masks must be (T, H, W), got shape {masks.shape}"
        )
    if masks.shape[0] != len(names):
        raise ValueError(
            f"video {video!r}, expression {exp_id!r}: {masks.shape[0]} masks for {len(names)} frame names"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"video {video!r}, expression {exp_id!r}: duplicate frame names")
    if masks.dtype != bool and not np.issubdtype(masks.dtype, np.integer):
        raise TypeError(f"masks must be bool (or integer, non-zero = foreground), got {masks.dtype}")
    folder = prediction_path(root, video, exp_id, "x").parent
    with atomic_output_dir(folder, overwrite=overwrite, layout=MASKS_LAYOUT) as tmp:
        for name, mask in zip(names, masks, strict=True):  # mask: (H, W)
            write_binary_png(tmp / f"{name}.png", mask)
    return folder


def read_prediction(
    root: PathLike,
    video: str,
    exp_id: str,
    frame_names: Sequence[str],
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read one expression's masks from ``<root>/<video>/<exp_id>/<frame>.png`` → (T, H, W) bool.

    ``size`` is the expected (H, W); by default the size of the first frame, which all must share.
    A missing PNG raises FileNotFoundError naming the video, expression and frame; a PNG of another
    size raises ValueError.
    """
    if not frame_names:
        raise ValueError(f"video {video!r}, expression {exp_id!r}: no frame names given")
    out: np.ndarray | None = None
    for t, frame in enumerate(frame_names):
        path = prediction_path(root, video, exp_id, frame)
        if not path.is_file():
            raise FileNotFoundError(
                f"prediction missing for video {video!r}, expression {exp_id!r}, frame {frame!r}: "
                f"expected {path}"
            )
        mask = read_mask_png(path)  # (H, W)
        if size is None:
            size = (int(mask.shape[0]), int(mask.shape[1]))
        if mask.shape != tuple(size):
            raise ValueError(
                f"prediction for video {video!r}, expression {exp_id!r}, frame {frame!r} ({path}) is "
                f"{mask.shape[0]}x{mask.shape[1]} (HxW) but {size[0]}x{size[1]} was expected"
            )
        if out is None:
            out = np.zeros((len(frame_names), *mask.shape), dtype=bool)  # (T, H, W)
        out[t] = mask
    assert out is not None
    return out


def _inside(path: Path, real_root: Path) -> Path:
    """``path`` with symbolic links resolved; ValueError when that leaves ``real_root``."""
    real = Path(os.path.realpath(path))
    if real != real_root and real_root not in real.parents:
        raise ValueError(f"{path} is a symbolic link to {real}, outside the predictions folder {real_root}; "
                         "refusing to zip it (copy the file in instead)")
    return real


def _submission_files(root: Path) -> list[tuple[Path, str]]:
    """(file, ``video/exp_id/frame.png``) for every PNG three levels below ``root``, sorted.

    Names starting with "." are ids like any other (only the temporary folders of an interrupted write
    are skipped); a symbolic link leading outside ``root`` raises ValueError."""
    real_root = Path(os.path.realpath(root))

    def children(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if not is_leftover(p.name))  # skip killed writes

    found = []
    for video in children(root):
        if not _inside(video, real_root).is_dir():
            continue
        for exp in children(video):
            if not _inside(exp, real_root).is_dir():
                continue
            for png in children(exp):
                if png.suffix.lower() == ".png" and _inside(png, real_root).is_file():
                    found.append((png, f"{video.name}/{exp.name}/{png.name}"))
    return found


def zip_submission(
    root: PathLike, zip_path: PathLike, *, prefix: str = "", overwrite: bool = False
) -> Path:
    """Zip the predictions under ``root`` for upload; returns ``zip_path``.

    Entries are ``<video>/<exp_id>/<frame>.png`` (MeViS), or ``<prefix>/<video>/<exp_id>/<frame>.png``
    with ``prefix`` (e.g. ``"Annotations"`` for the Ref-YouTube-VOS server). Only PNGs exactly three
    levels below ``root`` are included (ids starting with "." too); anything else is left out. A symbolic
    link under ``root`` that leads outside it raises ValueError (nothing from outside ``root`` is read).
    The zip is written to a temporary file next to ``zip_path`` and renamed into place; an existing
    ``zip_path`` raises FileExistsError unless ``overwrite`` is True, and is never replaced when it is not
    a regular file or is one of the PNGs zipped.
    """
    root = Path(root)
    zip_path = Path(zip_path)
    if not root.is_dir():
        raise FileNotFoundError(f"predictions directory not found: {root}")
    check_output_file(zip_path, overwrite=overwrite)
    prefix = prefix.strip("/")
    if prefix:
        for part in prefix.split("/"):
            _check_name(part, "prefix component")
    files = _submission_files(root)
    if zip_path.exists():  # replaced only if it is not one of the masks it would hold
        check_output_file(zip_path, overwrite=overwrite, inputs=[path for path, _ in files])
    if not files:
        raise ValueError(f"no predictions found under {root} (expected <video>/<exp_id>/<frame>.png)")
    with atomic_write(zip_path, overwrite=overwrite, suffix=".tmp") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path, name in files:
                info = zipfile.ZipInfo(f"{prefix}/{name}" if prefix else name, date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, path.read_bytes())
    logger.info("wrote %s (%d masks)", zip_path, len(files))
    return zip_path
