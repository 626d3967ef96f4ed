"""Recipe of the bundled demo model ``ssa-tiny-synthetic``: ``ssa-tiny`` trained on the synthetic
motion-referring benchmark with :func:`ssa.train.finetune`, on a CPU.

    python weights/train_ssa_tiny_synthetic.py --work /tmp/ssa-demo            # train + evaluate + ship
    python weights/train_ssa_tiny_synthetic.py --work /tmp/ssa-demo --resume   # continue an interrupted run

``--iterations 3000 6000`` trains 3000 iterations, then continues the same run to 6000 with the
learning-rate schedule restarted (a warm restart: back to the full rate, dropped again at 0.8 of 6000);
with ``--resume`` the phases already done are skipped. ``--init-from ssa/weights/ssa-tiny-synthetic
--iterations 3000 6000 9000`` continues a shipped model of this recipe (trained 3000 6000) to 9000: a
fresh run from its fp16 weights (fresh optimiser, warm-up, the full learning rate), with the same recipe.

Steps: write the training split (seed 0) and a held-out split (seed 1000, never used in training),
pretrain the CLIP text tower on the training expressions (the tiny CLIP has no pretrained weights; see
``ssa.train.text_pretraining``), train with that text tower frozen as in the paper and the CLIP visual
tower trained with the rest (it has no pretrained weights either), evaluate J&F on the held-out split
(overall and on its motion-only expressions), and write ``weights/ssa-tiny-synthetic/`` (fp16
safetensors, config, model card with the measured table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import time
from pathlib import Path

import torch

from ssa import SSAConfig, SSAPipeline
from ssa.data import MeViSDataset
from ssa.data.synthetic import STORIES, score_breakdown, write_split
from ssa.eval import evaluate
from ssa.modeling.model import SSAModel
from ssa.train import finetune, latest_checkpoint, pretrain_text_tower

HERE = Path(__file__).resolve().parent
logger = logging.getLogger("recipe")

RECIPE = {
    "num_frames": 6,
    "lr": 5e-4,
    "adapter_lr_mult": 1.0,
    "warmup_iters": 100,
    "lr_drops": [0.8],
    "unfreeze_clip": "visual",
    "log_every": 25,
    "save_every": 250,
    "eval_every": 500,
    "loss": {"num_points": 2048},
}
TEXT_PRETRAINING = {"steps": 300, "batch_size": 64, "lr": 1e-3}
# command-line options that make the recipe; a run continued with --init-from must repeat them
RECIPE_ARGS = ("train_videos", "val_videos", "train_stories", "batch_size", "experimental_motion_features")
# options of earlier versions of this recipe, retired (experiments/retired.md), and their "off" values:
# a model made with them off is a model of this recipe
RETIRED_ARGS = {"visual_pretraining": False, "all_instances": False, "empty_unmatched": False,
                "video_positive_iou": 0.0}
# options a continued run may switch on although the model it continues had them off (the new parts
# start at zero, so the continued model starts out as the one it continues)
ADDABLE_ARGS = {"experimental_motion_features": False}

# Measured effect of the pixel motion features when on from the first iteration (the model card names
# it): this recipe with the shipped model's --train-stories (twins ×4, group, stop, enter_leave,
# occlusion), 2000 iterations, held-out J&F / motion-only J&F on seed 1000 (fp32, as finetune evaluates),
# with vs without; docs/demo-model.md.
MOTION_FEATURES_EFFECT = ("same recipe, same 2000 iterations from scratch: held-out J&F 0.673 with them "
                          "against 0.595 without, motion-only 0.597 against 0.464 (seed 1000; "
                          "`docs/demo-model.md`)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="scratch directory (splits, checkpoints)")
    p.add_argument("--out", type=Path, default=HERE.parent / "ssa" / "weights" / "ssa-tiny-synthetic",
                   help="where the model goes (inside the package; weights/ssa-tiny-synthetic links there)")
    p.add_argument("--train-videos", type=int, default=400)
    p.add_argument("--val-videos", type=int, default=60)
    p.add_argument("--iterations", type=int, nargs="+", default=[3000],
                   help="schedule length; several (increasing) continue the run with the learning-rate "
                        "schedule restarted at each (warm restarts)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--train-stories", nargs="+", choices=STORIES, default=list(STORIES), metavar="STORY",
                   help="stories of the training split, cycled with the video index; repeat one to "
                        "oversample it (e.g. twins group twins stop twins enter_leave twins occlusion)")
    p.add_argument("--init-from", type=Path, default=None, metavar="MODEL_DIR",
                   help="continue a model shipped by this recipe (a directory with its results.json): a "
                        "fresh run from its weights trains the phases of --iterations after the ones it was "
                        "trained with; everything else in the recipe must be the same")
    p.add_argument("--experimental-motion-features", action="store_true",
                   help="pixel motion features (ssa.experimental.motion, not in the official network); "
                        "may be switched on when continuing a model without them (--init-from)")
    p.add_argument("--eval-only", action="store_true", help="evaluate and ship the finished run")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    schedule = args.iterations
    if schedule[0] < 1 or any(b <= a for a, b in zip(schedule[:-1], schedule[1:], strict=True)):
        raise SystemExit(f"--iterations must be positive and increasing, got {schedule}")
    recipe_args = {name: getattr(args, name) for name in RECIPE_ARGS}
    prior = _prior_run(args.init_from, schedule, recipe_args) if args.init_from else {
        "iterations": [], "train_minutes": 0.0, "fresh_starts": []}
    offset = prior["iterations"][-1] if prior["iterations"] else 0  # steps already in the weights
    fresh_starts = [*prior["fresh_starts"], offset] if offset else []  # where a run began from saved weights
    local_schedule = [n - offset for n in schedule[len(prior["iterations"]):]]  # this run's phases
    train, val = args.work / "train", args.work / "val"
    if not train.exists():
        write_split(train, args.train_videos, seed=0, stories=args.train_stories)
    written = json.loads((train / "synthetic.json").read_text())
    if (written["stories"], written["videos"]) != (args.train_stories, args.train_videos):
        raise SystemExit(f"{train} holds {written['videos']} videos of stories {written['stories']}, not the "
                         f"{args.train_videos} of {args.train_stories} asked for: use another --work")
    if not val.exists():
        write_split(val, args.val_videos, seed=1000)
    run = args.work / "run"
    started = time.perf_counter()
    if not args.eval_only:
        torch.manual_seed(0)
        config = SSAConfig.from_preset("ssa-tiny", image_size=96, max_size=128,
                                       experimental_motion_features=args.experimental_motion_features)
        if args.init_from:  # its text tower is pretrained (and frozen) already, its trunk trained
            model = SSAModel.from_pretrained(args.init_from).float()
            if model.config != config:
                model = _with_added_parts(model, config, args.init_from)
        else:
            model = SSAModel(config)
            pretrain_text_tower(model, [text for _, _, text in MeViSDataset(train).expressions()],
                                **TEXT_PRETRAINING)
        checkpoint = latest_checkpoint(run) if args.resume else None
        reached = int(checkpoint.name.removeprefix("step-")) if checkpoint else 0
        for phase, iterations in enumerate(local_schedule):
            if phase + 1 < len(local_schedule) and iterations <= reached:
                continue  # done in an earlier process; a later phase resumes from its checkpoint
            model = finetune(model, train, output_dir=run, iterations=iterations,
                             batch_size=args.batch_size, val_data=val, resume=args.resume or phase > 0,
                             allow_changes=["iterations"], **RECIPE)  # a later phase extends the run
            _record_threads(run)
    # the final model as finetune() saved it, loaded as users load it (CLIP frozen as the config says): the
    # shipped card and weights are the same whether this process trained it or --eval-only
    model = SSAModel.from_pretrained(run / "model")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    # training time from the log's throughput (robust to interruptions and resumes): each record covers
    # log_every steps of batch_size clips; a resumed run re-logs some steps, keep the last record of each
    steps = {r["step"]: r for r in log if "clips_per_s" in r}
    train_minutes = sum(RECIPE["log_every"] * args.batch_size / r["clips_per_s"] for r in steps.values()) / 60
    if max(steps) != local_schedule[-1]:
        raise SystemExit(f"{run} was trained {max(steps)} iterations, not {local_schedule[-1]}: pass the "
                         "--iterations (and --init-from) it was trained with")
    logger.info("trained %d iterations in %.1f min (this process: %.1f min)", local_schedule[-1],
                train_minutes, (time.perf_counter() - started) / 60)
    train_minutes += prior["train_minutes"]

    # evaluated as shipped: the weights rounded to fp16, loaded as fp32 (as from_pretrained does)
    model = model.half().float()
    summary = evaluate(SSAPipeline(model, device="cpu"), val, out_dir=args.work / "eval", resume=False)
    table = score_breakdown(summary.rows, val)
    logger.info("held-out J&F: %s", json.dumps(table))

    model.half().save_pretrained(args.out, weights="full", overwrite=True)
    def start(n: int) -> int:  # the step the run that trained up to n began at
        return max([0, *(s for s in fresh_starts if s < n)])

    drops = [start(n) + int(f * (n - start(n))) for n in schedule for f in RECIPE["lr_drops"]]
    iterations = f"{schedule[0]} iterations"
    if len(schedule) > 1:
        each_time = " each time" if len(schedule) > 2 else ""
        iterations += (f", then continued to {_and(schedule[1:])} with the learning rate back at "
                       f"{RECIPE['lr']:g}{each_time}\n(warm restarts; lr ×0.1 at steps "
                       f"{', '.join(map(str, drops))})")
    fresh = [n for m, n in zip(schedule[:-1], schedule[1:], strict=True) if m in fresh_starts]
    if len(fresh) == 1:
        iterations += (f"; the phase to {fresh[0]} is a fresh run from the fp16 weights of the "
                       f"{start(fresh[0])}-iteration model (new optimiser state, {RECIPE['warmup_iters']} "
                       "warm-up steps)")
    elif fresh:
        iterations += (f"; the phases to {_and(fresh)} are fresh runs, each from the fp16 weights of the "
                       f"model before it (new optimiser state, {RECIPE['warmup_iters']} warm-up steps)")
    iterations += "," if len(schedule) > 1 else ""
    stories = ", ".join(f"{s} {args.train_stories.count(s)}/{len(args.train_stories)}"
                        for s in dict.fromkeys(args.train_stories))
    rows = "\n".join(f"| {name} | {v['expressions']} | {v['J']:.3f} | {v['F']:.3f} | {v['J&F']:.3f} |"
                     for name, v in table.items())
    card = (args.out / "README.md").read_text()
    motion_line = ""
    if args.experimental_motion_features:
        since = prior.get("motion_features_since", offset if args.init_from else 0)
        motion_line = ("\n**Experimental, not in the official network:** pixel motion features "
                       "(`SSAConfig.experimental_motion_features`, `ssa.experimental.motion`), trained "
                       + (f"from step {since} on (added at zero to the {since}-iteration model)." if since
                          else f"from the start. Measured effect: {MOTION_FEATURES_EFFECT}."))
    threads = sorted({*prior.get("threads", []), *_recorded_threads(run)})  # of the processes that trained
    threads_text = ("threads not recorded" if not threads else "1 thread" if threads == [1] else
                    f"{threads[0]} threads" if len(threads) == 1 else f"{threads[0]}–{threads[-1]} threads")
    card += f"""
