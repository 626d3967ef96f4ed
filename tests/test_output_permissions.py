"""Files and directories ssa writes through a temporary (for atomicity) get the mode a plain ``open()`` or
``mkdir()`` would give them under the user's umask, not tempfile's private 0600 / 0700: a model saved, a
checkpoint or a mask written on a shared machine is readable by whom the user's umask allows."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from ssa import SSAConfig, SSAModel
from ssa.data.synthetic import write_split
from ssa.eval.submission import write_prediction, zip_submission
from ssa.io import atomic_output_dir, atomic_write_text, write_overlay_video, write_palette_png
from ssa.train import finetune, latest_checkpoint

UMASK = 0o027  # not the usual 0o022, so that the modes below can only come from the umask
FILE, DIR = 0o666 & ~UMASK, 0o777 & ~UMASK  # 0o640, 0o750


@pytest.fixture(autouse=True)
def umask():
    old = os.umask(UMASK)
    yield
    os.umask(old)


def _check_modes(root: Path) -> None:
    """``root`` and everything under it: files FILE, directories DIR."""
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    modes = {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert modes == {str(p.relative_to(root.parent)): DIR if p.is_dir() else FILE for p in paths}, root


def test_save_pretrained(tmp_path):
    torch.manual_seed(0)
    out = SSAModel(SSAConfig.from_preset("ssa-tiny")).save_pretrained(tmp_path / "model")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    _check_modes(out)


def test_text_video_mask_directory_and_submission(tmp_path):
    text = atomic_write_text(tmp_path / "a.json", "{}")
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    video = write_overlay_video(tmp_path / "overlay.mp4", frames, [np.ones((16, 16), bool)] * 3, fps=5)
    with atomic_output_dir(tmp_path / "masks") as tmp:
        write_palette_png(tmp / "00000.png", np.ones((16, 16), np.uint8))
    write_prediction(tmp_path / "pred", "v", "0", ["00000"], np.ones((1, 16, 16), bool))
    archive = zip_submission(tmp_path / "pred", tmp_path / "submission.zip")
    for path in (text, video, tmp_path / "masks", tmp_path / "pred", archive):
        _check_modes(path)


def test_finetune_checkpoints(tmp_path):
    data = write_split(tmp_path / "split", num_videos=2, seed=3, num_frames=6, height=64, width=64,
                       progress=False)
    finetune("ssa-tiny", data, output_dir=tmp_path / "run", iterations=1, batch_size=2, progress=False,
             num_frames=4, scales=[64], warmup_iters=1, loss={"num_points": 64})
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert checkpoint is not None and (checkpoint / "model" / "model.safetensors").is_file()
    _check_modes(tmp_path / "run")
