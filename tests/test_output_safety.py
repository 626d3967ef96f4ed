"""Issue 25: ssa replaces only what it wrote, never an input or the folders around it.

Every writer follows one rule (ssa.io.check_output_dir / check_output_file): ``--overwrite`` replaces
a folder only when it is ssa's own output of that kind (its marker present) holding nothing else, and
never the current directory, the home directory, or a folder that is or holds an input (the video, the
manifest and its folder, the dataset). Each test checks that the bystander files survive byte for byte.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import build
from media import encode

from ssa.cli import main
from ssa.data import MeViSDataset
from ssa.data.synthetic import write_split
from ssa.eval import evaluate, write_prediction, zip_submission
from ssa.pipeline import SSAPipeline
from ssa.train import finetune

COMMON = ["--device", "cpu", "--no-progress", "--threshold", "0"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (links not followed) by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    frames = []
    for i in range(6):
        img = np.full((48, 64, 3), 30, np.uint8)
        img[10:26, 4 + 4 * i:20 + 4 * i] = (200, 50, 50)
        img[30:44, 40 - 3 * i:54 - 3 * i] = (50, 50, 200)
        frames.append(img)
    return encode(tmp_path_factory.mktemp("clip") / "clip.mp4", frames)


@pytest.fixture(scope="module")
def ssa_output(tiny_checkpoint, clip, tmp_path_factory) -> Path:
    """A folder written by `ssa segment`: what --overwrite may replace."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(["segment", str(clip), "the two squares", "--model", str(tiny_checkpoint), "--out", str(out),
                 *COMMON]) == 0
    return out


def segment(model: Path, video: Path | str, out: Path | str, *extra: str,
            expression: str = "the two squares") -> int:
    return main(["segment", str(video), expression, "--model", str(model), "--out", str(out), *COMMON,
                 *extra])


# -- ssa segment VIDEO --out DIR --overwrite -------------------------------------------------------------
@pytest.mark.parametrize("out", [".", "CWD"])
def test_out_is_the_current_directory(tiny_checkpoint, clip, tmp_path, monkeypatch, caplog, out):
    """`ssa segment clip.mp4 ... --out "$PWD" --overwrite` deleted the video and an unrelated file."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(clip, tmp_path / "clip.mp4")
    (tmp_path / "notes.txt").write_text("unrelated")
    before = snapshot(tmp_path)
    rc = segment(tiny_checkpoint, "clip.mp4", tmp_path if out == "CWD" else out, "--overwrite")
    assert rc == 2 and "current directory" in caplog.text
    assert snapshot(tmp_path) == before


def test_out_holding_the_input_video(tiny_checkpoint, clip, tmp_path, caplog):
    """A parent of the input is never replaced, even one that looks like ssa's (it has expressions.json)."""
    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    video = shutil.copy(clip, data / "clips" / "clip.mp4")
    (data / "expressions.json").write_text("[]")
    before = snapshot(data)
    assert segment(tiny_checkpoint, video, data, "--overwrite") == 2
    assert "contains the input" in caplog.text
    assert snapshot(data) == before


def test_out_is_the_home_directory(tiny_checkpoint, clip, tmp_path, monkeypatch, caplog):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    (home / "expressions.json").write_text("[]")
    monkeypatch.setenv("HOME", str(home))
    before = snapshot(home)
    assert segment(tiny_checkpoint, clip, home, "--overwrite") == 2
    assert "home directory" in caplog.text
    assert segment(tiny_checkpoint, clip, tmp_path, "--overwrite") == 2  # nor a folder holding it
    assert snapshot(home) == before


def test_foreign_folder_is_kept_with_overwrite(tiny_checkpoint, clip, tmp_path, caplog):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 not ssa's")
    (out / "notes.txt").write_text("keep")
    before = snapshot(out)
    assert segment(tiny_checkpoint, clip, out) == 2
    assert "--overwrite" in caplog.text  # the command line names its own flag
    caplog.clear()
    assert segment(tiny_checkpoint, clip, out, "--overwrite") == 2
    assert "not an ssa segmentation output" in caplog.text and "holiday.jpg" in caplog.text
    assert snapshot(out) == before


