"""The `ssa` command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from media import encode

from ssa.cli import build_parser, main
from ssa.io import decode_rle, read_palette_png


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    frames = []
    for i in range(8):
        img = np.full((48, 64, 3), 30, np.uint8)
        img[10:30, 4 + 4 * i:24 + 4 * i] = (200, 50, 50)
        frames.append(img)
    return encode(tmp_path_factory.mktemp("vid") / "v.mp4", frames)


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--out", "--overlay", "--device", "--fp16", "--bf16", "--fps", "--mode",
                 "--stride", "--start", "--end", "--max-frames", "--threshold", "--overwrite"):
        assert flag in out, flag
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "segment" in capsys.readouterr().out


def test_segment_writes_pngs_rle_and_overlay(tiny_checkpoint, video, tmp_path):
    out = tmp_path / "out"
    rc = main(["segment", str(video), "the red square", "the background", "--model", str(tiny_checkpoint),
               "--out", str(out), "--overlay", str(tmp_path / "ov.mp4"), "--device", "cpu",
               "--threshold", "0", "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "expressions.json").read_text())
    assert [s["expression"] for s in summary] == ["the red square", "the background"]
    for i in range(2):
        rle = json.loads((out / f"{i}.json").read_text())
        assert len(rle["masks"]) == 8
        for t, name in enumerate(rle["frames"]):
            png = read_palette_png(out / str(i) / f"{name}.png")
            assert png.shape == (48, 64)
            assert np.array_equal(png > 0, decode_rle(rle["masks"][t]))
        with av.open(str(tmp_path / f"ov_{i}.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == 8


def test_segment_refuses_to_overwrite(tiny_checkpoint, video, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    rc = main(["segment", str(video), "a square", "--model", str(tiny_checkpoint), "--out", str(out),
               "--device", "cpu", "--no-progress"])
    assert rc == 2 and "overwrite" in caplog.text
    assert (out / "mine.txt").read_text() == "keep"


def test_segment_missing_model_and_video(tiny_checkpoint, video, tmp_path, caplog):
    rc = main(["segment", str(tmp_path / "none.mp4"), "a square", "--model", str(tiny_checkpoint),
               "--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"])
    assert rc == 2 and "none.mp4" in caplog.text
    rc = main(["segment", str(video), "a square", "--model", str(tmp_path / "no_model"),
               "--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"])
    assert rc == 2 and "no_model" in caplog.text
    assert not (tmp_path / "o").exists()


# -- issue 23: a newcomer's first hour ------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          **kwargs)


def test_cli_import_and_help_leave_torch_out():
    """`ssa --help`, `--version` and argument parsing need neither torch nor open_clip nor PyAV (5.5 s of
    imports before this issue)."""
    proc = _python(
        "import sys, contextlib, io\n"
        "import ssa.cli\n"
        "heavy = [m for m in ('torch', 'open_clip', 'av', 'torchvision') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "for argv in (['--help'], ['segment', '--help'], ['convert', '--help'], ['--version']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        ssa.cli.main(argv)\n"
        "heavy = [m for m in ('torch', 'open_clip', 'av', 'torchvision') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import ssa\n"
        "assert 'torch' not in sys.modules\n"
        "from ssa import SSAPipeline, SSAConfig, PRESETS, convert_official, __version__\n"
        "assert 'torch' in sys.modules and SSAPipeline.__name__ == 'SSAPipeline'\n")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_version(capsys):
    import ssa

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ssa {ssa.__version__}"


def test_every_option_has_help_and_the_demo_model_is_named(capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"ssa {name} {action.option_strings or action.dest}: no help text"
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "synthetic" in text and "ssa convert model_final.pth" in text  # what the default model is
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "ssa convert model_final.pth" in " ".join(capsys.readouterr().out.split())


def test_convert_dataset_choices_match_the_converter():
    from ssa import hub
    from ssa.cli import _OFFICIAL_DATASETS, DEMO_MODEL
    from ssa.official import OFFICIAL_DATASETS

    assert tuple(sorted(OFFICIAL_DATASETS)) == _OFFICIAL_DATASETS
    assert DEMO_MODEL == hub.DEFAULT_MODEL


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any model loading fails the test: the checks must come first (no timing involved)."""
    from ssa import hub
    from ssa.pipeline import SSAPipeline

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(SSAPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: refuse(*a, **k)))
    monkeypatch.setattr(hub, "load_pretrained", refuse)
    return calls


