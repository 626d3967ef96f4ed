"""The evaluation runner: J, F and J&F of a model or of saved predictions on a MeViS-layout split.

    from ssa.eval import evaluate
    summary = evaluate("runs/preds", "mevis/valid_u", out_dir="runs/eval")        # predictions folder
    summary = evaluate("org/ssa-tiny-mevis", "mevis/valid_u", out_dir="runs/eval") # or a model
    summary["J&F"], summary.rows[0].j

Scores follow docs/design.md §6: per expression, J and F are means over its frames of
:func:`ssa.eval.j_score` / :func:`ssa.eval.f_score` against the union of the expression's ``anno_id``
masks; the dataset's J and F are means over expressions, J&F = (J + F) / 2.

Files written to ``out_dir``, which must be new, empty or an earlier evaluation's folder holding nothing
else (:data:`EVALUATION_LAYOUT`, checked by :func:`ssa.io.check_output_dir`: a folder with other files,
the current or home directory, or one holding the split or the predictions is refused):

* ``per_expression.csv`` — columns :data:`CSV_COLUMNS`, one row per expression in dataset order;
* ``summary.json`` — ``{"J", "F", "J&F"}`` (fractions in [0, 1]) and the counts ``"videos"``,
  ``"expressions"`` and ``"frames"`` (frames of the evaluated videos, each counted once);
* ``predictions/<video>/<exp_id>/<frame>.png`` — when a model is evaluated (submission layout, see
  :mod:`ssa.eval.submission`);
* ``.partial/<video>.json`` — while a run is in progress, one record per finished video (written
  atomically), with the run's fingerprint: the model (:func:`ssa.fingerprint.model_fingerprint` of its
  config and weights) or the predictions (their files' names, sizes and times), the data (the split's
  annotation files, frame names and sizes) and the options (mode, threshold, precision, chunk size,
  frame extension). A run that is interrupted and started again with ``resume=True`` skips those
  videos; records of another model, data or options make it refuse to resume (``ValueError`` naming
  what differs: pass ``resume=False`` to score everything again). The folder is removed when the run
  completes, so a later run scores everything afresh.

Parallelism: ``workers > 0`` scores a predictions folder with a pool of that many processes (spawned,
CPU only). Under ``torch.distributed`` (an initialised process group, or the ``WORLD_SIZE`` / ``RANK``
variables that ``torchrun`` sets, in which case a gloo group is created here and destroyed before
returning) the videos are sharded over the ranks, the per-expression scores are gathered on every rank,
rank 0 writes the files, and every rank returns the same full summary.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
from tqdm.auto import tqdm

from ssa.data.datasets import MeViSDataset
from ssa.distributed import ProcessGroup, torchrun_group
from ssa.eval.metrics import jf, summarize
from ssa.eval.submission import PREDICTIONS_LAYOUT, read_prediction, write_prediction
from ssa.fingerprint import fingerprint as fingerprint_of
from ssa.io import OutputLayout, atomic_write_text, check_output_dir, is_leftover, remove_stale_temporaries

if TYPE_CHECKING:
    import torch

    from ssa.modeling.model import SSAModel
    from ssa.modeling.selection import Mode
    from ssa.pipeline import SSAPipeline

__all__ = ["evaluate", "ExpressionScore", "EvaluationSummary", "CSV_COLUMNS", "EVALUATION_LAYOUT"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

CSV_COLUMNS = ("video", "exp_id", "expression", "J", "F", "J&F", "num_frames")
"""Columns of ``per_expression.csv``."""

PARTIAL_DIRNAME = ".partial"
PREDICTIONS_DIRNAME = "predictions"
CSV_NAME = "per_expression.csv"
SUMMARY_NAME = "summary.json"

EVALUATION_LAYOUT = OutputLayout(
    "evaluation output", markers=(SUMMARY_NAME, CSV_NAME, PARTIAL_DIRNAME, PREDICTIONS_DIRNAME),
    files=(re.escape(CSV_NAME), re.escape(SUMMARY_NAME)),
    dirs=((re.escape(PARTIAL_DIRNAME), OutputLayout("progress records", files=(r".+\.json",))),
          (PREDICTIONS_DIRNAME, PREDICTIONS_LAYOUT)))
"""What :func:`evaluate` writes into ``out_dir``; the only files an existing ``out_dir`` may hold."""


@dataclass(frozen=True)
class ExpressionScore:
    """Scores of one (video, expression) pair: J, F and J&F are means over its ``num_frames`` frames."""

    video: str
    exp_id: str
    expression: str
    j: float
    f: float
    jf: float
    num_frames: int

    def as_row(self) -> dict[str, Any]:
        """The ``per_expression.csv`` row (keys :data:`CSV_COLUMNS`)."""
        return {
            "video": self.video,
            "exp_id": self.exp_id,
            "expression": self.expression,
            "J": self.j,
            "F": self.f,
            "J&F": self.jf,
            "num_frames": self.num_frames,
        }


class EvaluationSummary(dict):
    """What ``summary.json`` holds — ``"J"``, ``"F"``, ``"J&F"``, ``"videos"``, ``"expressions"``,
    ``"frames"`` — as a plain dict, plus the per-expression scores in :attr:`rows` (dataset order)."""

    rows: list[ExpressionScore]

    def __init__(self, values: dict[str, Any], rows: list[ExpressionScore]) -> None:
        super().__init__(values)
        self.rows = rows


# -- one video -----------------------------------------------------------------------------------------
@dataclass
class _Context:
    """What scoring a video needs; built once per process."""

    dataset: MeViSDataset
    items: dict[str, list[tuple[str, str, int]]]  # video → [(exp_id, text, dataset index)]
    predictions: Path | None = None
    pipeline: SSAPipeline | None = None
    mode: Mode = "multi"
    threshold: float = 0.5
    write_dir: Path | None = None  # where a model's predictions are written (submission layout)
    frames_of: dict[str, int] = field(default_factory=dict)


def _index_expressions(dataset: MeViSDataset) -> dict[str, list[tuple[str, str, int]]]:
    items: dict[str, list[tuple[str, str, int]]] = {}
    for index, (video, exp_id, text) in enumerate(dataset.expressions()):
        items.setdefault(video, []).append((exp_id, text, index))
    return items


def _evaluate_video(ctx: _Context, video: str) -> list[ExpressionScore]:
    """Score every expression of ``video`` (running the model first when there is one)."""
    names = ctx.dataset.frame_names(video)
    items = ctx.items[video]
    predicted: list[np.ndarray] | None = None
    if ctx.pipeline is not None:
        frames = ctx.dataset.load_frames(video)
        results = ctx.pipeline(
            frames, [text for _, text, _ in items], mode=ctx.mode, threshold=ctx.threshold, progress=False
        )
        predicted = [r.masks for r in results]  # each (T, H, W)
    rows = []
    for k, (exp_id, text, index) in enumerate(items):
        objects, _ = ctx.dataset.load_masks(index)  # (K, T, H, W)
        gt = objects.any(axis=0)  # (T, H, W)
        if predicted is None:
            assert ctx.predictions is not None
            pred = read_prediction(ctx.predictions, video, exp_id, names, size=gt.shape[1:])
        else:
            pred = predicted[k]
            if pred.shape != gt.shape:
                raise ValueError(
                    f"video {video!r}, expression {exp_id!r}: the model gave masks of shape {pred.shape}, "
                    f"the ground truth is {gt.shape}"
                )
            if ctx.write_dir is not None:
                write_prediction(ctx.write_dir, video, exp_id, names, pred, overwrite=True)
        scores = jf(gt, pred)
        rows.append(ExpressionScore(video, exp_id, text, scores["J"], scores["F"], scores["J&F"], len(names)))
    return rows


# -- process pool (predictions folders) ----------------------------------------------------------------
_WORKER_CONTEXT: _Context | None = None


def _init_worker(split_dir: str, frame_ext: str, predictions: str) -> None:
    global _WORKER_CONTEXT
    dataset = MeViSDataset(split_dir, frame_ext=frame_ext)
    _WORKER_CONTEXT = _Context(dataset, _index_expressions(dataset), predictions=Path(predictions))


def _worker_task(video: str) -> list[ExpressionScore]:
    if _WORKER_CONTEXT is None:
        raise RuntimeError("evaluation worker used before its initialisation")
    return _evaluate_video(_WORKER_CONTEXT, video)


def _run_pool(
    ctx: _Context,
    split_dir: Path,
    frame_ext: str,
    videos: list[str],
    workers: int,
    on_done: Callable[[str, list[ExpressionScore]], None],
) -> None:
    """Score ``videos`` in a spawned process pool, calling ``on_done`` here as each one finishes."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    assert ctx.predictions is not None
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(videos)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(str(split_dir), frame_ext, str(ctx.predictions)),
    )
    try:
        pending = {pool.submit(_worker_task, video): video for video in videos}
        while pending:
            done, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                video = pending.pop(future)
                on_done(video, future.result())  # re-raises a worker's exception
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# -- resumption -----------------------------------------------------------------------------------------
def _record_path(out_dir: Path, video: str) -> Path:
    return out_dir / PARTIAL_DIRNAME / f"{quote(video, safe='')}.json"