## ssa-tiny-synthetic: the demo model

`ssa-tiny` (the official SSA network at small widths; CLIP on timm `convnext_atto`, text width 128,
no pretrained weights) trained on the synthetic
motion-referring benchmark (`ssa synth`, {args.train_videos} videos, seed 0, stories
{stories}): the CLIP text tower pretrained
on the training expressions (`ssa.train.pretrain_text_tower`, {TEXT_PRETRAINING['steps']} steps) and then
frozen; the CLIP visual tower trained from scratch with the rest by `ssa.train.finetune`, {iterations}
of {args.batch_size} clips × {RECIPE['num_frames']} frames (short side drawn from 72-120,
flips); inference at short side 96.
Recipe: `weights/train_ssa_tiny_synthetic.py`.{motion_line}
Weights stored in fp16 (loaded as fp32).
Training time: {train_minutes:.1f} min on {platform.processor() or platform.machine()}
({threads_text}, CPU), from the training log's throughput.

Held-out synthetic split (seed 1000, {args.val_videos} videos, never seen in training), measured by
`ssa.eval.evaluate` (the same code as `ssa evaluate`) on the fp16 weights as shipped, multi-object selection
(score > 0.5):

| expressions | count | J | F | J&F |
|---|---|---|---|---|
{rows}

