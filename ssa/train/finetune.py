"""``finetune()``: train SSA on a referring dataset (docs/design.md §5) on a CPU, one GPU or many (torchrun).

The recipe: AdamW (lr 5e-4, weight decay 0.05) on the trainable parameters only, linear warm-up then
step decay, full-model gradient-norm clipping, gradient accumulation, AMP on CUDA (fp16 with a grad
scaler, or bf16), DDP under ``torchrun`` (NCCL on GPU, gloo on CPU) with only rank 0 writing.
Checkpoints are ``save_pretrained`` directories plus the training state, written to a temporary
directory and renamed into place; ``resume=True`` continues exactly from the newest one that reads back
whole, with the checkpoint's training config (changes are refused but for :data:`RESUMABLE_FIELDS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import pickle
import re
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ssa.config import PRESETS, SSAConfig, check_field_types
from ssa.distributed import ProcessGroup, torchrun_group
from ssa.eval.evaluate import EVALUATION_LAYOUT
from ssa.io import (
    OutputLayout,
    atomic_write,
    atomic_write_text,
    check_output_dir,
    remove_stale_temporaries,
)
from ssa.modeling.model import SSAModel
from ssa.train.data import ReferringClips, batch_keys, collate_clips
from ssa.train.losses import LossConfig, SSACriterion

__all__ = ["TrainConfig", "finetune", "latest_checkpoint", "TRAINING_LAYOUT", "RESUMABLE_FIELDS"]

logger = logging.getLogger(__name__)

STATE_NAME = "training_state.pt"
TRAIN_CONFIG_NAME = "train_config.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
RESUMABLE_FIELDS = ("iterations", "eval_every", "log_every", "save_every", "keep_checkpoints", "num_workers",
                    "activation_checkpointing")
"""The :class:`TrainConfig` fields a resumed run may change (``finetune(allow_changes=...)``, ``ssa train
--allow-change``): how long the run goes and how often it logs, saves and evaluates, not what a step
computes."""

TRAINING_LAYOUT = OutputLayout(
    "training output", markers=(TRAIN_CONFIG_NAME,), files=(re.escape(TRAIN_CONFIG_NAME), r"log\.jsonl"),
    dirs=(("checkpoints", OutputLayout("checkpoints", dirs=((r"step-\d+", None),))),
          ("eval", OutputLayout("evaluations", dirs=((r"step-\d+", EVALUATION_LAYOUT),))),
          ("model", OutputLayout("model", files=(r"config\.json", r"model\.safetensors", r"README\.md")))))
"""What :func:`finetune` writes into ``output_dir``; ``resume`` continues only in a folder holding this
and nothing else."""


@dataclass
class TrainConfig:
    """Everything about a fine-tuning run except the model and the data.

    The defaults are the official MeViS recipe (``configs/mevis/ssa_clip_bs8.yaml``): AdamW at 5e-5 with
    the adapters at x0.1, weight decay 0.05, 8 clips of 8 frames per step, 75,000 iterations with lr x0.1
    at 55,000 and 70,000, full-model gradient norm clipped at 0.01, mixed precision on CUDA. The paper's
    text gives 5e-4 and 50,000 iterations (``lr=5e-4, iterations=50_000``).
    """

    iterations: int = 75_000
    batch_size: int = 8  # clips per optimiser step, over all ranks and accumulation steps
    num_frames: int = 8
    window: int = 10  # clip frames within ±window of a reference frame
    lr: float = 5e-5
    adapter_lr_mult: float = 0.1  # the adapters' lr is lr x this (the official BACKBONE_MULTIPLIER)
    weight_decay: float = 0.05  # not applied to norm layers and embeddings (the official groups)
    warmup_iters: int = 100  # linear warm-up from lr/100
    lr_drops: list[float] = field(default_factory=lambda: [55 / 75, 70 / 75])  # fractions of `iterations`
    lr_gamma: float = 0.1  # step decay factor at each drop
    grad_clip: float = 0.01  # max global grad norm (full model); 0 disables
    grad_accum: int = 1
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    seed: int = 0
    scales: list[int] | None = None  # training short sides; default: the model's image_size ± 25%
    crop: int | None = None  # random square crop side, or None
    hflip: bool = True
    # train the CLIP too: True (both towers) or "visual" (its visual tower only); for CLIPs without
    # pretrained weights such as the tiny demo model's
    unfreeze_clip: bool | str = False
    # activation checkpointing (memory for compute; same results): False, True (the visual pass and the
    # decoders), "trunk" (CLIP stages 1-3 with their adapters) or "decoders" (pixel and frame decoders)
    activation_checkpointing: bool | str = False
    num_workers: int = 0
    log_every: int = 20
    save_every: int = 1000
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0: only at the end (when val_data is given)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if isinstance(self.loss, dict):
            self.loss = LossConfig.from_dict(self.loss)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError (:class:`~ssa.config.ConfigTypeError` for a wrong type, e.g. ``"false"`` for a
        bool) naming the first bad field."""
        check_field_types(self)
        positive = ("iterations", "batch_size", "num_frames", "grad_accum", "log_every", "save_every",
                    "keep_checkpoints")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        for name in ("window", "warmup_iters", "num_workers", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be a non-negative integer, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if self.unfreeze_clip not in (False, True, "visual"):
            raise ValueError(
                f"TrainConfig.unfreeze_clip must be False, True or 'visual', got {self.unfreeze_clip!r}"
            )
        if not (self.adapter_lr_mult > 0 and math.isfinite(self.adapter_lr_mult)):
            raise ValueError(f"TrainConfig.adapter_lr_mult must be a positive number, "
                             f"got {self.adapter_lr_mult!r}")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {value!r}")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"TrainConfig.lr_gamma must be in (0, 1], got {self.lr_gamma!r}")
        if any(not 0 < f < 1 for f in self.lr_drops):
            raise ValueError(f"TrainConfig.lr_drops must be fractions in (0, 1), got {self.lr_drops}")
        if self.activation_checkpointing not in (False, True, "trunk", "decoders"):
            raise ValueError("TrainConfig.activation_checkpointing must be False, True, 'trunk' or "
                             f"'decoders', got {self.activation_checkpointing!r}")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"TrainConfig.precision must be auto|fp32|fp16|bf16, got {self.precision!r}")
        if self.scales is not None and (not self.scales or min(self.scales) < 32):
            raise ValueError(f"TrainConfig.scales must be short sides >= 32, got {self.scales}")
        if self.crop is not None and self.crop < 1:
            raise ValueError(f"TrainConfig.crop must be a positive integer or None, got {self.crop}")
        self.loss.validate()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["loss"] = self.loss.to_dict()
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Strict: unknown keys raise ValueError (a typo must not be silently ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {sorted(unknown)}; known: {sorted(names)}")
        values = dict(values)
        if isinstance(values.get("loss"), dict):
            values["loss"] = LossConfig.from_dict(values["loss"])
        cfg = cls(**values)
        cfg.validate()
        return cfg


# -- distributed ------------------------------------------------------------------------------------
def _pick_device(device: str | torch.device | None, d: ProcessGroup) -> torch.device:
    if device is None:
        device = f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    return device


# -- model, data, optimiser ------------------------------------------------------------------------
class RandomCLIPWarning(UserWarning):
    """A fresh model from a preset without pretrained CLIP weights would train on a random frozen CLIP."""


def _build_model(model_or_name: SSAModel | str | os.PathLike, seed: int,
                 unfreeze_clip: bool | str = False) -> SSAModel:
    if isinstance(model_or_name, SSAModel):
        return model_or_name
    if not isinstance(model_or_name, str | os.PathLike):
        raise TypeError(
            f"model_or_name must be an SSAModel, a preset name, a checkpoint dir or a Hub repo id, got "
            f"{type(model_or_name).__name__}"
        )
    name = str(model_or_name)
    if name in PRESETS and not Path(name).exists():
        config = SSAConfig.from_preset(name)
        if not config.clip_pretrained and unfreeze_clip is not True:
            frozen = "its text tower" if unfreeze_clip == "visual" else "both towers"
            warnings.warn(
                f"preset {name!r} has no pretrained CLIP weights: its CLIP is random and {frozen} stay "
                "frozen, so the expressions' features carry no meaning and training cannot learn to "
                "refer. Pretrain the text tower first (ssa.train.pretrain_text_tower, then "
                "unfreeze_clip='visual'; README, Training) or start from a checkpoint.",
                RandomCLIPWarning, stacklevel=4)
        torch.manual_seed(seed)  # same initial weights on every rank and every run
        return SSAModel(config)
    return SSAModel.from_pretrained(name)


def _load_dataset(data: Any) -> Any:
    from ssa.data.datasets import MeViSDataset, ReferringVideoDataset

    if isinstance(data, ReferringVideoDataset):
        return data
    if isinstance(data, str | os.PathLike):
        root = Path(data)
        if not root.exists():
            raise FileNotFoundError(f"training data {root} does not exist")
        return MeViSDataset(root)
    raise TypeError(
        f"train_data must be a dataset directory or an ssa.data dataset, got {type(data).__name__}"
    )


_NO_DECAY = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.Embedding,
             nn.modules.batchnorm._NormBase)


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups as the official recipe: no weight decay on the parameters of norm layers and of
    ``nn.Embedding`` (``WEIGHT_DECAY_NORM`` / ``WEIGHT_DECAY_EMBED`` 0), ``weight_decay`` on every other
    parameter (biases, layer scales and free parameters such as ``level_embed`` included); the adapters
    at ``adapter_lr_mult`` x lr."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (adapter, decay): [] for adapter in (False, True) for decay in (True, False)}
    for module_name, module in model.named_modules():
        decay = not isinstance(module, _NO_DECAY)
        for name, p in module.named_parameters(prefix=module_name, recurse=False):
            if p.requires_grad:
                groups[(name.startswith("adapters."), decay)].append(p)
    return [{"params": params, "weight_decay": cfg.weight_decay if decay else 0.0,
             "lr": cfg.lr * (cfg.adapter_lr_mult if adapter else 1.0)}
            for (adapter, decay), params in groups.items()]


