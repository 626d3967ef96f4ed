"""``finetune()``: train SSA on a referring dataset (docs/design.md §5) on a CPU, one GPU or many (torchrun).

The recipe: AdamW (lr 5e-4, weight decay 0.05) on the trainable parameters only, linear warm-up then
step decay, full-model gradient-norm clipping, gradient accumulation, AMP on CUDA (fp16 with a grad
scaler, or bf16), DDP under ``torchrun`` (NCCL on GPU, gloo on CPU) with only rank 0 writing.
Checkpoints are ``save_pretrained`` directories plus the training state, written to a temporary
directory and renamed into place; ``resume=True`` continues from the newest one exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import tempfile
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
from ssa.io import OutputLayout, check_output_dir, default_permissions
from ssa.modeling.model import SSAModel
from ssa.train.data import ReferringClips, batch_keys, collate_clips
from ssa.train.losses import LossConfig, SSACriterion

__all__ = ["TrainConfig", "finetune", "latest_checkpoint", "TRAINING_LAYOUT"]

logger = logging.getLogger(__name__)

STATE_NAME = "training_state.pt"
TRAIN_CONFIG_NAME = "train_config.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")

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


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint ``output_dir/checkpoints/step-N`` or None.

    A checkpoint directory appears only by an atomic rename once everything in it is written, so any
    ``step-N`` directory is complete; temporary directories of an interrupted write are ignored.
    """
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return max(steps)[1] if steps else None


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
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:07d}.tmp-", dir=folder))
    try:
        with _quiet("ssa.hub"):  # not its "saved ... to <temporary folder>": the final path is logged below
            model.save_pretrained(tmp / "model", weights=_weights_kind(cfg))
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        torch.save(state, tmp / STATE_NAME)
        (tmp / TRAIN_CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2))
        for f in (tmp / STATE_NAME, tmp / TRAIN_CONFIG_NAME):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        default_permissions(tmp)
        if final.exists():  # the same step written again (e.g. a resumed run): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)))
    for _, p in old[:-cfg.keep_checkpoints]:
        shutil.rmtree(p, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def _load_checkpoint(path: Path, model: SSAModel, optimizer: torch.optim.Optimizer, scheduler: Any,
                     scaler: Any) -> tuple[int, dict]:
    """Weights, optimiser, schedule and scaler from ``path``; returns the step and the state (whose RNG
    states are restored by the caller once the data loader has drawn its seed)."""
    from ssa.hub import load_pretrained

    loaded = load_pretrained(path / "model", device="cpu")
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or any(not k.startswith("backbone.") for k in missing):
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}"
        )
    state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    return int(state["step"]), state


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
        val_data: a MeViS-layout split evaluated every ``eval_every`` steps and at the end (rank 0).
        resume: continue from the newest checkpoint in ``output_dir`` (exactly: weights, optimiser,
            schedule, RNG and data position).
        device: default ``cuda:LOCAL_RANK`` if available, else CPU.

    Under ``torchrun`` the process group is set up here (NCCL on GPU, gloo on CPU), clips are split
    over ranks so that the global batch is the same as in one process, and only rank 0 writes.
    """
    cfg = dataclasses.replace(config) if config is not None else TrainConfig()
    for name, value in {"iterations": iterations, "batch_size": batch_size, "num_frames": num_frames,
                        "lr": lr, **overrides}.items():
        if value is None:
            continue
        if name not in {f.name for f in dataclasses.fields(TrainConfig)}:
            raise TypeError(f"finetune() got an unknown option {name!r} (not a TrainConfig field)")
        setattr(cfg, name, value)
    if isinstance(cfg.loss, dict):
        cfg.loss = LossConfig.from_dict(cfg.loss)
    cfg.validate()

    with torchrun_group(device) as d:
        return _run(model_or_name, train_data, Path(output_dir), cfg, val_data, resume, device, progress, d)


def _run(model_or_name: Any, train_data: Any, output_dir: Path, cfg: TrainConfig, val_data: Any,
         resume: bool, device: Any, progress: bool, d: ProcessGroup) -> SSAModel:
    micro = cfg.batch_size // (d.world_size * cfg.grad_accum)
    if micro * d.world_size * cfg.grad_accum != cfg.batch_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} is not divisible by world size {d.world_size} x grad_accum "
            f"{cfg.grad_accum}"
        )
    inputs = [Path(p) for p in (model_or_name, train_data, val_data)
              if isinstance(p, str | os.PathLike) and Path(p).exists()]
    check_output_dir(output_dir, overwrite=resume, layout=TRAINING_LAYOUT, inputs=inputs,
                     hint="choose a new directory or pass resume=True to continue", verb="continue in")
    dev = _pick_device(device, d)
    precision = cfg.precision if cfg.precision != "auto" else ("fp16" if dev.type == "cuda" else "fp32")
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("fp16 training needs CUDA (a grad scaler); use precision='bf16' or 'fp32' on CPU")

    model = _build_model(model_or_name, cfg.seed, cfg.unfreeze_clip)
    if cfg.unfreeze_clip:
        model.backbone.unfreeze(text=cfg.unfreeze_clip != "visual")
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
    if resume:
        ckpt = latest_checkpoint(output_dir)
        if ckpt is None:
            logger.info("resume=True but no checkpoint in %s: starting from step 0", output_dir)
        else:
            start, state = _load_checkpoint(ckpt, model, optimizer, scheduler, scaler)
            logger.info("resumed from %s (step %d)", ckpt, start)
    else:
        torch.manual_seed(cfg.seed)
    if d.main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / TRAIN_CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2))

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
    log_path = output_dir / "log.jsonl"
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
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
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
    model.eval()
    if d.main:
        final = output_dir / "model"
        model.save_pretrained(final, weights=_weights_kind(cfg), overwrite=True)
        logger.info("trained model saved to %s", final)
    return model


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
        with open(log_path, "a") as f:
            f.write(json.dumps({"step": step, "eval": summary}) + "\n")
        logger.info("step %d: J&F %.4f (J %.4f, F %.4f)", step, summary["J&F"], summary["J"], summary["F"])