def test_ssa_folder_is_replaced_with_overwrite(tiny_checkpoint, clip, ssa_output, tmp_path):
    """The feature still works: ssa's own output is replaced wholesale."""
    out = shutil.copytree(ssa_output, tmp_path / "out")
    (tmp_path / "bystander.txt").write_text("next to it")
    assert segment(tiny_checkpoint, clip, out, expression="the red square") == 2  # no --overwrite
    assert segment(tiny_checkpoint, clip, out, "--overwrite", expression="the red square") == 0
    assert [e["expression"] for e in json.loads((out / "expressions.json").read_text())] == ["the red square"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bystander.txt", "out"]
    assert (tmp_path / "bystander.txt").read_text() == "next to it"


@pytest.mark.parametrize("foreign", ["mine.txt", "0/mine.txt", "0/frame.png", "extra/"])
def test_ssa_folder_with_a_foreign_file_is_kept(tiny_checkpoint, clip, ssa_output, tmp_path, caplog, foreign):
    out = shutil.copytree(ssa_output, tmp_path / "out")
    if foreign.endswith("/"):
        (out / foreign).mkdir()
        (out / foreign / "inside.txt").write_text("mine")
    else:
        (out / foreign).write_bytes(b"mine, not a PNG")
    before = snapshot(out)
    assert segment(tiny_checkpoint, clip, out, "--overwrite") == 2
    assert "did not write" in caplog.text and foreign in caplog.text
    assert snapshot(out) == before


def test_overlay_never_replaces_the_input_or_a_folder(tiny_checkpoint, clip, tmp_path, caplog):
    video = shutil.copy(clip, tmp_path / "clip.mp4")
    before = video.read_bytes()
    out = tmp_path / "out"
    assert segment(tiny_checkpoint, video, out, "--overlay", str(video), "--overwrite") == 2
    assert "is the input" in caplog.text and video.read_bytes() == before
    folder = tmp_path / "overlay.mp4"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    assert segment(tiny_checkpoint, video, out, "--overlay", str(folder), "--overwrite") == 2
    assert (folder / "keep.txt").read_text() == "keep"
    assert segment(tiny_checkpoint, video, out, "--overlay", str(out / "o.mp4")) == 2  # inside --out
    assert not out.exists()  # refused before anything was written


@pytest.fixture(scope="module")
def result(clip):
    pipe = SSAPipeline(build("ssa-tiny"), device="cpu")
    return pipe(str(clip), "the two squares", threshold=0.0, progress=False)


def test_result_writers_follow_the_rule(result, clip, tmp_path):
    """RVOSResult.save_pngs / save_overlay / save_rle: the same rule from Python."""
    before = clip.read_bytes()
    for write in (result.save_overlay, result.save_rle):
        with pytest.raises(ValueError, match="is the input"):
            write(clip, overwrite=True)
    with pytest.raises(ValueError, match="contains the input"):
        result.save_pngs(clip.parent, overwrite=True)
    assert clip.read_bytes() == before
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n not a mask")
    (photos / "notes.txt").write_text("keep")
    kept = snapshot(photos)
    with pytest.raises(FileExistsError, match="cat.png"):
        result.save_pngs(photos, overwrite=True)
    assert snapshot(photos) == kept
    masks = result.save_pngs(tmp_path / "masks")
    result.save_pngs(masks, overwrite=True, binary=True)  # its own masks: replaced
    assert sorted(p.stem for p in masks.iterdir()) == result.frame_names


# -- ssa segment --manifest ------------------------------------------------------------------------------
def _manifest(folder: Path, clip: Path, output: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(clip, folder / "clip.mp4")
    manifest = folder / "videos.jsonl"
    manifest.write_text(json.dumps({"video": "clip.mp4", "expressions": "the two squares", "output": output})
                        + "\n")
    return manifest


def run_manifest(model: Path, manifest: Path, *extra: str) -> int:
    return main(["segment", "--manifest", str(manifest), "--model", str(model), *COMMON, *extra])


def test_manifest_output_dot_with_overwrite(tiny_checkpoint, clip, tmp_path, caplog):
    """`"output": "."` with --overwrite deleted the manifest, its video, a file and the progress log."""
    jobs = tmp_path / "jobs"
    manifest = _manifest(jobs, clip, ".")
    (jobs / "notes.txt").write_text("unrelated")
    (jobs / "videos.progress.jsonl").write_text('{"earlier": "run"}\n')
    (jobs / "expressions.json").write_text("[]")
    before = snapshot(jobs)
    assert run_manifest(tiny_checkpoint, manifest, "--overwrite") == 2
    assert "line 1: output '.' is the manifest's own folder" in caplog.text
    assert snapshot(jobs) == before


def test_manifest_output_holding_an_input(tiny_checkpoint, clip, tmp_path):
    jobs = tmp_path / "jobs"
    manifest = _manifest(jobs, clip, "media")
    media = jobs / "media"
    media.mkdir()
    shutil.move(jobs / "clip.mp4", media / "clip.mp4")
    (media / "expressions.json").write_text("[]")
    manifest.write_text(json.dumps({"video": "media/clip.mp4", "expressions": "x", "output": "media"}) + "\n")
    before = snapshot(jobs)
    assert run_manifest(tiny_checkpoint, manifest, "--overwrite") == 1
    [record] = [json.loads(line) for line in (jobs / "videos.progress.jsonl").read_text().splitlines()]
    assert record["status"] == "failed" and "contains the input" in record["error"]
    assert {k: v for k, v in snapshot(jobs).items() if k != "videos.progress.jsonl"} == before


@pytest.mark.parametrize("where", ["..", "absolute", "~"])
def test_manifest_output_outside_its_folder(tiny_checkpoint, clip, tmp_path, monkeypatch, caplog, where):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / "keep.txt").write_text("keep")
    target = {"..": tmp_path / "elsewhere", "absolute": tmp_path / "abs" / "out", "~": home / "out"}[where]
    value = {"..": "../elsewhere", "absolute": str(target), "~": "~/out"}[where]
    manifest = _manifest(tmp_path / "jobs", clip, value)
    assert run_manifest(tiny_checkpoint, manifest) == 2
    assert "outside the manifest's folder" in caplog.text and "--allow-outside" in caplog.text
    assert not target.exists()
    assert run_manifest(tiny_checkpoint, manifest, "--allow-outside") == 0
    assert (target / "expressions.json").is_file()
    assert (home / "keep.txt").read_text() == "keep" and (tmp_path / "jobs" / "clip.mp4").is_file()


# -- evaluation, training, synthetic splits ----------------------------------------------------------------
@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return write_split(tmp_path_factory.mktemp("eval") / "split", num_videos=1, seed=5, num_frames=6,
                       height=64, width=64, progress=False)


@pytest.fixture(scope="module")
def predictions(split, tmp_path_factory) -> Path:
    """The ground truth written as predictions (J&F 1)."""
    root = tmp_path_factory.mktemp("preds") / "preds"
    dataset = MeViSDataset(split)
    for index, (video, exp_id, _) in enumerate(dataset.expressions()):
        objects, _ = dataset.load_masks(index)
        write_prediction(root, video, exp_id, dataset.frame_names(video), objects.any(axis=0))
    return root


def test_evaluation_output_folder(split, predictions, tmp_path, monkeypatch, caplog):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "summary.json").write_text('{"my": "own results"}')
    (out / "notes.txt").write_text("keep")
    before = snapshot(out)
    with pytest.raises(FileExistsError, match="notes.txt"):
        evaluate(predictions, split, out_dir=out, progress=False)
    assert snapshot(out) == before
    split_before = snapshot(split)
    with pytest.raises(ValueError, match="is the input"):
        evaluate(predictions, split, out_dir=split, progress=False)
    with pytest.raises(ValueError, match="contains the input"):
        evaluate(predictions, split, out_dir=predictions.parent, progress=False)
    monkeypatch.chdir(out)
    assert main(["evaluate", "--data", str(split), "--predictions", str(predictions), "--out", ".",
                 "--no-progress"]) == 2
    assert "current directory" in caplog.text
    assert snapshot(split) == split_before and snapshot(out) == before
    done = tmp_path / "eval"  # ssa's own evaluation folder is written again
    assert evaluate(predictions, split, out_dir=done, progress=False)["J&F"] == 1.0
    assert evaluate(predictions, split, out_dir=done, progress=False, resume=False)["J&F"] == 1.0


