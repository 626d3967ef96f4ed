"""The evaluation runner (ssa.eval.evaluate), submission files and `ssa evaluate`."""

from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build
from PIL import Image

from ssa.cli import main
from ssa.data import MeViSDataset
from ssa.eval import (
    CSV_COLUMNS,
    evaluate,
    jf,
    read_prediction,
    write_prediction,
    zip_submission,
)
from ssa.io import encode_rle

evaluate_module = importlib.import_module("ssa.eval.evaluate")  # `ssa.eval.evaluate` is the function


# -- a small MeViS-layout split -----------------------------------------------------------------------
def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _make_split(root: Path, with_masks: bool = True) -> Path:
    """Three videos, five expressions; GT-empty frames: vid_b/0 frame 1 (null RLE), vid_c/0 frame 0
    (an all-zero RLE); vid_a/1 is the union of two objects, one of them absent (null) in frame 2."""
    rng = np.random.default_rng(0)
    videos = {
        "vid_a": (4, 24, 32),
        "vid_b": (3, 20, 28),
        "vid_c": (2, 16, 16),
    }
    masks: dict[int, list] = {}

    def track(anno: int, frames: list[np.ndarray | None]) -> None:
        masks[anno] = [None if m is None else encode_rle(m) for m in frames]

    t, h, w = videos["vid_a"]
    track(1, [_box(h, w, 4, 12, 2 + 3 * i, 10 + 3 * i) for i in range(t)])
    track(2, [_box(h, w, 14, 22, 18, 26 - i) for i in range(t)])
    track(3, [None if i == 2 else _box(h, w, 2, 8, 20 + i, 28) for i in range(t)])
    t, h, w = videos["vid_b"]
    track(4, [_box(h, w, 3, 9, 3, 9), None, _box(h, w, 5, 12, 6, 14)])
    track(5, [_box(h, w, 10, 18, 12 + 2 * i, 22 + 2 * i) for i in range(t)])
    t, h, w = videos["vid_c"]
    track(6, [np.zeros((h, w), dtype=bool), _box(h, w, 4, 11, 5, 12)])

    meta = {
        "vid_a": {"0": ("the box moving right", [1]), "1": ("the two boxes on the right", [2, 3])},
        "vid_b": {"0": ("the box that disappears", [4]), "1": ("the long box", [5])},
        "vid_c": {"0": ("the box appearing", [6])},
    }
    meta_json: dict = {"videos": {}}
    for video, (t, h, w) in videos.items():
        names = [f"{i:05d}" for i in range(t)]
        folder = root / "JPEGImages" / video
        folder.mkdir(parents=True)
        for name in names:
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(image).save(folder / f"{name}.jpg", quality=90)
        meta_json["videos"][video] = {
            "frames": names,
            "expressions": {
                exp_id: {"exp": text, "obj_id": list(annos), "anno_id": list(annos)}
                for exp_id, (text, annos) in meta[video].items()
            },
        }
    (root / "meta_expressions.json").write_text(json.dumps(meta_json))
    if with_masks:
        (root / "mask_dict.json").write_text(json.dumps({str(k): v for k, v in masks.items()}))
    return root


# fraction of GT-empty frames per expression, in dataset order (a/0, a/1, b/0, b/1, c/0)
EMPTY_FRACTIONS = [0.0, 0.0, 1 / 3, 0.0, 1 / 2]


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return _make_split(tmp_path_factory.mktemp("mevis") / "valid_u")


def _write_predictions(split: Path, root: Path, transform=lambda gt: gt) -> Path:
    dataset = MeViSDataset(split)
    for index, (video, exp_id, _) in enumerate(dataset.expressions()):
        gt = dataset.load_masks(index)[0].any(axis=0)  # (T, H, W)
        write_prediction(root, video, exp_id, dataset.frame_names(video), transform(gt))
    return root


@pytest.fixture(scope="module")
def gt_predictions(split, tmp_path_factory) -> Path:
    return _write_predictions(split, tmp_path_factory.mktemp("pred") / "gt")


def _shift(gt: np.ndarray) -> np.ndarray:
    return np.roll(gt, 3, axis=2)


