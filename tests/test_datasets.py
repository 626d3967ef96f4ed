"""Dataset readers and the clip sampler, on tiny splits written by hand in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssa.data import ClipSampler, MeViSDataset, RefDAVISDataset, ReferringVideoDataset, RefYouTubeVOSDataset
from ssa.io import encode_rle, write_palette_png

H, W = 24, 32


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _write_frames(root: Path, video: str, names: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder = root / "JPEGImages" / video
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(folder / f"{name}.jpg")


def _make_mevis(root: Path) -> dict[int, list[np.ndarray | None]]:
    """Two videos; anno 0 has a null frame; expression '1' of video 'a' has two anno_ids."""
    frames = {"a": ["00000", "00001", "00002"], "b": ["00000", "00001", "00002", "00003"]}
    for i, (video, names) in enumerate(frames.items()):
        _write_frames(root, video, names, seed=i)
    masks: dict[int, list[np.ndarray | None]] = {
        0: [_box(2, 8, 3, 9), None, _box(4, 12, 5, 15)],
        1: [_box(10, 20, 20, 30), _box(0, 5, 0, 5), np.zeros((H, W), bool)],
        2: [_box(1, 3, 1, 3), _box(5, 9, 5, 9), _box(10, 14, 10, 14), _box(20, 24, 28, 32)],
    }
    meta = {
        "videos": {
            "a": {
                "frames": frames["a"],
                "expressions": {
                    "0": {"exp": "the red square", "obj_id": [0], "anno_id": [0]},
                    "1": {"exp": "both squares", "obj_id": [0, 1], "anno_id": [0, 1]},
                },
            },
            "b": {
                "frames": frames["b"],
                "expressions": {"0": {"exp": "the moving dot", "obj_id": [3], "anno_id": [2]}},
            },
        }
    }
    mask_dict = {str(k): [None if m is None else encode_rle(m) for m in v] for k, v in masks.items()}
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    return masks


def _dense(ms: list[np.ndarray | None]) -> np.ndarray:
    return np.stack([np.zeros((H, W), bool) if m is None else m for m in ms])


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------------------------------------------
# MeViS


def test_mevis_reads_back_masks(tmp_path: Path) -> None:
    written = _make_mevis(tmp_path)
    ds = MeViSDataset(tmp_path)
    assert ds.has_masks and len(ds) == 3
    assert ds.expressions() == [
        ("a", "0", "the red square"),
        ("a", "1", "both squares"),
        ("b", "0", "the moving dot"),
    ]
    s = ds[1]
    assert (s.video, s.expression_id, s.expression) == ("a", "1", "both squares")
    assert s.frame_names == ["00000", "00001", "00002"]
    assert len(s.frames) == 3 and all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in s.frames)
    assert s.masks.shape == (2, 3, H, W) and s.masks.dtype == bool
    assert s.object_ids == [0, 1]
    np.testing.assert_array_equal(s.masks[0], _dense(written[0]))
    np.testing.assert_array_equal(s.masks[1], _dense(written[1]))
    np.testing.assert_array_equal(s.union, _dense(written[0]) | _dense(written[1]))
    # the null RLE of anno 0, frame 1 is an empty mask
    assert not ds[0].masks[0, 1].any() and ds[0].masks[0, 0].any()
    b = ds[2]
    assert b.masks.shape == (1, 4, H, W) and b.object_ids == [3]
    np.testing.assert_array_equal(b.union, _dense(written[2]))


def test_mevis_frames_match_files_and_subsets(tmp_path: Path) -> None:
    written = _make_mevis(tmp_path)
    ds = MeViSDataset(tmp_path)
    frames = ds.load_frames("b", ["00002"])
    expected = np.asarray(Image.open(tmp_path / "JPEGImages" / "b" / "00002.jpg").convert("RGB"))
    np.testing.assert_array_equal(frames[0], expected)
    sub = ds.load(2, frame_indices=[3, 1])
    assert sub.frame_names == ["00003", "00001"]
    np.testing.assert_array_equal(sub.masks[0], _dense([written[2][3], written[2][1]]))
    masks, ids = ds.load_masks(1)
    assert ids == [0, 1]
    np.testing.assert_array_equal(masks, ds[1].masks)


@pytest.mark.parametrize("channels", [1, 3])
def test_mevis_16_bit_png_frames_are_refused_like_every_reader(tmp_path: Path, channels: int) -> None:
    import cv2

    _make_mevis(tmp_path)
    shape = (H, W) if channels == 1 else (H, W, 3)
    for name in ("00000", "00001", "00002"):  # video "a" as 16-bit PNGs (grayscale went white, RGB passed)
        cv2.imwrite(str(tmp_path / "JPEGImages" / "a" / f"{name}.png"), np.full(shape, 300, np.uint16))
    ds = MeViSDataset(tmp_path, frame_ext=".png")
    with pytest.raises(TypeError, match=r"video 'a', frame '00000'.*16-bit"):
        ds.load_frames("a")


def test_mevis_without_mask_dict(tmp_path: Path) -> None:
    _make_mevis(tmp_path)
    (tmp_path / "mask_dict.json").unlink()
    ds = MeViSDataset(tmp_path)
    assert not ds.has_masks
    s = ds[2]
    assert s.masks.shape == (0, 4, H, W) and s.object_ids == [] and not s.has_masks
    assert len(s.frames) == 4


def test_mevis_malformed_json(tmp_path: Path) -> None:
    _make_mevis(tmp_path)
    (tmp_path / "meta_expressions.json").write_text('{"videos": {')
    with pytest.raises(ValueError, match="meta_expressions.json"):
        MeViSDataset(tmp_path)


def test_mevis_malformed_mask_dict(tmp_path: Path) -> None:
    _make_mevis(tmp_path)
    (tmp_path / "mask_dict.json").write_text("not json")
    with pytest.raises(ValueError, match="mask_dict.json"):
        MeViSDataset(tmp_path)


@pytest.mark.parametrize("key", ["frames", "expressions"])
def test_mevis_missing_video_key(tmp_path: Path, key: str) -> None:
    _make_mevis(tmp_path)
    _edit_json(tmp_path / "meta_expressions.json", lambda d: d["videos"]["b"].pop(key))
    with pytest.raises(ValueError, match=rf"meta_expressions\.json.*'b'.*{key}"):
        MeViSDataset(tmp_path)


def test_mevis_missing_expression_key(tmp_path: Path) -> None:
    _make_mevis(tmp_path)
    _edit_json(tmp_path / "meta_expressions.json", lambda d: d["videos"]["a"]["expressions"]["1"].pop("exp"))
    with pytest.raises(ValueError, match=r"meta_expressions\.json.*'a'.*'1'.*'exp'"):
        MeViSDataset(tmp_path)


def test_mevis_missing_frame_file(tmp_path: Path) -> None:
    _make_mevis(tmp_path)
    (tmp_path / "JPEGImages" / "b" / "00002.jpg").unlink()
    ds = MeViSDataset(tmp_path)
    ds[0]  # other videos still load
    with pytest.raises(FileNotFoundError, match=r"'b'.*'00002'"):
        ds[2]


def test_mevis_mask_size_mismatch(tmp_path: Path) -> None:
    _make_mevis(tmp_path)
    _edit_json(
        tmp_path / "mask_dict.json", lambda d: d["2"].__setitem__(1, encode_rle(np.zeros((H, W + 2), bool)))
    )
    ds = MeViSDataset(tmp_path)
    with pytest.raises(ValueError, match=rf"'b'.*'00001'.*{H}x{W + 2}.*{H}x{W}"):
        ds[2]


def test_mevis_unknown_anno_id(tmp_path: Path) -> None:
    _make_mevis(tmp_path)
    _edit_json(tmp_path / "mask_dict.json", lambda d: d.pop("1"))
    with pytest.raises(ValueError, match=r"'a'.*expression '1'.*anno_id 1"):
        MeViSDataset(tmp_path)


def test_mevis_anno_length_mismatch(tmp_path: Path) -> None:
    _make_mevis(tmp_path)
    _edit_json(tmp_path / "mask_dict.json", lambda d: d["2"].pop())
    with pytest.raises(ValueError, match=r"'b'.*expression '0'.*anno_id 2.*3 masks.*4 frames"):
        MeViSDataset(tmp_path)


# ---------------------------------------------------------------------------------------------------
# Ref-YouTube-VOS / Ref-DAVIS


def _make_ytvos(root: Path) -> list[np.ndarray]:
    names = ["00000", "00005", "00010"]
    _write_frames(root, "v1", names)
    labels = []
    for t, name in enumerate(names):
        lab = np.zeros((H, W), np.uint8)
        lab[2 + t : 8 + t, 2:10] = 1
        lab[12:20, 15 + t : 25 + t] = 2
        write_palette_png(root / "Annotations" / "v1" / f"{name}.png", lab)
        labels.append(lab)
    meta = {
        "videos": {
            "v1": {
                "expressions": {"0": {"exp": "a cat", "obj_id": "1"}, "1": {"exp": "a dog", "obj_id": "2"}},
                "frames": names,
            }
        }
    }
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    return labels


@pytest.mark.parametrize("cls", [RefYouTubeVOSDataset, RefDAVISDataset])
def test_ref_ytvos_selects_object_id(tmp_path: Path, cls) -> None:
    labels = np.stack(_make_ytvos(tmp_path))
    ds = cls(tmp_path)
    assert ds.has_masks and len(ds) == 2
    assert ds.expressions() == [("v1", "0", "a cat"), ("v1", "1", "a dog")]
    for i, obj in enumerate([1, 2]):
        s = ds[i]
        assert s.object_ids == [obj] and s.masks.shape == (1, 3, H, W)
        np.testing.assert_array_equal(s.union, labels == obj)


def test_ref_ytvos_errors(tmp_path: Path) -> None:
    _make_ytvos(tmp_path)
    write_palette_png(tmp_path / "Annotations" / "v1" / "00005.png", np.zeros((H + 1, W), np.uint8))
    (tmp_path / "Annotations" / "v1" / "00010.png").unlink()
    ds = RefYouTubeVOSDataset(tmp_path)
    with pytest.raises(ValueError, match=rf"'v1'.*'00005'.*{H + 1}x{W}.*{H}x{W}"):
        ds.load(0, [1])
    with pytest.raises(FileNotFoundError, match=r"'v1'.*'00010'"):
        ds.load(0, [2])
    meta = tmp_path / "meta_expressions.json"
    _edit_json(meta, lambda d: d["videos"]["v1"]["expressions"]["1"].pop("obj_id"))
    with pytest.raises(ValueError, match=r"meta_expressions\.json.*'v1'.*obj_id"):
        RefYouTubeVOSDataset(tmp_path)


# ---------------------------------------------------------------------------------------------------
# names from meta_expressions.json never lead out of the split (issue 25)

STOLEN = "../../../outside_img/stolen"  # from <split>/JPEGImages/<video>/ to <split>/../outside_img/


def _split_reaching_outside(tmp_path: Path, field: str, value: str, masks: bool = False) -> Path:
    """A split whose video 'v' (frames 00000, 00001) has ``value`` as a frame name, its video id or an
    expression id; an image lies where a frame name ``STOLEN`` would lead."""
    root = tmp_path / "split"
    _write_frames(root, "v", ["00000", "00001"])
    (tmp_path / "outside_img").mkdir()
    Image.fromarray(np.full((H, W, 3), 7, np.uint8)).save(tmp_path / "outside_img" / "stolen.jpg")
    frames = ["00000", value if field == "frame" else "00001"]
    video = value if field == "video" else "v"
    exp_id = value if field == "exp" else "0"
    expression = {"exp": "the square", "obj_id": [1], "anno_id": [0]}
    meta = {"videos": {video: {"frames": frames, "expressions": {exp_id: expression}}}}
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    if masks:
        (root / "mask_dict.json").write_text(json.dumps({"0": [encode_rle(_box(2, 8, 3, 9))] * 2}))
    return root


@pytest.mark.parametrize("cls", [MeViSDataset, RefYouTubeVOSDataset])
@pytest.mark.parametrize("field, value", [
    ("frame", STOLEN), ("frame", "/etc/passwd"), ("frame", "a\0b"), ("frame", ".."), ("frame", "sub\\x"),
    ("video", "../outside_img"), ("video", "/tmp"), ("exp", "../0"),
])
def test_names_leading_out_of_the_split_are_refused(tmp_path: Path, monkeypatch, cls, field: str,
                                                     value: str) -> None:
    root = _split_reaching_outside(tmp_path, field, value)
    outside = (tmp_path / "outside_img" / "stolen.jpg").read_bytes()
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(str(fp)) or real_open(fp, *a, **k))
    what = {"frame": "frame name", "video": "video id", "exp": "expression id"}[field]
    with pytest.raises(ValueError, match=rf"meta_expressions\.json.*{what} .*outside the split"):
        cls(root)
    assert not [p for p in opened if "outside_img" in p]  # nothing outside was read
    assert (tmp_path / "outside_img" / "stolen.jpg").read_bytes() == outside


def test_paths_asked_for_directly_stay_inside(tmp_path: Path) -> None:
    root = _split_reaching_outside(tmp_path, "frame", "00001", masks=True)
    ds = MeViSDataset(root)
    assert len(ds.load_frames("v")) == 2
    with pytest.raises(ValueError, match="frame name"):
        ds.load_frames("v", [STOLEN])
    with pytest.raises(ValueError, match="video id"):
        ds.frame_path("../outside_img", "stolen")


def test_train_refuses_a_split_reaching_outside(tmp_path: Path, caplog) -> None:
    """`ssa train` used to train on the image outside the split, silently."""
    from ssa.cli import main

    root = _split_reaching_outside(tmp_path, "frame", STOLEN, masks=True)
    rc = main(["train", "--model", "ssa-tiny", "--data", str(root), "--out", str(tmp_path / "run"),
               "--iterations", "1", "--batch-size", "1", "--no-progress"])
    assert rc == 2 and "frame name" in caplog.text and STOLEN in caplog.text
    assert not (tmp_path / "run").exists()
    assert (tmp_path / "outside_img" / "stolen.jpg").is_file()


# ---------------------------------------------------------------------------------------------------
# ClipSampler


@pytest.mark.parametrize("length", [8, 9, 30, 100])
def test_clip_sampler_range_window_sorted(length: int) -> None:
    sampler = ClipSampler(num_frames=8, window=10, rng=np.random.default_rng(0))
    for _ in range(200):
        clip = sampler.sample(length, np.ones(length, bool))
        assert len(clip) == 8 and len(set(clip)) == 8
        assert clip == sorted(clip)
        assert 0 <= clip[0] and clip[-1] < length
        assert clip[-1] - clip[0] <= 20  # all within ±10 of one reference frame


def test_clip_sampler_includes_visible_frame() -> None:
    for seed in range(50):
        visible = np.zeros(200, bool)
        visible[137] = True  # a random window rarely hits it; the fallback must
        clip = ClipSampler(num_frames=8, window=10, max_tries=3, rng=np.random.default_rng(seed)).sample(
            200, visible
        )
        assert 137 in clip and clip == sorted(clip) and len(set(clip)) == 8


def test_clip_sampler_never_visible_and_deterministic(caplog) -> None:
    with caplog.at_level("DEBUG", logger="ssa.data.datasets"):
        clip = ClipSampler(rng=np.random.default_rng(1)).sample(50, np.zeros(50, bool))
    assert len(clip) == 8 and "never visible" in caplog.text
    visible = np.random.default_rng(5).random(300) < 0.05
    a = [ClipSampler(rng=np.random.default_rng(7)).sample(300, visible) for _ in range(3)]
    s1, s2 = ClipSampler(rng=np.random.default_rng(7)), ClipSampler(rng=np.random.default_rng(7))
    assert [s1.sample(300, visible) for _ in range(20)] == [s2.sample(300, visible) for _ in range(20)]
    assert a[0] == a[1] == a[2]


def test_clip_sampler_short_video() -> None:
    sampler = ClipSampler(num_frames=8, rng=np.random.default_rng(0))
    for length in (1, 3, 7):
        clip = sampler.sample(length, np.ones(length, bool))
        assert len(clip) == 8 and clip == sorted(clip)
        assert set(clip) == set(range(length))  # every frame at least once, repeats fill the rest


def test_clip_sampler_small_window_widened() -> None:
    clip = ClipSampler(num_frames=8, window=1, rng=np.random.default_rng(0)).sample(50)
    assert len(set(clip)) == 8 and clip[-1] - clip[0] == 7
    with pytest.raises(ValueError, match="shape"):
        ClipSampler().sample(10, np.ones(9, bool))


class _BoxDataset(ReferringVideoDataset):
    """A new dataset written against the public base class: each expression carries its object's box."""

    def __init__(self, root: Path) -> None:
        self.has_masks = True
        super().__init__(root)

    def parse_expression(self, video: str, exp_id: str, exp: dict, where: str) -> dict:
        if not (isinstance(exp.get("box"), list) and len(exp["box"]) == 4):
            raise ValueError(f"{where}: 'box' must be [y0, y1, x0, x1]")
        return {"exp": exp["exp"], "box": exp["box"]}

    def read_masks(self, video: str, exp_id: str, frame_names: list[str], size: tuple[int, int]
                   ) -> tuple[np.ndarray, list[int]]:
        y0, y1, x0, x1 = self._expressions[(video, exp_id)]["box"]
        mask = np.zeros((1, len(frame_names), *size), dtype=bool)
        mask[:, :, y0:y1, x0:x1] = True
        return mask, [0]


