"""SSAPipeline end to end on CPU with the tiny model: video files, arrays, several expressions,
bounded memory, writers and bad input."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from conftest import build
from media import encode, pick_encoder

from ssa import SSAPipeline
from ssa.io import read_palette_png
from ssa.pipeline import RVOSResult, resized_size

H, W, T = 97, 131, 30


def moving_square_frames(t: int = T, h: int = H, w: int = W) -> list[np.ndarray]:
    frames = []
    for i in range(t):
        img = np.full((h, w, 3), 40, dtype=np.uint8)
        x = 5 + 3 * i
        img[30:60, x:x + 30] = (220, 60, 60)
        frames.append(img)
    return frames


@pytest.fixture(scope="module")
def pipe() -> SSAPipeline:
    return SSAPipeline(build("ssa-tiny"), device="cpu", chunk_size=8)


@pytest.fixture(scope="module")
def video_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    codec = pick_encoder("yuv444p")
    encode(path, moving_square_frames(), codec=codec, pix_fmt="yuv444p" if codec != "mpeg4" else "yuv420p")
    return str(path)


def test_video_file_gives_masks_at_original_size(pipe, video_file):
    result = pipe(video_file, "the red square moving right", threshold=0.0, progress=False)
    assert isinstance(result, RVOSResult)
    assert result.masks.shape == (T, H, W) and result.masks.dtype == bool
    assert result.frame_indices == list(range(T))
    assert np.allclose(result.timestamps, np.arange(T) / 30, atol=1e-3)
    assert result.scores.shape == (pipe.config.num_queries,)
    assert len(result.object_ids) == pipe.config.num_queries  # threshold 0 keeps every query
    assert result.object_masks.shape == (pipe.config.num_queries, T, H, W)
    assert np.array_equal(result.object_masks.any(0), result.masks)


def test_rotated_video(pipe, tmp_path):
    path = encode(tmp_path / "rot.mp4", moving_square_frames(6, 48, 64), rotation=90)
    result = pipe(str(path), "a square", progress=False)
    assert result.masks.shape == (6, 64, 48)  # displayed upright: height and width swap


def test_two_expressions_one_visual_pass_same_masks(pipe, video_file):
    calls = []
    stem = pipe.model.backbone.clip.visual.trunk.stem
    handle = stem.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        both = pipe(video_file, ["the red square", "the background"], mode="single", progress=False)
        joint_frames = sum(calls)
        calls.clear()
        alone = [pipe(video_file, e, mode="single", progress=False)
                 for e in ["the red square", "the background"]]
    finally:
        handle.remove()
    assert joint_frames == T  # one frozen visual pass per frame, shared by both expressions
    assert sum(calls) == 2 * T
    assert [r.expression for r in both] == ["the red square", "the background"]
    for a, b in zip(both, alone, strict=True):
        assert np.array_equal(a.object_ids, b.object_ids)
        assert (a.masks == b.masks).mean() > 0.9999  # batched float sums may flip a pixel at 0
        assert np.allclose(a.scores, b.scores, atol=1e-5)


@pytest.mark.parametrize("switches", [{}, {"trajectory": False}])
def test_chunking_and_recompute_give_the_same_masks(switches):
    model = build("ssa-tiny", **switches)
    frames = moving_square_frames(12)
    whole = SSAPipeline(model, device="cpu", chunk_size=64, frame_batch=64)(frames, "a square", threshold=0.0,
                                                                            progress=False)
    small = SSAPipeline(model, device="cpu", chunk_size=5)(frames, "a square", threshold=0.0,
                                                           progress=False)
    recompute = SSAPipeline(model, device="cpu", chunk_size=5, mask_feature_budget=0)(
        frames, "a square", threshold=0.0, progress=False)
    assert whole.masks.any()
    for other in (small, recompute):
        agree = (other.object_masks == whole.object_masks).mean()
        assert agree > 0.999  # float summation order differs between chunkings
        assert np.allclose(other.scores, whole.scores, atol=1e-5)


def test_arrays_and_lists(pipe):
    frames = moving_square_frames(5, 40, 50)
    from_list = pipe(frames, "a square", mode="single", progress=False)
    from_array = pipe(np.stack(frames), "a square", mode="single", progress=False)
    assert from_list.masks.shape == (5, 40, 50)
    assert np.array_equal(from_list.masks, from_array.masks)
    gray = pipe(np.stack(frames)[..., 0], "a square", progress=False)
    rgba = pipe(np.concatenate([np.stack(frames), np.full((5, 40, 50, 1), 255, np.uint8)], -1), "a square",
                progress=False)
    assert gray.masks.shape == rgba.masks.shape == (5, 40, 50)


def test_frame_selection_options(pipe, video_file):
    r = pipe(video_file, "a square", stride=3, max_frames=4, progress=False)
    assert r.frame_indices == [0, 3, 6, 9]
    r = pipe(video_file, "a square", start=0.5, end=0.7, progress=False)
    assert r.frame_indices == list(range(15, 21))
    assert r.timestamps[0] == pytest.approx(0.5, abs=1e-3)


def test_writers_round_trip(pipe, video_file, tmp_path):
    pycocotools = pytest.importorskip("pycocotools.mask")
    result = pipe(video_file, "the red square", threshold=0.0, progress=False)
    # RLE: pycocotools decodes our counts to the same masks
    rles = result.to_rle()
    assert len(rles) == T and all(isinstance(r["counts"], str) for r in rles)
    for t, rle in enumerate(rles):
        decoded = pycocotools.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), result.masks[t])
    saved = json.loads(result.save_rle(tmp_path / "r.json").read_text())
    assert saved["expression"] == "the red square" and len(saved["masks"]) == T
    # PNGs read back equal (binary and label layouts)
    result.save_pngs(tmp_path / "png", binary=True)
    names = sorted(p.stem for p in (tmp_path / "png").glob("*.png"))
    assert names == result.frame_names
    for t, name in enumerate(result.frame_names):
        assert np.array_equal(read_palette_png(tmp_path / "png" / f"{name}.png") > 0, result.masks[t])
    result.save_pngs(tmp_path / "labels")
    labels = read_palette_png(tmp_path / "labels" / f"{result.frame_names[3]}.png")
    assert np.array_equal(labels > 0, result.masks[3]) and labels.max() <= len(result.object_ids)
    # overlay MP4 opens with PyAV and has T frames of the video's size (plus the caption band above)
    out = result.save_overlay(tmp_path / "overlay.mp4")
    with av.open(str(out)) as container:
        decoded = [f for f in container.decode(video=0)]
    assert len(decoded) == T
    assert abs(decoded[0].width - W) <= 1 and H < decoded[0].height
    out = result.save_overlay(tmp_path / "plain.mp4", caption=False)
    with av.open(str(out)) as container:
        frame = next(container.decode(video=0))
    assert abs(frame.width - W) <= 1 and abs(frame.height - H) <= 1


def test_outputs_are_never_overwritten_silently(pipe, tmp_path):
    result = pipe(moving_square_frames(3, 32, 32), "a square", progress=False)
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        result.save_pngs(tmp_path / "png")
    assert (tmp_path / "png" / "mine.txt").read_text() == "keep me"
    result.save_rle(tmp_path / "r.json")
    with pytest.raises(FileExistsError, match="overwrite"):
        result.save_rle(tmp_path / "r.json")
    result.save_rle(tmp_path / "r.json", overwrite=True)


@pytest.mark.parametrize("expr,err", [("", ValueError), ("   ", ValueError), (None, TypeError),
                                      (["ok", ""], ValueError)])
def test_bad_expressions(pipe, expr, err):
    with pytest.raises(err, match="expression"):
        pipe(moving_square_frames(2, 32, 32), expr, progress=False)


def test_long_expression_warns(pipe):
    with pytest.warns(UserWarning, match="truncated"):
        pipe(moving_square_frames(2, 32, 32), "the " * 100 + "square", progress=False)


def test_bad_videos(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        pipe(str(tmp_path / "nope.mp4"), "a square")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    with pytest.raises(ValueError, match="notes.mp4"):
        pipe(str(text), "a square")


def test_bad_options(pipe):
    frames = moving_square_frames(2, 32, 32)
    with pytest.raises(ValueError, match="mode"):
        pipe(frames, "a square", mode="all")
    with pytest.raises(ValueError, match="threshold"):
        pipe(frames, "a square", threshold=1.5)
    with pytest.raises(ValueError, match="stride"):
        pipe(frames, "a square", stride=0)
    with pytest.raises(ValueError, match="fp16"):
        SSAPipeline(build("ssa-tiny"), device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="frame_batch"):
        SSAPipeline(build("ssa-tiny"), device="cpu", frame_batch=0)
    with pytest.raises(ValueError, match="prefetch"):
        SSAPipeline(build("ssa-tiny"), device="cpu", prefetch=0)


def test_resized_size():
    assert resized_size(97, 131, 128, 256) == (128, 173)
    assert resized_size(100, 1000, 448, 1333) == (133, 1333)


def test_from_pretrained_local_dir(tmp_path):
    model = build("ssa-tiny")
    model.save_pretrained(tmp_path / "ckpt")
    pipe = SSAPipeline.from_pretrained(tmp_path / "ckpt", device="cpu")
    frames = moving_square_frames(4, 40, 40)
    a = pipe(frames, "a square", threshold=0.0, progress=False)
    b = SSAPipeline(model, device="cpu")(frames, "a square", threshold=0.0, progress=False)
    assert np.array_equal(a.object_masks, b.object_masks)


def test_bf16_on_cpu_runs(pipe):
    bf16 = SSAPipeline(pipe.model, device="cpu", precision="bf16")
    result = bf16(moving_square_frames(3, 40, 40), "a square", progress=False)
    assert result.masks.shape == (3, 40, 40)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_matches_fp32():
    model = build("ssa-tiny")
    frames = moving_square_frames(8, 64, 80)
    fp32 = SSAPipeline(model, device="cuda", precision="fp32")(frames, "a square", threshold=0.0,
                                                               progress=False)
    fp16 = SSAPipeline(model, device="cuda")(frames, "a square", threshold=0.0, progress=False)
    assert fp16.masks.shape == (8, 64, 80)
    assert (fp16.object_masks == fp32.object_masks).mean() > 0.98
    assert np.allclose(fp16.scores, fp32.scores, atol=2e-2)


def test_unreachable_hub_repo_offline_says_how_to_fix(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    from ssa.hub import WeightsNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFoundError, match="org/ssa-convnext-large-mevis") as info:
        SSAPipeline.from_pretrained("org/ssa-convnext-large-mevis", device="cpu", cache_dir=tmp_path)
    assert "HF_HUB_OFFLINE" in str(info.value)


def _bars(err: str) -> dict[str, str]:
    """The last state of each tqdm bar in captured stderr, by its description."""
    bars: dict[str, str] = {}
    for state in err.replace("\r", "\n").splitlines():
        if ":" in state:
            bars[state.split(":")[0].strip()] = state
    return bars


def test_progress_bars_have_totals_and_named_phases(pipe, video_file, capsys, tmp_path):
    """Issue 23: `segmenting: 250frame [00:08]` had no total nor ETA and sat at the end during the second
    pass. Now: named phases, each with its total (the container's frame count)."""
    from ssa.io import write_segmentation

    result = pipe(video_file, "a square", stride=2, progress=True)
    bars = _bars(capsys.readouterr().err)
    assert f"{T // 2}/{T // 2}" in bars["decode+encode"] and "100%" in bars["decode+encode"]
    assert f"{T // 2}/{T // 2}" in bars["masks"]
    saved = pipe.mask_feature_budget
    pipe.mask_feature_budget = 0  # the mask features are recomputed: a second pass over the video
    try:
        pipe(video_file, ["a square", "the background"], max_frames=10, progress=True)
    finally:
        pipe.mask_feature_budget = saved
    bars = _bars(capsys.readouterr().err)
    assert "10/10" in bars["decode+encode"] and "10/10" in bars["masks (2nd pass)"]
    write_segmentation([result.to_expression_masks()], tmp_path / "out", progress=True)
    result.save_overlay(tmp_path / "ov.mp4", progress=True)
    bars = _bars(capsys.readouterr().err)
    assert f"{T // 2}/{T // 2}" in bars["writing"] and f"{T // 2}/{T // 2}" in bars["overlay"]


@pytest.mark.parametrize("frame_batch, expected", [(None, [1, 8, 8, 8, 5]), (8, [8, 8, 8, 6])])
def test_the_first_chunk_is_one_frame_batch(frame_batch, expected, monkeypatch):
    """The model starts on the first frame batch (one frame on a CPU) instead of waiting for a whole
    chunk to be decoded; later chunks are ``chunk_size`` frames."""
    pipe = SSAPipeline(build("ssa-tiny"), device="cpu", chunk_size=8, frame_batch=frame_batch)
    sizes = []
    original = pipe.model.encode_video
    monkeypatch.setattr(pipe.model, "encode_video",
                        lambda pixels, *a, **k: sizes.append(pixels.shape[0]) or original(pixels, *a, **k))
    pipe(moving_square_frames(), "a square", progress=False)
    assert sizes == expected
