"""`SSAPipeline`: a video and one or more sentences in, per-frame masks out.

    pipe = SSAPipeline.from_pretrained("org/ssa-convnext-large-mevis")   # or a local dir
    result = pipe("video.mp4", "the cat jumping away")                 # RVOSResult
    results = pipe("video.mp4", ["the cat", "the dog"])                # list, in order

How a call runs (DESIGN.md §4), with memory bounded in the video's length:

1. frames are decoded lazily (PyAV) and processed in chunks of ``chunk_size`` frames: resize (short
   side to the preset's size, long side capped), CLIP normalisation, one frozen visual pass per chunk
   shared by every expression, then the text-dependent per-frame stages for all expressions at once;
   only the per-frame queries (N×C) are kept for the whole video, and the mask features while they
   fit ``mask_feature_budget`` bytes (fp16, on the CPU);
2. the sequence stages (trajectories, temporal enhancement, ensemble, video decoder) run once over the
   whole video and pick the referred queries;
3. masks are made chunk by chunk for the selected queries only, upsampled to the original resolution
   and stored bit-packed; when the mask features did not fit the budget they are recomputed in a
   second pass over the video (decoding again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ssa.config import SSAConfig
from ssa.modeling.backbone import validate_expressions
from ssa.modeling.model import SSAModel
from ssa.modeling.selection import select_queries

__all__ = ["SSAPipeline", "RVOSResult", "preprocess_frames", "resized_size"]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16"]
Mode = Literal["multi", "single"]


# -- preprocessing ------------------------------------------------------------------------------------
def resized_size(height: int, width: int, short_side: int, max_size: int) -> tuple[int, int]:
    """(h, w) after resizing the short side to ``short_side``, the long side capped at ``max_size``."""
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def preprocess_frames(images: Sequence[np.ndarray], config: SSAConfig,
                      mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB frames → CLIP-normalised float frames (T, 3, h, w) at the model's size."""
    if len(images) == 0:
        raise ValueError("no frame to preprocess")
    h0, w0 = images[0].shape[:2]
    h, w = resized_size(h0, w0, config.image_size, config.max_size)
    interpolation = cv2.INTER_AREA if h < h0 else cv2.INTER_LINEAR
    out = np.empty((len(images), h, w, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        if image.shape[:2] != (h0, w0):
            raise ValueError(f"frame {i} is {image.shape[1]}x{image.shape[0]}, the video is {w0}x{h0}")
        out[i] = image if (h, w) == (h0, w0) else cv2.resize(image, (w, h), interpolation=interpolation)
    x = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, h, w)
    m = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return (x - m) / s


# -- results ------------------------------------------------------------------------------------------
@dataclass
class RVOSResult:
    """Masks of one expression over a video, at the video's original resolution.

    Masks are stored bit-packed; ``masks`` unpacks them to a dense (T, H, W) bool array on request.
    """

    expression: str
    size: tuple[int, int]  # (H, W) of the original frames
    frame_indices: list[int]  # index of each processed frame in the source video
    timestamps: list[float | None]  # seconds, when known
    frame_names: list[str]  # names used for per-frame output files
    scores: np.ndarray  # (N,) referring score of every video query
    object_ids: np.ndarray  # (K,) the selected queries
    object_scores: np.ndarray  # (K,) their scores
    mode: Mode = "multi"
    fps: float | None = None  # frame rate of the processed frames, when known
    _packed: np.ndarray = field(default=None, repr=False)  # (T, ceil(H·W/8)) union of the objects
    _packed_objects: np.ndarray = field(default=None, repr=False)  # (K, T, ceil(H·W/8))
    _source: Any = field(default=None, repr=False)  # (video, read options) to re-read frames

    def __len__(self) -> int:
        return len(self.frame_indices)

    def _unpack(self, packed: np.ndarray) -> np.ndarray:
        h, w = self.size
        return np.unpackbits(packed, axis=-1, count=h * w).reshape(*packed.shape[:-1], h, w).astype(bool)

    @property
    def masks(self) -> np.ndarray:
        """(T, H, W) bool: the referred object(s) in every frame (union of the selected objects)."""
        return self._unpack(self._packed)

    @property
    def object_masks(self) -> np.ndarray:
        """(K, T, H, W) bool: each selected object's masks."""
        return self._unpack(self._packed_objects)

    def mask(self, t: int) -> np.ndarray:
        """(H, W) bool mask of processed frame ``t``."""
        return self._unpack(self._packed[t])

    def labels(self, t: int) -> np.ndarray:
        """(H, W) uint8 label map of frame ``t``: 0 background, k the k-th selected object (by score;
        the higher-scoring object wins where two overlap)."""
        h, w = self.size
        out = np.zeros((h, w), dtype=np.uint8)
        for k in np.argsort(self.object_scores)[::-1][:255][::-1]:  # lowest score first, overwritten
            out[self._unpack(self._packed_objects[k, t])] = k + 1
        return out

    # -- writers -----------------------------------------------------------------------------------
    def to_rle(self) -> list[dict[str, Any]]:
        """One COCO RLE dict per frame (``{"size": [H, W], "counts": str}``), pycocotools-compatible."""
        from ssa.io import encode_rle

        return [encode_rle(self.mask(t)) for t in range(len(self))]

    def save_rle(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write a JSON file with the expression, frame names/indices/timestamps and the RLE masks."""
        from ssa.io import atomic_write_text

        payload = {
            "expression": self.expression,
            "size": list(self.size),
            "frames": self.frame_names,
            "frame_indices": self.frame_indices,
            "timestamps": self.timestamps,
            "object_scores": [float(s) for s in self.object_scores],
            "masks": self.to_rle(),
        }
        return atomic_write_text(Path(path), json.dumps(payload), overwrite=overwrite)

    def save_pngs(self, directory: str | Path, *, overwrite: bool = False, binary: bool = False) -> Path:
        """Write ``<directory>/<frame name>.png`` palette PNGs (MeViS/DAVIS layout).

        Pixel values are object labels (1..K, see :meth:`labels`), or 0/1 with ``binary=True``.
        The directory is written completely or not at all; an existing non-empty one is refused
        unless ``overwrite=True``.
        """
        from ssa.io import atomic_output_dir, write_palette_png

        with atomic_output_dir(Path(directory), overwrite=overwrite) as tmp:
            for t, name in enumerate(self.frame_names):
                labels = self.mask(t).astype(np.uint8) if binary else self.labels(t)
                write_palette_png(tmp / f"{name}.png", labels)
        return Path(directory)

    def save_overlay(self, path: str | Path, *, fps: float | None = None, caption: bool = True,
                     overwrite: bool = False, progress: bool = False) -> Path:
        """Write an H.264 MP4 of the frames with the masks tinted over them (re-reads the frames)."""
        from ssa.io import write_overlay_video
        from ssa.video import iter_frames

        if self._source is None:
            raise ValueError("this result has no source video to draw the overlay on")
        video, options = self._source
        frames = (f.image for f in iter_frames(video, **options))
        labels = (self.labels(t) for t in range(len(self)))
        return write_overlay_video(
            Path(path), frames, labels, fps=fps or self.fps or 25.0,
            caption=self.expression if caption else None, progress=progress, overwrite=overwrite,
        )


# -- the pipeline -------------------------------------------------------------------------------------
@dataclass
class _VideoState:
    """Everything kept per video during a call: frame metadata and per-frame queries."""

    indices: list[int] = field(default_factory=list)
    timestamps: list[float | None] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None
    queries: list[torch.Tensor] = field(default_factory=list)  # (E, k, N, C) per chunk
    sentences: list[torch.Tensor] = field(default_factory=list)  # (E, k, C) per chunk
    mask_features: list[torch.Tensor] | None = field(default_factory=list)  # (E, k, Cm, h, w) fp16 CPU
    mask_bytes: int = 0


class SSAPipeline:
    """Referring video object segmentation with an :class:`~ssa.SSAModel`.

    ``device``: "cuda" when available, else "cpu" (override with ``device="cpu"``).
    ``precision``: "fp16" autocast on CUDA by default, "fp32" on CPU; "bf16" is an option on both.
    ``chunk_size``: frames per chunk of the per-frame stages (memory vs. speed).
    ``mask_feature_budget``: bytes of mask features kept between the passes; beyond it they are
    recomputed with a second decode of the video.
    """

    def __init__(self, model: SSAModel, *, device: str | torch.device | None = None,
                 precision: Precision | None = None, chunk_size: int = 16,
                 mask_feature_budget: int = 1 << 30) -> None:
        if not isinstance(model, SSAModel):
            raise TypeError(f"SSAPipeline needs an SSAModel, got {type(model).__name__}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but CUDA is not available")
        if precision is None:
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be 'fp32', 'fp16' or 'bf16', got {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 autocast needs CUDA; use precision='bf16' or 'fp32' on CPU")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.precision: Precision = precision
        self.chunk_size = chunk_size
        self.mask_feature_budget = mask_feature_budget
        self.model = model.to(self.device).eval()
        self.config = model.config

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "ssa-tiny-synthetic", *,
                        device: str | torch.device | None = None,
                        precision: Precision | None = None, revision: str | None = None,
                        cache_dir: str | Path | None = None, local_files_only: bool = False,
                        token: str | None = None, **kwargs: Any) -> SSAPipeline:
        """Load a model from a bundled name, a Hub repo id or a local directory (see
        :meth:`SSAModel.from_pretrained`). The default, ``ssa-tiny-synthetic``, is the small demo model
        shipped with the package (trained on synthetic moving shapes: a toy, not a model of real videos)."""
        model = SSAModel.from_pretrained(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
            token=token,
        )
        return cls(model, device=device, precision=precision, **kwargs)

    # ------------------------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _chunks(self, video: Any, options: dict[str, Any], progress: bool, desc: str
                ) -> Iterator[list[Any]]:
        from ssa.video import iter_frames

        bar = tqdm(desc=desc, unit="frame", disable=not progress)
        chunk: list[Any] = []
        try:
            for frame in iter_frames(video, **options):
                chunk.append(frame)
                if len(chunk) == self.chunk_size:
                    yield chunk
                    bar.update(len(chunk))
                    chunk = []
            if chunk:
                yield chunk
                bar.update(len(chunk))
        finally:
            bar.close()

    def _encode_chunk(self, chunk: list[Any]):  # -> VisualFeatures
        frames = preprocess_frames([f.image for f in chunk], self.config,
                                   self.model.backbone.pixel_mean, self.model.backbone.pixel_std)
        return self.model.encode_video(frames.to(self.device))

    @torch.no_grad()
    def __call__(self, video: Any, expressions: str | Sequence[str], *, mode: Mode = "multi",
                 threshold: float = 0.5, stride: int = 1, fps: float | None = None,
                 start: float | None = None, end: float | None = None, max_frames: int | None = None,
                 progress: bool = True) -> RVOSResult | list[RVOSResult]:
        """Segment what ``expressions`` refer to in ``video``.

        video: a video file path, a folder of frames, a list of PIL images / (H, W, 3) arrays, or a
        (T, H, W, 3) uint8 array. expressions: one string (→ one :class:`RVOSResult`) or a list
        (→ a list of results, in order; the video is decoded once and the frozen visual pass runs
        once for all of them). ``mode``: "multi" keeps every query scoring above ``threshold``,
        "single" the best one. ``stride``/``fps``/``start``/``end``/``max_frames`` select frames.
        """
        single = isinstance(expressions, str)
        texts = validate_expressions(expressions)
        if mode not in ("multi", "single"):
            raise ValueError(f"mode must be 'multi' or 'single', got {mode!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        options = {"stride": stride, "fps": fps, "start": start, "end": end, "max_frames": max_frames}
        model = self.model
        text = model.encode_text(texts)
        e = len(text)
        clip_index = torch.zeros(e, dtype=torch.long)

        # Pass 1: per-frame stages in chunks; keep queries (and mask features within budget).
        state = _VideoState()
        with self._autocast():
            for chunk in self._chunks(video, options, progress, "segmenting"):
                self._record_frames(state, chunk)
                visual = self._encode_chunk(chunk)
                out = model.decode_frames(visual, text, clip_index)
                state.queries.append(out.queries.float().cpu())
                state.sentences.append(out.sentences.float().cpu())
                self._keep_mask_features(state, out.mask_features)
        if not state.indices:
            raise ValueError(f"no frame was selected from {_describe(video)} with {options}")

        # Sequence stages over the whole video, once for all expressions.
        queries = torch.cat(state.queries, dim=1).to(self.device)  # (E, T, N, C)
        sentences = torch.cat(state.sentences, dim=1).to(self.device)  # (E, T, C)
        with self._autocast():
            seq = model.decode_sequence(queries, sentences, text)
        class_logits = seq.class_logits.float()
        selected = [select_queries(class_logits[i], mode, threshold) for i in range(e)]

        # Masks of the selected queries, chunk by chunk, at the original resolution.
        masks = _MaskWriter(state.size, [s.numel() for s in selected])
        embeds = [seq.mask_embed[i, s] for i, s in enumerate(selected)]  # (K_i, T, Cm)
        if state.mask_features is not None:
            for features in state.mask_features:
                masks.add(embeds, features.to(self.device), self._model_size(state.size))
        else:
            logger.info("mask features exceeded the budget: recomputing them in a second pass")
            with self._autocast():
                for chunk in self._chunks(video, options, progress, "masks"):
                    visual = self._encode_chunk(chunk)
                    features = model.encode_mask_features(visual, text, clip_index)
                    masks.add(embeds, features, self._model_size(state.size))

        scores = class_logits.softmax(-1)[..., 0].cpu().numpy()  # (E, N)
        frame_fps = _processed_fps(state.timestamps)
        results = []
        for i, expr in enumerate(text.expressions):
            union, objects = masks.result(i)
            results.append(RVOSResult(
                expression=expr, size=state.size, frame_indices=list(state.indices),
                timestamps=list(state.timestamps), frame_names=list(state.names), scores=scores[i],
                object_ids=selected[i].cpu().numpy(), object_scores=scores[i][selected[i].cpu().numpy()],
                mode=mode, fps=frame_fps, _packed=union, _packed_objects=objects,
                _source=(video, dict(options)),
            ))
        return results[0] if single else results

    # ------------------------------------------------------------------------------------------------
    def _model_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return resized_size(*size, self.config.image_size, self.config.max_size)

    @staticmethod
    def _record_frames(state: _VideoState, chunk: list[Any]) -> None:
        for f in chunk:
            if state.size is None:
                state.size = tuple(f.image.shape[:2])
            state.indices.append(f.index)
            state.timestamps.append(f.timestamp)
            state.names.append(f.name)

    def _keep_mask_features(self, state: _VideoState, features: torch.Tensor) -> None:
        if state.mask_features is None:
            return
        kept = features.to("cpu", torch.float16)
        state.mask_bytes += kept.numel() * kept.element_size()
        if state.mask_bytes > self.mask_feature_budget:
            state.mask_features = None  # from now on: recompute in a second pass
        else:
            state.mask_features.append(kept)


class _MaskWriter:
    """Accumulates bit-packed masks of the selected queries, chunk by chunk."""

    def __init__(self, size: tuple[int, int], counts: list[int]) -> None:
        self.size = size
        self.counts = counts
        self.union: list[list[np.ndarray]] = [[] for _ in counts]  # per expression: (k, bytes)
        self.objects: list[list[np.ndarray]] = [[] for _ in counts]  # per expression: (K, k, bytes)
        self.frames_done = 0  # frames written so far: where the next chunk starts

    def add(self, embeds: list[torch.Tensor], features: torch.Tensor, model_size: tuple[int, int]) -> None:
        """embeds: per expression (K, T, Cm) over the whole video; features (E, k, Cm, h4, w4): mask
        features of the next chunk of k frames for every expression."""
        h, w = self.size
        mh, mw = model_size
        k = features.shape[1]
        start = self.frames_done
        self.frames_done += k
        nbytes = math.ceil(h * w / 8)
        for i, embed in enumerate(embeds):
            if embed.shape[0] == 0:
                self.union[i].append(np.zeros((k, nbytes), dtype=np.uint8))
                self.objects[i].append(np.zeros((0, k, nbytes), dtype=np.uint8))
                continue
            chunk_embed = embed[:, start:start + k].float()  # (K, k, Cm)
            logits = torch.einsum("ktc,tchw->kthw", chunk_embed, features[i].float())  # (K, k, h4, w4)
            # The h4 x w4 grid covers 4·h4 x 4·w4 model pixels; scale that to original pixels, crop.
            h4, w4 = logits.shape[-2:]
            full = (round(4 * h4 * h / mh), round(4 * w4 * w / mw))
            up = F.interpolate(logits, size=full, mode="bilinear", align_corners=False)[..., :h, :w] > 0
            objects = np.packbits(up.cpu().numpy().reshape(embed.shape[0], k, h * w), axis=-1)
            self.objects[i].append(objects)
            self.union[i].append(np.packbits(up.any(0).cpu().numpy().reshape(k, h * w), axis=-1))

    def result(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.union[i], axis=0), np.concatenate(self.objects[i], axis=1)


def _processed_fps(timestamps: Iterable[float | None]) -> float | None:
    ts = [t for t in timestamps if t is not None]
    if len(ts) < 2 or ts[-1] <= ts[0]:
        return None
    return (len(ts) - 1) / (ts[-1] - ts[0])


def _describe(video: Any) -> str:
    if isinstance(video, (str, Path)):
        return str(video)
    return type(video).__name__
