"""`ssa segment --manifest`: many videos, sharded over ranks, resumable, with a shared progress log."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import build
from media import encode

from ssa.cli import main
from ssa.manifest import read_manifest, segment_manifest

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--device", "cpu", "--no-progress", "--threshold", "0"]

# name, expressions, per-entry frame options, square colour, x step per frame, frames
VIDEOS = [
    ("a", ["the red square", "the background"], {}, (200, 50, 50), 4, 8),
    ("b", "the square moving left", {"stride": 2}, (50, 200, 50), -3, 8),
    ("c", ["a blue square"], {"max_frames": 5}, (50, 50, 220), 2, 6),
]


def square_frames(colour: tuple[int, int, int], step: int, t: int) -> list[np.ndarray]:
    frames = []
    for i in range(t):
        img = np.full((48, 64, 3), 30, np.uint8)
        x = 20 + step * i
        img[12:30, x:x + 18] = colour
        frames.append(img)
    return frames


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_segmentation(root: Path, reference: dict[str, bytes]) -> None:
    """The outputs under ``root`` hold the reference's files with the same masks up to float noise:
    processes with other thread counts may sum in another order and flip a pixel at the threshold."""
    import io as bytes_io

    from PIL import Image

    from ssa.io import decode_rle

    def png(data: bytes) -> np.ndarray:
        with Image.open(bytes_io.BytesIO(data)) as image:
            return np.asarray(image)

    got = tree(root)
    assert sorted(got) == sorted(reference)
    for name, data in got.items():
        if name.endswith(".png"):
            a, b = png(data), png(reference[name])
            assert a.shape == b.shape and (a == b).mean() > 0.999, name
        elif name == "expressions.json":
            a, b = json.loads(data), json.loads(reference[name])
            assert [(e["id"], e["expression"], e["frames"]) for e in a] == \
                [(e["id"], e["expression"], e["frames"]) for e in b]
            for ea, eb in zip(a, b, strict=True):
                assert np.allclose(ea["object_scores"], eb["object_scores"], atol=1e-3), name
        else:  # <i>.json: RLE masks
            a, b = json.loads(data), json.loads(reference[name])
            assert a["frames"] == b["frames"] and a["expression"] == b["expression"]
            assert np.allclose(a["object_scores"], b["object_scores"], atol=1e-3), name
            for ma, mb in zip(a["masks"], b["masks"], strict=True):
                assert (decode_rle(ma) == decode_rle(mb)).mean() > 0.999, name


def stats(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of ``root`` and everything under it: a rewrite changes them."""
    paths = [root, *sorted(root.rglob("*"))]
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {name: encode(root / f"{name}.mp4", square_frames(colour, step, t))
            for name, _, _, colour, step, t in VIDEOS}


@pytest.fixture(scope="module")
def references(tiny_checkpoint, videos, tmp_path_factory):
    """Each video segmented alone with `ssa segment VIDEO EXPR... --out`: the expected outputs."""
    root = tmp_path_factory.mktemp("single")
    out = {}
    for name, expressions, options, *_ in VIDEOS:
        exprs = [expressions] if isinstance(expressions, str) else expressions
        flags = [x for k, v in options.items() for x in (f"--{k.replace('_', '-')}", str(v))]
        rc = main(["segment", str(videos[name]), *exprs, "--model", str(tiny_checkpoint),
                   "--out", str(root / name), *COMMON, *flags])
        assert rc == 0
        out[name] = tree(root / name)
        assert "expressions.json" in out[name] and "0.json" in out[name]
    return out


def write_manifest(workdir: Path, videos: dict[str, Path], lines: list[dict] | None = None) -> Path:
    """A manifest in ``workdir/jobs`` with paths relative to it: videos in ../media, outputs in results/."""
    jobs, media = workdir / "jobs", workdir / "media"
    jobs.mkdir(parents=True, exist_ok=True)
    media.mkdir(exist_ok=True)
    for path in videos.values():
        if not (media / path.name).exists():
            shutil.copy(path, media / path.name)
    if lines is None:
        lines = [{"video": f"../media/{name}.mp4", "expressions": expressions, "output": f"results/{name}",
                  **options} for name, expressions, options, *_ in VIDEOS]
    manifest = jobs / "videos.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def run(manifest: Path, tiny_checkpoint: Path, *extra: str) -> int:
    return main(["segment", "--manifest", str(manifest), "--model", str(tiny_checkpoint), *COMMON, *extra])


