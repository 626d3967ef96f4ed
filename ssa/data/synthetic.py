"""A synthetic motion-referring benchmark: small videos of moving shapes with referring expressions.

Deterministic (seeded) and written in the MeViS layout, so the real readers, trainer and evaluator run
on it unchanged (docs/design.md §8). Every video is built around one *story* that guarantees a kind of
expression, plus random distractors:

- ``twins``: two shapes of identical appearance (colour, shape, size) that differ only in motion
  (opposite directions, moving vs static, stopping vs moving) — expressions only time can resolve;
- ``group``: two shapes of the same kind moving the same way and one moving otherwise — multi-object
  expressions ("the two squares moving left");
- ``stop``: a shape that stops half-way beside a look-alike that keeps moving;
- ``enter_leave``: a shape entering the frame and one leaving it (absent frames have empty masks);
- ``occlusion``: a shape passing behind a larger one (masks hold the visible pixels only).

Every object has one motion label: ``moving left|right|up|down``, ``static``, ``stops``, ``entering``
or ``leaving``. Expressions are generated from attribute combinations and kept when they pick out
the intended set exactly (one object, or exactly two for "the two ..."); an expression is tagged
``motion_only`` when it names a motion and some object it does *not* refer to looks exactly like one
it does. Masks are the visible pixels of each object (objects are drawn in depth order).

Layout written by :func:`write_split`::

    root/JPEGImages/<video>/<00000>.jpg
    root/meta_expressions.json   {"videos": {vid: {"frames": [...], "objects": {obj_id: anno_id},
                                  "expressions": {exp_id: {"exp", "obj_id", "anno_id", "kind",
                                  "motion_only"}}}}}
    root/mask_dict.json          {anno_id: [COCO RLE or null per frame]}
    root/videos/<video>.mp4      (with ``mp4=True``) H.264 copies of the frames
    root/synthetic.json          the generator's arguments and version
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ssa.io import OutputLayout

__all__ = [
    "COLORS",
    "SHAPES",
    "MOTIONS",
    "STORIES",
    "SyntheticObject",
    "SyntheticExpression",
    "SyntheticVideo",
    "generate_video",
    "generate_videos",
    "write_split",
    "score_breakdown",
    "SPLIT_LAYOUT",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1

SPLIT_LAYOUT = OutputLayout(
    "synthetic split", markers=("synthetic.json",),
    files=(r"meta_expressions\.json", r"mask_dict\.json", r"synthetic\.json"),
    dirs=(("JPEGImages", OutputLayout("frame folders",
                                      dirs=((r".+", OutputLayout("frames", files=(r".+\.jpg",))),))),
          ("videos", OutputLayout("videos", files=(r".+\.mp4",)))))
"""What :func:`write_split` writes; ``overwrite`` replaces only a folder holding this and nothing else."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 210, 40),
}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS: dict[str, tuple[float, float]] = {  # (dy, dx) unit steps
    "left": (0.0, -1.0), "right": (0.0, 1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0),
}
MOTIONS = ("moving left", "moving right", "moving up", "moving down", "static", "stops", "entering",
           "leaving")
STORIES = ("twins", "group", "stop", "enter_leave", "occlusion")
_PHRASES = {
    "moving left": "moving left", "moving right": "moving right", "moving up": "moving up",
    "moving down": "moving down", "static": "that does not move", "stops": "that stops moving",
    "entering": "entering the frame", "leaving": "leaving the frame",
}
_PLURAL_PHRASES = {**_PHRASES, "static": "that do not move", "stops": "that stop moving"}


@dataclass
class SyntheticObject:
    """One shape: appearance, motion label and its per-frame centre (y, x) in pixels."""

    obj_id: int
    color: str
    shape: str
    size: int  # side / diameter in pixels
    motion: str  # one of MOTIONS
    centers: np.ndarray  # (T, 2) float, may leave the frame
    depth: int  # drawing order: larger is in front

    def appearance(self) -> tuple[str, str, int]:
        return (self.color, self.shape, self.size)


@dataclass
class SyntheticExpression:
    """A referring expression and the objects it refers to."""

    text: str
    obj_ids: list[int]
    kind: str  # "appearance", "motion", "multi"
    motion_only: bool  # appearance alone cannot tell the referents from some other object