def test_every_output_is_checked_before_the_model_is_loaded(video, tmp_path, caplog, no_model_loading):
    """Issue 23: `--out` non-empty, `--out` a file, `--overlay` existing or inside `--out`, a missing video
    or model folder: refused before any decoding or model loading, with CLI flags in the message, and
    nothing written."""
    common = ["--device", "cpu", "--no-progress"]
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    overlay = tmp_path / "ov.mp4"
    overlay.write_bytes(b"keep")
    cases = [
        (["--out", str(full)], "--overwrite"),
        (["--out", str(a_file)], "not a directory"),
        (["--out", str(tmp_path / "o1"), "--overlay", str(overlay)], "--overwrite"),
        (["--out", str(tmp_path / "o2"), "--overlay", str(tmp_path / "o2" / "ov.mp4")], "inside --out"),
        (["--out", str(tmp_path / "o3"), "--model", str(tmp_path / "no_model")], "no_model"),
    ]
    for extra, message in cases:
        caplog.clear()
        rc = main(["segment", str(video), "a square", *extra, *common])
        assert rc == 2 and message in caplog.text, (extra, caplog.text)
        assert "overwrite=True" not in caplog.text
    caplog.clear()
    rc = main(["segment", str(tmp_path / "none.mp4"), "a square", "--out", str(tmp_path / "o4"), *common])
    assert rc == 2 and "none.mp4" in caplog.text
    assert no_model_loading == []
    assert (full / "mine.txt").read_text() == "keep" and a_file.read_text() == "keep"
    assert overlay.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "full", "ov.mp4"]


def test_output_check_fails_without_importing_torch(video, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    proc = _python(
        "import sys\n"
        "from ssa.cli import main\n"
        f"rc = main(['segment', {str(video)!r}, 'a square', '--out', {str(out)!r}, '--no-progress'])\n"
        "assert 'torch' not in sys.modules\n"
        "sys.exit(rc)\n")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--overwrite" in proc.stderr and "Traceback" not in proc.stderr


def test_a_run_writes_all_its_outputs_or_none(tiny_checkpoint, video, tmp_path, monkeypatch, caplog):
    """The overlay is the last output made; if it fails, the masks must not be left behind either."""
    from ssa.pipeline import RVOSResult

    def failing_overlay(self, path, **kwargs):
        Path(path).write_bytes(b"half an overlay")
        raise OSError("No space left on device")

    monkeypatch.setattr(RVOSResult, "save_overlay", failing_overlay)
    out, overlay = tmp_path / "deep" / "out", tmp_path / "videos" / "ov.mp4"
    rc = main(["segment", str(video), "a square", "--model", str(tiny_checkpoint), "--out", str(out),
               "--overlay", str(overlay), "--device", "cpu", "--no-progress"])
    assert rc == 2 and "No space left" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no masks, no overlay, no temporary file, no folder made


def test_the_default_model_warns_once_and_the_cli_logs_one_line(video, tmp_path, caplog, monkeypatch):
    from ssa import hub

    monkeypatch.setattr(hub, "_demo_warned", False)
    rc = main(["segment", str(video), "a square", "--out", str(tmp_path / "o"), "--device", "cpu",
               "--no-progress"])
    assert rc == 0
    lines = [r for r in caplog.records if r.levelname == "WARNING" and "ssa-tiny-synthetic" in r.getMessage()]
    assert len(lines) == 1
    message = lines[0].getMessage()
    assert "\n" not in message and "synthetic" in message
    assert "ssa convert model_final.pth --out DIR" in message


def test_ctrl_c_one_line_exit_130_no_partial_output(tmp_path):
    """SIGINT while segmenting: a one-line message (no traceback), exit code 130, no output folder, no
    overlay and no temporary file."""
    frames = []
    for i in range(240):
        img = np.full((96, 128, 3), 30, np.uint8)
        img[20:50, i % 100:i % 100 + 24] = (200, 50, 50)
        frames.append(img)
    clip = encode(tmp_path / "long.mp4", frames)
    out, overlay = tmp_path / "out", tmp_path / "ov.mp4"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssa.cli", "segment", str(clip), "the red square", "--out", str(out),
         "--overlay", str(overlay), "--device", "cpu", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    try:
        for line in proc.stderr:  # wait until it is working on the video
            lines.append(line)
            if "segmenting" in line:
                break
        else:
            pytest.fail("ssa segment ended before segmenting: " + "".join(lines)[-2000:])
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    assert rest.strip().splitlines()[-1] == "ERROR ssa: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4"]
