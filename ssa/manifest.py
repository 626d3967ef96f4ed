"""Segment many videos listed in a JSON Lines manifest, sharded over processes and resumable.

A manifest holds one JSON object per line (blank lines are ignored)::

    {"video": "clips/a.mp4", "expressions": ["the cat jumping away", "the dog"], "output": "out/a"}
    {"video": "clips/b.mp4", "expressions": "the red car", "output": "out/b", "fps": 6, "end": 30}

``video`` and ``output`` are paths (relative ones resolve against the manifest's directory, ``~`` is
the home directory); an ``output`` must lie inside the manifest's directory unless ``allow_outside``
(``..``, an absolute path or ``~`` leading elsewhere is refused otherwise), and is never that directory
itself or one holding it. ``expressions`` is a string or a non-empty list of strings; ``fps``,
``stride``, ``start``, ``end`` and ``max_frames`` optionally select frames for that entry.
:func:`read_manifest` validates the whole file before anything runs.

:func:`segment_manifest` runs entry ``i`` on rank ``i % world_size`` (``RANK`` / ``WORLD_SIZE`` from
the environment, as torchrun sets them; no process group is needed), writes each entry's output with
:func:`ssa.io.write_segmentation`, skips entries whose output is already finished (so an interrupted
run resumes), records a failing entry and goes on, and appends one JSON record per entry to a progress
log shared by all ranks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ssa.expressions import expression_problem
from ssa.io import (
    SEGMENTATION_INDEX,
    SEGMENTATION_LAYOUT,
    check_output_dir,
    is_segmentation_output,
    write_segmentation,
)

if TYPE_CHECKING:
    from ssa.modeling.model import SSAModel
    from ssa.pipeline import SSAPipeline

__all__ = ["ManifestEntry", "ManifestSummary", "read_manifest", "segment_manifest", "default_log_path"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

REQUIRED_KEYS = ("video", "expressions", "output")
FRAME_KEYS = ("fps", "stride", "start", "end", "max_frames")
CALL_OPTIONS = ("mode", "threshold") + FRAME_KEYS


@dataclass(frozen=True)
class ManifestEntry:
    """One validated manifest line: ``index`` is its position among the entries (0-based, the sharding
    key), ``line`` its 1-based line number in the file; paths are absolute."""

    index: int
    line: int
    video: Path
    expressions: list[str]
    output: Path
    options: dict[str, Any] = field(default_factory=dict)  # frame selection of this entry


@dataclass
class ManifestSummary:
    """What one rank did: one log record per entry it owns (``status``: done, skipped or failed)."""

    rank: int
    world_size: int
    log: Path
    records: list[dict[str, Any]] = field(default_factory=list)

    def _count(self, status: str) -> int:
        return sum(1 for r in self.records if r["status"] == status)

    @property
    def done(self) -> int:
        return self._count("done")

    @property
    def skipped(self) -> int:
        return self._count("skipped")

    @property
    def failed(self) -> int:
        return self._count("failed")

    @property
    def ok(self) -> bool:
        """True when no entry of this rank failed."""
        return self.failed == 0

    def __str__(self) -> str:
        return (f"rank {self.rank}/{self.world_size}: {self.done} done, {self.skipped} skipped, "
                f"{self.failed} failed (of {len(self.records)} entries)")


# -- reading ------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_path(obj: dict, key: str) -> str | None:
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        return f"{key!r} must be a non-empty path string, got {value!r}"
    return None


def _check_expressions(value: Any) -> tuple[list[str] | None, str | None]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return None, f"'expressions' must be a string or a list of strings, got {type(value).__name__}"
    if not value:
        return None, "'expressions' is an empty list"
    cleaned = []
    for k, text in enumerate(value):
        if not isinstance(text, str):
            return None, f"expression {k} must be a string, got {type(text).__name__}: {text!r}"
        problem = expression_problem(text)
        if problem is not None:
            return None, f"expression {k} {problem}"
        cleaned.append(text)
    return cleaned, None


def _check_options(obj: dict) -> tuple[dict[str, Any], list[str]]:
    options = {k: obj[k] for k in FRAME_KEYS if k in obj}
    problems = []
    for key in ("fps", "start", "end"):
        value = options.get(key)
        if value is not None and not _is_number(value):
            problems.append(f"{key!r} must be a number or null, got {value!r}")
        elif key == "fps" and value is not None and value <= 0:
            problems.append(f"'fps' must be > 0, got {value}")
        elif key == "start" and value is not None and value < 0:
            problems.append(f"'start' must be >= 0, got {value}")
    for key in ("stride", "max_frames"):
        value = options.get(key)
        if key == "stride" and value is None and key in options:
            problems.append("'stride' must be an integer >= 1, got null")
        elif value is not None and (not _is_int(value) or value < 1):
            problems.append(f"{key!r} must be an integer >= 1, got {value!r}")
    start, end = options.get("start"), options.get("end")
    if not problems and start is not None and end is not None and end <= start:
        problems.append(f"'end' ({end}) must be after 'start' ({start})")
    return options, problems


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else base / path))


def _output_problem(base: Path, value: str, output: Path, allow_outside: bool) -> str | None:
    """Why ``output`` (``value`` resolved against the manifest's folder ``base``) may not be written."""
    real_base, real_output = Path(os.path.realpath(base)), Path(os.path.realpath(output))
    if output == base or real_output == real_base:
        return f"output {value!r} is the manifest's own folder ({base})"
    if output in base.parents or real_output in real_base.parents:
        return f"output {value!r} ({output}) contains the manifest's folder"
    if not allow_outside and not (base in output.parents and real_base in real_output.parents):
        return (f"output {value!r} resolves to {output}, outside the manifest's folder {base}; pass "
                "allow_outside=True (ssa segment --allow-outside) to write there")
    return None


def read_manifest(manifest: PathLike, *, allow_outside: bool = False) -> list[ManifestEntry]:
    """Read and validate a JSON Lines manifest; return its entries in order.

    Every line is checked before returning: invalid JSON, a line that is not an object, a missing or
    unknown key, a wrong type, an empty expression list, bad frame options, two entries writing to
    the same output (or one inside another's), and an output that is or contains the manifest's folder
    or (unless ``allow_outside``) lies outside it raise one ``ValueError`` listing each problem with its
    line number. A missing file raises ``FileNotFoundError``.
    """
    path = Path(manifest)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    base = Path(os.path.abspath(path)).parent
    problems: list[str] = []
    entries: list[ManifestEntry] = []
    outputs: dict[Path, int] = {}  # output -> line
    with path.open(encoding="utf-8") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(f"line {line_no}: invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"line {line_no}: expected a JSON object, got {type(obj).__name__}")
                continue
            line_problems = []
            missing = [k for k in REQUIRED_KEYS if k not in obj]
            if missing:
                line_problems.append(f"missing key(s) {', '.join(map(repr, missing))}")
            unknown = sorted(set(obj) - set(REQUIRED_KEYS) - set(FRAME_KEYS))
            if unknown:
                line_problems.append(
                    f"unknown key(s) {', '.join(map(repr, unknown))} (allowed: "
                    f"{', '.join(REQUIRED_KEYS + FRAME_KEYS)})")
            for key in ("video", "output"):
                if key in obj and (problem := _check_path(obj, key)):
                    line_problems.append(problem)
            expressions = None
            if "expressions" in obj:
                expressions, problem = _check_expressions(obj["expressions"])
                if problem:
                    line_problems.append(problem)
            options, option_problems = _check_options(obj)
            line_problems += option_problems
            if line_problems:
                problems += [f"line {line_no}: {p}" for p in line_problems]
                continue
            output = _resolve(base, obj["output"])
            if problem := _output_problem(base, obj["output"], output, allow_outside):
                problems.append(f"line {line_no}: {problem}")
                continue
            if output in outputs:
                problems.append(f"line {line_no}: output {obj['output']!r} is also the output of line "
                                f"{outputs[output]}")
                continue
            outputs[output] = line_no
            entries.append(ManifestEntry(index=len(entries), line=line_no, video=_resolve(base, obj["video"]),
                                         expressions=expressions, output=output, options=options))
    for entry in entries:  # an output nested in another one would end up in it, or block it
        for parent in entry.output.parents:
            if parent in outputs:
                problems.append(f"line {entry.line}: output {entry.output} lies inside the output of "
                                f"line {outputs[parent]} ({parent})")
                break
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ValueError(f"invalid manifest {path}:\n  " + "\n  ".join(shown))
    if not entries:
        raise ValueError(f"manifest {path} lists no entry")
    return entries


def default_log_path(manifest: PathLike) -> Path:
    """``<manifest dir>/<manifest stem>.progress.jsonl``."""
    path = Path(manifest)
    return path.with_name(f"{path.stem}.progress.jsonl")


# -- running ------------------------------------------------------------------------------------------
def _load_pipeline(model: Any, device: Any, precision: str | None, chunk_size: int,
                   local_rank: int) -> SSAPipeline:
    import torch

    from ssa.modeling.model import SSAModel
    from ssa.pipeline import SSAPipeline

    if device is None:
        if torch.cuda.is_available():
            device = f"cuda:{local_rank % torch.cuda.device_count()}"
        else:
            device = "cpu"
    if isinstance(model, SSAModel):
        return SSAPipeline(model, device=device, precision=precision, chunk_size=chunk_size)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError("segment_manifest needs an SSAPipeline, an SSAModel, or a model name / directory, "
                        f"got {type(model).__name__}")
    return SSAPipeline.from_pretrained(model, device=device, precision=precision, chunk_size=chunk_size)


class _ProgressLog:
    """Append-only JSONL file shared by all ranks: one ``os.write`` per record on an ``O_APPEND`` fd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: Mapping[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        if written != len(data):  # not expected for regular files; never leave half a record unflagged
            raise OSError(f"short write to the progress log {self.path} ({written} of {len(data)} bytes)")

    def close(self) -> None:
        os.close(self._fd)


def _finished_frames(output: Path) -> int:
    try:
        index = json.loads((output / SEGMENTATION_INDEX).read_text())
        return int(index[0]["frames"]) if index else 0
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return 0


def _check_entry(entry: ManifestEntry, overwrite: bool, inputs: list[Path]) -> int | None:
    """Before any work: the frame count of a finished output to skip, None for an entry to run; raises
    for an entry that would fail (missing video, an output ssa may not write: :func:`ssa.io.check_output_dir`,
    ssa's own output only, never one of ``inputs`` or a folder holding one)."""
    out = entry.output
    if not overwrite and is_segmentation_output(out):
        return _finished_frames(out)
    if not entry.video.exists():
        raise FileNotFoundError(f"video source not found: {entry.video}")
    hint = (f"it is not a finished output (no {SEGMENTATION_INDEX}); move it away or pass overwrite "
            "(--overwrite) to replace it")
    check_output_dir(out, overwrite=overwrite, layout=SEGMENTATION_LAYOUT, inputs=inputs, hint=hint)
    return None


def _run_entry(pipe: SSAPipeline, entry: ManifestEntry, overwrite: bool,
               options: dict[str, Any], inputs: list[Path]) -> tuple[str, int]:
    """Segment one entry: ("skipped", frames) for a finished output, else ("done", frames); raises.

    The entry is checked again (:func:`_check_entry`: its output may have changed since the run
    began) before the video is decoded."""
    finished = _check_entry(entry, overwrite, inputs)
    if finished is not None:
        return "skipped", finished
    results = pipe(entry.video, list(entry.expressions), progress=False, **options)
    write_segmentation([r.to_expression_masks() for r in results], entry.output, overwrite=overwrite,
                       inputs=[*inputs, entry.video])
    return "done", len(results[0]) if results else 0


def segment_manifest(
    manifest: PathLike,
    pipeline_or_model: SSAPipeline | SSAModel | PathLike,
    *,
    log: PathLike | None = None,
    overwrite: bool = False,
    allow_outside: bool = False,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    device: Any = None,
    precision: str | None = None,
    chunk_size: int = 16,
    **call_options: Any,
) -> ManifestSummary:
    """Segment this rank's share of the manifest's entries; return what it did.

    manifest: a JSON Lines file (see :func:`read_manifest`; validated entirely before any work).
    pipeline_or_model: an :class:`~ssa.SSAPipeline`, an :class:`~ssa.SSAModel`, or a name / Hub repo
    id / checkpoint directory for :meth:`SSAPipeline.from_pretrained`; ``device`` (default
    ``cuda:LOCAL_RANK`` when CUDA is available, else CPU), ``precision`` and ``chunk_size`` apply when
    the pipeline is built here. rank / world_size: default ``RANK`` / ``WORLD_SIZE`` from the
    environment (0 / 1); entry ``i`` is done by rank ``i % world_size``. With several CPU processes per
    machine (``LOCAL_WORLD_SIZE``) each uses ``cpu_count // LOCAL_WORLD_SIZE`` threads.
    call_options: ``mode``, ``threshold`` and the frame selection (``stride``, ``fps``, ``start``,
    ``end``, ``max_frames``) for every entry; an entry's own frame keys override them.

    Every entry of this rank is checked before the model is loaded (or any video decoded): when none is
    left to run (all finished or failing) the model is not loaded at all.
    An entry whose output is finished (holds ``expressions.json``) is skipped unless ``overwrite``;
    ``overwrite`` replaces only such finished outputs holding nothing ssa did not write. An existing
    non-empty folder that is not one, an output that is or holds an input (the manifest, a video, the
    log), or any error while segmenting an entry (missing or corrupt video, ...) marks the entry failed
    and the run goes on. ``allow_outside``: accept outputs outside the manifest's folder
    (:func:`read_manifest`). Each entry appends
    ``{"time", "rank", "index", "video", "output", "status", "seconds", "frames", "error"}`` to ``log``
    (default :func:`default_log_path`), one atomic append per record, shared by all ranks.
    """
    unknown = sorted(set(call_options) - set(CALL_OPTIONS))
    if unknown:
        raise TypeError(f"segment_manifest got unknown option(s) {unknown}; allowed: {list(CALL_OPTIONS)}")
    entries = read_manifest(manifest, allow_outside=allow_outside)  # before the heavy imports

    from ssa.distributed import env_int  # imports torch

    rank = env_int("RANK", 0) if rank is None else rank
    world_size = env_int("WORLD_SIZE", 1) if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    local_rank = env_int("LOCAL_RANK", 0)
    local_world_size = env_int("LOCAL_WORLD_SIZE", 1)

    mine = [e for e in entries if e.index % world_size == rank]
    log_path = Path(log) if log is not None else default_log_path(manifest)
    # no output may be or hold the manifest, its folder, the log or any entry's video
    inputs = [Path(manifest), Path(manifest).parent, log_path, *(e.video for e in entries)]

    # every entry checked before the model is loaded: failures and finished outputs known up front
    checked: dict[int, tuple[str, int, str | None]] = {}  # index -> (status, frames, error)
    for entry in mine:
        try:
            finished = _check_entry(entry, overwrite, inputs)
        except Exception as e:  # recorded as the entry's failure below
            checked[entry.index] = ("failed", 0, f"{type(e).__name__}: {e}")
        else:
            if finished is not None:
                checked[entry.index] = ("skipped", finished, None)

    from ssa.pipeline import SSAPipeline

    pipe: SSAPipeline | None = None
    if isinstance(pipeline_or_model, SSAPipeline):
        pipe = pipeline_or_model
    elif len(checked) < len(mine):
        pipe = _load_pipeline(pipeline_or_model, device, precision, chunk_size, local_rank)
    if pipe is not None and pipe.device.type == "cpu" and local_world_size > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // local_world_size)
        torch.set_num_threads(threads)
        logger.debug("rank %d: %d CPU processes on this machine, %d thread(s) each", rank,
                     local_world_size, threads)

    summary = ManifestSummary(rank=rank, world_size=world_size, log=log_path)
    logger.info("rank %d/%d: %d of %d manifest entries (%d to run) on %s, log %s", rank, world_size,
                len(mine), len(entries), len(mine) - len(checked),
                pipe.device if pipe is not None else "no device (the model is not needed)", log_path)
    progress_log = _ProgressLog(log_path)
    desc = "videos" if world_size == 1 else f"videos (rank 0 of {world_size})"
    bar = tqdm(mine, desc=desc, unit="video", disable=not progress or rank != 0)
    try:
        for entry in bar:
            options = {**call_options, **entry.options}
            started = time.perf_counter()
            status, frames, error = checked.get(entry.index, (None, 0, None))
            if status is None:
                try:
                    status, frames = _run_entry(pipe, entry, overwrite, options, inputs)
                except Exception as e:  # one bad entry must not stop the others
                    status, frames, error = "failed", 0, f"{type(e).__name__}: {e}"
            if status == "failed":
                logger.error("rank %d: entry %d (line %d, %s) failed: %s", rank, entry.index, entry.line,
                             entry.video, error)
            record = {
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "rank": rank, "index": entry.index, "video": str(entry.video), "output": str(entry.output),
                "status": status, "seconds": round(time.perf_counter() - started, 3), "frames": frames,
                "error": error,
            }
            progress_log.write(record)
            summary.records.append(record)
            logger.debug("rank %d: entry %d %s (%d frames)", rank, entry.index, status, frames)
    finally:
        bar.close()
        progress_log.close()
    logger.info("%s", summary)
    return summary
