"""experiments/lookalike_coverage.py: the categories of a motion-only expression's masks."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ssa.data.synthetic import generate_videos

_SPEC = importlib.util.spec_from_file_location(
    "lookalike_coverage", Path(__file__).resolve().parent.parent / "experiments" / "lookalike_coverage.py")
lookalike = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(lookalike)


class _Oracle:
    """A stand-in pipeline that segments the target, its look-alike, both, or nothing."""

    def __init__(self, answer: str, seed: int, videos: int) -> None:
        self.answer = answer
        self.truth = {}
        for video in generate_videos(videos, seed=seed):
            for e in video.expressions:
                self.truth[(video.frames.tobytes()[:4096], e.text)] = lookalike.target_and_lookalike(video, e)

    def __call__(self, frames, text, progress=False):
        target, twin = self.truth[(frames.tobytes()[:4096], text)]
        masks = {"right": target, "wrong": twin, "both": target | twin, "none": np.zeros_like(target)}
        return SimpleNamespace(masks=masks[self.answer].astype(np.uint8))


def test_each_answer_lands_in_its_category():
    for answer, category in (("right", "right"), ("wrong", "wrong"), ("both", "both"), ("none", "other")):
        result = lookalike.coverage(_Oracle(answer, seed=5, videos=6), seed=5, videos=6)
        assert result["expressions"] > 0
        assert result["counts"] == {category: result["expressions"]}, answer
    right = lookalike.coverage(_Oracle("right", seed=5, videos=6), seed=5, videos=6)
    assert right["iou_target"] == 1.0 and right["cover_lookalike"] == 0.0


def test_the_lookalike_looks_the_same_and_is_not_referred():
    checked = 0
    for video in generate_videos(6, seed=5):
        for e in video.expressions:
            target, twin = lookalike.target_and_lookalike(video, e)
            if not e.motion_only:
                continue
            assert twin.any() and not (twin & target).all()
            others = [o for o in video.objects if o.obj_id not in e.obj_ids]
            looks = [video.objects[i - 1].appearance() for i in e.obj_ids]
            same = [o for o in others if o.appearance() in looks]
            assert np.array_equal(twin, np.any([video.masks[o.obj_id] for o in same], axis=0))
            checked += 1
    assert checked > 0