def pad_masks(masks: list[Tensor], grid: Sequence[int]) -> list[Tensor]:
    """Masks (K, T, h, w) zero-padded bottom/right to the frames' padded size, 4x the stride-4 ``grid``
    of the predictions (as the model pads the frames), so that predictions and targets cover the same
    pixels."""
    hp, wp = 4 * int(grid[0]), 4 * int(grid[1])
    return [F.pad(m, (0, max(0, wp - m.shape[-1]), 0, max(0, hp - m.shape[-2]))) for m in masks]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at optimiser step ``step``: linear warm-up, then step decay."""
    if step < cfg.warmup_iters:
        return 0.01 + 0.99 * step / cfg.warmup_iters
    drops = sum(step >= int(f * cfg.iterations) for f in cfg.lr_drops)
    return cfg.lr_gamma ** drops


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- checkpoints ------------------------------------------------------------------------------------
def _weights_kind(cfg: TrainConfig) -> str:
    """A trained CLIP must be saved with the rest; a frozen one is left to save_pretrained's "auto"."""
    return "full" if cfg.unfreeze_clip else "auto"


def _checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint directories ``output_dir/checkpoints/step-N``, newest first."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    steps = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(steps, reverse=True)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint ``output_dir/checkpoints/step-N`` or None.

    A checkpoint directory appears only by an atomic rename once everything in it is written, so a
    ``step-N`` directory is complete unless damaged later; temporary directories of an interrupted write
    are ignored. ``finetune(resume=True)`` skips a damaged one (with a warning) for the next older one.
    """
    found = _checkpoints(output_dir)
    return found[0] if found else None


def _write_error(what: str, path: Path, err: OSError) -> OSError:
    """A one-line ``OSError`` (same errno) saying which write failed, e.g. on a full disk."""
    reason = err.strerror or str(err)
    return OSError(err.errno, f"could not write {what} {path}: {reason}")


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Drop the INFO records of logger ``name`` for the duration (warnings and errors still show)."""
    log = logging.getLogger(name)

    def drop_info(record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO

    log.addFilter(drop_info)
    try:
        yield
    finally:
        log.removeFilter(drop_info)


def _save_checkpoint(output_dir: Path, step: int, model: SSAModel, optimizer: torch.optim.Optimizer,
                     scheduler: Any, scaler: Any, cfg: TrainConfig) -> Path:
    folder = output_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:07d}"
    try:  # the same step written again (e.g. a resumed run) is replaced
        with atomic_write(final, directory=True, check=False) as tmp:
            with _quiet("ssa.hub"):  # not "saved ... to <temporary folder>": the final path is logged below
                model.save_pretrained(tmp / "model", weights=_weights_kind(cfg))
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            }
            buffer = io.BytesIO()  # torch reports a failed write (a full disk) as a RuntimeError
            torch.save(state, buffer)
            with open(tmp / STATE_NAME, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            del buffer
            with open(tmp / TRAIN_CONFIG_NAME, "w", encoding="utf-8") as f:
                f.write(json.dumps(cfg.to_dict(), indent=2))
                f.flush()
                os.fsync(f.fileno())
    except OSError as err:
        raise _write_error("the checkpoint", final, err) from err
    for p in _checkpoints(output_dir)[cfg.keep_checkpoints:]:
        shutil.rmtree(p, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


_STATE_KEYS = ("step", "optimizer", "scheduler", "torch_rng")
# What reading a damaged checkpoint raises (torch.load: RuntimeError, UnpicklingError, EOFError).
_DAMAGE = (OSError, ValueError, TypeError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError)


@dataclass
class _Checkpoint:
    """A checkpoint read back whole and checked: its step, training config, weights and training state."""

    path: Path
    step: int
    config: TrainConfig
    weights: dict[str, Tensor]
    state: dict[str, Any]


def _read_train_config(path: Path) -> TrainConfig:
    file = path / TRAIN_CONFIG_NAME
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err})") from err
    if not isinstance(values, dict):
        raise ValueError(f"{file} does not hold a JSON object")
    return TrainConfig.from_dict(values)