# -- scores ---------------------------------------------------------------------------------------------
def test_ground_truth_as_predictions_scores_one(split, gt_predictions):
    summary = evaluate(gt_predictions, split, progress=False)
    assert summary["J&F"] == 1.0 and summary["J"] == 1.0 and summary["F"] == 1.0
    assert (summary["videos"], summary["expressions"], summary["frames"]) == (3, 5, 9)
    assert [(r.video, r.exp_id) for r in summary.rows] == [
        ("vid_a", "0"), ("vid_a", "1"), ("vid_b", "0"), ("vid_b", "1"), ("vid_c", "0")
    ]
    assert [r.num_frames for r in summary.rows] == [4, 4, 3, 3, 2]


def test_empty_predictions_follow_the_empty_rules(split, tmp_path):
    preds = _write_predictions(split, tmp_path / "empty", lambda gt: np.zeros_like(gt))
    summary = evaluate(preds, split, progress=False)
    # both empty → J = F = 1; prediction empty, GT not → J = F = 0
    assert [r.j for r in summary.rows] == pytest.approx(EMPTY_FRACTIONS, abs=1e-12)
    assert [r.f for r in summary.rows] == pytest.approx(EMPTY_FRACTIONS, abs=1e-12)
    expected = (0 + 0 + 1 / 3 + 0 + 1 / 2) / 5
    for key in ("J", "F", "J&F"):
        assert summary[key] == pytest.approx(expected, abs=1e-12)


def test_shifted_predictions_score_below_one(split, tmp_path):
    preds = _write_predictions(split, tmp_path / "shifted", _shift)
    summary = evaluate(preds, split, progress=False)
    assert 0.0 < summary["J&F"] < 1.0
    dataset = MeViSDataset(split)
    for index, row in enumerate(summary.rows):
        gt = dataset.load_masks(index)[0].any(axis=0)
        assert row.jf == pytest.approx(jf(gt, _shift(gt))["J&F"], abs=1e-12)
        assert row.j < 1.0