def test_a_new_dataset_subclasses_the_public_base_class(tmp_path: Path) -> None:
    from ssa.train.data import ReferringClips

    _write_frames(tmp_path, "v", [f"{i:05d}" for i in range(8)])
    meta = {"videos": {"v": {"frames": [f"{i:05d}" for i in range(8)],
                             "expressions": {"0": {"exp": "the box", "box": [2, 10, 4, 12]}}}}}
    (tmp_path / "meta_expressions.json").write_text(json.dumps(meta))
    ds = _BoxDataset(tmp_path)
    sample = ds.load(0, [1, 3])
    assert sample.expression == "the box" and sample.masks.shape == (1, 2, H, W)
    assert sample.masks[0, :, 2:10, 4:12].all() and sample.masks.sum() == 2 * 8 * 8
    item = ReferringClips(ds, num_frames=4, scales=[2 * H], hflip=False)[(0, 0)]
    assert item["frames"].shape == (4, 3, 2 * H, 2 * W) and item["masks"].shape == (1, 4, 2 * H, 2 * W)
    assert item["masks"].sum() == 4 * 16 * 16
    meta["videos"]["v"]["expressions"]["0"].pop("box")
    (tmp_path / "meta_expressions.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'box' must be"):
        _BoxDataset(tmp_path)