def _read_checkpoint(path: Path, config: TrainConfig) -> _Checkpoint:
    """The weights and training state of the checkpoint ``path`` (whose config was read), checked:
    raises one of ``_DAMAGE`` saying what is wrong."""
    from ssa.hub import read_checkpoint

    _, weights = read_checkpoint(SSAModel, path / "model")
    try:
        state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as err:
        reason = re.split(r"\.\s|\n", str(err).strip(), maxsplit=1)[0] or type(err).__name__
        raise ValueError(f"{path / STATE_NAME} cannot be read ({reason})") from err
    if not isinstance(state, dict) or any(k not in state for k in _STATE_KEYS):
        raise ValueError(f"{path / STATE_NAME} lacks the training state ({', '.join(_STATE_KEYS)})")
    step = int(_STEP_DIR.match(path.name).group(1))  # type: ignore[union-attr]
    if state["step"] != step:
        raise ValueError(f"{path / STATE_NAME} is the state of step {state['step']!r}, not {step}")
    return _Checkpoint(path, step, config, weights, state)


def _flat_config(cfg: TrainConfig) -> dict[str, Any]:
    """Field → JSON value, the loss's fields as ``loss.<name>`` (tuples and lists compare equal)."""
    values = json.loads(json.dumps(cfg.to_dict()))
    loss = values.pop("loss")
    return {**values, **{f"loss.{k}": v for k, v in loss.items()}}