def test_writes_csv_and_summary_json(split, tmp_path):
    preds = _write_predictions(split, tmp_path / "shifted", _shift)
    out = tmp_path / "eval"
    summary = evaluate(preds, split, out_dir=out, progress=False)
    with open(out / "per_expression.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert [(r["video"], r["exp_id"]) for r in rows] == [(s.video, s.exp_id) for s in summary.rows]
    assert rows[1]["expression"] == "the two boxes on the right"
    assert [int(r["num_frames"]) for r in rows] == [4, 4, 3, 3, 2]
    for r, s in zip(rows, summary.rows, strict=True):
        assert (float(r["J"]), float(r["F"]), float(r["J&F"])) == (s.j, s.f, s.jf)  # full precision
    assert np.mean([float(r["J&F"]) for r in rows]) == pytest.approx(summary["J&F"], abs=1e-12)
    on_disk = json.loads((out / "summary.json").read_text())
    assert set(on_disk) == {"J", "F", "J&F", "videos", "expressions", "frames"}
    assert on_disk == dict(summary)
    assert all(0.0 <= on_disk[k] <= 1.0 for k in ("J", "F", "J&F"))
    assert not (out / ".partial").exists()  # progress records go once the run completes


# -- errors ---------------------------------------------------------------------------------------------
def test_missing_prediction_names_video_and_expression(split, tmp_path):
    preds = _write_predictions(split, tmp_path / "p")
    (preds / "vid_b" / "1" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"vid_b.*'1'.*00002"):
        evaluate(preds, split, progress=False)
    for png in (preds / "vid_b" / "1").iterdir():
        png.unlink()
    (preds / "vid_b" / "1").rmdir()
    with pytest.raises(FileNotFoundError, match=r"vid_b.*expression '1'"):
        evaluate(preds, split, progress=False)


def test_prediction_of_the_wrong_size(split, tmp_path):
    preds = _write_predictions(split, tmp_path / "p")
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(preds / "vid_c" / "0" / "00001.png")
    with pytest.raises(ValueError, match=r"vid_c.*00001.*5x7.*16x16"):
        evaluate(preds, split, progress=False)


def test_bad_splits(split, gt_predictions, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        evaluate(gt_predictions, tmp_path / "nowhere", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a MeViS-layout split"):
        evaluate(gt_predictions, tmp_path / "empty", progress=False)
    no_gt = _make_split(tmp_path / "valid", with_masks=False)
    with pytest.raises(ValueError, match="no ground truth.*mask_dict.json"):
        evaluate(gt_predictions, no_gt, progress=False)
    with pytest.raises(FileNotFoundError, match="not a predictions folder"):
        evaluate(tmp_path / "no_predictions_here", split, progress=False)


# -- resumption, processes, ranks -----------------------------------------------------------------------
def test_resume_skips_finished_videos(split, tmp_path, monkeypatch):
    preds = _write_predictions(split, tmp_path / "shifted", _shift)
    reference = evaluate(preds, split, progress=False)
    real = evaluate_module._evaluate_video
    calls: list[str] = []

    def interrupted(ctx, video):
        if video == "vid_b":
            raise KeyboardInterrupt  # as if the run were stopped here
        calls.append(video)
        return real(ctx, video)

    out = tmp_path / "eval"
    monkeypatch.setattr(evaluate_module, "_evaluate_video", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(preds, split, out_dir=out, progress=False)
    assert calls == ["vid_a"]
    assert sorted(p.name for p in (out / ".partial").iterdir()) == ["vid_a.json"]
    assert not (out / "summary.json").exists()

    def counted(ctx, video):
        calls.append(video)
        return real(ctx, video)

    monkeypatch.setattr(evaluate_module, "_evaluate_video", counted)
    calls.clear()
    summary = evaluate(preds, split, out_dir=out, progress=False)
    assert calls == ["vid_b", "vid_c"]  # vid_a was not scored again
    assert dict(summary) == dict(reference) and summary.rows == reference.rows
    assert json.loads((out / "summary.json").read_text()) == dict(reference)

    # a completed run leaves no records: the next one scores everything
    calls.clear()
    evaluate(preds, split, out_dir=out, progress=False)
    assert calls == ["vid_a", "vid_b", "vid_c"]


def _interrupt_at(monkeypatch, video: str) -> None:
    """The next evaluation stops (as if killed) when it reaches ``video``, after recording the others."""
    real = evaluate_module._evaluate_video

    def interrupted(ctx, v):
        if v == video:
            raise KeyboardInterrupt
        return real(ctx, v)

    monkeypatch.setattr(evaluate_module, "_evaluate_video", interrupted)


def _rows(summary) -> list[tuple]:
    return [(r.video, r.exp_id, r.j, r.f) for r in summary.rows]


def test_resume_refuses_the_records_of_another_model(split, tmp_path, monkeypatch):
    """The model folder is replaced between the kill and the rerun: its records are not the new model's."""
    checkpoint = tmp_path / "model"
    build("ssa-tiny", seed=0).save_pretrained(checkpoint)
    out = tmp_path / "eval"
    with monkeypatch.context() as m:
        _interrupt_at(m, "vid_b")
        with pytest.raises(KeyboardInterrupt):
            evaluate(str(checkpoint), split, out_dir=out, progress=False, device="cpu", threshold=0.0)
    assert sorted(p.name for p in (out / ".partial").iterdir()) == ["vid_a.json"]
    build("ssa-tiny", seed=1).save_pretrained(checkpoint, overwrite=True)
    # was: vid_a's scores of the first model in the summary of the second
    with pytest.raises(ValueError, match=r"in: model \(its config or weights\).*resume=False"):
        evaluate(str(checkpoint), split, out_dir=out, progress=False, device="cpu", threshold=0.0)
    again = evaluate(str(checkpoint), split, out_dir=out, progress=False, device="cpu", threshold=0.0,
                     resume=False)
    fresh = evaluate(str(checkpoint), split, progress=False, device="cpu", threshold=0.0)
    assert _rows(again) == _rows(fresh) and dict(again) == dict(fresh)


def test_resume_refuses_records_of_other_options(split, tmp_path, monkeypatch):
    from ssa import SSAPipeline

    pipe = SSAPipeline(build("ssa-tiny"), device="cpu")
    out = tmp_path / "eval"
    with monkeypatch.context() as m:
        _interrupt_at(m, "vid_c")
        with pytest.raises(KeyboardInterrupt):
            evaluate(pipe, split, out_dir=out, progress=False, threshold=0.0)
    # was: the records silently scored again
    with pytest.raises(ValueError, match=r"in: options \(threshold 0\.0 -> 0\.3\)"):
        evaluate(pipe, split, out_dir=out, progress=False, threshold=0.3)
    with pytest.raises(ValueError, match=r"mode 'multi' -> 'single'"):
        evaluate(pipe, split, out_dir=out, progress=False, threshold=0.0, mode="single")
    calls: list[str] = []
    real = evaluate_module._evaluate_video
    monkeypatch.setattr(evaluate_module, "_evaluate_video", lambda c, v: calls.append(v) or real(c, v))
    evaluate(pipe, split, out_dir=out, progress=False, threshold=0.0)  # the same options: resumed
    assert calls == ["vid_c"]


def test_resume_refuses_records_of_changed_data_or_predictions(split, tmp_path, monkeypatch):
    data = tmp_path / "split"
    shutil.copytree(split, data)
    preds = _write_predictions(data, tmp_path / "shifted", _shift)
    out = tmp_path / "eval"
    with monkeypatch.context() as m:
        _interrupt_at(m, "vid_b")
        with pytest.raises(KeyboardInterrupt):
            evaluate(preds, data, out_dir=out, progress=False)
    meta = json.loads((data / "meta_expressions.json").read_text())
    meta["videos"]["vid_a"]["expressions"]["0"]["anno_id"] = [2]  # the same ids, another object
    (data / "meta_expressions.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"in: data"):  # was: vid_a's scores against the old object
        evaluate(preds, data, out_dir=out, progress=False)
    (data / "meta_expressions.json").write_text(json.dumps(json.loads((split / "meta_expressions.json")
                                                                      .read_text())))
    png = next((preds / "vid_a" / "0").iterdir())
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(png)  # another prediction for vid_a
    with pytest.raises(ValueError, match=r"in: predictions"):
        evaluate(preds, data, out_dir=out, progress=False)
    assert evaluate(preds, data, out_dir=out, progress=False, resume=False)["expressions"] == 5


def test_unreadable_records_and_resume_false_score_again(split, gt_predictions, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    (out / ".partial").mkdir(parents=True)
    (out / ".partial" / "vid_a.json").write_text('{"video": "vid_a", "fingerp')  # cut by a kill
    calls: list[str] = []
    real = evaluate_module._evaluate_video
    monkeypatch.setattr(evaluate_module, "_evaluate_video", lambda c, v: calls.append(v) or real(c, v))
    assert evaluate(gt_predictions, split, out_dir=out, progress=False)["J&F"] == 1.0
    assert calls == ["vid_a", "vid_b", "vid_c"]  # an unreadable record is not trusted
    evaluate_module._write_record(out, "vid_a", {"split": "elsewhere", "source": "x"}, [])
    with pytest.raises(ValueError, match="earlier ssa version"):
        evaluate(gt_predictions, split, out_dir=out, progress=False)
    calls.clear()
    assert evaluate(gt_predictions, split, out_dir=out, progress=False, resume=False)["J&F"] == 1.0
    assert calls == ["vid_a", "vid_b", "vid_c"]


def test_model_fingerprint_follows_config_and_weights():
    from ssa.fingerprint import fingerprint, model_fingerprint

    a, b = build("ssa-tiny", seed=0), build("ssa-tiny", seed=0)
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        next(p for n, p in b.named_parameters() if n.startswith("video_decoder.")).view(-1)[0] += 1e-6
    assert model_fingerprint(a) != model_fingerprint(b)
    b.load_state_dict(a.state_dict())
    b.config = dataclasses.replace(b.config, threshold=0.3)
    assert model_fingerprint(a) != model_fingerprint(b)
    assert fingerprint([1, "a"]) != fingerprint(["1", "a"]) != fingerprint({"1": "a"})
    assert fingerprint(torch.zeros(2)) != fingerprint(torch.zeros(2, dtype=torch.float64))
    assert fingerprint(torch.zeros(2, 3)) != fingerprint(torch.zeros(3, 2))


def test_a_rerun_removes_the_temporaries_of_killed_writes(split, gt_predictions, tmp_path, caplog):
    import subprocess

    from ssa.io import files as ssa_io

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    tag = f"p{proc.pid}h{ssa_io._host_tag()}"
    out = tmp_path / "eval"
    left = [out / ".partial" / f".vid_a.json.tmp-{tag}_ab12cd34.tmp", out / f".summary.json.tmp-{tag}_x.tmp",
            out / f".per_video.csv.tmp-{tag}_ab12cd34.tmp"]  # the last of a target this run does not write
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{")
    with caplog.at_level("INFO", logger="ssa"):
        evaluate(gt_predictions, split, out_dir=out, progress=False)
    assert not any(p.exists() for p in left)
    assert all(f"removed {p}" in caplog.text for p in left)


def test_workers_match_in_process(split, tmp_path):
    preds = _write_predictions(split, tmp_path / "shifted", _shift)
    serial = evaluate(preds, split, out_dir=tmp_path / "serial", workers=0, progress=False)
    pooled = evaluate(preds, split, out_dir=tmp_path / "pooled", workers=2, progress=False)
    assert dict(pooled) == dict(serial) and pooled.rows == serial.rows
    for name in ("summary.json", "per_expression.csv"):
        assert (tmp_path / "pooled" / name).read_bytes() == (tmp_path / "serial" / name).read_bytes()


def test_torchrun_two_ranks_match_single_process(split, tmp_path):
    preds = _write_predictions(split, tmp_path / "shifted", _shift)
    single = tmp_path / "single"
    assert main(["evaluate", "--data", str(split), "--predictions", str(preds), "--out", str(single),
                 "--no-progress"]) == 0
    ranks = tmp_path / "ranks"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ssa.cli", "evaluate", "--data", str(split), "--predictions", str(preds),
         "--out", str(ranks), "--no-progress", "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("summary.json", "per_expression.csv"):
        assert (ranks / name).read_bytes() == (single / name).read_bytes(), name
    printed = json.loads(proc.stdout)  # rank 0 only prints the summary
    assert printed == json.loads((single / "summary.json").read_text())
    assert "over 2 ranks" in proc.stderr


# -- a model --------------------------------------------------------------------------------------------
def test_model_end_to_end_writes_predictions(split, tmp_path):
    from ssa import SSAPipeline

    pipe = SSAPipeline(build("ssa-tiny"), device="cpu")
    out = tmp_path / "eval"
    summary = evaluate(pipe, split, out_dir=out, progress=False, threshold=0.0)
    assert 0.0 <= summary["J&F"] <= 1.0 and summary["expressions"] == 5
    dataset = MeViSDataset(split)
    for video, exp_id, _ in dataset.expressions():
        folder = out / "predictions" / video / exp_id
        names = dataset.frame_names(video)
        assert sorted(p.name for p in folder.iterdir()) == [f"{n}.png" for n in names]
        with Image.open(folder / f"{names[0]}.png") as image:
            assert image.mode == "L"
            assert set(np.unique(np.asarray(image))) <= {0, 255}
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["vid_a", "vid_b", "vid_c"]
    # the written predictions score exactly as the model did
    again = evaluate(out / "predictions", split, progress=False)
    assert dict(again) == dict(summary) and again.rows == summary.rows


def test_model_sources_are_told_apart(tmp_path, gt_predictions):
    checkpoint = tmp_path / "ckpt"
    build("ssa-tiny").save_pretrained(checkpoint)
    pred_dir, pipe, _ = evaluate_module._resolve(str(checkpoint), "cpu", None)
    assert pred_dir is None and pipe is not None and pipe.config.preset == "ssa-tiny"
    pred_dir, pipe, _ = evaluate_module._resolve(gt_predictions, "cpu", None)
    assert pred_dir == gt_predictions.resolve() and pipe is None
    with pytest.raises(TypeError):
        evaluate_module._resolve(3, "cpu", None)


# -- submission files -----------------------------------------------------------------------------------
def test_write_and_read_prediction(tmp_path):
    masks = np.zeros((2, 6, 8), dtype=bool)  # (T, H, W)
    masks[0, 1:3, 2:5] = True
    folder = write_prediction(tmp_path, "v", "3", ["f0", "f1"], masks)
    assert folder == tmp_path / "v" / "3"
    with Image.open(folder / "f0.png") as image:
        assert image.mode == "L" and image.getextrema() == (0, 255)
    assert np.array_equal(read_prediction(tmp_path, "v", "3", ["f0", "f1"]), masks)
    with pytest.raises(FileExistsError):
        write_prediction(tmp_path, "v", "3", ["f0", "f1"], ~masks)
    assert np.array_equal(read_prediction(tmp_path, "v", "3", ["f0", "f1"]), masks)  # untouched
    write_prediction(tmp_path, "v", "3", ["f0", "f1"], ~masks, overwrite=True)
    assert np.array_equal(read_prediction(tmp_path, "v", "3", ["f0", "f1"]), ~masks)
    with pytest.raises(ValueError, match="6x8"):
        read_prediction(tmp_path, "v", "3", ["f0", "f1"], size=(6, 9))
    with pytest.raises(FileNotFoundError, match=r"'v'.*'3'.*'f2'"):
        read_prediction(tmp_path, "v", "3", ["f0", "f2"])
    with pytest.raises(ValueError, match="2 masks for 3 frame names"):
        write_prediction(tmp_path, "w", "0", ["a", "b", "c"], masks)
    with pytest.raises(ValueError, match="cannot be used"):
        write_prediction(tmp_path, "../x", "0", ["a", "b"], masks)


def test_palette_predictions_read_as_nonzero(tmp_path):
    from ssa.io import write_palette_png

    labels = np.array([[0, 1], [2, 0]], dtype=np.uint8)
    write_palette_png(tmp_path / "v" / "0" / "a.png", labels)
    assert np.array_equal(read_prediction(tmp_path, "v", "0", ["a"])[0], labels > 0)


def test_zip_submission(split, tmp_path):
    gt_predictions = _write_predictions(split, tmp_path / "p")
    (gt_predictions / ".hidden").mkdir(exist_ok=True)
    (gt_predictions / "vid_a" / "0" / "notes.txt").write_text("not a mask")
    target = tmp_path / "sub" / "submission.zip"
    assert zip_submission(gt_predictions, target) == target
    expected = sorted(
        f"{video}/{exp}/{i:05d}.png"
        for video, exps, t in (("vid_a", "01", 4), ("vid_b", "01", 3), ("vid_c", "0", 2))
        for exp in exps
        for i in range(t)
    )
    with zipfile.ZipFile(target) as zf:
        assert sorted(zf.namelist()) == expected
        assert zf.read("vid_b/1/00002.png") == (gt_predictions / "vid_b" / "1" / "00002.png").read_bytes()
    first = target.read_bytes()
    with pytest.raises(FileExistsError):
        zip_submission(gt_predictions, target)
    assert target.read_bytes() == first
    zip_submission(gt_predictions, target, overwrite=True, prefix="Annotations")
    with zipfile.ZipFile(target) as zf:
        assert sorted(zf.namelist()) == [f"Annotations/{n}" for n in expected]
    assert [p.name for p in target.parent.iterdir()] == ["submission.zip"]  # no temporary left
    with pytest.raises(ValueError, match="no predictions"):
        zip_submission(tmp_path / "sub", tmp_path / "other.zip")


# -- command line ---------------------------------------------------------------------------------------
def test_cli_evaluate_predictions(split, gt_predictions, tmp_path, capsys, caplog):
    out = tmp_path / "eval"
    rc = main(["evaluate", "--data", str(split), "--predictions", str(gt_predictions), "--out", str(out),
               "--workers", "0", "--no-progress", "--no-resume"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["J&F"] == 1.0 and printed == json.loads((out / "summary.json").read_text())
    rc = main(["evaluate", "--data", str(split), "--predictions", str(tmp_path / "none"), "--out", str(out)])
    assert rc == 2 and "predictions directory not found" in caplog.text
    rc = main(["evaluate", "--data", str(tmp_path / "nosplit"), "--predictions", str(gt_predictions),
               "--out", str(out)])
    assert rc == 2 and "nosplit" in caplog.text


def test_cli_evaluate_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--out", "--model", "--predictions", "--workers", "--device", "--mode",
                 "--threshold", "--no-resume", "--no-progress"):
        assert flag in text, flag
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", "x", "--out", "y"])  # --model or --predictions is required
