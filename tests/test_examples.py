"""The examples (issue 23): the bundled model by default, outputs checked before the model is loaded,
--overwrite, errors as one-line messages; and benchmarks/param_count.py's documented flags."""

from __future__ import annotations

import runpy
import tempfile
from pathlib import Path

import numpy as np
import pytest
from media import encode

from ssa import SSAPipeline

ROOT = Path(__file__).resolve().parents[1]


def example(name: str):
    return runpy.run_path(str(ROOT / "examples" / f"{name}.py"))["main"]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    frames = []
    for i in range(6):
        img = np.full((48, 64, 3), 30, np.uint8)
        img[10:30, 4 + 4 * i:24 + 4 * i] = (200, 50, 50)
        frames.append(img)
    return encode(tmp_path_factory.mktemp("vid") / "v.mp4", frames)


@pytest.fixture
def loads(monkeypatch):
    """Records every model loading (the real one still runs)."""
    calls = []
    real = SSAPipeline.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        calls.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(SSAPipeline, "from_pretrained", classmethod(recording))
    return calls


@pytest.mark.parametrize("name, args, outputs", [
    ("segment_video", ["the red square"], ["masks", "overlay.mp4"]),
    ("multi_expression", ["the red square", "the background"], ["expression_0.json", "expression_1.json"]),
])
def test_example_defaults_rerun_and_overwrite(name, args, outputs, video, tmp_path, loads, capsys):
    main = example(name)
    out = tmp_path / "out"
    assert main([str(video), *args, "--out", str(out)]) == 0  # no --model: the bundled demo model
    assert sorted(p.name for p in out.iterdir()) == outputs and len(loads) == 1
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    capsys.readouterr()
    assert main([str(video), *args, "--out", str(out)]) == 2  # rerun: a message, not a traceback
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert len(loads) == 1  # refused before the model was loaded
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert main([str(video), *args, "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == outputs
    (out / "notes.txt").write_text("mine")  # not written by the example: --overwrite keeps it
    assert main([str(video), *args, "--out", str(out), "--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
    assert main([str(tmp_path / "none.mp4"), *args, "--out", str(tmp_path / "o2")]) == 2
    assert "none.mp4" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    assert len(loads) == 2


def test_quickstart_writes_outside_the_working_folder(tmp_path, monkeypatch, capsys, loads):
    """By default the quick start writes into a new temporary folder, never into the current folder (it
    wrote an untracked ssa-quickstart/ into the repository)."""
    work, temp = tmp_path / "repo", tmp_path / "temp"
    work.mkdir()
    temp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    main = example("quickstart")
    assert main([]) == 0
    assert list(work.iterdir()) == []
    [out] = temp.iterdir()
    assert out.name.startswith("ssa-quickstart-") and (out / "video.mp4").is_file()
    assert f"wrote {out}" in capsys.readouterr().out
    assert main(["--out", str(out)]) == 2 and "--overwrite" in capsys.readouterr().err
    assert len(loads) == 1


def test_param_count_no_adapter_flag(capsys):
    main = runpy.run_path(str(ROOT / "benchmarks" / "param_count.py"))["main"]
    main(["--preset", "ssa-tiny", "--no-adapter"])
    out = capsys.readouterr().out
    assert "use_adapter=False" in out and "use_adapter=True" not in out
    main(["--preset", "ssa-tiny"])
    out = capsys.readouterr().out
    assert "use_adapter=True" in out and "use_adapter=False" in out
