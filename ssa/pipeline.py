"""`SSAPipeline`: a video and one or more sentences in, per-frame masks out.

    pipe = SSAPipeline.from_pretrained("org/ssa-convnext-large-mevis")   # or a local dir
    result = pipe("video.mp4", "the cat jumping away")                 # RVOSResult
    results = pipe("video.mp4", ["the cat", "the dog"])                # list, in order

How a call runs, with memory bounded in the video's length:

1. frames are decoded lazily (PyAV) and processed in chunks of ``chunk_size`` frames; decoding and the
   official preprocessing (:mod:`ssa.preprocessing`) run on a background thread ahead of the model; per
   chunk, CLIP's stem and stage 0 run once for every expression, then the expression-dependent stages
   (CLIP stages 1-3 with the adapters, pixel decoder, frame decoder) for all expressions as batched rows;
   only the per-frame queries (N×C) are kept for the whole video, and the mask features while they
   fit ``mask_feature_budget`` bytes (on the CPU);
2. the sequence stages (trajectories, temporal enhancement, ensemble, video decoder) run once over the
   whole video and pick the referred queries;
3. masks are made chunk by chunk for the selected queries only, upsampled as the official code does
   (padded input size → crop → original size, logit > 0) and stored bit-packed; when the mask
   features did not fit the budget they are recomputed in a second pass over the video (decoding
   again).

``pipe.stream(video, expressions)`` runs the same steps but yields the masks frame by frame from a
second pass, so that memory stays flat however long the video is. After each chunk the C heap's free
pages are handed back to the system (glibc's ``malloc_trim``), so that the allocator's fragmentation
does not creep up over a long video.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ssa.modeling.backbone import validate_expressions
from ssa.modeling.model import SSAModel
from ssa.modeling.selection import Mode, query_masks, select_queries
from ssa.preprocessing import FramePreprocessor, preprocess_frames, resized_size

if TYPE_CHECKING:
    from ssa.io import ExpressionMasks
    from ssa.profiling import StageTimer

__all__ = ["SSAPipeline", "RVOSResult", "FrameMasks", "preprocess_frames", "resized_size"]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16"]


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
        return _label_map(self._unpack(self._packed_objects[:, t]), self.object_scores)

    # -- writers -----------------------------------------------------------------------------------
    @property
    def source_paths(self) -> list[Path]:
        """The source video file or frame folder, when the result came from a path: what its writers
        must never replace."""
        video = self._source[0] if isinstance(self._source, tuple) and self._source else None
        return [Path(video)] if isinstance(video, (str, os.PathLike)) else []

    def to_rle(self) -> list[dict[str, Any]]:
        """One COCO RLE dict per frame (``{"size": [H, W], "counts": str}``), pycocotools-compatible."""
        from ssa.io import encode_rle

        return [encode_rle(self.mask(t)) for t in range(len(self))]

    def rle_record(self) -> dict[str, Any]:
        """The JSON record :meth:`save_rle` writes (:func:`ssa.io.rle_record`)."""
        from ssa.io import rle_record

        return rle_record(self.expression, (self.mask(t) for t in range(len(self))), size=self.size,
                          frame_names=self.frame_names, frame_indices=self.frame_indices,
                          timestamps=self.timestamps, object_scores=self.object_scores)

    def to_expression_masks(self) -> ExpressionMasks:
        """This result as :func:`ssa.io.write_segmentation` takes it (label maps made lazily)."""
        from ssa.io import ExpressionMasks

        return ExpressionMasks(self.expression, list(self.frame_names),
                               (self.labels(t) for t in range(len(self))), self.rle_record(),
                               [float(s) for s in self.object_scores])

    def save_rle(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write a JSON file with the expression, frame names/indices/timestamps and the RLE masks."""
        from ssa.io import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.rle_record()), overwrite=overwrite,
                                 inputs=self.source_paths)

    def save_pngs(self, directory: str | Path, *, overwrite: bool = False, binary: bool = False) -> Path:
        """Write ``<directory>/<frame name>.png`` palette PNGs (MeViS/DAVIS layout).

        Pixel values are object labels (1..K, see :meth:`labels`), or 0/1 with ``binary=True``.
        The directory is written completely or not at all; an existing non-empty one is refused
        unless ``overwrite=True``, and even then unless it holds mask PNGs only
        (:func:`ssa.io.check_output_dir`); it may not be or contain the source video.
        """
        from ssa.io import MASKS_LAYOUT, atomic_output_dir, write_mask_pngs

        labels = (self.mask(t).astype(np.uint8) if binary else self.labels(t) for t in range(len(self)))
        with atomic_output_dir(Path(directory), overwrite=overwrite, layout=MASKS_LAYOUT,
                               inputs=self.source_paths) as tmp:
            write_mask_pngs(tmp, self.frame_names, labels)
        return Path(directory)

    def save_overlay(self, path: str | Path, *, fps: float | None = None, caption: bool = True,
                     overwrite: bool = False, progress: bool = False) -> Path:
        """Write an H.264 MP4 of the frames with the masks tinted over them (re-reads the frames); with
        ``caption`` the expression is written, wrapped, on a band above the frames.

        An existing file is replaced only with ``overwrite=True`` and only if it is a regular file that
        is not the source video (:func:`ssa.io.check_output_file`)."""
        from ssa.io import iter_frames, write_overlay_video

        if self._source is None:
            raise ValueError("this result has no source video to draw the overlay on")
        video, options = self._source
        frames = (f.image for f in iter_frames(video, **options))
        labels = (self.labels(t) for t in range(len(self)))
        return write_overlay_video(
            Path(path), frames, labels, fps=fps or self.fps or 25.0,
            caption=self.expression if caption else None, progress=progress, overwrite=overwrite,
            inputs=self.source_paths, total=len(self),
        )