def _resumed_config(requested: TrainConfig, given: dict[str, Any] | None, saved: TrainConfig,
                    allow_changes: Sequence[str], path: Path) -> TrainConfig:
    """The config a run resumed from the checkpoint ``path`` (trained with ``saved``) goes on with.

    ``given``: the fields passed one by one when no whole config was (the others are then the
    checkpoint's); None: ``requested`` is the whole config asked for. A field differing from the
    checkpoint's raises ``ValueError`` naming it, unless it is in ``allow_changes``.
    """
    if given is not None:
        requested = dataclasses.replace(saved, **given)
    before, after = _flat_config(saved), _flat_config(requested)
    changed = [name for name in before if before[name] != after[name]]
    refused = [name for name in changed if name not in allow_changes]
    if refused:
        diffs = ", ".join(f"{name} ({before[name]!r} -> {after[name]!r})" for name in refused)
        safe = [name for name in refused if name in RESUMABLE_FIELDS]
        unsafe = [name for name in refused if name not in RESUMABLE_FIELDS]
        advice = []
        if safe:
            advice.append(f"to change {', '.join(safe)}, pass allow_changes={safe!r} (ssa train "
                          f"--allow-change {','.join(safe)})")
        if unsafe:
            advice.append(f"{', '.join(unsafe)} cannot change in a resumed run (only "
                          f"{', '.join(RESUMABLE_FIELDS)} can): give the checkpoint's values or leave them "
                          "out (a resumed run takes them from its checkpoint), or start a new run in another "
                          "output folder")
        raise ValueError(f"cannot resume from {path}: the requested training config differs from the "
                         f"checkpoint's in {diffs}; " + "; ".join(advice))
    if changed:
        logger.info("resuming with %s changed as allowed", ", ".join(
            f"{name} {before[name]!r} -> {after[name]!r}" for name in changed))
    return requested