A toy for demos, tests and quick starts: it knows coloured squares, circles and triangles moving on a
plain background, nothing about natural videos.
"""
    (args.out / "README.md").write_text(card)
    (args.out / "results.json").write_text(json.dumps({"heldout": table, "train_minutes": train_minutes,
                                                       "threads": threads,
                                                       "iterations": schedule, "fresh_starts": fresh_starts,
                                                       "recipe": recipe_args,
                                                       **({"motion_features_since": since}
                                                          if args.experimental_motion_features else {})},
                                                      indent=2))
    logger.info("wrote %s", args.out)


def _record_threads(run: Path) -> None:
    """Add this process's CPU thread count to the run's record (the card states the training's)."""
    path = run / "threads.json"
    path.write_text(json.dumps(sorted({*_recorded_threads(run), torch.get_num_threads()})))


def _recorded_threads(run: Path) -> list[int]:
    path = run / "threads.json"
    return json.loads(path.read_text()) if path.exists() else []


def _with_added_parts(model: SSAModel, config: SSAConfig, source: Path) -> SSAModel:
    """``model`` rebuilt as ``config`` where the two differ only by ADDABLE_ARGS switched on: its weights
    copied, the added parts at their (output-neutral) initialisation."""
    added = {k for k, off in ADDABLE_ARGS.items() if getattr(model.config, k) == off != getattr(config, k)}
    if dataclasses.replace(model.config, **{k: getattr(config, k) for k in added}) != config:
        raise SystemExit(f"--init-from {source}: its config differs from this recipe's")
    grown = SSAModel(config)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("experimental_") for k in missing):
        raise SystemExit(f"--init-from {source}: cannot add {sorted(added)} (missing {missing}, "
                         f"unexpected {unexpected})")
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    for name, param in grown.named_parameters():  # frozen as the continued model was (its text tower)
        param.requires_grad_(name not in frozen)
    logger.info("continuing %s with %s switched on (added parts start at zero)", source, sorted(added))
    return grown