def test_manifest_matches_single_video_runs(tiny_checkpoint, videos, references, tmp_path):
    manifest = write_manifest(tmp_path, videos)
    assert run(manifest, tiny_checkpoint) == 0
    results = manifest.parent / "results"
    for name, *_ in VIDEOS:
        assert tree(results / name) == references[name], name
    records = read_log(manifest.parent / "videos.progress.jsonl")  # the default log
    assert [(r["index"], r["rank"], r["status"], r["error"]) for r in records] == [
        (0, 0, "done", None), (1, 0, "done", None), (2, 0, "done", None)]
    assert [r["frames"] for r in records] == [8, 4, 5]  # all, stride 2, max_frames 5
    assert [r["output"] for r in records] == [str(results / name) for name, *_ in VIDEOS]
    assert [r["video"] for r in records] == [str(tmp_path / "media" / f"{name}.mp4") for name, *_ in VIDEOS]
    assert all(r["seconds"] > 0 and "T" in r["time"] for r in records)


def test_rerun_skips_finished_and_redoes_deleted(tiny_checkpoint, videos, references, tmp_path):
    manifest = write_manifest(tmp_path, videos)
    results = manifest.parent / "results"
    assert run(manifest, tiny_checkpoint, "--log", str(tmp_path / "first.jsonl")) == 0
    before = {name: stats(results / name) for name, *_ in VIDEOS}

    assert run(manifest, tiny_checkpoint, "--log", str(tmp_path / "second.jsonl")) == 0
    records = read_log(tmp_path / "second.jsonl")
    assert [(r["index"], r["status"]) for r in records] == [(0, "skipped"), (1, "skipped"), (2, "skipped")]
    assert [r["frames"] for r in records] == [8, 4, 5]  # from the finished outputs' expressions.json
    assert {name: stats(results / name) for name, *_ in VIDEOS} == before

    shutil.rmtree(results / "b")
    assert run(manifest, tiny_checkpoint, "--log", str(tmp_path / "third.jsonl")) == 0
    records = read_log(tmp_path / "third.jsonl")
    assert [(r["index"], r["status"]) for r in records] == [(0, "skipped"), (1, "done"), (2, "skipped")]
    assert tree(results / "b") == references["b"]
    assert stats(results / "a") == before["a"] and stats(results / "c") == before["c"]

    assert run(manifest, tiny_checkpoint, "--log", str(tmp_path / "fourth.jsonl"), "--overwrite") == 0
    assert {r["status"] for r in read_log(tmp_path / "fourth.jsonl")} == {"done"}
    assert stats(results / "a") != before["a"]
    assert tree(results / "a") == references["a"]