def _resume_point(output_dir: Path, requested: TrainConfig, given: dict[str, Any] | None,
                  allow_changes: Sequence[str]) -> tuple[TrainConfig, _Checkpoint | None]:
    """The config to go on with and the newest checkpoint that reads back whole (None: none at all).

    Checkpoints are tried newest first: one that cannot be read (files missing, truncated or corrupt,
    NaN weights, ...) is skipped with a warning naming it and why; when none can, ``ValueError`` lists
    them. A config differing from the checkpoint's raises at once (:func:`_resumed_config`).
    """
    found = _checkpoints(output_dir)
    if not found:
        logger.info("resume=True but no checkpoint in %s: starting from step 0", output_dir)
        return requested, None
    problems = []
    for path in found:
        try:
            saved = _read_train_config(path)
        except _DAMAGE as err:
            problems.append(f"{path.name}: {err}")
            logger.warning("skipping the damaged checkpoint %s: %s", path, err)
            continue
        cfg = _resumed_config(requested, given, saved, allow_changes, path)
        try:
            return cfg, _read_checkpoint(path, saved)
        except _DAMAGE as err:
            problems.append(f"{path.name}: {err}")
            logger.warning("skipping the damaged checkpoint %s: %s", path, err)
    raise ValueError(f"cannot resume in {output_dir}: none of its {len(found)} checkpoint(s) can be read "
                     f"({'; '.join(problems)}); move the damaged ones away to start over from step 0")


def _apply_checkpoint(ckpt: _Checkpoint, model: SSAModel, optimizer: torch.optim.Optimizer, scheduler: Any,
                      scaler: Any) -> None:
    """Weights, optimiser, schedule and scaler from a checkpoint read back whole (the RNG states are
    restored by the caller once the data loader has drawn its seed)."""
    own = model.state_dict()
    unexpected = [k for k in ckpt.weights if k not in own]
    missing = [k for k in own if k not in ckpt.weights and not k.startswith("backbone.")]
    wrong = [k for k, t in ckpt.weights.items() if k in own and tuple(t.shape) != tuple(own[k].shape)]
    if unexpected or missing or wrong:
        raise ValueError(
            f"checkpoint {ckpt.path} is of another network than the model being trained: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}, other shapes {wrong[:5]}"
        )
    model.load_state_dict(ckpt.weights, strict=False)
    optimizer.load_state_dict(ckpt.state["optimizer"])
    scheduler.load_state_dict(ckpt.state["scheduler"])
    if scaler is not None and ckpt.state.get("scaler") is not None:
        scaler.load_state_dict(ckpt.state["scaler"])


def _cut_log(log_path: Path, step: int) -> None:
    """Keep the records of ``log.jsonl`` up to ``step`` (where a resumed run goes on from): the steps an
    interrupted run logged after its last checkpoint are done again and logged anew."""
    if not log_path.is_file():
        return
    kept, dropped = [], 0
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and int(record["step"]) <= step
        except (ValueError, KeyError, TypeError):  # a line cut short by the kill
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(log_path, "".join(line + "\n" for line in kept), overwrite=True)
        logger.info("%s: dropped %d record(s) after step %d (the interrupted run's)", log_path, dropped, step)


