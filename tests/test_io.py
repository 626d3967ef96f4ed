"""ssa.io: COCO RLE against pycocotools, palette PNGs, overlay MP4s, overwrite protection."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from ssa.io import (
    DAVIS_PALETTE,
    OutputLayout,
    atomic_output_dir,
    decode_rle,
    encode_rle,
    h264_encoder,
    prepare_output_dir,
    read_palette_png,
    write_overlay_video,
    write_palette_png,
)
from ssa.io.overlay import _caption_band, _wrap

mask_api = pytest.importorskip("pycocotools.mask")

# pycocotools' own numpy-2 deprecation noise
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def make_mask(kind: str, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = shape
    mask = np.zeros(shape, bool)
    if kind == "full":
        mask[:] = True
    elif kind == "pixel":
        mask[rng.integers(h), rng.integers(w)] = True
    elif kind == "first_pixel":
        mask[0, 0] = True
    elif kind == "last_pixel":
        mask[-1, -1] = True
    elif kind == "random":
        mask = rng.random(shape) < 0.5
    elif kind == "sparse":
        mask = rng.random(shape) < 0.02
    elif kind == "blob":
        mask[h // 5 : h // 2 + 1, w // 3 : w - 1] = True
        mask[(h * 3) // 4 :, : w // 4] = True
    return mask


SHAPES = [(1, 1), (1, 7), (5, 1), (2, 3), (97, 131), (240, 320)]
KINDS = ["empty", "full", "pixel", "first_pixel", "last_pixel", "random", "sparse", "blob"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_rle_matches_pycocotools(shape, kind):
    mask = make_mask(kind, shape, seed=shape[0] * 1000 + shape[1])
    reference = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    ours = encode_rle(mask)
    assert ours == {"size": list(shape), "counts": reference["counts"].decode("ascii")}
    assert isinstance(ours["counts"], str)
    # ours decoded by pycocotools, theirs decoded by ours (bytes and str), and our own round trip
    theirs = mask_api.decode({"size": ours["size"], "counts": ours["counts"].encode("ascii")})
    np.testing.assert_array_equal(theirs.astype(bool), mask)
    np.testing.assert_array_equal(decode_rle(reference), mask)
    decoded = decode_rle(ours)
    assert decoded.dtype == bool and decoded.shape == shape
    np.testing.assert_array_equal(decoded, mask)


def test_rle_large_runs_and_int_masks():
    full = np.ones((1080, 1920), bool)  # one run of 2,073,600: a multi-character value
    reference = mask_api.encode(np.asfortranarray(full.astype(np.uint8)))
    assert encode_rle(full)["counts"] == reference["counts"].decode()
    np.testing.assert_array_equal(decode_rle(encode_rle(full)), full)
    mask = make_mask("blob", (1080, 1920))
    assert encode_rle(mask.astype(np.uint8)) == encode_rle(mask) == encode_rle(mask.astype(np.int64) * 7)
    with pytest.raises(TypeError, match="bool"):
        encode_rle(mask.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        encode_rle(np.zeros((2, 3, 4), bool))


def test_rle_uncompressed_counts():
    mask = make_mask("sparse", (37, 23), seed=5)
    flat = mask.T.reshape(-1)
    runs, current, length = [], False, 0
    for v in flat:  # plain-Python column-major run lengths starting with the 0-run
        if v == current:
            length += 1
        else:
            runs.append(length)
            current, length = v, 1
    runs.append(length)
    np.testing.assert_array_equal(decode_rle({"size": [37, 23], "counts": runs}), mask)
    compressed = mask_api.frPyObjects({"size": [37, 23], "counts": runs}, 37, 23)
    assert encode_rle(mask)["counts"] == compressed["counts"].decode()


def test_rle_invalid():
    with pytest.raises(ValueError, match="sum"):
        decode_rle({"size": [4, 4], "counts": [3, 2]})
    with pytest.raises(ValueError, match="COCO RLE"):
        decode_rle({"counts": "06"})
    with pytest.raises(ValueError, match="truncated"):
        decode_rle({"size": [100, 100], "counts": "0`"})  # '`' (48 + 48) has the continuation bit


def test_davis_palette():
    assert isinstance(DAVIS_PALETTE, bytes) and len(DAVIS_PALETTE) == 768
    rgb = np.frombuffer(DAVIS_PALETTE, np.uint8).reshape(256, 3)
    expected = {
        0: (0, 0, 0),
        1: (128, 0, 0),
        2: (0, 128, 0),
        3: (128, 128, 0),
        4: (0, 0, 128),
        5: (128, 0, 128),
        6: (0, 128, 128),
        7: (128, 128, 128),
        8: (64, 0, 0),
        9: (192, 0, 0),
        255: (224, 224, 192),
    }
    for index, colour in expected.items():
        assert tuple(rgb[index]) == colour
    assert len({tuple(c) for c in rgb}) == 256


def test_palette_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 21, (37, 53), dtype=np.uint8)
    labels[0, 0] = 255
    path = tmp_path / "nested" / "00000.png"
    write_palette_png(path, labels)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "P"
        assert bytes(image.getpalette()[:768]) == DAVIS_PALETTE
        np.testing.assert_array_equal(np.array(image), labels)
    back = read_palette_png(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)
    # a bool mask becomes 0/1
    write_palette_png(tmp_path / "b.png", labels > 10)
    np.testing.assert_array_equal(read_palette_png(tmp_path / "b.png"), (labels > 10).astype(np.uint8))
    with pytest.raises(ValueError, match="0..255"):
        write_palette_png(tmp_path / "c.png", np.full((2, 2), 300, np.int32))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_palette_png(tmp_path / "missing.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png"):
        read_palette_png(tmp_path / "rgb.png")


# -- overlay video -----------------------------------------------------------------------------------


def overlay_inputs(t: int = 5, h: int = 61, w: int = 87):
    frames = [np.full((h, w, 3), 100, np.uint8) for _ in range(t)]
    masks = []
    for i in range(t):
        m = np.zeros((h, w), np.uint8)
        m[20:50, 10 + i : 40 + i] = 1
        m[25:45, 55:80] = 2
        masks.append(m)
    return frames, masks


def test_overlay_video(tmp_path):
    frames, masks = overlay_inputs()
    path = tmp_path / "out" / "overlay.mp4"
    out = write_overlay_video(path, iter(frames), iter(masks), fps=10, caption="the red square moving right")
    assert out == path and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["overlay.mp4"]  # no temp file left
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if h264_encoder() != "mpeg4":
            assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert float(stream.average_rate) == pytest.approx(10)
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == 5
    band = _caption_band(87, "the red square moving right").shape[0]  # added above the frame
    height = 61 + band
    assert all(d.shape == (height + height % 2, 88, 3) for d in decoded)  # odd sizes padded to even
    d = decoded[2].astype(int)
    assert d[:band].mean() < 80  # the caption band is darker than the background
    d = d[band:]  # the frame, whole
    inside1, inside2, outside = d[30:40, 20:30].mean((0, 1)), d[30:40, 60:75].mean((0, 1)), d[55, 45]
    assert np.abs(outside - 100).max() < 8  # untouched background
    assert np.abs(inside1 - (114, 50, 50)).max() < 10  # 50% of palette colour 1 (128, 0, 0)
    assert np.abs(inside2 - (50, 114, 50)).max() < 10  # 50% of palette colour 2 (0, 128, 0)
    assert np.abs(d[1:4, 1:8] - 100).max() < 8  # the frame's top rows are not covered


def test_caption_wraps_on_a_band_above_the_frame(tmp_path):
    """Issue 23: a long caption is wrapped, never cut ("the yellow triangle mov..." hid "up"/"down"), on a
    band added above the frame, the font scaled to the width."""
    import cv2

    caption = "the yellow triangle moving up and then down along the left edge of the picture"
    for width in (176, 640, 1280):
        band = _caption_band(width, caption)
        assert band.shape[1:] == (width, 3) and band.dtype == np.uint8
    scale = lambda w: max(0.35, min(1.2, w / 900))  # noqa: E731
    # every word of the caption is on some line, in order, and each line fits the width
    for width in (64, 176, 640):
        measure = lambda s, w=width: cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale(w), 1)[0][0]  # noqa: E731
        lines = _wrap(caption, width - 8, measure)
        assert " ".join(lines) == caption or "".join(lines).replace(" ", "") == caption.replace(" ", "")
        assert all(measure(line) <= width - 8 for line in lines)
    assert len(_wrap(caption, 30, len)) == 3 and " ".join(_wrap(caption, 30, len)) == caption
    assert _wrap("abcdefghij", 4, len) == ["abcd", "efgh", "ij"]  # a word longer than a line is split
    # narrow frames get more lines (a taller band), wide ones a larger font on fewer lines
    assert _caption_band(176, caption).shape[0] > _caption_band(176, "a cat").shape[0]
    # the video: the band above, then every pixel of the frame as it was (no mask drawn)
    frames = [np.full((48, 64, 3), 100, np.uint8) for _ in range(2)]
    path = write_overlay_video(tmp_path / "c.mp4", frames, [None, None], fps=5, caption=caption)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    band = _caption_band(64, caption).shape[0]
    assert band > 48 // 2  # several lines at this width
    assert decoded[0].shape == (48 + band + (48 + band) % 2, 64, 3)
    assert np.abs(decoded[0][band + 2:band + 46, 2:62].astype(int) - 100).max() < 8


def test_overlay_video_bool_masks_and_frames_objects(tmp_path):
    from ssa.io.video import read_frames

    frames, masks = overlay_inputs(t=3, h=40, w=48)
    path = write_overlay_video(
        tmp_path / "a.mp4", read_frames(np.stack(frames)), [m > 0 for m in masks[:2]] + [None], fps=5
    )
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].shape == (40, 48, 3)
    red = decoded[0][28:36, 20:32].reshape(-1, 3).mean(0)
    assert np.abs(red - (114, 50, 50)).max() < 10  # bool mask → palette colour 1 at 50%
    assert np.abs(decoded[2].astype(int) - 100).max() < 8  # None: no overlay


def test_overlay_video_overwrite_and_atomicity(tmp_path):
    frames, masks = overlay_inputs(t=3)
    path = tmp_path / "v.mp4"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="v.mp4"):
        write_overlay_video(path, frames, masks, fps=10)
    assert path.read_bytes() == b"old"
    # a failure half-way (too few masks) leaves the old file and no temporary file
    with pytest.raises(ValueError, match="masks ran out"):
        write_overlay_video(path, frames, masks[:2], fps=10, overwrite=True)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]
    with pytest.raises(ValueError, match="more masks"):
        write_overlay_video(tmp_path / "w.mp4", frames, masks + masks[:1], fps=10)
    with pytest.raises(ValueError, match="shape"):
        write_overlay_video(tmp_path / "w.mp4", frames, [m[:-1] for m in masks], fps=10)
    with pytest.raises(ValueError, match="no frames"):
        write_overlay_video(tmp_path / "w.mp4", [], [], fps=10)
    with pytest.raises(ValueError, match="fps"):
        write_overlay_video(tmp_path / "w.mp4", frames, masks, fps=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]
    write_overlay_video(path, frames, masks, fps=10, overwrite=True)
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3


# -- output directories ------------------------------------------------------------------------------

PNGS = OutputLayout("test folder", files=(r".+\.png",))  # any *.png file, whatever its content


def test_prepare_output_dir(tmp_path):
    target = tmp_path / "a" / "b"
    assert prepare_output_dir(target, overwrite=False) == target and target.is_dir()
    assert prepare_output_dir(target, overwrite=False) == target  # empty: fine
    (target / "x.png").write_bytes(b"1")
    with pytest.raises(FileExistsError, match=r"b.*overwrite=True"):
        prepare_output_dir(target, overwrite=False)
    with pytest.raises(FileExistsError, match="cannot tell"):  # overwrite needs a layout to check against
        prepare_output_dir(target, overwrite=True)
    assert prepare_output_dir(target, overwrite=True, layout=PNGS) == target
    assert (target / "x.png").read_bytes() == b"1"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        prepare_output_dir(tmp_path / "file", overwrite=True)


def test_atomic_output_dir_success_and_replace(tmp_path):
    target = tmp_path / "preds" / "video1"
    with atomic_output_dir(target) as tmp:
        assert tmp.is_dir() and tmp.parent == target.parent and not target.exists()
        (tmp / "00000.png").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["00000.png"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["video1"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        with atomic_output_dir(target):
            pass
    with atomic_output_dir(target, overwrite=True, layout=PNGS) as tmp:
        (tmp / "00001.png").write_bytes(b"newer")
    assert sorted(p.name for p in target.iterdir()) == ["00001.png"]  # replaced wholesale
    assert sorted(p.name for p in target.parent.iterdir()) == ["video1"]


def test_atomic_output_dir_failure_leaves_nothing(tmp_path):
    target = tmp_path / "video1"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(target) as tmp:
            (tmp / "00000.png").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    target.mkdir()
    (target / "keep.png").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(target, overwrite=True, layout=PNGS) as tmp:
            (tmp / "00000.png").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video1"]
    assert [p.name for p in target.iterdir()] == ["keep.png"]
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        with atomic_output_dir(tmp_path / "f", overwrite=True):
            pass
