"""ssa.preprocessing against the official SSA test-time resize and normalisation (detectron2 + PIL)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssa.preprocessing import (
    PIXEL_MEAN,
    PIXEL_STD,
    FramePreprocessor,
    normalize,
    preprocess_frames,
    resize_frame,
    resized_size,
)

OFFICIAL = Path(
    os.environ.get("SSA_OFFICIAL_FIXTURES") or Path(__file__).resolve().parents[2] / "shared" / "official"
)
RESIZE_FIXTURE = OFFICIAL / "fixtures" / "preprocess_resize_shortest_edge_448_1333.safetensors"
TINY_CASES = sorted((OFFICIAL / "fixtures" / "tiny" / "cases").glob("*/tensors.safetensors"))

needs_resize_fixture = pytest.mark.skipif(
    not RESIZE_FIXTURE.is_file(), reason=f"official resize fixture not found at {RESIZE_FIXTURE}"
)


def _load_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from safetensors.torch import load_file

    tensors = load_file(str(RESIZE_FIXTURE))
    names = sorted({key.split(".")[0] for key in tensors})
    return {n: (tensors[f"{n}.input"].numpy(), tensors[f"{n}.resized"].numpy()) for n in names}


@pytest.fixture(scope="module")
def reference_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not RESIZE_FIXTURE.is_file():
        pytest.skip(f"official resize fixture not found at {RESIZE_FIXTURE}")
    cases = _load_cases()
    assert cases, "the resize fixture holds no cases"
    return cases


def _gradient_frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# --- constants ---------------------------------------------------------------------------------------


def test_pixel_mean_std_are_openai_clip_times_255() -> None:
    open_clip = pytest.importorskip("open_clip")
    np.testing.assert_allclose(PIXEL_MEAN, np.array(open_clip.OPENAI_DATASET_MEAN) * 255, rtol=0, atol=1e-6)
    np.testing.assert_allclose(PIXEL_STD, np.array(open_clip.OPENAI_DATASET_STD) * 255, rtol=0, atol=1e-6)


# --- the official reference frames ---------------------------------------------------------------------


@needs_resize_fixture
def test_fixture_layout(reference_cases) -> None:
    for name, (src, ref) in reference_cases.items():
        assert src.dtype == np.uint8 and ref.dtype == np.uint8, name
        assert src.ndim == 3 and src.shape[2] == 3 and ref.ndim == 3 and ref.shape[2] == 3, name


@needs_resize_fixture
def test_sizes_match_reference(reference_cases) -> None:
    for name, (src, ref) in reference_cases.items():
        assert resized_size(src.shape[0], src.shape[1], 448, 1333) == ref.shape[:2], name


@needs_resize_fixture
def test_every_reference_frame_reproduced_exactly(reference_cases) -> None:
    for name, (src, ref) in reference_cases.items():
        out = resize_frame(src, resized_size(src.shape[0], src.shape[1], 448, 1333))
        assert out.dtype == np.uint8, name
        assert out.shape == ref.shape, name
        diff = np.abs(out.astype(np.int16) - ref.astype(np.int16))
        assert int(diff.max()) == 0, f"{name}: {int((diff > 0).sum())} values differ, max {int(diff.max())}"


@needs_resize_fixture
def test_preprocess_frames_matches_reference(reference_cases) -> None:
    for name, (src, ref) in reference_cases.items():
        out = preprocess_frames([src, src], short_side=448, max_size=1333)
        assert out.dtype == torch.float32 and out.shape == (2, 3, *ref.shape[:2]), name
        expected = normalize(torch.from_numpy(ref).permute(2, 0, 1)[None])
        assert torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[0]), name


@needs_resize_fixture
def test_reference_discriminates_other_resamplers(reference_cases) -> None:
    """The exact-match test has teeth: a non-antialiased or nearest resize gives other pixels."""
    src, ref = next(c for c in reference_cases.values() if c[0].shape[0] > c[1].shape[0])  # a shrinking case
    h, w = ref.shape[:2]
    plain = torch.nn.functional.interpolate(
        torch.from_numpy(src).permute(2, 0, 1)[None].float(),
        size=(h, w),
        mode="bilinear",
        align_corners=False,
    )
    plain = plain[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    nearest = np.asarray(Image.fromarray(src).resize((w, h), Image.Resampling.NEAREST))
    assert not np.array_equal(plain, ref)
    assert not np.array_equal(nearest, ref)


# --- size rule ---------------------------------------------------------------------------------------


def test_int_plus_half_not_bankers_round() -> None:
    # 256 x 262: scale 448/256 = 1.75 (exact), 262 * 1.75 = 458.5 -> int(x + 0.5) = 459, round() = 458.
    assert round(262 * 1.75) == 458
    assert resized_size(256, 262, 448, 1333) == (448, 459)
    assert resized_size(262, 256, 448, 1333) == (459, 448)


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((720, 1280), (448, 796)),  # 796.44
        ((448, 800), (448, 800)),  # unchanged
        ((100, 100), (448, 448)),  # square, upscaled
        ((1000, 3000), (444, 1333)),  # long side capped: 1000 * 1333 / 3000 = 444.33
        ((3000, 1000), (1333, 444)),
        ((10, 100), (133, 1333)),  # cap: 13.33 short side rounds to 133
    ],
)
def test_resized_size_rule(hw: tuple[int, int], expected: tuple[int, int]) -> None:
    assert resized_size(*hw, 448, 1333) == expected


def test_resized_size_defaults_and_other_short_side() -> None:
    assert resized_size(720, 1280) == (448, 796)
    assert resized_size(720, 1280, 480, 1333) == (480, 853)  # 853.33


@pytest.mark.parametrize(
    "args",
    [
        (0, 10, 448, 1333),
        (10, -1, 448, 1333),
        (10, 10, 0, 1333),
        (10, 10, 448, 0),
        (10.0, 10, 448, 1333),
        (10, 10, True, 1333),
        (10, "10", 448, 1333),
    ],
)
def test_resized_size_rejects_bad_values(args) -> None:
    with pytest.raises(ValueError, match="positive int"):
        resized_size(*args)


# --- resize_frame ------------------------------------------------------------------------------------


def test_resize_frame_same_size_is_an_unchanged_copy() -> None:
    frame = _gradient_frame(37, 53)
    out = resize_frame(frame, (37, 53))
    assert np.array_equal(out, frame) and out is not frame


def test_resize_frame_is_pil_bilinear() -> None:
    frame = _gradient_frame(90, 130, seed=1)
    out = resize_frame(frame, (41, 77))
    ref = np.asarray(Image.fromarray(frame).resize((77, 41), Image.Resampling.BILINEAR))
    assert out.dtype == np.uint8 and out.shape == (41, 77, 3)
    assert np.array_equal(out, ref)


# --- normalisation -----------------------------------------------------------------------------------


def test_normalize_formula() -> None:
    frames = torch.from_numpy(_gradient_frame(5, 7)).permute(2, 0, 1)[None]
    out = normalize(frames)
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (frames.float() - mean) / std, rtol=0, atol=1e-6)
    torch.testing.assert_close(normalize(frames.float()), out, rtol=0, atol=0)
    assert normalize(frames.double()).dtype == torch.float64


@pytest.mark.skipif(not TINY_CASES, reason=f"official tiny cases not found under {OFFICIAL}")
@pytest.mark.parametrize("path", TINY_CASES, ids=[p.parent.name for p in TINY_CASES])
def test_normalize_matches_official_network_input(path: Path) -> None:
    """The official ``backbone.input_normalized`` (zero-padded to 32) on its own model-size frames."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    frames = tensors["inputs.frames_uint8"]
    ref = tensors["backbone.input_normalized"]
    h, w = frames.shape[-2:]
    torch.testing.assert_close(normalize(frames), ref[..., :h, :w], rtol=0, atol=1e-6)
    hwc = [f.permute(1, 2, 0).numpy() for f in frames]
    torch.testing.assert_close(preprocess_frames(hwc, short_side=None), ref[..., :h, :w], rtol=0, atol=1e-6)