def _write_record(out_dir: Path, video: str, fingerprint: dict, rows: list[ExpressionScore]) -> None:
    payload = {"video": video, "fingerprint": fingerprint, "rows": [asdict(r) for r in rows]}
    atomic_write_text(_record_path(out_dir, video), json.dumps(payload), overwrite=True)


_COMPARED = {"model": "model (its config or weights)", "predictions": "predictions (their files)",
             "data": "data (the split's annotations, frames or frame extension)"}


def _differences(recorded: Any, fingerprint: dict[str, Any]) -> list[str]:
    """What differs between the fingerprint of a record and this run's, in words (empty: nothing)."""
    if not isinstance(recorded, dict) or not all(k in recorded for k in ("data", "options")):
        return ["settings (a record of an earlier ssa version, without fingerprints)"]
    found = [what for key, what in _COMPARED.items() if recorded.get(key) != fingerprint.get(key)]
    before, now = recorded["options"], fingerprint["options"]
    if before != now:
        keys = sorted(set(before) | set(now)) if isinstance(before, dict) else sorted(now)
        was = before if isinstance(before, dict) else {}
        changed = [k for k in keys if was.get(k) != now.get(k)]
        found.append("options (" + ", ".join(f"{k} {was.get(k)!r} -> {now.get(k)!r}" for k in changed) + ")")
    return found


