"""ssa.io.video: decoding files (PyAV), folders, lists and arrays; sampling; rotation; errors."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
from media import RATE, H, T, W, encode, pick_encoder
from PIL import Image

from ssa.io.video import Frame, VideoDecodeError, count_frames, iter_frames, probe, read_frames


def gray_frames(n: int = T, h: int = H, w: int = W) -> list[np.ndarray]:
    """Frame i is gray of mean level 8*i + 4 (so its index can be read back from the pixels) plus
    fresh noise (so that every frame costs about the same number of bytes in the file)."""
    rng = np.random.default_rng(0)
    return [(8 * i + 4 + rng.integers(-3, 4, (h, w, 3))).clip(0, 255).astype(np.uint8) for i in range(n)]


def level_index(frame: Frame) -> int:
    return round((float(frame.image.mean()) - 4) / 8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    out = {}
    # odd size: H.264 4:4:4 (libx264) allows it; fall back to mpeg4 yuv420p, which also does
    codec = pick_encoder("yuv444p")
    pix = "yuv444p" if codec != "mpeg4" else "yuv420p"
    out["cfr"] = encode(d / "cfr.mp4", gray_frames(), codec=codec, pix_fmt=pix)
    out["cfr_mkv"] = encode(d / "cfr.mkv", gray_frames(), codec=codec, pix_fmt=pix)
    out["vfr"] = encode(d / "vfr.mkv", gray_frames(10, 48, 64), pts_ms=VFR_PTS)
    return out


VFR_PTS = [0, 10, 50, 60, 200, 210, 215, 400, 433, 500]


# -- video files -------------------------------------------------------------------------------------


def test_file_frames_size_timestamps(videos):
    frames = read_frames(videos["cfr"])
    assert len(frames) == T
    for i, f in enumerate(frames):
        assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 and f.image.flags.c_contiguous
        assert f.index == i and f.name == f"{i:05d}"
        assert f.timestamp == pytest.approx(i / RATE, abs=1e-3)
        assert level_index(f) == i


def test_probe_file(videos):
    info = probe(videos["cfr"])
    assert (info.width, info.height, info.rotation) == (W, H, 0)
    assert info.fps == pytest.approx(RATE)
    assert info.num_frames == T
    assert info.duration == pytest.approx(T / RATE, abs=0.05)
    assert info.source == str(videos["cfr"])


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"stride": 3}, list(range(0, T, 3))),
        ({"max_frames": 4}, [0, 1, 2, 3]),
        ({"start": 0.5, "end": 0.8}, list(range(15, 24))),
        ({"start": 0.5, "stride": 4, "max_frames": 3}, [15, 19, 23]),
        ({"fps": 10}, list(range(0, T, 3))),
        ({"fps": 7}, [math.ceil(k * RATE / 7 - 1e-9) for k in range(7)]),
        ({"fps": 100}, list(range(T))),  # above the source rate: every frame once
        ({"fps": 5, "start": 0.2}, [6, 12, 18, 24]),
    ],
)
def test_file_selection(videos, kwargs, expected):
    frames = read_frames(videos["cfr_mkv"], **kwargs)
    assert [f.index for f in frames] == expected
    assert [level_index(f) for f in frames] == expected  # the pixels are those frames


@pytest.mark.parametrize("kind", ["cfr", "cfr_mkv"])
def test_count_frames_without_decoding(videos, kind):
    """The total of the pipeline's progress bars (issue 23): the container's frame count, or duration x
    rate where it has none, through the same selection as iter_frames."""
    cases = [{}, {"stride": 3}, {"max_frames": 4}, {"start": 0.5, "end": 0.8}, {"start": 0.5, "stride": 4,
             "max_frames": 3}, {"fps": 10}, {"fps": 7}, {"fps": 100}, {"fps": 5, "start": 0.2}, {"end": 9.0}]
    for kwargs in cases:
        assert count_frames(videos[kind], **kwargs) == len(read_frames(videos[kind], **kwargs)), kwargs
    array = np.zeros((12, 8, 8, 3), np.uint8)
    assert count_frames(array, stride=5) == 3 == len(read_frames(array, stride=5))
    assert count_frames(array, fps=2, source_fps=6) == len(read_frames(array, fps=2, source_fps=6))
    assert count_frames(array, start=1.0) is None  # no rate to place it: unknown (iter_frames refuses it)
    with pytest.raises(FileNotFoundError):
        count_frames(videos[kind].parent / "none.mp4")


def test_variable_frame_rate(videos):
    frames = read_frames(videos["vfr"])
    assert [f.timestamp for f in frames] == pytest.approx([p / 1000 for p in VFR_PTS], abs=1e-3)
    # by timestamp, not index: the first frame reaching each 0.1 s tick (0.1 and 0.3 have none of their own)
    ticks = [f.index for f in read_frames(videos["vfr"], fps=10)]
    expected, next_tick = [], 0.0
    for i, p in enumerate(VFR_PTS):
        if p / 1000 >= next_tick - 1e-9:
            expected.append(i)
            next_tick = (math.floor(p / 100 + 1e-9) + 1) / 10
    assert ticks == expected == [0, 4, 7, 9]
    assert [f.index for f in read_frames(videos["vfr"], start=0.055, end=0.4)] == [3, 4, 5, 6]


def asymmetric_image(h: int = 48, w: int = 64) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    image[: h // 2, : w // 4] = 255  # a white block in the top-left corner
    image[h // 2 :, w // 2 :, 0] = 200  # and some red bottom-right
    return image


@pytest.mark.parametrize(
    "how, expected_rotation, k",
    [
        # QuickTime display matrix of a portrait phone video: the picture is shown turned 90° clockwise
        ({"matrix": [0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30]}, 270, -1),
        # PyAV's helper, counter-clockwise degrees
        ({"rotation": 90}, 90, 1),
        ({"rotation": 180}, 180, 2),
    ],
)
def test_rotation_metadata(tmp_path, how, expected_rotation, k):
    image = asymmetric_image()
    path = encode(tmp_path / "rot.mp4", [image] * 3, **how)
    upright = np.rot90(image, k)
    info = probe(path)
    assert info.rotation == expected_rotation
    assert (info.height, info.width) == upright.shape[:2]
    frames = read_frames(path)
    assert len(frames) == 3
    for f in frames:
        assert f.image.shape == upright.shape and f.image.flags.c_contiguous
        assert np.abs(f.image.astype(int) - upright).mean() < 8
    if k % 2:  # and not the other way round
        assert np.abs(frames[0].image.astype(int) - np.rot90(image, -k)).mean() > 40


def test_ten_bit_video(tmp_path):
    for codec, pix in (("libx264", "yuv420p10le"), ("libx265", "yuv420p10le"), ("ffv1", "yuv420p10le")):
        try:
            formats = {f.name for f in (av.codec.Codec(codec, "w").video_formats or [])}
        except Exception:
            continue
        if pix in formats:
            break
    else:
        pytest.skip("no encoder with 10-bit support in this PyAV build")
    images = gray_frames(6, 48, 64)
    path = encode(tmp_path / "ten.mkv", images, codec=codec, pix_fmt=pix)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == pix
    frames = read_frames(path)
    assert len(frames) == 6
    assert all(f.image.dtype == np.uint8 and f.image.shape == (48, 64, 3) for f in frames)
    assert [level_index(f) for f in frames] == list(range(6))


def test_single_image_file_is_one_frame(tmp_path):
    image = asymmetric_image()
    Image.fromarray(image).save(tmp_path / "still.png")
    (frame,) = read_frames(tmp_path / "still.png")
    assert frame.name == "still" and frame.index == 0 and frame.timestamp is None
    np.testing.assert_array_equal(frame.image, image)


def test_progress_bar(videos, capsys):
    assert len(read_frames(videos["cfr"], max_frames=2, progress=True)) == 2
    assert "decoding" in capsys.readouterr().err
    read_frames(videos["cfr"], max_frames=2)
    assert "decoding" not in capsys.readouterr().err


# -- errors ------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        iter_frames(tmp_path / "nope.mp4")  # raised on the call, before iterating
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        probe(tmp_path / "nope.mp4")


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 100)
    with pytest.raises(VideoDecodeError, match="notes.mp4"):
        read_frames(path)
    with pytest.raises(VideoDecodeError, match="notes.mp4"):
        probe(path)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty.mp4"):
        read_frames(empty)


def test_truncated_video_warns_and_keeps_readable_frames(tmp_path, videos):
    data = videos["cfr_mkv"].read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=r"cut\.mkv.*read (\d+) frame") as record:
        frames = read_frames(cut)
    assert 0 < len(frames) < T
    assert f"read {len(frames)} frame" in str(record[0].message)
    assert [level_index(f) for f in frames] == list(range(len(frames)))
    # a complete file does not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_frames(videos["cfr_mkv"])) == T
        assert len(read_frames(videos["vfr"])) == len(VFR_PTS)


def test_truncated_mp4_without_index_is_not_a_video(tmp_path, videos):
    data = videos["cfr"].read_bytes()  # moov at the end: the first half has no index
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match="cut.mp4"):
        read_frames(cut)


def test_zero_decodable_frames(tmp_path, videos):
    data = videos["cfr_mkv"].read_bytes()
    cluster = data.find(b"\x1f\x43\xb6\x75")  # first Matroska Cluster: keep the header and a few bytes
    assert cluster > 0
    path = tmp_path / "header_only.mkv"
    path.write_bytes(data[: cluster + 64])
    with pytest.raises(VideoDecodeError, match="header_only.mkv.*no frame"):
        read_frames(path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"stride": 0}, "stride"),
        ({"fps": 0}, "fps"),
        ({"fps": -1.0}, "fps"),
        ({"start": 2.0, "end": 1.0}, "end"),
        ({"start": 1.0, "end": 1.0}, "end"),
        ({"max_frames": 0}, "max_frames"),
        ({"stride": 2, "fps": 5}, "either stride or fps"),
    ],
)
def test_invalid_options(videos, kwargs, match):
    with pytest.raises(ValueError, match=match):
        iter_frames(videos["cfr"], **kwargs)


# -- folders -----------------------------------------------------------------------------------------


def test_folder_natural_sort(tmp_path):
    rng = np.random.default_rng(0)
    images = {n: rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for n in ("10", "2", "1", "00003")}
    for n, image in images.items():
        Image.fromarray(image).save(tmp_path / f"{n}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.png").write_bytes(b"ignored")
    frames = read_frames(tmp_path)
    assert [f.name for f in frames] == ["1", "2", "00003", "10"]
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert all(f.timestamp is None for f in frames)
    for f in frames:
        np.testing.assert_array_equal(f.image, images[f.name])
    timed = read_frames(tmp_path, source_fps=2.0, start=0.5)
    assert [(f.name, f.timestamp) for f in timed] == [("2", 0.5), ("00003", 1.0), ("10", 1.5)]
    info = probe(tmp_path, source_fps=2.0)
    assert (info.width, info.height, info.num_frames, info.fps, info.duration) == (30, 20, 4, 2.0, 2.0)


def test_folder_jpeg_layout_and_stride(tmp_path):
    for i in range(6):
        Image.fromarray(np.full((16, 24, 3), 40 * i, np.uint8)).save(tmp_path / f"{i * 5:05d}.jpg")
    frames = read_frames(tmp_path, stride=2)
    assert [f.name for f in frames] == ["00000", "00010", "00020"]
    assert [round(float(f.image.mean()) / 40) for f in frames] == [0, 2, 4]


def test_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no frame images"):
        read_frames(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(mixed / "1.png")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(mixed / "2.png")
    with pytest.raises(ValueError, match=r"different sizes.*2\.png"):
        read_frames(mixed)
    with pytest.raises(ValueError, match="source_fps"):
        iter_frames(mixed, fps=5)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoDecodeError, match=r"1\.jpg"):
        read_frames(broken)


# -- in-memory sources -------------------------------------------------------------------------------


def test_rgb_array():
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    frames = read_frames(video, source_fps=10.0)
    assert len(frames) == 5
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(f.image, video[i])
        assert f.timestamp == pytest.approx(i / 10) and f.name == f"{i:05d}"
    assert not np.shares_memory(frames[0].image, video)
    assert [f.index for f in read_frames(video, source_fps=10.0, fps=5.0)] == [0, 2, 4]
    assert [f.index for f in read_frames(video, stride=2)] == [0, 2, 4]
    info = probe(video)
    assert (info.width, info.height, info.num_frames, info.fps) == (9, 7, 5, None)


def test_gray_and_rgba_arrays():
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (3, 6, 8), dtype=np.uint8)
    for f, g in zip(read_frames(gray), gray, strict=True):
        assert f.image.shape == (6, 8, 3)
        for c in range(3):
            np.testing.assert_array_equal(f.image[..., c], g)
    rgba = rng.integers(0, 256, (3, 6, 8, 4), dtype=np.uint8)
    for f, x in zip(read_frames(rgba), rgba, strict=True):
        np.testing.assert_array_equal(f.image, x[..., :3])


def test_list_of_pil_and_arrays():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    rgba = rng.integers(0, 256, (6, 8, 4), dtype=np.uint8)
    palette = Image.fromarray(gray).convert("P")
    frames = read_frames([Image.fromarray(rgb), Image.fromarray(gray), Image.fromarray(rgba), rgb, palette])
    assert len(frames) == 5 and all(f.image.shape == (6, 8, 3) for f in frames)
    np.testing.assert_array_equal(frames[0].image, rgb)
    np.testing.assert_array_equal(frames[1].image, np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(frames[2].image, rgba[..., :3])
    np.testing.assert_array_equal(frames[3].image, rgb)
    np.testing.assert_array_equal(frames[4].image, np.asarray(palette.convert("RGB")))


def test_torch_tensor():
    torch = pytest.importorskip("torch")
    video = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8)
    frames = read_frames(video)
    np.testing.assert_array_equal(frames[1].image, video[1].numpy())


def test_in_memory_errors():
    with pytest.raises(ValueError, match="empty"):
        read_frames([])
    with pytest.raises(ValueError, match="no frames"):
        read_frames(np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        read_frames(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        read_frames(np.zeros((2, 4, 4, 3), np.uint16))
    with pytest.raises(TypeError, match="uint8"):
        read_frames([np.zeros((4, 4, 3), np.float64)])
    with pytest.raises(TypeError, match="16-bit"):
        read_frames([Image.fromarray(np.zeros((4, 4), np.uint16))])
    with pytest.raises(ValueError, match="single"):
        read_frames(np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="channel-first"):
        read_frames(np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="frame 1"):
        read_frames([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)])
    with pytest.raises(ValueError, match="source_fps"):
        iter_frames(np.zeros((2, 4, 4, 3), np.uint8), start=1.0)
    with pytest.raises(TypeError, match="unsupported"):
        read_frames(42)


@pytest.mark.parametrize("shape", [(8, 10), (8, 10, 3), (8, 10, 4)], ids=["gray", "rgb", "rgba"])
def test_16_bit_png_frames_are_refused_whatever_their_colour_type(tmp_path, shape):
    import cv2

    pixels = np.random.default_rng(0).integers(0, 65536, shape, dtype=np.uint16)
    for i in range(2):
        assert cv2.imwrite(str(tmp_path / f"{i:05d}.png"), pixels)
    with pytest.raises(TypeError, match=r"00000\.png.*16-bit.*8 bits per channel"):
        read_frames(tmp_path)
    with pytest.raises(TypeError, match="16-bit"):
        read_frames(tmp_path / "00000.png")
    eight = (pixels >> 8).astype(np.uint8)
    assert cv2.imwrite(str(tmp_path / "00000.png"), eight) and cv2.imwrite(str(tmp_path / "00001.png"), eight)
    assert len(read_frames(tmp_path)) == 2  # the same files at 8 bits are read


def test_read_frames_passes_source_fps():
    frames = read_frames(np.zeros((10, 8, 8, 3), np.uint8), source_fps=10.0, start=0.3, end=0.6)
    assert [f.index for f in frames] == [3, 4, 5]
    assert frames[0].timestamp == pytest.approx(0.3)
