"""Readers for referring-video-segmentation datasets, and a training clip sampler.

* :class:`MeViSDataset` — ``<split>/JPEGImages/<video>/<frame>.jpg``, ``<split>/meta_expressions.json``
  and (except for splits without ground truth) ``<split>/mask_dict.json`` of COCO RLEs per annotation.
* :class:`RefYouTubeVOSDataset` — ``meta_expressions.json``, ``JPEGImages/<video>/<frame>.jpg`` and
  ``Annotations/<video>/<frame>.png`` palette masks whose pixel value is the object id.
* :class:`RefDAVISDataset` — the same layout as Ref-YouTube-VOS (see its docstring).
* :class:`ClipSampler` — the MeViS training recipe: ``num_frames`` frames within ``±window`` of a
  reference frame, re-drawn until the target is visible in at least one of them.

Each dataset item is one (video, expression) pair, returned as a :class:`Sample` with the frames
loaded as ``(H, W, 3)`` uint8 RGB arrays and the ground truth as per-object ``(K, T, H, W)`` bool masks.
The JSON files are read and checked in the constructor; frames and masks are checked as they are loaded.
Problems raise ``ValueError`` / ``FileNotFoundError`` naming the file, video, expression or frame;
nothing is guessed silently. Video ids, expression ids and frame names become path components, so each
must be one plain name (not empty, ``.`` or ``..``, no ``/``, ``\\`` or NUL): a name that would lead out of
the split's folders (``../../x``, ``/etc/x``) is a ``ValueError`` in the constructor, before any file is
read.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssa.io import decode_rle, read_palette_png
from ssa.io.video import natural_key

__all__ = ["Sample", "ReferringVideoDataset", "MeViSDataset", "RefYouTubeVOSDataset", "RefDAVISDataset",
           "ClipSampler"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


@dataclass
class Sample:
    """One (video, expression) pair with its frames and ground-truth masks.

    ``masks`` is ``(K, T, H, W)`` bool, one row per object (``object_ids[k]``); ``K == 0`` when the
    split has no ground truth (see :attr:`has_masks`).
    """

    video: str
    expression_id: str
    expression: str
    frame_names: list[str]
    frames: list[np.ndarray]
    masks: np.ndarray
    object_ids: list[int]

    @property
    def union(self) -> np.ndarray:
        """The expression's ground truth: the union of its objects' masks, ``(T, H, W)`` bool."""
        return self.masks.any(axis=0)

    @property
    def has_masks(self) -> bool:
        """Whether ground truth is available (at least one object)."""
        return self.masks.shape[0] > 0


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed JSON in {path}: {e}") from e


def _as_int(value: Any, what: str) -> int:
    """An integer id from an int or a decimal string (bools and floats are rejected)."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected an integer id, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{what}: expected an integer id, got {value!r}")


def _check_component(value: str, what: str, where: str) -> str:
    """``value`` as one path component that stays inside the folder it is joined to, else ValueError."""
    if (not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value
            or os.path.isabs(value)):
        raise ValueError(f"{where}: {what} {value!r} is not a plain file or folder name (it would lead "
                         "outside the split's folders)")
    return value


