"""Safe file writes: the one rule of what ssa may write or replace, and atomic writes.

* :func:`check_output_dir` / :func:`check_output_file` — the one rule of what ssa may write or replace
  (its own outputs only, never an input or the folders around them); :func:`prepare_output_dir` /
  :func:`atomic_output_dir` apply it to result folders.
* :func:`atomic_write` — the one atomic write of a file or folder: a temporary sibling renamed into
  place on success, removed on failure; :func:`atomic_write_text` / :func:`atomic_output_dir` are
  built on it, and :func:`temporary_sibling` is its staging half (for writers that move several files).
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
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "OutputLayout",
    "check_output_dir",
    "check_output_file",
    "prepare_output_dir",
    "atomic_output_dir",
    "atomic_write",
    "atomic_write_text",
    "temporary_sibling",
    "sync_to_disk",
    "default_permissions",
    "temp_prefix",
    "remove_stale_temporaries",
    "is_leftover",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


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
def atomic_write(
    path: PathLike,
    *,
    overwrite: bool = False,
    directory: bool = False,
    layout: OutputLayout | None = None,
    inputs: Iterable[PathLike] = (),
    hint: str = "pass overwrite=True to replace it",
    check: bool = True,
    kind: str = "tmp",
    suffix: str = "",
) -> Iterator[Path]:
    """The one atomic write of ssa: yield a temporary sibling of ``path``; when the block succeeds it is
    renamed to ``path``, when it raises (or the process is interrupted) it is removed and ``path`` is
    left as it was.

    ``directory=False``: the yielded path is a file name that does not exist yet (``suffix`` is kept at
    its end, e.g. ".mp4" for writers that pick the format from the extension); the block creates it.
    ``directory=True``: the yielded path is a new empty folder the block fills.

    ``check``: ``path`` is checked before and again just before the rename by the one output rule
    (:func:`check_output_file`, or :func:`check_output_dir` with ``layout`` for folders): an existing
    output is replaced only with ``overwrite``, never an input. ``check=False`` is for ssa's own
    internal folders (training checkpoints), which are replaced unconditionally. An existing folder is
    moved aside first and removed after the new one is in place (restored if that rename fails).
    Stale temporaries of ``path`` left by killed writers are removed first
    (:func:`remove_stale_temporaries`); the temporary carries the writer's pid (``kind``: see
    :func:`temp_prefix`). Files are flushed to disk (fsync) before the rename and get the mode a plain
    ``open()`` / ``mkdir()`` would give them::

        with atomic_write("out/result.json") as tmp:
            tmp.write_text(text)
    """
    path = Path(path)
    inputs = list(inputs)

    def check_target() -> None:
        if not check:
            return
        if directory:
            check_output_dir(path, overwrite=overwrite, layout=layout, inputs=inputs, hint=hint)
        else:
            check_output_file(path, overwrite=overwrite, inputs=inputs, hint=hint)

    check_target()
    with temporary_sibling(path, directory=directory, kind=kind, suffix=suffix) as tmp:
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            raise FileNotFoundError(f"nothing was written to {tmp} for {path}")
        if not directory:
            sync_to_disk(tmp)
        default_permissions(tmp)
        check_target()  # it may have appeared or changed meanwhile
        _commit(tmp, path, directory)


@contextlib.contextmanager
def temporary_sibling(path: PathLike, *, directory: bool = False, kind: str = "tmp", suffix: str = ""
                      ) -> Iterator[Path]:
    """A temporary entry next to ``path`` named by :func:`temp_prefix` (a new empty folder with
    ``directory``, else a file name not yet created), removed on leaving the block unless it was renamed
    away; stale temporaries of ``path`` left by killed writers are removed first. What
    :func:`atomic_write` stages in; used directly by writers that move several files into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name, kind), dir=path.parent))
    else:
        tmp = path.parent / f"{temp_prefix(path.name, kind)}{uuid.uuid4().hex[:8]}{suffix}"
    try:
        yield tmp
    finally:
        _remove(tmp)  # nothing left once renamed into place


def sync_to_disk(path: PathLike) -> None:
    """Flush a written file to disk (fsync); errors are ignored (not every filesystem supports it)."""
    with contextlib.suppress(OSError), open(path, "rb") as f:
        os.fsync(f.fileno())


def _remove(path: Path) -> None:
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _commit(tmp: Path, path: Path, directory: bool) -> None:
    """Rename ``tmp`` to ``path``; an existing folder is moved aside first and removed once the new one
    is in place (put back if the rename fails)."""
    if not (directory and (path.exists() or path.is_symlink())):
        os.replace(tmp, path)
        return
    backup = path.parent / (temp_prefix(path.name, "old") + uuid.uuid4().hex[:8])
    os.replace(path, backup)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(backup, path)
        raise
    _remove(backup)


def atomic_output_dir(path: PathLike, overwrite: bool = False, *, layout: OutputLayout | None = None,
                      inputs: Iterable[PathLike] = (), hint: str = "pass overwrite=True to replace it"
                      ) -> contextlib.AbstractContextManager[Path]:
    """:func:`atomic_write` of a result folder: yield a temporary directory next to ``path``, renamed to
    ``path`` on success. An existing non-empty ``path`` is replaced only with ``overwrite`` and when it
    is ssa's own output of ``layout`` (:func:`check_output_dir`)::

        with atomic_output_dir("out/video1", overwrite=True, layout=MASKS_LAYOUT) as tmp:
            write_palette_png(tmp / "00000.png", labels)
    """
    return atomic_write(path, overwrite=overwrite, directory=True, layout=layout, inputs=inputs, hint=hint)


def atomic_write_text(path: PathLike, text: str, *, overwrite: bool = False,
                      inputs: Iterable[PathLike] = ()) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`; an existing file is refused unless
    ``overwrite`` is True, and always when it is a link or one of ``inputs`` (:func:`check_output_file`)."""
    path = Path(path)
    with atomic_write(path, overwrite=overwrite, inputs=inputs, suffix=".tmp") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