def _read_record(
    out_dir: Path, video: str, fingerprint: dict, ctx: _Context
) -> list[ExpressionScore] | None:
    """The rows of a finished video recorded by an earlier run with the same model, data and options,
    else None (no record, or an unreadable one: the video is scored again). A record of another model,
    data or options raises ``ValueError`` naming what differs."""
    path = _record_path(out_dir, video)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload["video"] != video:
            raise ValueError(f"it is the record of {payload['video']!r}")
        differs = _differences(payload["fingerprint"], fingerprint)
        rows = [ExpressionScore(**r) for r in payload["rows"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("%s: unreadable progress record (%s), scoring %r again", path, e, video)
        return None
    if differs:
        raise ValueError(
            f"{out_dir} holds the progress records of an interrupted evaluation that differs from this run "
            f"in: {'; '.join(differs)} (first: {path.name}); refusing to resume with them: pass resume=False "
            "(ssa evaluate --no-resume) to score every video again, or choose another out_dir"
        )
    expected = [exp_id for exp_id, _, _ in ctx.items[video]]
    n_frames = len(ctx.dataset.frame_names(video))
    if [r.exp_id for r in rows] != expected or any(r.num_frames != n_frames for r in rows):
        logger.warning("%s: the record does not match the split's expressions or frames, scoring %r again",
                       path, video)
        return None
    return rows


def _data_fingerprint(dataset: MeViSDataset) -> str:
    """The split's annotation files (bytes) and, per video, its frame names and file sizes."""
    frames = []
    for video in dataset.videos:
        for name in dataset.frame_names(video):
            try:
                size = os.stat(dataset.frame_path(video, name)).st_size
            except OSError:
                size = -1
            frames.append([video, name, size])
    files = [dataset.meta_path] + ([dataset.mask_path] if dataset.mask_path.is_file() else [])
    return fingerprint_of(files, dataset.frame_ext, frames)


def _predictions_fingerprint(pred_dir: Path, videos: list[str]) -> str:
    """Names, sizes and modification times of the predictions of ``videos`` (what the scores read)."""
    entries = []
    for video in videos:
        for root, dirs, files in os.walk(pred_dir / video):
            dirs[:] = sorted(d for d in dirs if not is_leftover(d))
            for name in sorted(files):
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    st = os.stat(path)
                    entries.append([os.path.relpath(path, pred_dir), st.st_size, st.st_mtime_ns])
    return fingerprint_of(entries)


def _run_fingerprint(dataset: MeViSDataset, split_dir: Path, source: str, pred_dir: Path | None,
                     pipe: SSAPipeline | None, options: dict[str, Any], videos: list[str]) -> dict[str, Any]:
    """What the records of this run are valid for (the "split" and "source" entries are informational)."""
    from ssa.fingerprint import model_fingerprint

    values: dict[str, Any] = {"split": str(split_dir.resolve()), "source": source,
                              "data": _data_fingerprint(dataset), "options": options}
    if pipe is not None:
        values["model"] = model_fingerprint(pipe.model)
    else:
        assert pred_dir is not None
        values["predictions"] = _predictions_fingerprint(pred_dir, videos)
    return values


def _clean_out_dir(out: Path, videos: list[str]) -> None:
    """Remove the temporaries killed writes of an earlier run left in ``out``."""
    for folder in (out, out / PARTIAL_DIRNAME, out / PREDICTIONS_DIRNAME):
        remove_stale_temporaries(folder)
    for video in videos:
        if (out / PREDICTIONS_DIRNAME / video).is_dir():
            remove_stale_temporaries(out / PREDICTIONS_DIRNAME / video)


# -- distributed ----------------------------------------------------------------------------------------
_ERROR_TYPES: dict[str, type[Exception]] = {
    t.__name__: t
    for t in (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, TypeError, OSError)
}


def _raise_gathered(errors: list[tuple[str, str] | None], own: BaseException | None, rank: int) -> None:
    """Raise on every rank when any rank failed: its own exception, or one describing the other's."""
    if own is not None:
        raise own
    for r, err in enumerate(errors):
        if err is not None:
            name, message = err
            raise _ERROR_TYPES.get(name, RuntimeError)(f"evaluation failed on rank {r}: {message}")


# -- inputs ---------------------------------------------------------------------------------------------
def _open_split(split_dir: Path, frame_ext: str) -> MeViSDataset:
    if not split_dir.is_dir():
        raise FileNotFoundError(f"dataset split directory not found: {split_dir}")
    missing = [n for n in ("JPEGImages", MeViSDataset.meta_filename) if not (split_dir / n).exists()]
    if missing:
        raise ValueError(
            f"{split_dir} is not a MeViS-layout split: {', '.join(missing)} missing (expected JPEGImages/, "
            f"{MeViSDataset.meta_filename} and {MeViSDataset.mask_filename})"
        )
    dataset = MeViSDataset(split_dir, frame_ext=frame_ext)
    if not dataset.has_masks:
        raise ValueError(
            f"{split_dir} has no ground truth ({MeViSDataset.mask_filename} is absent), so it cannot be "
            "evaluated here; splits like MeViS 'valid' are scored by the official server "
            "(see ssa.eval.submission.zip_submission)"
        )
    if len(dataset) == 0:
        raise ValueError(f"{split_dir}: {MeViSDataset.meta_filename} lists no expression to evaluate")
    return dataset


def _default_device(device: str | torch.device | None, dist: ProcessGroup) -> str | torch.device | None:
    """One GPU per rank (``LOCAL_RANK``) under distributed runs when no device was given."""
    import torch

    if device is None and dist.world_size > 1 and torch.cuda.is_available():
        return f"cuda:{dist.local_rank % torch.cuda.device_count()}"
    return device


def _resolve(
    predictions: Any, device: str | torch.device | None, precision: str | None
) -> tuple[Path | None, SSAPipeline | None, str]:
    """(predictions folder, None, description) or (None, pipeline, description)."""
    from ssa.modeling.model import SSAModel
    from ssa.pipeline import SSAPipeline

    if isinstance(predictions, SSAPipeline):
        return None, predictions, f"model:{predictions.config.preset}"
    if isinstance(predictions, SSAModel):
        pipe = SSAPipeline(predictions, device=device, precision=precision)
        return None, pipe, f"model:{predictions.config.preset}"
    if not isinstance(predictions, (str, os.PathLike)):
        raise TypeError(
            "predictions must be a predictions folder, a model checkpoint folder or Hub id, an SSAModel or "
            f"an SSAPipeline; got {type(predictions).__name__}"
        )
    path = Path(predictions)
    if path.is_dir() and not (path / "config.json").is_file():
        return path.resolve(), None, f"predictions:{path.resolve()}"
    try:
        pipe = SSAPipeline.from_pretrained(predictions, device=device, precision=precision)
    except FileNotFoundError as e:
        if path.is_dir():
            raise
        raise FileNotFoundError(f"{predictions} is not a predictions folder, and not a model: {e}") from e
    return None, pipe, f"model:{predictions}"


def _write_outputs(out_dir: Path, summary: dict[str, Any], rows: list[ExpressionScore]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row.as_row())
    atomic_write_text(out_dir / CSV_NAME, buffer.getvalue(), overwrite=True)
    atomic_write_text(out_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n", overwrite=True)
    shutil.rmtree(out_dir / PARTIAL_DIRNAME, ignore_errors=True)


# -- the runner -----------------------------------------------------------------------------------------
def evaluate(
    predictions: PathLike | SSAPipeline | SSAModel,
    split_dir: PathLike,
    *,
    out_dir: PathLike | None = None,
    workers: int = 0,
    progress: bool = True,
    resume: bool = True,
    device: str | torch.device | None = None,
    mode: Mode | None = None,
    threshold: float | None = None,
    precision: str | None = None,
    frame_ext: str = ".jpg",
) -> EvaluationSummary:
    """J, F and J&F of ``predictions`` on the MeViS-layout split ``split_dir`` (which needs ground truth).

    Args:
        predictions: a predictions folder (``<video>/<exp_id>/<frame>.png``, non-zero = foreground); or a
            model: an :class:`~ssa.SSAPipeline`, an :class:`~ssa.SSAModel`, or a checkpoint folder (one
            with ``config.json``) / Hub repo id for :meth:`SSAPipeline.from_pretrained`. A model runs once
            per video on all of that video's expressions.
        split_dir: ``JPEGImages/``, ``meta_expressions.json`` and ``mask_dict.json``.
        out_dir: where ``per_expression.csv``, ``summary.json``, the progress records and (for a model)
            ``predictions/`` are written; None writes nothing (and cannot resume).
        workers: processes scoring a predictions folder in parallel (0: in this process). A model always
            runs in this process.
        progress: a tqdm bar over videos (rank 0 only).
        resume: skip videos recorded as finished in ``out_dir`` by an interrupted run; its records must
            be of the same model (config and weights) or predictions, data and options, else
            ``ValueError`` says what differs. False scores every video again (and drops the records).
        device, precision: for a model given as an SSAModel or a name (default: CUDA when available —
            the rank's ``LOCAL_RANK`` GPU under torchrun — else CPU); ignored for an SSAPipeline.
        mode, threshold: the pipeline's query selection ("multi": every query scoring above
            ``threshold``; "single": the best one); None: the model's own (``config.selection``,
            ``config.threshold``).
        frame_ext: extension of the frame files.

    Returns:
        The summary (see :class:`EvaluationSummary`; ``.rows`` has the per-expression scores). Under
        ``torch.distributed`` every rank returns the same full summary; only rank 0 writes files.

    Raises:
        FileNotFoundError: a missing split or predictions folder, or a missing prediction PNG (naming the
            video, expression and frame). ValueError: a split that is not in the MeViS layout or has no
            ground truth (no ``mask_dict.json``), a prediction of the wrong size, an ``out_dir`` that is
            the current or home directory or holds the split or the predictions, progress records of
            another model, data or options with ``resume=True``. FileExistsError: an
            ``out_dir`` holding files an evaluation does not write (named in the message).
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if mode not in ("multi", "single", None):
        raise ValueError(f"mode must be 'multi' or 'single', got {mode!r}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    split_dir = Path(split_dir)
    dataset = _open_split(split_dir, frame_ext)
    out = None if out_dir is None else Path(out_dir)
    if out is not None:  # written into (resumed), as the rule for replacing allows: only ssa's own files
        inputs = [split_dir]  # and the predictions folder or checkpoint directory (not a Hub id)
        if isinstance(predictions, (str, os.PathLike)) and Path(predictions).exists():
            inputs.append(Path(predictions))
        check_output_dir(out, overwrite=True, layout=EVALUATION_LAYOUT, inputs=inputs, verb="write into")

    with torchrun_group(device, objects=True) as dist:
        pred_dir, pipe, source = _resolve(predictions, _default_device(device, dist), precision)
        options: dict[str, Any] = {"frame_ext": frame_ext}
        if pipe is not None:
            mode = pipe.config.selection if mode is None else mode
            threshold = pipe.config.threshold if threshold is None else threshold
            options.update(mode=mode, threshold=threshold, precision=pipe.precision,
                           chunk_size=pipe.chunk_size)
        ctx = _Context(
            dataset, _index_expressions(dataset), predictions=pred_dir, pipeline=pipe, mode=mode,
            threshold=threshold,
            write_dir=None if out is None or pipe is None else out / PREDICTIONS_DIRNAME,
        )
        videos = list(ctx.items)
        mine = videos[dist.rank :: dist.world_size]
        if dist.rank == 0:
            logger.info(
                "evaluating %s on %s: %d expressions in %d videos%s",
                source, split_dir, len(dataset), len(videos),
                f" over {dist.world_size} ranks" if dist.world_size > 1 else "",
            )

        results: dict[str, list[ExpressionScore]] = {}
        error: BaseException | None = None
        fingerprint: dict[str, Any] = {}
        try:
            if out is not None:
                if dist.rank == 0:
                    _clean_out_dir(out, videos)
                fingerprint = _run_fingerprint(dataset, split_dir, source, pred_dir, pipe, options, videos)
                if not resume:  # the records of this rank's videos, from any earlier run
                    for video in mine:
                        _record_path(out, video).unlink(missing_ok=True)
            if out is not None and resume:
                for video in mine:
                    rows = _read_record(out, video, fingerprint, ctx)
                    if rows is not None:
                        results[video] = rows
                if results:
                    logger.info("resuming: %d of %d videos already scored", len(results), len(mine))
            todo = [v for v in mine if v not in results]
            with tqdm(total=len(mine), initial=len(results), desc="evaluating", unit="video",
                      disable=not progress or dist.rank != 0) as bar:

                def on_done(video: str, rows: list[ExpressionScore]) -> None:
                    results[video] = rows
                    if out is not None:
                        _write_record(out, video, fingerprint, rows)
                    bar.update(1)

                if pipe is None and workers > 0 and len(todo) > 1:
                    _run_pool(ctx, split_dir, frame_ext, todo, workers, on_done)
                else:
                    if pipe is not None and workers > 0:
                        logger.info("a model runs in this process; workers=%d is ignored", workers)
                    for video in todo:
                        on_done(video, _evaluate_video(ctx, video))
        except Exception as e:  # shared with the other ranks before raising, so none waits forever
            if dist.world_size == 1:
                raise
            error = e

        gathered = dist.all_gather_object(
            (results, None if error is None else (type(error).__name__, str(error)))
        )
        _raise_gathered([g[1] for g in gathered], error, dist.rank)
        scored: dict[str, list[ExpressionScore]] = {}
        for part, _ in gathered:
            scored.update(part)
        rows = [row for video in videos for row in scored[video]]  # dataset order
        stats = summarize([(r.j, r.f) for r in rows])
        summary = EvaluationSummary(
            {
                "J": stats["J"],
                "F": stats["F"],
                "J&F": stats["J&F"],
                "videos": len(videos),
                "expressions": len(rows),
                "frames": sum(len(dataset.frame_names(v)) for v in videos),
            },
            rows,
        )
        write_error: BaseException | None = None
        if out is not None and dist.rank == 0:
            try:
                _write_outputs(out, dict(summary), rows)
            except Exception as e:
                if dist.world_size == 1:
                    raise
                write_error = e
        statuses = dist.all_gather_object(None if write_error is None else (type(write_error).__name__,
                                                                      str(write_error)))
        _raise_gathered(statuses, write_error, dist.rank)

    if dist.rank == 0:
        if out is not None:
            logger.info("wrote %s and %s to %s", CSV_NAME, SUMMARY_NAME, out)
        logger.info(
            "J&F %.4f  J %.4f  F %.4f  (%d expressions, %d videos)",
            summary["J&F"], summary["J"], summary["F"], summary["expressions"], summary["videos"],
        )
    return summary