class ReferringVideoDataset:
    """Base class of the dataset readers: the ``meta_expressions.json`` index (videos, their frame
    names, expressions), frame loading and item assembly (:meth:`load`, ``ds[i]``).

    A new dataset in the same index format subclasses it and provides:

    - ``has_masks`` (set in ``__init__`` before calling ``super().__init__``): whether the split has
      ground-truth masks;
    - :meth:`parse_expression`: validate one expression entry of the index and return what
      :meth:`read_masks` needs later (at least ``"exp"``, the sentence);
    - :meth:`read_masks`: the per-object masks of an expression on the given frames.

    Frames are read from ``root/JPEGImages/<video>/<frame><frame_ext>``; video ids, expression ids and
    frame names must be plain names (no path separators). See :class:`MeViSDataset` and
    :class:`RefYouTubeVOSDataset` for the two layouts ssa reads.
    """

    meta_filename = "meta_expressions.json"

    def __init__(self, root: PathLike, frame_ext: str = ".jpg") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset split directory not found: {self.root}")
        self.frame_ext = frame_ext
        self.meta_path = self.root / self.meta_filename
        meta = _read_json(self.meta_path)
        if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
            raise ValueError(f"{self.meta_path}: expected an object with a 'videos' mapping at the top level")
        self._frames: dict[str, list[str]] = {}
        self._expressions: dict[tuple[str, str], dict[str, Any]] = {}
        self._index: list[tuple[str, str]] = []
        for video in sorted(meta["videos"], key=natural_key):
            entry = meta["videos"][video]
            where = f"{self.meta_path}, video {video!r}"
            _check_component(video, "video id", where)
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
            for key in ("frames", "expressions"):
                if key not in entry:
                    raise ValueError(f"{where}: missing key {key!r}")
            frames = entry["frames"]
            if not isinstance(frames, list) or not frames or not all(isinstance(f, str) for f in frames):
                raise ValueError(f"{where}: 'frames' must be a non-empty list of frame names")
            for frame in frames:
                _check_component(frame, "frame name", where)
            if not isinstance(entry["expressions"], dict):
                raise ValueError(f"{where}: 'expressions' must be an object keyed by expression id")
            self._frames[video] = list(frames)
            for exp_id in sorted(entry["expressions"], key=natural_key):
                exp = entry["expressions"][exp_id]
                ewhere = f"{where}, expression {exp_id!r}"
                _check_component(exp_id, "expression id", ewhere)
                if not isinstance(exp, dict):
                    raise ValueError(f"{ewhere}: expected an object, got {type(exp).__name__}")
                if "exp" not in exp:
                    raise ValueError(f"{ewhere}: missing key 'exp'")
                if not isinstance(exp["exp"], str):
                    raise ValueError(f"{ewhere}: 'exp' must be a string, got {type(exp['exp']).__name__}")
                self._expressions[(video, exp_id)] = self.parse_expression(video, exp_id, exp, ewhere)
                self._index.append((video, exp_id))
        logger.debug(
            "%s: %d videos, %d expressions from %s",
            type(self).__name__,
            len(self._frames),
            len(self._index),
            self.root,
        )

    # -- hooks -------------------------------------------------------------------------------------

    def parse_expression(self, video: str, exp_id: str, exp: dict, where: str) -> dict[str, Any]:
        """Validate one expression entry; returns what :meth:`read_masks` needs (at least ``"exp"``)."""
        raise NotImplementedError

    def read_masks(
        self, video: str, exp_id: str, frame_names: list[str], size: tuple[int, int]
    ) -> tuple[np.ndarray, list[int]]:
        """Per-object ``(K, T, H, W)`` bool masks and object ids for the given frames of a split that
        has ground truth; ``size`` is the (uniform) frame size."""
        raise NotImplementedError

    def _load_masks(
        self, video: str, exp_id: str, frame_names: list[str], sizes: list[tuple[int, int]]
    ) -> tuple[np.ndarray, list[int]]:
        """Per-object masks and object ids; (0, T, H, W) and no ids when the split has no ground truth."""
        _check_uniform(video, frame_names, sizes)
        if not self.has_masks:
            return _empty_masks(sizes), []
        return self.read_masks(video, exp_id, frame_names, sizes[0])

    # -- public API --------------------------------------------------------------------------------

    has_masks: bool

    @property
    def videos(self) -> list[str]:
        """Video names, in dataset order."""
        return list(self._frames)

    def frame_names(self, video: str) -> list[str]:
        """The frame names listed for ``video`` in meta_expressions.json."""
        if video not in self._frames:
            raise KeyError(f"unknown video {video!r} in {self.meta_path}")
        return list(self._frames[video])

    def __len__(self) -> int:
        return len(self._index)

    def expressions(self) -> list[tuple[str, str, str]]:
        """``(video, expression_id, text)`` for every item, in dataset order, without loading images."""
        return [(v, e, self._expressions[(v, e)]["exp"]) for v, e in self._index]

    def frame_path(self, video: str, frame: str) -> Path:
        """Where frame ``frame`` of ``video`` is expected on disk (ValueError for a name leading out)."""
        where = f"{self.root}, video {video!r}"
        return (self.root / "JPEGImages" / _check_component(video, "video id", where)
                / f"{_check_component(frame, 'frame name', where)}{self.frame_ext}")

    def load_frames(self, video: str, frame_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Load frames of ``video`` (all listed ones by default) as ``(H, W, 3)`` uint8 RGB arrays."""
        from PIL import Image, UnidentifiedImageError

        from ssa.io.video import check_bit_depth

        names = self.frame_names(video) if frame_names is None else list(frame_names)
        out = []
        for name in names:
            path = self.frame_path(video, name)
            if not path.is_file():
                raise FileNotFoundError(f"video {video!r}: frame {name!r} not found at {path}")
            try:
                with Image.open(path) as image:
                    check_bit_depth(image, f"video {video!r}, frame {name!r} ({path})")
                    out.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"video {video!r}: cannot read frame {name!r} ({path}): {e}") from e
        return out

    def _frame_sizes(self, video: str, frame_names: Sequence[str]) -> list[tuple[int, int]]:
        """``(H, W)`` of each frame from the image headers (no decoding)."""
        from PIL import Image

        sizes = []
        for name in frame_names:
            path = self.frame_path(video, name)
            if not path.is_file():
                raise FileNotFoundError(f"video {video!r}: frame {name!r} not found at {path}")
            with Image.open(path) as image:
                w, h = image.size
            sizes.append((h, w))
        return sizes

    def _resolve(self, index: int) -> tuple[str, str]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self)}")
        return self._index[index]

    def load_masks(
        self, index: int, frame_indices: Sequence[int] | None = None
    ) -> tuple[np.ndarray, list[int]]:
        """Per-object ``(K, T, H, W)`` bool masks and object ids of item ``index``, without loading frames.

        ``K == 0`` when the split has no ground truth. Frame sizes come from the image headers.
        """
        video, exp_id = self._resolve(index)
        names = self._select(video, frame_indices)
        return self._load_masks(video, exp_id, names, self._frame_sizes(video, names))

    def _select(self, video: str, frame_indices: Sequence[int] | None) -> list[str]:
        names = self._frames[video]
        if frame_indices is None:
            return list(names)
        for i in frame_indices:
            if not 0 <= int(i) < len(names):
                raise IndexError(f"video {video!r}: frame index {i} out of range (0..{len(names) - 1})")
        return [names[int(i)] for i in frame_indices]

    def load(self, index: int, frame_indices: Sequence[int] | None = None) -> Sample:
        """Item ``index`` on ``frame_indices`` (positions in the video's frame list; all frames if None)."""
        video, exp_id = self._resolve(index)
        names = self._select(video, frame_indices)
        frames = self.load_frames(video, names)
        sizes = [(f.shape[0], f.shape[1]) for f in frames]
        masks, object_ids = self._load_masks(video, exp_id, names, sizes)
        return Sample(
            video=video,
            expression_id=exp_id,
            expression=self._expressions[(video, exp_id)]["exp"],
            frame_names=names,
            frames=frames,
            masks=masks,
            object_ids=object_ids,
        )

    def __getitem__(self, index: int) -> Sample:
        return self.load(index)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, videos={len(self._frames)}, "
            f"expressions={len(self)}, has_masks={self.has_masks})"
        )


def _empty_masks(sizes: list[tuple[int, int]]) -> np.ndarray:
    h, w = sizes[0] if sizes else (0, 0)
    return np.zeros((0, len(sizes), h, w), dtype=bool)


def _check_uniform(video: str, frame_names: list[str], sizes: list[tuple[int, int]]) -> None:
    for name, size in zip(frame_names, sizes, strict=True):
        if size != sizes[0]:
            raise ValueError(
                f"video {video!r}: frame {name!r} is {size[0]}x{size[1]} but frame {frame_names[0]!r} is "
                f"{sizes[0][0]}x{sizes[0][1]}; frames of a video must share one size"
            )


class MeViSDataset(ReferringVideoDataset):
    """A MeViS split: ``JPEGImages/``, ``meta_expressions.json`` and (optionally) ``mask_dict.json``.

    Without ``mask_dict.json`` (the test-style splits), :attr:`has_masks` is False and samples carry
    ``(0, T, H, W)`` masks. With it, every expression must list ``anno_id`` (and ``obj_id`` of the same
    length); each anno_id is one object, and the expression's ground truth is their union. A ``null``
    RLE is an empty mask for that frame.
    """

    mask_filename = "mask_dict.json"

    def __init__(self, root: PathLike, frame_ext: str = ".jpg") -> None:
        root = Path(root)
        self.mask_path = root / self.mask_filename
        self.has_masks = self.mask_path.is_file()
        self._mask_dict: dict[str, list] = {}
        if self.has_masks:
            mask_dict = _read_json(self.mask_path)
            if not isinstance(mask_dict, dict):
                raise ValueError(f"{self.mask_path}: expected an object keyed by anno_id")
            self._mask_dict = mask_dict
        else:
            logger.info("%s: no %s, ground-truth masks unavailable", root, self.mask_filename)
        super().__init__(root, frame_ext=frame_ext)

    def _check_anno(self, video: str, anno: Any, where: str) -> str:
        """An anno_id as a mask_dict key, checked against mask_dict.json and the video's frames."""
        key = str(_as_int(anno, f"{where}, anno_id"))
        rles = self._mask_dict.get(key)
        if rles is None:
            raise ValueError(f"{where}: anno_id {key} not found in {self.mask_path}")
        n_frames = len(self._frames[video])
        if not isinstance(rles, list) or len(rles) != n_frames:
            got = len(rles) if isinstance(rles, list) else type(rles).__name__
            raise ValueError(
                f"{where}: anno_id {key} in {self.mask_path} has {got} masks but the video lists "
                f"{n_frames} frames"
            )
        for t, rle in enumerate(rles):
            if rle is not None and not isinstance(rle, dict):
                raise ValueError(
                    f"{where}: anno_id {key}, frame {t}: expected a COCO RLE object or null, got "
                    f"{type(rle).__name__}"
                )
        return key

    def parse_expression(self, video: str, exp_id: str, exp: dict, where: str) -> dict[str, Any]:
        parsed: dict[str, Any] = {"exp": exp["exp"], "anno_ids": [], "obj_ids": []}
        if not self.has_masks:
            return parsed
        for key in ("anno_id", "obj_id"):
            if key not in exp:
                raise ValueError(f"{where}: missing key {key!r} (needed with {self.mask_path.name})")
            if not isinstance(exp[key], list) or not exp[key]:
                raise ValueError(f"{where}: {key!r} must be a non-empty list, got {exp[key]!r:.80}")
        if len(exp["anno_id"]) != len(exp["obj_id"]):
            raise ValueError(
                f"{where}: 'anno_id' has {len(exp['anno_id'])} entries but 'obj_id' has {len(exp['obj_id'])}"
            )
        parsed["anno_ids"] = [self._check_anno(video, a, where) for a in exp["anno_id"]]
        parsed["obj_ids"] = [_as_int(o, f"{where}, obj_id") for o in exp["obj_id"]]
        return parsed

    def read_masks(
        self, video: str, exp_id: str, frame_names: list[str], size: tuple[int, int]
    ) -> tuple[np.ndarray, list[int]]:
        parsed = self._expressions[(video, exp_id)]
        return self._decode(video, parsed["anno_ids"], frame_names, size), list(parsed["obj_ids"])

    def _decode(self, video: str, anno_ids: list[str], frame_names: list[str], size: tuple[int, int]
                ) -> np.ndarray:
        """(K, T, H, W) bool masks of annotations ``anno_ids`` on ``frame_names``."""
        position = {name: t for t, name in enumerate(self._frames[video])}
        h, w = size
        masks = np.zeros((len(anno_ids), len(frame_names), h, w), dtype=bool)
        for k, anno in enumerate(anno_ids):
            rles = self._mask_dict[anno]
            for t, name in enumerate(frame_names):
                rle = rles[position[name]]
                if rle is None:
                    continue
                try:
                    mask = decode_rle(rle)
                except ValueError as e:
                    raise ValueError(f"video {video!r}: anno_id {anno}, frame {name!r}: {e}") from e
                if mask.shape != (h, w):
                    raise ValueError(
                        f"video {video!r}, frame {name!r}: mask of anno_id {anno} is "
                        f"{mask.shape[0]}x{mask.shape[1]} but the frame is {h}x{w}"
                    )
                masks[k, t] = mask
        return masks


class RefYouTubeVOSDataset(ReferringVideoDataset):
    """A Ref-YouTube-VOS split: ``meta_expressions.json``, ``JPEGImages/`` and ``Annotations/``.

    Each expression names one object (``"obj_id": "1"``); its mask in a frame is the pixels of
    ``Annotations/<video>/<frame>.png`` equal to that id. Without an ``Annotations/`` folder
    :attr:`has_masks` is False and samples carry ``(0, T, H, W)`` masks.
    """

    annotations_dirname = "Annotations"

    def __init__(self, root: PathLike, frame_ext: str = ".jpg") -> None:
        root = Path(root)
        self.annotations_dir = root / self.annotations_dirname
        self.has_masks = self.annotations_dir.is_dir()
        if not self.has_masks:
            logger.info("%s: no %s/ folder, ground-truth masks unavailable", root, self.annotations_dirname)
        super().__init__(root, frame_ext=frame_ext)

    def parse_expression(self, video: str, exp_id: str, exp: dict, where: str) -> dict[str, Any]:
        parsed: dict[str, Any] = {"exp": exp["exp"], "obj_id": None}
        if self.has_masks:
            if "obj_id" not in exp:
                raise ValueError(f"{where}: missing key 'obj_id'")
            obj = _as_int(exp["obj_id"], f"{where}, obj_id")
            if not 1 <= obj <= 255:
                raise ValueError(f"{where}: obj_id must be in 1..255 (a palette index), got {obj}")
            parsed["obj_id"] = obj
        return parsed

    def annotation_path(self, video: str, frame: str) -> Path:
        """Where the palette mask of frame ``frame`` of ``video`` is expected."""
        where = f"{self.root}, video {video!r}"
        return (self.annotations_dir / _check_component(video, "video id", where)
                / f"{_check_component(frame, 'frame name', where)}.png")

    def _read_labels(self, video: str, frame_names: list[str], size: tuple[int, int]) -> np.ndarray:
        """(T, H, W) palette indices of ``frame_names``, checked against the frame size."""
        h, w = size
        labels = np.zeros((len(frame_names), h, w), dtype=np.uint8)
        for t, name in enumerate(frame_names):
            path = self.annotation_path(video, name)
            if not path.is_file():
                raise FileNotFoundError(f"video {video!r}: annotation of frame {name!r} not found at {path}")
            frame = read_palette_png(path)
            if frame.shape != (h, w):
                raise ValueError(
                    f"video {video!r}, frame {name!r}: annotation {path} is "
                    f"{frame.shape[0]}x{frame.shape[1]} but the frame is {h}x{w}"
                )
            labels[t] = frame
        return labels

    def read_masks(
        self, video: str, exp_id: str, frame_names: list[str], size: tuple[int, int]
    ) -> tuple[np.ndarray, list[int]]:
        obj = self._expressions[(video, exp_id)]["obj_id"]
        return (self._read_labels(video, frame_names, size) == obj)[None], [obj]


class RefDAVISDataset(RefYouTubeVOSDataset):
    """Ref-DAVIS17 in the Ref-YouTube-VOS layout: DAVIS ``JPEGImages/`` and palette ``Annotations/``
    plus a ``meta_expressions.json``.

    The official Ref-DAVIS release ships its expressions as text files
    (``davis_text_annotations/Davis17_annot1*.txt``); they are expected converted to
    ``meta_expressions.json`` (``{"videos": {vid: {"frames": [...], "expressions": {exp_id: {"exp": str,
    "obj_id": "1"}}}}}``), as common Ref-DAVIS tooling does. Object ids are the DAVIS palette indices.
    """


class ClipSampler:
    """Training clips: ``num_frames`` sorted frame indices within ``±window`` of a reference frame.

    A clip is re-drawn (up to ``max_tries`` times) until the target is visible in at least one of its
    frames; then it falls back to a window around a random visible frame, which is always included. If
    the target is never visible the first draw is kept (logged at debug level). Videos shorter than
    ``num_frames`` give every frame once plus random repeats. If ``2 * window + 1 < num_frames`` (or
    the window is clipped by the video's ends) the window is widened to ``num_frames`` consecutive
    frames. Deterministic for a seeded ``rng``.
    """

    def __init__(
        self,
        num_frames: int = 8,
        window: int = 10,
        max_tries: int = 20,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self.num_frames = int(num_frames)
        self.window = int(window)
        self.max_tries = int(max_tries)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def _bounds(self, ref: int, length: int) -> tuple[int, int]:
        """Half-open frame range around ``ref``, at least ``num_frames`` long (``length >= num_frames``)."""
        lo, hi = max(0, ref - self.window), min(length, ref + self.window + 1)
        missing = self.num_frames - (hi - lo)
        if missing > 0:
            lo = max(0, lo - (missing + 1) // 2)
            hi = min(length, lo + self.num_frames)
            lo = hi - self.num_frames
        return lo, hi

    def _draw(self, ref: int, length: int, include_ref: bool = False) -> list[int]:
        lo, hi = self._bounds(ref, length)
        if include_ref:
            others = np.setdiff1d(np.arange(lo, hi), [ref])
            chosen = np.concatenate(([ref], self.rng.choice(others, self.num_frames - 1, replace=False)))
        else:
            chosen = self.rng.choice(np.arange(lo, hi), self.num_frames, replace=False)
        return sorted(int(i) for i in chosen)

    def sample(self, num_video_frames: int, visible: np.ndarray | None = None) -> list[int]:
        """Sorted frame indices of one clip; ``visible`` is the ``(T,)`` bool per-frame target visibility."""
        length = int(num_video_frames)
        if length < 1:
            raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
        if visible is None:
            visible = np.ones(length, dtype=bool)
        visible = np.asarray(visible, dtype=bool)
        if visible.shape != (length,):
            raise ValueError(f"visible must have shape ({length},), got {visible.shape}")
        if length < self.num_frames:
            extra = self.rng.choice(length, self.num_frames - length, replace=True)
            return sorted(int(i) for i in np.concatenate((np.arange(length), extra)))
        if not visible.any():
            logger.debug("target never visible in a %d-frame video; clip not constrained", length)
            return self._draw(int(self.rng.integers(length)), length)
        for _ in range(self.max_tries):
            clip = self._draw(int(self.rng.integers(length)), length)
            if visible[clip].any():
                return clip
        ref = int(self.rng.choice(np.flatnonzero(visible)))
        return self._draw(ref, length, include_ref=True)

    def __repr__(self) -> str:
        return f"ClipSampler(num_frames={self.num_frames}, window={self.window}, max_tries={self.max_tries})"