def test_training_output_folder(split, tmp_path, monkeypatch):
    opts = {"iterations": 1, "batch_size": 1, "progress": False, "num_frames": 2, "scales": [64]}
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_config.json").write_text('{"mine": true}')
    (out / "notes.txt").write_text("keep")
    before = snapshot(out)
    with pytest.raises(FileExistsError, match="notes.txt"):
        finetune("ssa-tiny", split, output_dir=out, resume=True, **opts)
    with pytest.raises(FileExistsError, match="resume"):
        finetune("ssa-tiny", split, output_dir=out, **opts)
    assert snapshot(out) == before
    split_before = snapshot(split.parent)
    with pytest.raises(ValueError, match="contains the input"):
        finetune("ssa-tiny", split, output_dir=split.parent, resume=True, **opts)
    monkeypatch.chdir(out)
    with pytest.raises(ValueError, match="current directory"):
        finetune("ssa-tiny", split, output_dir=".", resume=True, **opts)
    assert snapshot(split.parent) == split_before and snapshot(out) == before


def test_synthetic_split_folder(tmp_path, monkeypatch, caplog):
    out = tmp_path / "data"
    out.mkdir()
    (out / "meta_expressions.json").write_text("{}")
    (out / "mine.txt").write_text("keep")
    before = snapshot(out)
    with pytest.raises(FileExistsError, match="mine.txt"):
        write_split(out, num_videos=1, num_frames=6, height=64, width=64, overwrite=True, progress=False)
    assert snapshot(out) == before
    monkeypatch.chdir(out)
    assert main(["synth", "--out", ".", "--videos", "1", "--overwrite", "--no-progress"]) == 2
    assert "current directory" in caplog.text and snapshot(out) == before
    small = {"num_videos": 1, "num_frames": 6, "height": 64, "width": 64, "progress": False}
    split = write_split(tmp_path / "s", seed=0, **small)
    write_split(split, seed=1, overwrite=True, **small)
    assert json.loads((split / "synthetic.json").read_text())["seed"] == 1  # its own split: replaced