def test_bad_videos_fail_alone(tiny_checkpoint, videos, references, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    lines = [
        {"video": "../media/a.mp4", "expressions": VIDEOS[0][1], "output": "results/a"},
        {"video": "../media/corrupt.mp4", "expressions": "a square", "output": "results/corrupt"},
        {"video": "../media/missing.mp4", "expressions": "a square", "output": "results/missing"},
        {"video": "../media/c.mp4", "expressions": VIDEOS[2][1], "output": "results/c", "max_frames": 5},
    ]
    manifest = write_manifest(tmp_path, videos, lines)
    assert run(manifest, tiny_checkpoint) == 1
    records = read_log(manifest.parent / "videos.progress.jsonl")
    assert [r["status"] for r in records] == ["done", "failed", "failed", "done"]
    assert "corrupt.mp4" in records[1]["error"] and records[1]["error"].startswith("VideoDecodeError")
    assert "missing.mp4" in records[2]["error"] and records[2]["error"].startswith("FileNotFoundError")
    assert records[0]["error"] is None and records[1]["frames"] == 0
    results = manifest.parent / "results"
    assert not (results / "corrupt").exists() and not (results / "missing").exists()
    assert tree(results / "a") == references["a"] and tree(results / "c") == references["c"]
    assert "corrupt.mp4" in caplog.text
    assert "rank 0/1: 2 done, 0 skipped, 2 failed (of 4 entries)" in caplog.text
    assert not [p for p in results.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_foreign_output_folder_is_not_overwritten(tiny_checkpoint, videos, references, tmp_path):
    manifest = write_manifest(tmp_path, videos, [
        {"video": "../media/a.mp4", "expressions": VIDEOS[0][1], "output": "results/a"}])
    mine = manifest.parent / "results" / "a"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep")
    assert run(manifest, tiny_checkpoint) == 1
    [record] = read_log(manifest.parent / "videos.progress.jsonl")
    assert record["status"] == "failed"
    assert "not a finished output" in record["error"] and "overwrite" in record["error"]
    assert (mine / "notes.txt").read_text() == "keep"
    assert run(manifest, tiny_checkpoint, "--overwrite") == 1  # not ssa's folder: --overwrite keeps it too
    assert "notes.txt" in read_log(manifest.parent / "videos.progress.jsonl")[-1]["error"]
    assert (mine / "notes.txt").read_text() == "keep"
    (mine / "notes.txt").unlink()  # an empty folder is fine
    assert run(manifest, tiny_checkpoint) == 0
    assert tree(mine) == references["a"]


def test_sharding_follows_rank_environment(videos, tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path, videos)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    summary = segment_manifest(manifest, build("ssa-tiny"), device="cpu", progress=False, threshold=0.0)
    assert (summary.rank, summary.world_size, summary.done, summary.failed) == (1, 2, 1, 0)
    assert [r["index"] for r in summary.records] == [1]
    results = manifest.parent / "results"
    assert sorted(p.name for p in results.iterdir()) == ["b"]
    with pytest.raises(ValueError, match="rank"):
        segment_manifest(manifest, build("ssa-tiny"), rank=2, world_size=2, device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")  # a malformed torchrun variable is an error, not 1
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        segment_manifest(manifest, build("ssa-tiny"), device="cpu")
    from ssa.distributed import torchrun_group

    with pytest.raises(ValueError, match="WORLD_SIZE='two'"), torchrun_group():
        pass


GOOD = {"video": "v.mp4", "expressions": ["x"], "output": "o1"}


@pytest.mark.parametrize("bad, problem", [
    ('{"video": "v.mp4", "expressions": ["x"], "output": "o2"', "invalid JSON"),
    ('["v.mp4", "x", "o2"]', "expected a JSON object"),
    ('{"video": "v.mp4", "expressions": ["x"]}', "missing key(s) 'output'"),
    ('{"video": "v.mp4", "expressions": 5, "output": "o2"}', "'expressions' must be a string or a list"),
    ('{"video": "v.mp4", "expressions": [], "output": "o2"}', "'expressions' is an empty list"),
    ('{"video": "v.mp4", "expressions": ["x", " "], "output": "o2"}', "expression 1 is empty"),
    ('{"video": "v.mp4", "expressions": ["x", "\\u200b"], "output": "o2"}', "expression 1 is empty or has no "
     "visible"),
    ('{"video": "v.mp4", "expressions": "\\u0000", "output": "o2"}', "expression 0 is empty or has no "
     "visible"),
    ('{"video": 3, "expressions": "x", "output": "o2"}', "'video' must be a non-empty path"),
    ('{"video": "v.mp4", "expressions": "x", "output": "o2", "colour": 1}', "unknown key(s) 'colour'"),
    ('{"video": "v.mp4", "expressions": "x", "output": "o2", "stride": 0}', "'stride' must be an integer"),
    ('{"video": "v.mp4", "expressions": "x", "output": "o2", "fps": "6"}', "'fps' must be a number"),
    ('{"video": "v.mp4", "expressions": "x", "output": "./o1"}', "is also the output of line 1"),
    ('{"video": "v.mp4", "expressions": "x", "output": "o1/inner"}', "inside the output of line 1"),
])
def test_validation_names_the_line(bad, problem, tmp_path, caplog):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(GOOD) + "\n\n" + bad + "\n")  # the bad entry is on line 3
    with pytest.raises(ValueError) as info:
        read_manifest(manifest)
    assert "line 3: " in str(info.value) and problem in str(info.value)
    assert "line 1:" not in str(info.value)
    # the command line validates before loading any model or writing anything
    rc = main(["segment", "--manifest", str(manifest), "--model", str(tmp_path / "no_model"), *COMMON])
    assert rc == 2 and "line 3: " in caplog.text and problem in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


def test_valid_manifest_resolves_paths_against_its_folder(tmp_path):
    manifest = tmp_path / "jobs" / "m.jsonl"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps(GOOD) + "\n   \n" + json.dumps(
        {"video": "/data/w.mp4", "expressions": "a b", "output": "../out", "fps": 2.5, "end": 4}) + "\n")
    with pytest.raises(ValueError, match=r"line 3: output '../out' resolves to .*outside the manifest"):
        read_manifest(manifest)  # an output outside the manifest's folder must be asked for
    first, second = read_manifest(manifest, allow_outside=True)
    assert (first.index, first.line, second.index, second.line) == (0, 1, 1, 3)
    assert first.video == manifest.parent / "v.mp4" and first.output == manifest.parent / "o1"
    assert second.video == Path("/data/w.mp4") and second.output == tmp_path / "out"
    assert second.expressions == ["a b"] and second.options == {"fps": 2.5, "end": 4}


def test_command_line_needs_a_manifest_or_a_video(tiny_checkpoint, videos, tmp_path, caplog):
    manifest = write_manifest(tmp_path, videos)
    assert main(["segment", "--manifest", str(manifest), str(videos["a"]), "x", *COMMON]) == 2
    assert "not both" in caplog.text
    assert main(["segment", "--model", str(tiny_checkpoint), *COMMON]) == 2
    assert "--manifest" in caplog.text
    assert main(["segment", "--manifest", str(manifest), "--out", str(tmp_path / "o"), *COMMON]) == 2
    assert main(["segment", str(videos["a"]), "x", *COMMON]) == 2
    assert "--out" in caplog.text
    assert not (manifest.parent / "results").exists() and not (tmp_path / "o").exists()


def test_single_video_expressions_may_follow_options(tiny_checkpoint, videos, references, tmp_path):
    out = tmp_path / "out"
    rc = main(["segment", str(videos["a"]), "--model", str(tiny_checkpoint), *VIDEOS[0][1], "--out", str(out),
               *COMMON])
    assert rc == 0 and tree(out) == references["a"]


def test_torchrun_two_processes(tiny_checkpoint, videos, references, tmp_path):
    manifest = write_manifest(tmp_path, videos)
    log = tmp_path / "logs" / "progress.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ssa.cli", "segment", "--manifest", str(manifest), "--model", str(tiny_checkpoint),
           "--progress-log", str(log), *COMMON]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = manifest.parent / "results"
    for name, *_ in VIDEOS:
        assert_same_segmentation(results / name, references[name])
    records = read_log(log)
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    assert {r["rank"] for r in records} == {0, 1}
    assert all(r["rank"] == r["index"] % 2 and r["status"] == "done" for r in records)
    assert "rank 1/2: 1 done, 0 skipped, 0 failed" in proc.stderr