# -- the pipeline -------------------------------------------------------------------------------------
@dataclass
class _VideoState:
    """Everything kept per video during a call: frame metadata and per-frame queries."""

    indices: list[int] = field(default_factory=list)
    timestamps: list[float | None] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (H, W) of the decoded frames
    model_size: tuple[int, int] | None = None  # (h, w) fed to the model
    queries: list[torch.Tensor] = field(default_factory=list)  # (E, k, N, C) per chunk
    sentences: list[torch.Tensor] = field(default_factory=list)  # (E, k, C) per chunk
    mask_features: list[torch.Tensor] | None = field(default_factory=list)  # (E, k, Cm, h4, w4) on the CPU
    mask_bytes: int = 0


class SSAPipeline:
    """Referring video object segmentation with an :class:`~ssa.SSAModel`.

    ``device``: "cuda" when available, else "cpu" (override with ``device="cpu"``).
    ``precision``: "fp16" autocast on CUDA by default, "fp32" on CPU; "bf16" is an option on both.
    ``chunk_size``: frames per chunk of the per-frame stages (memory vs. speed).
    ``mask_feature_budget``: bytes of mask features kept between the passes; beyond it they are
    recomputed with a second decode of the video.
    ``prefetch``: chunks decoded and preprocessed ahead, on a background thread.
    ``frame_batch``: frames per pass through the CLIP stem and stage 0 and through the adapters within
    a chunk (all expressions together, so the adapters' text-independent work runs once per frame), and
    (frame, expression) rows per pass
    through the pixel decoder and the frame decoder; default 1 on CPU (there the cost per row grows
    with the batch), the whole chunk on CUDA.
    """

    def __init__(self, model: SSAModel, *, device: str | torch.device | None = None,
                 precision: Precision | None = None, chunk_size: int = 16,
                 mask_feature_budget: int = 1 << 30, prefetch: int = 2, frame_batch: int | None = None
                 ) -> None:
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
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if frame_batch is None:
            frame_batch = chunk_size if self.device.type == "cuda" else 1
        if frame_batch < 1:
            raise ValueError(f"frame_batch must be >= 1, got {frame_batch}")
        self.precision: Precision = precision
        self.chunk_size = chunk_size
        self.mask_feature_budget = mask_feature_budget
        self.prefetch = prefetch
        self.frame_batch = min(frame_batch, chunk_size)
        self.timer: StageTimer | None = None  # set while a ssa.profiling.StageTimer is attached
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

    def _stage(self, name: str) -> contextlib.AbstractContextManager:
        """Time a stage when a :class:`ssa.profiling.StageTimer` is attached."""
        return contextlib.nullcontext() if self.timer is None else self.timer.section(name)

    def _chunks(self, video: Any, options: dict[str, Any], call: _Call, progress: bool, desc: str,
                total: int | None = None) -> Iterator[_Chunk]:
        """Chunks of ``chunk_size`` decoded and preprocessed frames. Decoding and preprocessing run on a
        background thread, up to ``prefetch`` chunks ahead, so that they overlap with the model. The
        first chunk is one frame batch (one frame on a CPU), so that the model starts as soon as that is
        decoded rather than after a whole chunk. ``desc`` and ``total`` (frames, when known) label the
        progress bar."""
        from ssa.io import iter_frames

        timer = self.timer

        def produce() -> Iterator[_Chunk]:
            # Each frame is resized as soon as it is decoded and its full-size array dropped: the queue
            # then holds model-size pixels, not prefetch × chunk_size full-size frames.
            frames = iter_frames(video, **options)
            prep = FramePreprocessor(call.short_side, self.config.max_size)
            done = False
            size = self.frame_batch
            while not done:
                chunk: list[_FrameInfo] = []
                for frame in _timed(frames, timer):
                    start = time.perf_counter()
                    prep.add(frame.image)
                    chunk.append(_FrameInfo(frame.index, frame.timestamp, frame.name))
                    if timer is not None:
                        timer.add("preprocess", time.perf_counter() - start)
                    del frame
                    if len(chunk) == size:
                        break
                else:
                    done = True
                if not chunk:
                    return
                size = self.chunk_size
                start = time.perf_counter()
                pixels = prep.take()
                if timer is not None:
                    timer.add("preprocess", time.perf_counter() - start)
                yield _Chunk(chunk, pixels, prep.size)

        with _PhaseBar(desc, total, progress) as bar:
            for item in _in_background(produce, self.prefetch, timer):
                yield item
                bar.update(len(item.frames))
                del item
                _release_free_heap()
            bar.finish()

    def _frame_pass(self, video: Any, options: dict[str, Any], call: _Call, text: Any, progress: bool,
                    mask_feature_budget: int) -> _VideoState:
        """Pass 1: per-frame stages chunk by chunk; keeps the per-frame queries, and the mask features
        while they fit ``mask_feature_budget`` bytes."""
        model = self.model
        clip_index = torch.zeros(len(text), dtype=torch.long)
        state = _VideoState(mask_features=[] if mask_feature_budget > 0 else None)
        total = _expected_frames(video, options) if progress else None
        previous = None  # the frame before the chunk (only the experimental motion features read it)
        with self._autocast():
            for chunk in self._chunks(video, options, call, progress, "decode+encode", total):
                self._record_frames(state, chunk)
                visual = model.encode_video(chunk.pixels.to(self.device), previous,
                                            frame_chunk=self.frame_batch)
                previous = chunk.pixels[-1]
                out = model.decode_frames(visual, text, clip_index, frame_chunk=self.frame_batch,
                                          row_chunk=self.frame_batch, frame_masks=False)
                state.queries.append(out.queries.float().cpu())
                state.sentences.append(out.sentences.float().cpu())
                self._keep_mask_features(state, out.mask_features, mask_feature_budget)
        if not state.indices:
            raise ValueError(f"no frame was selected from {_describe(video)} with {options}")
        return state

    def _select(self, state: _VideoState, text: Any, call: _Call
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Sequence stages over the whole video, once for all expressions: class logits (E, N), the
        selected queries per expression (K_i,), and their mask embeddings (K_i, Cm)."""
        queries = torch.cat(state.queries, dim=1).to(self.device)  # (E, T, N, C)
        sentences = torch.cat(state.sentences, dim=1).to(self.device)  # (E, T, C)
        state.queries, state.sentences = [], []  # not needed again: one copy, freed on return
        with self._autocast(), self._stage("sequence"):
            seq = self.model.decode_sequence(queries, sentences)
        class_logits = seq.class_logits.float()
        selected = [select_queries(class_logits[i], call.mode, call.threshold) for i in range(len(text))]
        embeds = [seq.mask_embed[i, s] for i, s in enumerate(selected)]  # (K_i, Cm)
        return class_logits, selected, embeds

    def _mask_chunks(self, video: Any, options: dict[str, Any], call: _Call, text: Any, state: _VideoState,
                     embeds: list[torch.Tensor], progress: bool) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """Masks of the selected queries at the original resolution, chunk by chunk: (first frame of
        the chunk, per expression a bool tensor (K_i, k, H, W) on the CPU). Uses the kept mask features,
        or recomputes them in a second pass over the video when they were not kept."""
        size, model_size = call.output_size or state.size, state.model_size
        start = 0
        if state.mask_features is not None:
            with _PhaseBar("masks", len(state.indices), progress) as bar:
                for features in state.mask_features:
                    with self._stage("masks"):
                        masks = _chunk_masks(embeds, features.to(self.device), model_size, size)
                    yield start, masks
                    start += features.shape[1]
                    bar.update(features.shape[1])
            return
        clip_index = torch.zeros(len(text), dtype=torch.long)
        previous = None
        for chunk in self._chunks(video, options, call, progress, "masks (2nd pass)", len(state.indices)):
            with self._autocast():
                visual = self.model.encode_video(chunk.pixels.to(self.device), previous,
                                                 frame_chunk=self.frame_batch)
                previous = chunk.pixels[-1]
                features = self.model.encode_mask_features(
                    visual, text, clip_index, frame_chunk=self.frame_batch, row_chunk=self.frame_batch
                )  # (E, k, Cm, h4, w4)
            with self._stage("masks"):
                masks = _chunk_masks(embeds, features, model_size, size)
            yield start, masks
            start += len(chunk.frames)

    @torch.no_grad()
    def __call__(self, video: Any, expressions: str | Sequence[str], *, mode: Mode | None = None,
                 threshold: float | None = None, stride: int = 1, fps: float | None = None,
                 start: float | None = None, end: float | None = None, max_frames: int | None = None,
                 short_side: int | None | Literal["config"] = "config",
                 output_size: tuple[int, int] | None = None, progress: bool = True
                 ) -> RVOSResult | list[RVOSResult]:
        """Segment what ``expressions`` refer to in ``video``.

        video: a video file path, a folder of frames, a list of PIL images / (H, W, 3) arrays, or a
        (T, H, W, 3) uint8 array. expressions: one string (→ one :class:`RVOSResult`) or a list
        (→ a list of results, in order; the video is decoded once and CLIP's stem runs once for all of
        them). ``mode``: "multi" keeps every query scoring above ``threshold``, "single" the best one
        (default: the model's ``config.selection`` / ``config.threshold``, e.g. "multi" 0.5 for MeViS
        checkpoints, "single" for Ref-YouTube-VOS / Ref-DAVIS). ``short_side``: the frames' short side
        for the model (default ``config.image_size``; None feeds the frames at their own size).
        ``output_size`` (H, W): the size of the masks (default: the video's).
        ``stride``/``fps``/``start``/``end``/``max_frames`` select frames. ``progress``: a tqdm bar
        per phase, "decode+encode" (total: the container's frame count after the frame selection) then
        "masks" (or "masks (2nd pass)" when the video is decoded again). For long videos,
        :meth:`stream` gives the same masks frame by frame with flat memory.
        """
        single = isinstance(expressions, str)
        # 1. Check every argument before any decoding (clear errors, nothing expensive done yet).
        texts, options, call = self._check_call(expressions, mode, threshold, stride, fps, start, end,
                                                max_frames, short_side, output_size)
        # 2. Encode the expressions once (the frozen CLIP text tower).
        text = self.model.encode_text(texts)
        # 3. Per-frame stages, chunk by chunk: frame queries (kept) and mask features (kept while they fit).
        state = self._frame_pass(video, options, call, text, progress, self.mask_feature_budget)
        if state.mask_features is None:
            logger.info("mask features exceeded the budget: recomputing them in a second pass")
        # 4. Sequence stages over the whole video and query selection, for all expressions at once.
        class_logits, selected, embeds = self._select(state, text, call)
        # 5. Masks of the selected queries only, chunk by chunk, at the output size, bit-packed.
        size = call.output_size or state.size
        packer = _MaskPacker(size, len(text))
        for _, masks in self._mask_chunks(video, options, call, text, state, embeds, progress):
            with self._stage("masks"):
                packer.add(masks)
        # 6. One result per expression.
        scores = class_logits.softmax(-1)[..., 0].cpu().numpy()  # (E, N)
        frame_fps = _processed_fps(state.timestamps)
        results = []
        for i, expr in enumerate(text.expressions):
            union, objects = packer.result(i)
            ids = selected[i].cpu().numpy()
            results.append(RVOSResult(
                expression=expr, size=size, frame_indices=list(state.indices),
                timestamps=list(state.timestamps), frame_names=list(state.names), scores=scores[i],
                object_ids=ids, object_scores=scores[i][ids], mode=call.mode, fps=frame_fps,
                _packed=union, _packed_objects=objects, _source=(video, dict(options)),
            ))
        return results[0] if single else results

    def stream(self, video: Any, expressions: str | Sequence[str], *, mode: Mode | None = None,
               threshold: float | None = None, stride: int = 1, fps: float | None = None,
               start: float | None = None, end: float | None = None, max_frames: int | None = None,
               short_side: int | None | Literal["config"] = "config",
               output_size: tuple[int, int] | None = None,
               mask_feature_budget: int = 0, progress: bool = True) -> Iterator[FrameMasks]:
        """Segment a long video with memory flat in its length: yields one :class:`FrameMasks` per
        processed frame, in order, with the same masks as :meth:`__call__`.

        SSA decides which objects are referred from the whole video, so the frames are read twice:
        pass 1 keeps only the per-frame queries (N×C per frame and expression); after the sequence
        stages, pass 2 decodes again, recomputes the mask features and yields masks as it goes.
        ``mask_feature_budget`` > 0 keeps up to that many bytes of mask features from pass 1 instead
        (fewer recomputed frames, more memory). Arguments as for :meth:`__call__`; nothing runs until
        the first frame is asked for. Peak memory with ``ssa-tiny`` on 480p video: 1,040 MB at 250
        frames, 1,077 MB at 2,000 (docs/performance.md, *Long videos*).
        """
        texts, options, call = self._check_call(expressions, mode, threshold, stride, fps, start, end,
                                                max_frames, short_side, output_size)
        with torch.no_grad():
            text = self.model.encode_text(texts)
            state = self._frame_pass(video, options, call, text, progress, mask_feature_budget)
            class_logits, selected, embeds = self._select(state, text, call)
        scores = class_logits.softmax(-1)[..., 0].cpu().numpy()  # (E, N)
        ids = [s.cpu().numpy() for s in selected]
        object_scores = [scores[i][ids[i]] for i in range(len(ids))]
        masks_iter = self._mask_chunks(video, options, call, text, state, embeds, progress)
        while True:
            with torch.no_grad():
                item = next(masks_iter, None)
            if item is None:
                return
            first, masks = item
            for j in range(masks[0].shape[1]):
                t = first + j
                yield FrameMasks(
                    t=t, frame_index=state.indices[t], timestamp=state.timestamps[t], name=state.names[t],
                    expressions=list(text.expressions), object_ids=ids, object_scores=object_scores,
                    object_masks=[m[:, j].numpy() for m in masks],
                )

    def _check_call(self, expressions: str | Sequence[str], mode: str | None, threshold: float | None,
                    stride: int, fps: float | None, start: float | None, end: float | None,
                    max_frames: int | None, short_side: int | None | str, output_size: Any
                    ) -> tuple[list[str], dict[str, Any], _Call]:
        texts = validate_expressions(expressions)
        mode = self.config.selection if mode is None else mode
        threshold = self.config.threshold if threshold is None else threshold
        if mode not in ("multi", "single"):
            raise ValueError(f"mode must be 'multi' or 'single', got {mode!r}")
        if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                or not 0.0 <= threshold <= 1.0):
            raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
        if short_side == "config":
            short_side = self.config.image_size
        elif short_side is not None and (isinstance(short_side, bool) or not isinstance(short_side, int)
                                         or short_side < 1):
            raise ValueError(f"short_side must be a positive int, None (frames at their own size) or "
                             f"'config', got {short_side!r}")
        if output_size is not None:
            if (not isinstance(output_size, (tuple, list)) or len(output_size) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                               for v in output_size)):
                raise ValueError(f"output_size must be (H, W) of two positive ints, got {output_size!r}")
            output_size = (int(output_size[0]), int(output_size[1]))
        options = {"stride": stride, "fps": fps, "start": start, "end": end, "max_frames": max_frames}
        return texts, options, _Call(mode, float(threshold), short_side, output_size)

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def _record_frames(state: _VideoState, chunk: _Chunk) -> None:
        if state.model_size is None:
            state.model_size = tuple(chunk.pixels.shape[-2:])
        if state.size is None:
            state.size = chunk.size
        for f in chunk.frames:
            state.indices.append(f.index)
            state.timestamps.append(f.timestamp)
            state.names.append(f.name)

    @staticmethod
    def _keep_mask_features(state: _VideoState, features: torch.Tensor, budget: int) -> None:
        if state.mask_features is None:
            return
        kept = features.to("cpu")  # in their own precision: fp16 copies would move mask edges
        state.mask_bytes += kept.numel() * kept.element_size()
        if state.mask_bytes > budget:
            state.mask_features = None  # from now on: recompute in a second pass
        else:
            state.mask_features.append(kept)


@dataclass
class _Call:
    """The options of one call, resolved against the model's defaults."""

    mode: Mode
    threshold: float
    short_side: int | None  # None: frames at their own size
    output_size: tuple[int, int] | None  # None: the video's size


@dataclass
class _FrameInfo:
    """A decoded frame without its pixels."""

    index: int
    timestamp: float | None
    name: str


@dataclass
class _Chunk:
    frames: list[_FrameInfo]
    pixels: torch.Tensor  # (k, 3, h, w) CLIP-normalised, at the model's size
    size: tuple[int, int]  # (H, W) of the decoded frames


@dataclass
class FrameMasks:
    """Masks of every expression in one frame, as :meth:`SSAPipeline.stream` yields them."""

    t: int  # position among the processed frames
    frame_index: int  # index in the source video
    timestamp: float | None
    name: str  # name for per-frame output files
    expressions: list[str]
    object_ids: list[np.ndarray]  # per expression (K_i,): the selected video queries
    object_scores: list[np.ndarray]  # per expression (K_i,)
    object_masks: list[np.ndarray]  # per expression (K_i, H, W) bool

    @property
    def masks(self) -> np.ndarray:
        """(E, H, W) bool: per expression, the union of its selected objects."""
        return np.stack([m.any(0) for m in self.object_masks])

    def labels(self, e: int) -> np.ndarray:
        """(H, W) uint8 label map of expression ``e``: 0 background, k the k-th selected object (the
        higher-scoring object wins where two overlap), as :meth:`RVOSResult.labels`."""
        return _label_map(self.object_masks[e], self.object_scores[e])


def _label_map(object_masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(K, H, W) bool masks → (H, W) uint8 labels: 0 background, k + 1 object k; where objects overlap
    the higher-scoring one wins (the 255 best are drawn, lowest score first)."""
    out = np.zeros(object_masks.shape[1:], dtype=np.uint8)
    for k in np.argsort(scores)[::-1][:255][::-1]:
        out[object_masks[k]] = k + 1
    return out


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def _release_free_heap() -> None:
    """Hand the free pages inside the C heap back to the system (glibc; elsewhere nothing).

    Between chunks, the chunk's temporaries (decoded frames, mask logits at the video's size) are
    freed, but glibc keeps freed heap memory resident, and once it is fragmented, RSS creeps up over
    a long video (+5-11% from 250 to 2,000 frames, docs/performance.md). Trimming costs about a
    millisecond and changes no allocator setting of the process."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _timed(frames: Iterator[Any], timer: Any) -> Iterator[Any]:
    """``frames`` with the time each ``next`` takes added to the ``decode`` stage."""
    while True:
        start = time.perf_counter()
        frame = next(frames, None)
        if timer is not None:
            timer.add("decode", time.perf_counter() - start)
        if frame is None:
            return
        yield frame


def _in_background(produce: Any, depth: int, timer: Any) -> Iterator[Any]:
    """Run the generator function ``produce`` on a thread, ``depth`` items ahead; exceptions raised
    there are raised here. Time spent waiting for items is the ``frames_wait`` stage."""
    items: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in produce():
                if not put(item):
                    return
            put(end)
        except BaseException as err:  # handed to the consumer, raised there
            put(_Failure(err))

    thread = threading.Thread(target=run, name="ssa-decode", daemon=True)
    thread.start()
    try:
        while True:
            start = time.perf_counter()
            item = items.get()
            if timer is not None:
                timer.add("frames_wait", time.perf_counter() - start)
            if item is end:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


@dataclass
class _Failure:
    error: BaseException


def _chunk_masks(embeds: list[torch.Tensor], features: torch.Tensor, model_size: tuple[int, int],
                 size: tuple[int, int]) -> list[torch.Tensor]:
    """Per expression i, the bool masks (K_i, k, H, W) on the CPU of its selected queries' mask embeddings
    ``embeds[i]`` (K_i, Cm) on a chunk's mask features ``features[i]`` (k, Cm, h4, w4)."""
    return [query_masks(embed, features[i], model_size, size).cpu() for i, embed in enumerate(embeds)]


class _MaskPacker:
    """Accumulates bit-packed masks of the selected queries, chunk by chunk."""

    def __init__(self, size: tuple[int, int], num_expressions: int) -> None:
        self.size = size
        self.union: list[list[np.ndarray]] = [[] for _ in range(num_expressions)]  # (k, bytes) each
        self.objects: list[list[np.ndarray]] = [[] for _ in range(num_expressions)]  # (K, k, bytes) each

    def add(self, masks: list[torch.Tensor]) -> None:
        """masks: per expression (K_i, k, H, W) bool, the next k frames."""
        h, w = self.size
        for i, m in enumerate(masks):
            k = m.shape[1]
            objects = m.numpy().reshape(m.shape[0], k, h * w)
            self.objects[i].append(np.packbits(objects, axis=-1))
            self.union[i].append(np.packbits(objects.any(0), axis=-1))

    def result(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.union[i], axis=0), np.concatenate(self.objects[i], axis=1)


class _PhaseBar(tqdm):
    """A progress bar of one phase, in frames; ``finish()`` makes an estimated total the true count."""

    def __init__(self, desc: str, total: int | None, progress: bool) -> None:
        super().__init__(desc=desc, total=total, unit="frame", disable=not progress)

    def finish(self) -> None:
        if not self.disable and self.total != self.n:
            self.total = self.n
            self.refresh()


def _expected_frames(video: Any, options: dict[str, Any]) -> int | None:
    """The number of frames a call will process, for the progress bar: exact for frame folders and
    arrays, the container's count (or duration × rate) for video files; None when unknown. Never
    raises: a bad source is reported by the decoding itself."""
    from ssa.io import count_frames

    try:
        return count_frames(video, **options)
    except Exception:  # only an estimate for the bar
        return None


def _processed_fps(timestamps: Iterable[float | None]) -> float | None:
    ts = [t for t in timestamps if t is not None]
    if len(ts) < 2 or ts[-1] <= ts[0]:
        return None
    return (len(ts) - 1) / (ts[-1] - ts[0])


def _describe(video: Any) -> str:
    if isinstance(video, (str, Path)):
        return str(video)
    return type(video).__name__
