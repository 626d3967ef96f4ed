"""The `ssa` command line."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from media import encode

from ssa.cli import main
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