# -- submissions -------------------------------------------------------------------------------------------
def _masks(t: int = 2) -> np.ndarray:
    m = np.zeros((t, 8, 8), bool)
    m[:, 2:5, 2:5] = True
    return m


def test_zip_submission_refuses_links_out_of_its_root(tmp_path):
    outside = tmp_path / "outside"
    write_prediction(outside, "secret", "0", ["00000", "00001"], _masks())
    root = tmp_path / "preds"
    write_prediction(root, "v", "0", ["00000", "00001"], _masks())
    (root / "v" / "1").mkdir()
    (root / "v" / "1" / "00000.png").symlink_to(outside / "secret" / "0" / "00000.png")
    before = snapshot(outside)
    with pytest.raises(ValueError, match="outside the predictions folder"):
        zip_submission(root, tmp_path / "sub.zip")
    (root / "v" / "1" / "00000.png").unlink()
    (root / "v" / "1").rmdir()
    (root / "w").symlink_to(outside / "secret", target_is_directory=True)  # a whole video linked in
    with pytest.raises(ValueError, match="outside the predictions folder"):
        zip_submission(root, tmp_path / "sub.zip")
    assert not (tmp_path / "sub.zip").exists() and snapshot(outside) == before
    (root / "w").unlink()
    (root / "u").symlink_to(root / "v", target_is_directory=True)  # a link inside the root is fine
    with zipfile.ZipFile(zip_submission(root, tmp_path / "sub.zip")) as zf:
        assert "u/0/00000.png" in zf.namelist()


def test_zip_submission_keeps_ids_starting_with_a_dot(tmp_path):
    root = tmp_path / "preds"
    write_prediction(root, ".hidden", "0", ["00000"], _masks(1))
    write_prediction(root, "v", ".5", ["00000"], _masks(1))
    write_prediction(root, "v", "0", ["00000"], _masks(1))
    with zipfile.ZipFile(zip_submission(root, tmp_path / "sub.zip")) as zf:
        assert sorted(zf.namelist()) == [".hidden/0/00000.png", "v/.5/00000.png", "v/0/00000.png"]
    png = root / "v" / "0" / "00000.png"
    before = png.read_bytes()
    with pytest.raises(ValueError, match="is the input"):
        zip_submission(root, png, overwrite=True)
    assert png.read_bytes() == before


# -- the rule itself ---------------------------------------------------------------------------------------
def test_check_output_dir_edges(ssa_output, tmp_path):
    from ssa.io import SEGMENTATION_LAYOUT, check_output_dir

    with pytest.raises(ValueError, match="filesystem root"):
        check_output_dir("/", overwrite=True, layout=SEGMENTATION_LAYOUT)
    out = shutil.copytree(ssa_output, tmp_path / "out")
    (out / ".0.tmp-abcd1234").mkdir()  # what an interrupted ssa write leaves behind is ssa's too
    assert check_output_dir(out, overwrite=True, layout=SEGMENTATION_LAYOUT) == out
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    with pytest.raises(FileExistsError, match="symbolic link"):
        check_output_dir(link, overwrite=True, layout=SEGMENTATION_LAYOUT)
    with pytest.raises(FileExistsError, match="cannot tell"):
        check_output_dir(out, overwrite=True)  # no layout: nothing non-empty is replaced
    (out / "0" / "00000.png").unlink()
    (out / "0" / "00000.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(FileExistsError, match=r"0/00000.png \(a symbolic link\)"):
        check_output_dir(out, overwrite=True, layout=SEGMENTATION_LAYOUT)