def _and(numbers: list[int]) -> str:
    """'1', '1 and 2', '1, 2 and 3'."""
    words = [str(n) for n in numbers]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _prior_run(model_dir: Path, schedule: list[int], recipe_args: dict) -> dict:
    """The results.json of a model shipped by this recipe that ``schedule`` continues, checked."""
    results = model_dir / "results.json"
    if not results.is_file():
        raise SystemExit(f"--init-from {model_dir}: no results.json there (not a model shipped by this "
                         "recipe)")
    prior = json.loads(results.read_text())
    done = prior["iterations"]
    if len(done) >= len(schedule) or schedule[:len(done)] != done:
        raise SystemExit(f"--init-from {model_dir} was trained with --iterations {' '.join(map(str, done))}: "
                         f"--iterations must continue that schedule, got {' '.join(map(str, schedule))}")
    if "recipe" not in prior:
        raise SystemExit(f"--init-from {model_dir}: its results.json does not state its recipe")
    ours = {**RETIRED_ARGS, **recipe_args}
    differs = {k: (v, ours.get(k)) for k, v in prior["recipe"].items() if ours.get(k) != v}
    if differs:
        raise SystemExit(f"--init-from {model_dir} was trained with another recipe (theirs, yours): "
                         f"{differs}")
    prior.setdefault("fresh_starts", [])
    return prior


if __name__ == "__main__":
    main()