def test_entries_are_checked_before_the_model_is_loaded(tiny_checkpoint, videos, references, tmp_path,
                                                         monkeypatch):
    """Issue 23: every entry's output (and video) is checked before the model is loaded; a run with nothing
    left to do (finished, foreign or missing) never loads it. Instrumented, not timed."""
    import ssa.manifest

    loads = []
    real_loader = ssa.manifest._load_pipeline

    def recording_loader(*args, **kwargs):
        loads.append(args[0])
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(ssa.manifest, "_load_pipeline", recording_loader)
    manifest = write_manifest(tmp_path, videos, [
        {"video": "../media/a.mp4", "expressions": VIDEOS[0][1], "output": "results/a"},
        {"video": "../media/missing.mp4", "expressions": "a square", "output": "results/missing"},
        {"video": "../media/c.mp4", "expressions": VIDEOS[2][1], "output": "results/c", "max_frames": 5}])
    foreign = manifest.parent / "results" / "c"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("keep")
    results = manifest.parent / "results"
    # a/ finished by an earlier run: skipped; missing video and foreign folder: failed -> no model needed
    (results / "a").mkdir()
    for name, data in references["a"].items():
        (results / "a" / name).parent.mkdir(parents=True, exist_ok=True)
        (results / "a" / name).write_bytes(data)
    summary = segment_manifest(manifest, str(tiny_checkpoint), progress=False, device="cpu")
    assert loads == []
    assert [r["status"] for r in summary.records] == ["skipped", "failed", "failed"]
    assert "missing.mp4" in summary.records[1]["error"] and "notes.txt" not in summary.records[1]["error"]
    assert "not a finished output" in summary.records[2]["error"]
    assert (foreign / "notes.txt").read_text() == "keep"
    # one entry left to run: the model is loaded once, after the checks
    (foreign / "notes.txt").unlink()
    summary = segment_manifest(manifest, str(tiny_checkpoint), progress=False, device="cpu", threshold=0)
    assert loads == [str(tiny_checkpoint)]
    assert [r["status"] for r in summary.records] == ["skipped", "failed", "done"]
    assert tree(results / "c") == references["c"]
