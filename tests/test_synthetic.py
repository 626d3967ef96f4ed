"""The synthetic motion-referring benchmark: determinism, MeViS round trip, and that its hard cases are
really hard (motion-only pairs look identical in single frames)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssa.cli import main
from ssa.data import MeViSDataset
from ssa.data.synthetic import STORIES, generate_video, write_split
from ssa.io.video import read_frames


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "split"
    write_split(root, num_videos=20, seed=7, mp4=True, progress=False)
    return root


def test_deterministic_in_seed_and_index():
    a, b = generate_video(3, 5), generate_video(3, 5)
    assert np.array_equal(a.frames, b.frames)
    assert [e.text for e in a.expressions] == [e.text for e in b.expressions]
    c = generate_video(4, 5)
    assert not np.array_equal(a.frames, c.frames)


def test_round_trip_through_the_mevis_reader(split):
    ds = MeViSDataset(split)
    assert len(ds.videos) == 20
    seen = 0
    for index in range(20):
        video = generate_video(7, index, story=STORIES[index % len(STORIES)])
        assert video.name in ds.videos
        for i, expression in enumerate(video.expressions):
            sample = ds.load(ds.expressions().index((video.name, str(i), expression.text)))
            assert sample.expression == expression.text
            assert sample.object_ids == expression.obj_ids
            assert np.array_equal(sample.union, video.target(expression))  # masks are exact
            for k, obj in enumerate(expression.obj_ids):
                assert np.array_equal(sample.masks[k], video.masks[obj])
            seen += 1
        frames = np.stack(ds.load_frames(video.name)).astype(np.int16)  # JPEG: close, not exact
        assert frames.shape == video.frames.shape
        assert np.abs(frames - video.frames).mean() < 6.0  # the sensor noise, smoothed
    assert seen == len(ds)


def test_mp4_copies_decode_to_the_frames(split):
    video = generate_video(7, 0)
    frames = read_frames(split / "videos" / f"{video.name}.mp4")
    assert len(frames) == video.frames.shape[0]
    decoded = np.stack([f.image for f in frames]).astype(np.int16)
    assert decoded.shape == video.frames.shape
    assert np.abs(decoded - video.frames).mean() < 8.0


def test_split_covers_every_required_case(split):
    meta = json.loads((split / "meta_expressions.json").read_text())["videos"]
    expressions = [e for v in meta.values() for e in v["expressions"].values()]
    texts = " | ".join(e["exp"] for e in expressions)
    assert any(e["motion_only"] for e in expressions)
    # multi-object motion: "the two squares moving left"
    assert any(len(e["obj_id"]) == 2 and "moving" in e["exp"] for e in expressions)
    for phrase in ("does not move", "stops moving", "entering the frame", "leaving the frame", "moving"):
        assert phrase in texts, phrase
    assert {v["story"] for v in meta.values()} == set(STORIES)
    masks = json.loads((split / "mask_dict.json").read_text())
    assert any(r is None for rles in masks.values() for r in rles)  # absent: entered, left or hidden


def test_objects_enter_leave_and_get_occluded():
    enter = generate_video(0, 0, story="enter_leave")
    by_motion = {o.motion: o for o in enter.objects}
    area = {m: enter.masks[o.obj_id].sum(axis=(1, 2)) for m, o in by_motion.items()}
    assert area["entering"][0] == 0 and area["entering"][-1] > 0
    assert area["leaving"][0] > 0 and area["leaving"][-1] == 0

    occ = generate_video(0, 4, story="occlusion")
    mover = next(o for o in occ.objects if o.motion.startswith("moving") and o.depth == 0
                 and o.centers[0, 0] == occ.objects[0].centers[0, 0])
    visible = occ.masks[mover.obj_id].sum(axis=(1, 2))
    full = visible.max()
    assert visible.min() < full  # partly or wholly hidden behind the occluder in some frame
    others = [occ.masks[o.obj_id] for o in occ.objects if o.obj_id != mover.obj_id]
    assert not np.any(occ.masks[mover.obj_id] & np.any(others, axis=0))  # masks are visible pixels


@pytest.mark.parametrize("index", range(0, 20, 5))
def test_motion_only_pairs_are_ambiguous_in_single_frames(index):
    """Two look-alikes with different motion: some frame shows them pixel-identical (up to noise), so
    only time can tell the referent from the other one."""
    video = generate_video(1, index, story="twins")
    cases = [e for e in video.expressions if e.motion_only]
    assert cases, [e.text for e in video.expressions]
    for expression in cases:
        target = video.objects[expression.obj_ids[0] - 1]
        twin = next(o for o in video.objects if o.obj_id not in expression.obj_ids
                    and o.appearance() == target.appearance())
        identical_frames = 0
        for t in range(video.frames.shape[0]):
            a, b = video.masks[target.obj_id][t], video.masks[twin.obj_id][t]
            if not a.any() or not b.any():
                continue
            crop_a, crop_b = _crop(a), _crop(b)
            if crop_a.shape != crop_b.shape or not np.array_equal(crop_a, crop_b):
                continue
            colour_a = video.frames[t][a].astype(float).mean(axis=0)
            colour_b = video.frames[t][b].astype(float).mean(axis=0)
            if np.abs(colour_a - colour_b).max() < 3.0:  # same colour up to the sensor noise
                identical_frames += 1
        assert identical_frames > 0, expression.text
        # and the expression's motion really differs from the twin's
        assert target.motion != twin.motion


def _crop(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def test_write_split_refuses_to_overwrite(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    (root / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_split(root, num_videos=1, progress=False)
    assert (root / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs", [{"num_videos": 0}, {"num_frames": 3}, {"height": 20},
                                    {"stories": ["dance"]}])
def test_bad_arguments(tmp_path, kwargs):
    kwargs = {"num_videos": 1, **kwargs}
    with pytest.raises(ValueError):
        write_split(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


def test_cli_synth(tmp_path):
    out = tmp_path / "cli"
    assert main(["synth", "--out", str(out), "--videos", "3", "--seed", "2", "--no-progress"]) == 0
    ds = MeViSDataset(out)
    assert len(ds.videos) == 3 and len(ds) > 3
    assert main(["synth", "--out", str(out), "--videos", "3", "--no-progress"]) == 2  # exists: refused


def _write_all(split, root, transform):
    from ssa.eval import write_prediction

    for index in range(20):
        video = generate_video(7, index, story=STORIES[index % len(STORIES)])
        names = [f"{t:05d}" for t in range(video.frames.shape[0])]
        for i, expression in enumerate(video.expressions):
            write_prediction(root, video.name, str(i), names, transform(video.target(expression)))
    return root


def test_evaluating_the_synthetic_split(split, tmp_path):
    """Ground truth as predictions → J&F 1; empty predictions → the share of frames where the target
    is absent (both empty → 1, one empty → 0); shifted by 6 px → below 1."""
    from ssa.eval import evaluate

    perfect = evaluate(_write_all(split, tmp_path / "gt", lambda m: m), split, progress=False)
    assert perfect["J"] == perfect["F"] == perfect["J&F"] == 1.0
    assert perfect["videos"] == 20 and perfect["expressions"] == len(MeViSDataset(split))

    empty = evaluate(_write_all(split, tmp_path / "empty", np.zeros_like), split, progress=False)
    absent = []
    for index in range(20):
        video = generate_video(7, index, story=STORIES[index % len(STORIES)])
        absent += [float((~video.target(e).any(axis=(1, 2))).mean()) for e in video.expressions]
    assert 0 < np.mean(absent) < 1  # some targets leave, enter or hide
    assert empty["J"] == pytest.approx(np.mean(absent), abs=1e-12)
    assert empty["F"] == pytest.approx(np.mean(absent), abs=1e-12)

    shifted = evaluate(_write_all(split, tmp_path / "shift", lambda m: np.roll(m, 6, axis=2)), split,
                       progress=False)
    assert 0.2 < shifted["J&F"] < 0.95