@dataclass
class SyntheticVideo:
    """A generated video: frames, per-object visible masks, objects and expressions."""

    name: str
    story: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    masks: dict[int, np.ndarray]  # obj_id -> (T, H, W) bool, visible pixels
    objects: list[SyntheticObject]
    expressions: list[SyntheticExpression] = field(default_factory=list)

    def target(self, expression: SyntheticExpression) -> np.ndarray:
        """The expression's ground truth: the union of its objects' masks, (T, H, W) bool."""
        return np.any([self.masks[o] for o in expression.obj_ids], axis=0)


# -- drawing ------------------------------------------------------------------------------------------
def _shape_mask(shape: str, size: int, cy: float, cx: float, height: int, width: int) -> np.ndarray:
    """(H, W) bool of a shape of ``size`` pixels centred at (cy, cx)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
    r = size / 2.0
    if shape == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if shape == "circle":
        return dy * dy + dx * dx <= r * r
    if shape == "triangle":  # apex up, base at the bottom; width grows linearly with depth
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2.0)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _render(objects: list[SyntheticObject], num_frames: int, height: int, width: int,
            background: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    masks = {o.obj_id: np.zeros((num_frames, height, width), dtype=bool) for o in objects}
    order = sorted(objects, key=lambda o: o.depth)
    for t in range(num_frames):
        image = background.copy()
        covered = np.zeros((height, width), dtype=bool)
        for obj in reversed(order):  # front to back: the visible part is what nothing in front covers
            cy, cx = obj.centers[t]
            full = _shape_mask(obj.shape, obj.size, cy, cx, height, width)
            visible = full & ~covered
            masks[obj.obj_id][t] = visible
            image[visible] = COLORS[obj.color]
            covered |= full
        noise = rng.normal(0.0, 4.0, size=image.shape)
        frames[t] = np.clip(image + noise, 0, 255).astype(np.uint8)
    return frames, masks


# -- motion -------------------------------------------------------------------------------------------
def _trajectory(motion: str, start: np.ndarray, speed: float, num_frames: int, rng: np.random.Generator,
                direction: str | None = None) -> np.ndarray:
    t = np.arange(num_frames, dtype=np.float32)[:, None]
    if motion == "static":
        return np.repeat(start[None], num_frames, axis=0).astype(np.float32)
    if motion.startswith("moving "):
        direction = motion.split()[1]
    if direction is None:
        raise ValueError(f"motion {motion!r} needs a direction")
    step = np.array(DIRECTIONS[direction], dtype=np.float32) * speed
    if motion == "stops":
        stop = int(rng.integers(num_frames // 3, num_frames // 2 + 1))
        t = np.minimum(t, stop)
    return (start[None] + t * step[None]).astype(np.float32)


def _place(motion: str, size: int, speed: float, num_frames: int, height: int, width: int,
           rng: np.random.Generator, direction: str | None = None) -> np.ndarray:
    """A trajectory for ``motion`` that stays in the frame (or enters/leaves it, for those labels)."""
    half, margin = size / 2.0, 2.0
    travel = speed * (num_frames - 1)
    if motion in ("entering", "leaving"):
        direction = direction or str(rng.choice(["left", "right"]))
        dy, dx = DIRECTIONS[direction]
        # entering: starts fully outside, ends fully inside; leaving: the reverse
        extent = width if dx else height
        lo_out, hi_out = -np.ceil(half) - 1.0, extent + np.ceil(half) + 1.0
        if motion == "entering":
            start_axis = lo_out if (dx > 0 or dy > 0) else hi_out
        else:
            start_axis = (lo_out + travel) if (dx < 0 or dy < 0) else (hi_out - travel)
        other_extent = height if dx else width
        other = round(rng.uniform(half + margin, other_extent - half - margin))
        start = np.array([other, start_axis] if dx else [start_axis, other], dtype=np.float32)
        return _trajectory("moving " + direction, start, speed, num_frames, rng)
    lo = np.array([half + margin, half + margin], dtype=np.float32)
    hi = np.array([height - half - margin, width - half - margin], dtype=np.float32)
    if motion.startswith("moving ") or motion == "stops":
        direction = motion.split()[1] if motion.startswith("moving ") else (
            direction or str(rng.choice(list(DIRECTIONS))))
        step = np.array(DIRECTIONS[direction], dtype=np.float32) * travel
        lo = lo - np.minimum(step, 0)
        hi = hi - np.maximum(step, 0)
    if np.any(hi < lo):
        raise _PlacementError
    start = np.round(rng.uniform(lo, hi)).astype(np.float32)  # integral: look-alikes rasterise alike
    return _trajectory(motion, start, speed, num_frames, rng, direction)


class _PlacementError(Exception):
    pass


def _boxes_overlap(a: SyntheticObject, b: SyntheticObject, gap: float) -> bool:
    reach = (a.size + b.size) / 2.0 + gap
    d = np.abs(a.centers - b.centers)  # (T, 2)
    return bool(np.any((d[:, 0] < reach) & (d[:, 1] < reach)))


# -- stories ------------------------------------------------------------------------------------------
@dataclass
class _Spec:
    color: str
    shape: str
    size: int
    motion: str
    direction: str | None = None
    may_overlap: bool = False  # the occluder and the occluded
    depth: int = 0
    center_y: float | None = None  # fixed row (occlusion)


def _story_specs(story: str, rng: np.random.Generator, height: int, size: int) -> list[_Spec]:
    colors, shapes = list(COLORS), list(SHAPES)
    color, shape = str(rng.choice(colors)), str(rng.choice(shapes))
    dirs = list(DIRECTIONS)
    if story == "twins":
        kind = int(rng.integers(3))
        if kind == 0:  # opposite directions on the same axis
            d = str(rng.choice(dirs))
            opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[d]
            motions = ["moving " + d, "moving " + opposite]
        elif kind == 1:
            motions = ["moving " + str(rng.choice(dirs)), "static"]
        else:
            motions = ["stops", "moving " + str(rng.choice(dirs))]
        return [_Spec(color, shape, size, m) for m in motions]
    if story == "group":
        d = str(rng.choice(dirs))
        other = str(rng.choice([m for m in MOTIONS[:5] if m != "moving " + d]))
        c2 = str(rng.choice(colors))
        return [_Spec(color, shape, size, "moving " + d), _Spec(c2, shape, size, "moving " + d),
                _Spec(str(rng.choice(colors)), shape, size, other)]
    if story == "stop":
        d = str(rng.choice(dirs))
        return [_Spec(color, shape, size, "stops", direction=d),
                _Spec(color, shape, size, "moving " + str(rng.choice(dirs)))]
    if story == "enter_leave":
        c2, s2 = str(rng.choice(colors)), str(rng.choice(shapes))
        return [_Spec(color, shape, size, "entering"), _Spec(c2, s2, size, "leaving")]
    if story == "occlusion":
        d = str(rng.choice(["left", "right"]))
        row = float(round(rng.uniform(size * 1.2, height - size * 1.2)))
        big = str(rng.choice([c for c in colors if c != color]))
        return [_Spec(big, str(rng.choice(shapes)), int(size * 1.8), "static", may_overlap=True, depth=1,
                      center_y=row),
                _Spec(color, shape, size, "moving " + d, may_overlap=True, depth=0, center_y=row)]
    raise ValueError(f"unknown story {story!r}; expected one of {STORIES}")


def _distractor_spec(rng: np.random.Generator, size: int) -> _Spec:
    motion = str(rng.choice(["static", "static", "moving left", "moving right", "moving up", "moving down"]))
    return _Spec(str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)), size, motion)


def _build_objects(specs: list[_Spec], num_frames: int, height: int, width: int, speed: float,
                   rng: np.random.Generator, tries: int = 200) -> list[SyntheticObject]:
    objects: list[SyntheticObject] = []
    placed: list[_Spec] = []
    for spec in specs:
        for _ in range(tries):
            try:
                centers = _place(spec.motion, spec.size, speed, num_frames, height, width, rng,
                                 spec.direction)
            except _PlacementError:
                continue
            if spec.center_y is not None:
                if spec.motion == "static":
                    centers[:, 1] = round(width / 2.0)
                else:  # pass behind the occluder: cross the middle of the frame
                    travel = centers[-1, 1] - centers[0, 1]
                    centers[:, 1] += round(width / 2.0 - (centers[0, 1] + travel / 2.0))
                centers[:, 0] = spec.center_y
            obj = SyntheticObject(len(objects) + 1, spec.color, spec.shape, spec.size, spec.motion, centers,
                                  depth=spec.depth)
            clash = any(_boxes_overlap(obj, o, gap=3.0) for o, s in zip(objects, placed, strict=True)
                        if not (spec.may_overlap and s.may_overlap))
            if not clash:
                objects.append(obj)
                placed.append(spec)
                break
        else:
            raise _PlacementError
    return objects


# -- expressions --------------------------------------------------------------------------------------
def _describe(objects: list[SyntheticObject], rng: np.random.Generator,
              max_expressions: int) -> list[SyntheticExpression]:
    """Expressions that pick out exactly their referents, motion-only ones first."""
    candidates: dict[str, SyntheticExpression] = {}
    by_look: dict[tuple, list[int]] = {}
    for o in objects:
        by_look.setdefault(o.appearance(), []).append(o.obj_id)

    def referents(color: str | None, shape: str | None, motion: str | None) -> list[int]:
        return [o.obj_id for o in objects if (color is None or o.color == color)
                and (shape is None or o.shape == shape) and (motion is None or o.motion == motion)]

    def motion_only(ids: list[int]) -> bool:
        looks = {objects[i - 1].appearance() for i in ids}
        return any(o.obj_id not in ids and o.appearance() in looks for o in objects)

    for o in objects:
        for color in (o.color, None):
            for motion in (o.motion, None):
                ids = referents(color, o.shape, motion)
                if ids != [o.obj_id]:
                    continue
                words = ["the", color, o.shape, _PHRASES[motion] if motion else None]
                text = " ".join(w for w in words if w)
                kind = "motion" if motion else "appearance"
                mo = motion is not None and motion_only(ids)
                candidates.setdefault(text, SyntheticExpression(text, ids, kind, mo))
    for o in objects:  # "the two squares moving left", "the two red shapes"
        for color, shape, motion in ((None, o.shape, o.motion), (o.color, o.shape, o.motion),
                                     (o.color, None, None), (None, o.shape, None)):
            ids = referents(color, shape, motion)
            if len(ids) != 2:
                continue
            noun = f"{shape}s" if shape else "shapes"
            words = ["the two", color, noun, _PLURAL_PHRASES[motion] if motion else None]
            text = " ".join(w for w in words if w)
            candidates.setdefault(text, SyntheticExpression(text, ids, "multi",
                                                            motion is not None and motion_only(ids)))
    chosen = [e for e in candidates.values() if e.motion_only]
    rest = [e for e in candidates.values() if not e.motion_only]
    order = rng.permutation(len(rest))
    multi = [rest[i] for i in order if rest[i].kind == "multi"]
    single = [rest[i] for i in order if rest[i].kind != "multi"]
    chosen += multi[:1] + single + multi[1:]
    return chosen[:max_expressions]


# -- public API ---------------------------------------------------------------------------------------
def generate_video(seed: int, index: int, *, num_frames: int = 12, height: int = 96, width: int = 128,
                   story: str | None = None, max_distractors: int = 2,
                   max_expressions: int = 6) -> SyntheticVideo:
    """Generate video ``index`` of the split with ``seed`` (deterministic in both).

    The story cycles through :data:`STORIES` with ``index`` unless given.
    """
    if num_frames < 6:
        raise ValueError(f"num_frames must be >= 6 to show motion, got {num_frames}")
    if height < 48 or width < 48:
        raise ValueError(f"frames must be at least 48x48, got {height}x{width}")
    story = story or STORIES[index % len(STORIES)]
    if story not in STORIES:
        raise ValueError(f"unknown story {story!r}; expected one of {STORIES}")
    rng = np.random.default_rng([int(seed), int(index), GENERATOR_VERSION])
    size = max(8, int(round(min(height, width) * 0.2)))
    speed = float(max(1, round(0.3 * width / num_frames)))  # crosses ~30% of the width, whole pixels
    for _ in range(50):
        specs = _story_specs(story, rng, height, size)
        specs += [_distractor_spec(rng, size) for _ in range(int(rng.integers(0, max_distractors + 1)))]
        try:
            objects = _build_objects(specs, num_frames, height, width, speed, rng)
        except _PlacementError:
            continue
        shade = rng.integers(90, 160)
        background = np.full((height, width, 3), shade, dtype=np.float32) + rng.normal(0, 6.0, (1, 1, 3))
        frames, masks = _render(objects, num_frames, height, width, background, rng)
        expressions = _describe(objects, rng, max_expressions)
        if expressions:
            return SyntheticVideo(f"synth_{int(seed)}_{int(index):05d}", story, frames, masks, objects,
                                  expressions)
    raise RuntimeError(f"could not lay out story {story!r} in {height}x{width} (seed {seed}, video {index})")


def generate_videos(num_videos: int, seed: int = 0, **options) -> Iterator[SyntheticVideo]:
    """Videos ``0 .. num_videos-1`` of the split with ``seed`` (options as :func:`generate_video`)."""
    for index in range(int(num_videos)):
        yield generate_video(seed, index, **options)


def write_split(root: str | os.PathLike, num_videos: int = 200, seed: int = 0, *, num_frames: int = 12,
                height: int = 96, width: int = 128, mp4: bool = False, fps: float = 10.0,
                overwrite: bool = False, progress: bool = True,
                stories: Sequence[str] | None = None) -> Path:
    """Write a synthetic split in the MeViS layout (module docstring) to ``root`` and return it.

    ``root`` must not exist or be empty; ``overwrite`` replaces only an earlier :func:`write_split`
    output holding nothing else (:data:`SPLIT_LAYOUT`, :func:`ssa.io.check_output_dir`). The split is
    written to a temporary sibling directory and renamed into place, so an interrupted run leaves
    nothing half-written.
    ``stories`` restricts the stories (cycled with the video index).
    """
    from PIL import Image

    from ssa.io import atomic_output_dir, encode_rle, write_overlay_video

    if int(num_videos) < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    stories = tuple(stories) if stories else STORIES
    for s in stories:
        if s not in STORIES:
            raise ValueError(f"unknown story {s!r}; expected one of {STORIES}")
    root = Path(root)
    meta: dict[str, dict] = {}
    mask_dict: dict[str, list] = {}
    next_anno = 0
    with atomic_output_dir(root, overwrite=overwrite, layout=SPLIT_LAYOUT) as tmp:
        for index in tqdm(range(int(num_videos)), desc="synth", unit="video", disable=not progress):
            video = generate_video(seed, index, num_frames=num_frames, height=height, width=width,
                                   story=stories[index % len(stories)])
            frame_names = [f"{t:05d}" for t in range(num_frames)]
            folder = tmp / "JPEGImages" / video.name
            folder.mkdir(parents=True)
            for name, image in zip(frame_names, video.frames, strict=True):
                Image.fromarray(image).save(folder / f"{name}.jpg", quality=95)
            if mp4:
                write_overlay_video(tmp / "videos" / f"{video.name}.mp4", list(video.frames),
                                    [None] * num_frames, fps=fps)
            anno_of: dict[int, int] = {}
            for obj in video.objects:
                anno_of[obj.obj_id] = next_anno
                mask_dict[str(next_anno)] = [
                    encode_rle(m) if m.any() else None for m in video.masks[obj.obj_id]
                ]
                next_anno += 1
            meta[video.name] = {
                "frames": frame_names,
                "story": video.story,
                "objects": {str(o): a for o, a in anno_of.items()},
                "expressions": {
                    str(i): {"exp": e.text, "obj_id": list(e.obj_ids),
                             "anno_id": [anno_of[o] for o in e.obj_ids], "kind": e.kind,
                             "motion_only": e.motion_only}
                    for i, e in enumerate(video.expressions)
                },
            }
        (tmp / "meta_expressions.json").write_text(json.dumps({"videos": meta}))
        (tmp / "mask_dict.json").write_text(json.dumps(mask_dict))
        (tmp / "synthetic.json").write_text(json.dumps({
            "generator_version": GENERATOR_VERSION, "seed": int(seed), "videos": int(num_videos),
            "num_frames": num_frames, "height": height, "width": width, "stories": list(stories),
        }, indent=2))
    n_exp = sum(len(v["expressions"]) for v in meta.values())
    n_motion = sum(e["motion_only"] for v in meta.values() for e in v["expressions"].values())
    logger.info("wrote %d videos, %d expressions (%d motion-only) to %s", num_videos, n_exp, n_motion, root)
    return root


def score_breakdown(rows: Sequence, split_dir: str | os.PathLike) -> dict[str, dict[str, float]]:
    """J, F and J&F of evaluated expressions over all of them and over the synthetic split's groups.

    ``rows``: per-expression scores with ``video``, ``exp_id``, ``j`` and ``f`` (the ``.rows`` of
    :func:`ssa.eval.evaluate`'s summary). Groups: ``all``, ``motion-only`` (the expressions only motion
    resolves), ``multi-object`` and ``single-object``.
    """
    meta = json.loads((Path(split_dir) / "meta_expressions.json").read_text())["videos"]
    groups: dict[str, list] = {"all": [], "motion-only": [], "multi-object": [], "single-object": []}
    for row in rows:
        e = meta[row.video]["expressions"][row.exp_id]
        groups["all"].append(row)
        if e.get("motion_only"):
            groups["motion-only"].append(row)
        groups["multi-object" if len(e["obj_id"]) > 1 else "single-object"].append(row)
    from ssa.eval.metrics import summarize

    out = {}
    for name, members in groups.items():
        if members:
            scores = summarize([(r.j, r.f) for r in members])
            scores["expressions"] = scores.pop("count")
            out[name] = scores
    return out