# -- the loop ---------------------------------------------------------------------------------------
def finetune(
    model_or_name: SSAModel | str | os.PathLike,
    train_data: Any,
    *,
    output_dir: str | os.PathLike,
    iterations: int | None = None,
    batch_size: int | None = None,
    num_frames: int | None = None,
    lr: float | None = None,
    val_data: Any = None,
    config: TrainConfig | None = None,
    resume: bool = False,
    allow_changes: Sequence[str] = (),
    device: str | torch.device | None = None,
    progress: bool = True,
    **overrides: Any,
) -> SSAModel:
    """Fine-tune an SSA model on a referring dataset and return it (eval mode, on ``device``).

    Args:
        model_or_name: an :class:`SSAModel`, a preset name (a fresh model, e.g. ``"ssa-tiny"``), a
            checkpoint directory or a Hub repo id.
        train_data: a MeViS-layout directory (e.g. from ``ssa synth``) or an ``ssa.data`` dataset.
        output_dir: where checkpoints (``checkpoints/step-N``), the log (``log.jsonl``), evaluations
            and the final model (``model/``) go. Must be new or empty unless ``resume``, which continues
            only in an earlier run's folder holding nothing else (:data:`TRAINING_LAYOUT`); never the
            current or home directory or a folder holding the data or the model
            (:func:`ssa.io.check_output_dir`).
        iterations, batch_size, num_frames, lr, **overrides: :class:`TrainConfig` fields (override
            ``config``). ``batch_size`` is the global number of clips per optimiser step.
        val_data: a MeViS-layout split evaluated every ``eval_every`` steps and at the end (rank 0); it
            may change when resuming.
        resume: continue from the newest checkpoint in ``output_dir`` that reads back whole (exactly:
            weights, optimiser, schedule, RNG and data position); a damaged newer one is skipped with a
            warning naming it, ``ValueError`` when none can be read. The training config must be the
            checkpoint's: without ``config`` the checkpoint's is reused, with the fields given here
            compared to it; a given ``config`` is compared whole. A difference raises ``ValueError``
            naming the fields, except for those in ``allow_changes``. ``log.jsonl`` is cut back to the
            checkpoint's step (the steps after it are trained and logged again).
        allow_changes: the fields a resumed run may change, among :data:`RESUMABLE_FIELDS`:
            ``iterations`` (extend or shorten the run; the lr drops, fractions of ``iterations``, move
            with it), ``eval_every``, ``log_every``, ``save_every``, ``keep_checkpoints`` and
            ``num_workers`` (how often things happen, not what is computed). Anything else (lr, batch
            size, seed, frames, loss, ...) would not match the optimiser and data state saved in the
            checkpoint: start a new run for it.
        device: default ``cuda:LOCAL_RANK`` if available, else CPU.

    Writes that fail (a full disk) raise ``OSError`` naming the file; a checkpoint is written whole or
    not at all, and the temporaries of writes killed in an earlier run are removed (logged) when a run
    starts in the same folder (:func:`ssa.io.remove_stale_temporaries`).

    Under ``torchrun`` the process group is set up here (NCCL on GPU, gloo on CPU), clips are split
    over ranks so that the global batch is the same as in one process, and only rank 0 writes.
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given: dict[str, Any] = {}
    for name, value in {"iterations": iterations, "batch_size": batch_size, "num_frames": num_frames,
                        "lr": lr, **overrides}.items():
        if value is None:
            continue
        if name not in names:
            raise TypeError(f"finetune() got an unknown option {name!r} (not a TrainConfig field)")
        given[name] = value
    if isinstance(allow_changes, str):
        allow_changes = [allow_changes]
    for name in allow_changes:
        if name not in RESUMABLE_FIELDS:
            raise ValueError(f"allow_changes: {name!r} cannot change in a resumed run; only "
                             f"{', '.join(RESUMABLE_FIELDS)} can")
    cfg = dataclasses.replace(config) if config is not None else TrainConfig()
    for name, value in given.items():
        setattr(cfg, name, value)
    if isinstance(cfg.loss, dict):
        cfg.loss = LossConfig.from_dict(cfg.loss)
    cfg.validate()

    with torchrun_group(device) as d:
        return _run(model_or_name, train_data, Path(output_dir), cfg, val_data, resume, device, progress, d,
                    given=given if config is None else None, allow_changes=list(allow_changes))


def _run(model_or_name: Any, train_data: Any, output_dir: Path, cfg: TrainConfig, val_data: Any,
         resume: bool, device: Any, progress: bool, d: ProcessGroup, *, given: dict[str, Any] | None,
         allow_changes: Sequence[str]) -> SSAModel:
    inputs = [Path(p) for p in (model_or_name, train_data, val_data)
              if isinstance(p, str | os.PathLike) and Path(p).exists()]
    check_output_dir(output_dir, overwrite=resume, layout=TRAINING_LAYOUT, inputs=inputs,
                     hint="choose a new directory or pass resume=True to continue", verb="continue in")
    if d.main:  # the temporaries of writes killed in an earlier run here
        for folder in (output_dir, output_dir / "checkpoints"):
            remove_stale_temporaries(folder)
    ckpt = None
    if resume:
        cfg, ckpt = _resume_point(output_dir, cfg, given, allow_changes)
        if ckpt is not None and ckpt.step > cfg.iterations:
            raise ValueError(f"cannot resume from {ckpt.path}: it is at step {ckpt.step}, beyond iterations "
                             f"{cfg.iterations}")
    micro = cfg.batch_size // (d.world_size * cfg.grad_accum)
    if micro * d.world_size * cfg.grad_accum != cfg.batch_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} is not divisible by world size {d.world_size} x grad_accum "
            f"{cfg.grad_accum}"
        )
    dev = _pick_device(device, d)
    precision = cfg.precision if cfg.precision != "auto" else ("fp16" if dev.type == "cuda" else "fp32")
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("fp16 training needs CUDA (a grad scaler); use precision='bf16' or 'fp32' on CPU")

    model = _build_model(model_or_name, cfg.seed, cfg.unfreeze_clip)
    if cfg.unfreeze_clip:
        model.backbone.unfreeze(text=cfg.unfreeze_clip != "visual")
    ckpt_mode = cfg.activation_checkpointing
    model.set_activation_checkpointing(trunk=ckpt_mode in (True, "trunk"),
                                       decoders=ckpt_mode in (True, "decoders"))
    model.to(dev).train()
    dataset = _load_dataset(train_data)
    mc = model.config
    scales = cfg.scales or sorted({max(32, round(mc.image_size * f / 8) * 8)
                                   for f in (0.75, 0.875, 1.0, 1.125, 1.25)})
    clips = ReferringClips(dataset, num_frames=cfg.num_frames, window=cfg.window, scales=scales,
                           max_size=mc.max_size, crop=cfg.crop, hflip=cfg.hflip, seed=cfg.seed)
    criterion = SSACriterion(cfg.loss)
    params = _param_groups(model, cfg)
    if not any(g["params"] for g in params):
        raise ValueError("the model has no trainable parameter")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    start, state = 0, None
    if ckpt is not None:
        _apply_checkpoint(ckpt, model, optimizer, scheduler, scaler)
        start, state = ckpt.step, ckpt.state
        logger.info("resumed from %s (step %d)", ckpt.path, start)
    else:
        torch.manual_seed(cfg.seed)
    log_path = output_dir / "log.jsonl"
    if d.main:
        output_dir.mkdir(parents=True, exist_ok=True)
        try:
            if resume:
                _cut_log(log_path, start)
            atomic_write_text(output_dir / TRAIN_CONFIG_NAME, json.dumps(cfg.to_dict(), indent=2),
                              overwrite=True)
        except OSError as err:
            raise _write_error("the run's files in", output_dir, err) from err

    ddp = model
    if d.world_size > 1:
        ids = [dev.index] if dev.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    keys = batch_keys(len(clips), micro, rank=d.rank, world_size=d.world_size, seed=cfg.seed,
                      start_batch=start * cfg.grad_accum)
    loader = torch.utils.data.DataLoader(clips, batch_sampler=keys, collate_fn=collate_clips,
                                         num_workers=cfg.num_workers, pin_memory=dev.type == "cuda")
    batches = iter(loader)  # draws a seed from the global RNG: restore the saved state after it
    if state is not None:
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    trainable = [p for g in params for p in g["params"]]
    bar = tqdm(total=cfg.iterations, initial=start, desc="train", unit="it",
               disable=not (progress and d.main))
    window: list[dict[str, float]] = []
    tick = time.perf_counter()
    for step in range(start, cfg.iterations):
        optimizer.zero_grad(set_to_none=True)
        for k in range(cfg.grad_accum):
            batch = next(batches).to(dev)
            sync = k == cfg.grad_accum - 1 or d.world_size == 1
            with (contextlib.nullcontext() if sync else ddp.no_sync()), _autocast(precision, dev):
                output = ddp(batch.frames, [[e] for e in batch.expressions], with_frames=True)
                generators = _clip_generators(cfg.seed, step, k, batch.keys)
                grid = output.mask_logits.shape[-2:]  # masks cover the frames padded to 32: pad the targets
                losses = criterion(output, pad_masks(batch.targets, grid), generator=generators)
            loss = losses["loss"] / cfg.grad_accum
            if not torch.isfinite(loss):
                terms = {name: float(v) for name, v in losses.items()}
                raise FloatingPointError(f"non-finite loss at step {step}: {terms}")
            (scaler.scale(loss) if scaler is not None else loss).backward()
            window.append({name: float(v.detach()) for name, v in losses.items()})
        if scaler is not None:
            scaler.unscale_(optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        done = step + 1
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.iterations:
            record = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            record = _mean_over_ranks(record, d, dev)
            elapsed = time.perf_counter() - tick
            record.update(step=done, lr=optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm),
                          clips_per_s=len(window) * micro * d.world_size / max(elapsed, 1e-9))
            window, tick = [], time.perf_counter()
            if d.main:
                _append_log(log_path, record)
                bar.set_postfix(loss=f"{record['loss']:.3f}")
                logger.debug("step %d %s", done, record)
        if d.main and (done % cfg.save_every == 0 or done == cfg.iterations):
            _save_checkpoint(output_dir, done, model, optimizer, scheduler, scaler, cfg)
        due = (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.iterations
        if val_data is not None and due:
            _evaluate(model, val_data, output_dir / "eval" / f"step-{done:07d}", dev, d, log_path, done)
            model.train()
        if d.world_size > 1:
            dist.barrier()
    bar.close()
    model.set_activation_checkpointing(False, False)
    model.eval()
    if d.main:
        final = output_dir / "model"
        try:
            model.save_pretrained(final, weights=_weights_kind(cfg), overwrite=True)
        except OSError as err:
            raise _write_error("the trained model", final, err) from err
        logger.info("trained model saved to %s", final)
    return model


def _append_log(log_path: Path, record: dict[str, Any]) -> None:
    try:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:
        raise _write_error("the training log", log_path, err) from err


def _clip_generators(seed: int, step: int, micro: int, keys: list[tuple[int, int]]) -> list[torch.Generator]:
    """One generator per clip for the loss's point sampling, seeded by the run seed, the step and the
    clip: the points do not depend on which rank or batch neighbours a clip has (exact DDP parity)."""
    out = []
    for epoch, index in keys:
        g = torch.Generator()
        g.manual_seed(hash((seed, step, micro, epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF)
        out.append(g)
    return out


def _mean_over_ranks(record: dict[str, float], d: ProcessGroup, dev: torch.device) -> dict[str, float]:
    if d.world_size == 1:
        return record
    names = sorted(record)
    t = torch.tensor([record[k] for k in names], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return {k: float(v) / d.world_size for k, v in zip(names, t.tolist(), strict=True)}


def _evaluate(model: SSAModel, val_data: Any, out_dir: Path, dev: torch.device, d: ProcessGroup,
              log_path: Path, step: int) -> None:
    """J&F on the validation split; under DDP its videos are sharded over the ranks (ssa.eval.evaluate)
    and rank 0 writes the results."""
    from ssa.eval import evaluate
    from ssa.pipeline import SSAPipeline

    model.eval()
    pipe = SSAPipeline(model, device=dev)
    summary = evaluate(pipe, val_data, out_dir=out_dir if d.main else None, progress=False, resume=False)
    if d.main:
        _append_log(log_path, {"step": step, "eval": summary})
        logger.info("step %d: J&F %.4f (J %.4f, F %.4f)", step, summary["J&F"], summary["J"], summary["F"])