def test_normalize_rejects_bad_input() -> None:
    with pytest.raises(TypeError):
        normalize(np.zeros((1, 3, 4, 4), dtype=np.uint8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3, h, w"):
        normalize(torch.zeros(1, 4, 4, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8 or floating"):
        normalize(torch.zeros(1, 3, 4, 4, dtype=torch.int32))


# --- preprocess_frames -------------------------------------------------------------------------------


def test_preprocess_frames_shapes_and_no_resize() -> None:
    frames = [_gradient_frame(30, 50, seed=s) for s in range(3)]
    out = preprocess_frames(frames, short_side=None, max_size=1333)
    assert out.shape == (3, 3, 30, 50) and out.dtype == torch.float32 and out.is_contiguous()
    expected = normalize(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2))
    assert torch.equal(out, expected)
    resized = preprocess_frames(frames, short_side=448, max_size=1333)
    assert resized.shape == (3, 3, 448, 747)  # 50 * 448 / 30 = 746.67


def test_preprocess_frames_rejects_bad_inputs() -> None:
    good = _gradient_frame(20, 30)
    with pytest.raises(ValueError, match="empty"):
        preprocess_frames([], 448, 1333)
    with pytest.raises(ValueError, match=r"frame 2 is 21x30"):
        preprocess_frames([good, good, _gradient_frame(21, 30)], 448, 1333)
    with pytest.raises(TypeError, match=r"frame 1 must have dtype uint8"):
        preprocess_frames([good, good.astype(np.float32)], 448, 1333)
    with pytest.raises(ValueError, match=r"frame 0 must have shape \(H, W, 3\)"):
        preprocess_frames([good[..., :1]], 448, 1333)
    with pytest.raises(ValueError, match=r"frame 0 must have shape \(H, W, 3\)"):
        preprocess_frames([good.transpose(2, 0, 1).copy()], 448, 1333)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        preprocess_frames([torch.from_numpy(good)], 448, 1333)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="sequence"):
        preprocess_frames(np.stack([good, good]), 448, 1333)
    with pytest.raises(ValueError, match="positive int"):
        preprocess_frames([good], 0, 1333)


# --- FramePreprocessor --------------------------------------------------------------------------------
def test_frame_preprocessor_gives_the_pixels_of_preprocess_frames_chunk_by_chunk() -> None:
    frames = [_gradient_frame(45, 70, seed=i) for i in range(5)]
    prep = FramePreprocessor(32, 1333)
    parts = []
    for chunk in (frames[:1], frames[1:4], frames[4:]):
        for frame in chunk:
            prep.add(frame)
        parts.append(prep.take())
    assert [p.shape[0] for p in parts] == [1, 3, 1] and prep.count == 5 and prep.size == (45, 70)
    torch.testing.assert_close(torch.cat(parts), preprocess_frames(frames, 32, 1333), rtol=0, atol=0)


def test_frame_preprocessor_checks_every_frame_against_the_first() -> None:
    prep = FramePreprocessor(32, 1333)
    with pytest.raises(ValueError, match="no frame was added"):
        prep.take()
    prep.add(_gradient_frame(45, 70))
    prep.take()
    with pytest.raises(ValueError, match="frame 0 is 45x70.*frame 1 is 46x70"):
        prep.add(_gradient_frame(46, 70))  # a later chunk, still the same video
    with pytest.raises(TypeError, match="frame 1 must have dtype uint8"):
        prep.add(_gradient_frame(45, 70).astype(np.float32))
    with pytest.raises(ValueError, match="short_side must be a positive int"):
        FramePreprocessor(0, 1333)
