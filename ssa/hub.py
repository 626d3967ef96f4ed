"""Checkpoints: save, load and share SSA models (local directories and the Hugging Face Hub).

A checkpoint is a directory (or Hub repo) holding

* ``config.json``       ``SSAConfig.to_dict()``; it fully determines the architecture;
* ``model.safetensors`` the weights (safetensors only: nothing is ever unpickled);
* ``README.md``         a model card with Hub metadata.

The weights are either *full* (every state-dict entry) or *trainable* (everything but the frozen CLIP
under ``backbone.``). A trainable checkpoint is ~15x smaller for the paper's network; its CLIP comes
back from open_clip's own Hub weights (``config.clip_pretrained``) at load time. The kind is recorded
in the safetensors metadata (``ssa_weights``).

Loading validates the tensors against the config on a meta-device model before anything is built or
downloaded, so a checkpoint whose config does not match its weights fails fast with the mismatches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch
from torch import Tensor, nn

from ssa.config import SSAConfig
from ssa.io import default_permissions, sync_to_disk, temporary_sibling
from ssa.model_card import clip_base_model, render_model_card
from ssa.official import OFFICIAL_DATASETS, OfficialCheckpointError, convert_state_dict, read_official
from ssa.version import __version__

if TYPE_CHECKING:
    from ssa.modeling.model import SSAModel

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "MODEL_CARD_NAME",
    "WeightsNotFoundError",
    "InvalidCheckpointError",
    "save_pretrained",
    "load_pretrained",
    "push_to_hub",
    "load_pth_state_dict",
    "DemoModelWarning",
    "check_weights",
    "read_checkpoint",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
BUNDLED_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "ssa-tiny-synthetic"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
BACKBONE_PREFIX = "backbone."
"""State-dict prefix of the frozen CLIP; a trainable checkpoint holds no key under it."""

WeightsKind = Literal["trainable", "full"]
_WEIGHT_CHOICES = ("auto", "trainable", "full")
_MAX_LISTED = 5



class WeightsNotFoundError(OSError):
    """The checkpoint's files could not be found: not cached while offline, repo missing or gated,
    revision or file missing. The message says why and how to fix it."""

    def __init__(self, message: str, *, repo_id: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.reason = reason


class InvalidCheckpointError(ValueError):
    """A checkpoint file is unreadable (corrupt, truncated, bad JSON) or does not match its config."""


# ----------------------------------------------------------------------------------------------------
# saving
# ----------------------------------------------------------------------------------------------------
_M = TypeVar("_M", bound=nn.Module)


class PretrainedMixin:
    """Checkpoints for a model class (:class:`ssa.SSAModel`): ``save_pretrained``, ``from_pretrained``,
    ``from_official`` and ``push_to_hub``, implemented by this module's functions with the class passed
    in, so that ``ssa.hub`` never imports the model (the model imports this mixin, not the reverse).

    Not ``huggingface_hub.PyTorchModelHubMixin``: that mixin serialises ``__init__`` keyword arguments
    to ``config.json`` and saves the whole state dict; ssa needs a validated :class:`~ssa.SSAConfig`
    (presets, type checks), checkpoints without the frozen CLIP (``weights="trainable"``, refilled from
    open_clip), fp16 weights, the authors' ``.pth`` conversion, bundled names, checks of keys, shapes,
    dtypes and finite values before anything is built or downloaded, and a model card with measured
    figures; overriding its ``_save_pretrained`` / ``_from_pretrained`` would replace all of it. The Hub
    transfers themselves use ``huggingface_hub`` (``hf_hub_download``, ``HfApi``, ``ModelCard``).
    """

    def save_pretrained(self, save_directory: str | os.PathLike[str], *,
                        weights: Literal["auto", "trainable", "full"] = "auto", overwrite: bool = False,
                        model_card: bool = True) -> Path:
        """Write config.json, model.safetensors and README.md; see :func:`ssa.hub.save_pretrained`."""
        return save_pretrained(self, save_directory, weights=weights, overwrite=overwrite,  # type: ignore[arg-type]
                               model_card=model_card)

    @classmethod
    def from_pretrained(cls: type[_M], name_or_path: str | os.PathLike[str] = DEFAULT_MODEL, *,
                        revision: str | None = None,
                        cache_dir: str | os.PathLike[str] | None = None, local_files_only: bool = False,
                        token: str | bool | None = None, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, strict: bool = True,
                        config: SSAConfig | None = None) -> _M:
        """Load a bundled model, checkpoint directory, Hub repo or an official ``.pth`` checkpoint (eval
        mode); see :func:`ssa.hub.load_pretrained`. The default is the bundled demo model. ``config``
        describes the network of an official ``.pth`` (default: the paper's)."""
        return load_pretrained(cls, name_or_path, revision=revision, cache_dir=cache_dir,
                               local_files_only=local_files_only, token=token, device=device,
                               dtype=dtype, strict=strict, config=config)

    @classmethod
    def from_official(cls: type[_M], path: str | os.PathLike[str], config: SSAConfig | None = None, *,
                      dataset: str | None = None) -> _M:
        """Build the model from the authors' ``model_final.pth``; see :func:`ssa.hub.load_official`."""
        return load_official(cls, path, config, dataset=dataset)

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload SSA model", revision: str | None = None,
                    weights: Literal["auto", "trainable", "full"] = "auto") -> str:
        """Upload this model to the Hub repo ``repo_id``; returns the commit URL. See
        :func:`ssa.hub.push_to_hub`."""
        return push_to_hub(self, repo_id, private=private, token=token,  # type: ignore[arg-type]
                           commit_message=commit_message, revision=revision, weights=weights)


def save_pretrained(
    model: SSAModel,
    save_directory: str | os.PathLike[str],
    *,
    weights: Literal["auto", "trainable", "full"] = "auto",
    overwrite: bool = False,
    model_card: bool = True,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and (optionally) ``README.md`` into ``save_directory``.

    weights: ``"trainable"`` leaves out the frozen CLIP (it is re-fetched from open_clip at load time, so
    it needs ``config.clip_pretrained``); ``"full"`` stores everything; ``"auto"`` picks trainable when
    the CLIP is a frozen open_clip download and full otherwise (random or unfrozen CLIP).
    An existing checkpoint is never replaced unless ``overwrite=True``. Files are written into a
    temporary sibling directory and moved into place at the end, the weights last.
    ``source`` describes the authors' checkpoint the weights were converted from (see
    :func:`ssa.model_card.render_model_card`); the model card then says so.
    Returns the directory.
    """
    return _save(model, save_directory, weights=weights, overwrite=overwrite, model_card=model_card,
                 source=source)


def _save(
    model: SSAModel,
    save_directory: str | os.PathLike[str],
    *,
    weights: str,
    overwrite: bool,
    model_card: bool,
    repo_id: str | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    if not isinstance(model, PretrainedMixin):
        raise TypeError(f"save_pretrained expects an SSAModel, got {type(model).__name__}")
    kind = _resolve_weights_kind(model, weights)
    target = Path(os.path.abspath(Path(save_directory).expanduser()))  # '.' and '..' get real names
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"cannot save an SSA checkpoint to {target}: it is not a directory")
    existing = [target / name for name in (CONFIG_NAME, WEIGHTS_NAME) if (target / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{target} already holds a checkpoint ({', '.join(p.name for p in existing)}); "
            "pass overwrite=True to replace it"
        )
    write_card = model_card and (overwrite or not (target / MODEL_CARD_NAME).exists())
    if model_card and not write_card:
        logger.warning("%s exists; keeping it (pass overwrite=True to replace it)", target / MODEL_CARD_NAME)

    state = _state_dict_for_saving(model, kind)
    metadata = {"format": "pt", "ssa_version": __version__, "ssa_weights": kind}
    # Staged next to the folder (which may hold the user's own files, kept), then moved in file by file.
    with temporary_sibling(target, directory=True, kind="ssa-tmp") as staging:
        config_file = staging / CONFIG_NAME
        config_file.write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        sync_to_disk(config_file)
        if write_card:
            card = render_model_card(
                model.config, weights=kind, repo_id=repo_id or _local_name(target),
                num_parameters=model.num_parameters(),
                num_trainable=model.num_parameters(trainable_only=True),
                num_saved=sum(t.numel() for t in state.values()), source=source,
            )
            (staging / MODEL_CARD_NAME).write_text(card)
        weights_file = staging / WEIGHTS_NAME
        _write_safetensors(state, weights_file, metadata)

        # Move into place. Old weights go first and new weights come last: a kill in between leaves a
        # directory without weights (an error at load time), never a config paired with wrong weights.
        target.mkdir(exist_ok=True)
        if (target / WEIGHTS_NAME).exists():
            os.remove(target / WEIGHTS_NAME)
        os.replace(config_file, target / CONFIG_NAME)
        if write_card:
            os.replace(staging / MODEL_CARD_NAME, target / MODEL_CARD_NAME)
        os.replace(weights_file, target / WEIGHTS_NAME)
    logger.info("saved SSA checkpoint (%s weights, %d tensors) to %s", kind, len(state), target)
    return target


def _local_name(target: Path) -> str:
    """How the model card's usage names a checkpoint saved locally: a bundled one by its name, any other
    by its folder (a path the reader replaces; the Hub repo id once pushed)."""
    if Path(os.path.realpath(target)).parent == BUNDLED_DIR:
        return target.name
    return f"path/to/{target.name}"


def _resolve_weights_kind(model: SSAModel, weights: str) -> WeightsKind:
    if weights not in _WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {_WEIGHT_CHOICES}, got {weights!r}")
    pretrained = model.config.clip_pretrained
    if weights == "trainable":
        if not pretrained:
            raise ValueError(
                "weights='trainable' needs config.clip_pretrained: without it the CLIP is randomly "
                "initialised and a checkpoint without it could not be reloaded; use weights='full'"
            )
        return "trainable"
    if weights == "full":
        return "full"
    clip_frozen = not any(p.requires_grad for p in model.backbone.parameters())
    return "trainable" if pretrained and clip_frozen else "full"


def _state_dict_for_saving(model: SSAModel, kind: WeightsKind) -> dict[str, Tensor]:
    """Contiguous CPU tensors; storage shared between entries is copied (safetensors refuses it)."""
    seen: set[tuple[str, int]] = set()
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if kind == "trainable" and key.startswith(BACKBONE_PREFIX):
            continue
        tensor = value.detach().to("cpu").contiguous()
        storage = (str(value.device), value.untyped_storage().data_ptr())
        if storage in seen or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        seen.add(storage)
        out[key] = tensor
    return out


def _write_safetensors(state: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    try:
        save_file(state, str(path), metadata=metadata)
    except Exception as err:  # safetensors reports a failed write (a full disk) as a SafetensorError
        code = re.search(r"os error (\d+)|code: (\d+)", str(err))
        if isinstance(err, OSError) or code is None:
            raise
        number = int(code.group(1) or code.group(2))
        raise OSError(number, os.strerror(number), str(path)) from err
    sync_to_disk(path)
    default_permissions(path)  # safetensors writes it private (0600)


# ----------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------


def bundled_models() -> list[str]:
    """Names of the checkpoints shipped inside the package (``ssa/weights/<name>/``)."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / CONFIG_NAME).is_file())


class DemoModelWarning(UserWarning):
    """The bundled demo model was loaded: a toy trained only on synthetic shapes (see :data:`DEMO_NOTE`)."""


DEMO_NOTE = (
    "{name} is the bundled demo model, a tiny network trained only on synthetic coloured shapes moving on "
    "plain backgrounds: on real videos its masks are meaningless, however confident its scores. For real "
    "videos convert the authors' checkpoint (`ssa convert model_final.pth --out DIR`, then --model DIR or "
    "SSAPipeline.from_pretrained(DIR); README: 'Using the authors' checkpoints')."
)
"""What the demo-model warning says; ``{name}`` is the bundled model's name."""

_demo_warned = False  # the warning is given once per process


def _warn_if_demo(config_file: Path) -> None:
    """One :class:`DemoModelWarning` per process when ``config_file`` belongs to a bundled checkpoint
    (by name, or by a path to ``ssa/weights/<name>/`` or a link to it)."""
    global _demo_warned
    directory = Path(os.path.realpath(config_file)).parent
    if _demo_warned or directory.parent != BUNDLED_DIR:
        return
    _demo_warned = True
    # attributed to the first caller outside the ssa package (the user's from_pretrained call)
    package, level = str(Path(__file__).resolve().parent), 2
    frame = sys._getframe(1)
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(DEMO_NOTE.format(name=directory.name), DemoModelWarning, stacklevel=level)


def _bundled_weights_dir(name: str) -> Path | None:
    """The directory of a checkpoint shipped inside the package under ``name``, or None.

    Consulted first by :func:`load_pretrained`, so a bundled name (``ssa-tiny-synthetic``, the demo
    model) works offline and from a wheel install; a local directory of the same name does not shadow it
    unless given as a path (``./ssa-tiny-synthetic``).
    """
    if "/" in name or os.sep in name or name.startswith("."):
        return None
    directory = BUNDLED_DIR / name
    return directory if (directory / CONFIG_NAME).is_file() else None


def load_pretrained(
    model_class: type[_M],
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
    config: SSAConfig | None = None,
) -> _M:
    """Load a ``model_class`` (:class:`ssa.SSAModel`; ``SSAModel.from_pretrained``) from a bundled name,
    a local directory or a Hugging Face Hub repo id, or
    convert an official ``.pth`` / ``.pt`` checkpoint file of the authors.

    The tensors are checked against the config before the model is built or CLIP is downloaded: shapes,
    dtypes (a floating weight stored as int32 is refused) and values (NaN or inf is refused), each
    :class:`InvalidCheckpointError` naming the keys.
    Returns the model in eval mode on ``device`` (default CPU), cast to ``dtype`` when given.
    Raises ``WeightsNotFoundError`` (an ``OSError``) when Hub files are unavailable (offline and not
    cached, repo or revision missing, gated), ``FileNotFoundError`` for a local directory lacking a
    file, and ``InvalidCheckpointError`` (a ``ValueError``) for corrupt files or config/weights mismatch.

    A path ending in ``.pth`` or ``.pt`` that is not a directory is an official detectron2 checkpoint:
    it is converted with :func:`load_official` (``config``: its network, default the
    paper's ``ssa-convnext-large``), which raises :class:`ssa.official.OfficialCheckpointError` (a
    ``ValueError``) for a file it cannot convert. ``config`` applies only to such files: a checkpoint
    directory or Hub repo carries its own ``config.json``.
    """
    official = _official_checkpoint_file(name_or_path)
    if official is not None:
        if revision is not None:
            logger.warning("revision=%r is ignored for the local checkpoint file %s", revision, official)
        model = load_official(model_class, official, config)
        return _place(model, device, dtype)
    if config is not None:
        raise ValueError(
            f"config= applies only to official .pth checkpoint files; {name_or_path!r} is a checkpoint "
            f"directory or Hub repo id, whose {CONFIG_NAME} describes the network"
        )
    config_file, weights_file = _resolve_files(
        name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token,
    )
    config, state, kind = _read_checked(model_class, config_file, weights_file, strict=strict)

    # Build without downloading CLIP, then fill it: from the checkpoint (full) or open_clip (trainable).
    model = model_class(dataclasses.replace(config, clip_pretrained=None))
    model.config = config
    if kind == "trainable":
        _load_clip(model, config, cache_dir=cache_dir)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (kind == "trainable" and k.startswith(BACKBONE_PREFIX))]
    if missing or result.unexpected_keys:  # only reachable with strict=False (validated above)
        logger.warning(
            "loaded %s non-strictly: %d missing key(s) %s, %d unexpected key(s) %s", weights_file,
            len(missing), missing[:_MAX_LISTED], len(result.unexpected_keys),
            result.unexpected_keys[:_MAX_LISTED],
        )
    _place(model, device, dtype)
    logger.info("loaded SSA checkpoint %s (%s weights)", name_or_path, kind)
    _warn_if_demo(config_file)
    return model


def _read_checked(
    model_class: type[nn.Module], config_file: Path, weights_file: Path, *, strict: bool
) -> tuple[SSAConfig, dict[str, Tensor], WeightsKind]:
    """The config, the tensors and the kind of a checkpoint's files, checked against each other (keys,
    shapes, dtypes, finite values) without building the model."""
    config = _read_config(config_file)
    metadata, shapes, dtypes = _read_header(weights_file)
    kind = _checkpoint_kind(metadata, shapes)
    _validate_against_config(model_class, config, shapes, dtypes, kind, strict=strict,
                             weights_file=weights_file, config_file=config_file)
    if kind == "trainable" and not config.clip_pretrained:
        raise InvalidCheckpointError(
            f"{weights_file} holds only trainable weights (no {BACKBONE_PREFIX}* keys) but {config_file} "
            "sets no clip_pretrained, so the frozen CLIP cannot be restored"
        )
    state = _load_tensors(weights_file)
    check_weights(dtypes, {}, weights_file, tensors=state)  # finite (the dtypes were checked above)
    return config, state, kind


def read_checkpoint(model_class: type[nn.Module], directory: str | os.PathLike[str]
                    ) -> tuple[SSAConfig, dict[str, Tensor]]:
    """The config and the tensors of the local checkpoint ``directory``, checked as by
    :func:`load_pretrained` (files present and readable, keys and shapes matching the config, dtypes,
    finite values), without building the model or fetching a CLIP. Raises ``FileNotFoundError`` or
    :class:`InvalidCheckpointError` naming the file and the problem."""
    directory = Path(directory)
    files = (directory / CONFIG_NAME, directory / WEIGHTS_NAME)
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"SSA checkpoint directory {directory} has no {file.name} ({file})")
    config, state, _ = _read_checked(model_class, *files, strict=True)
    return config, state


def load_official(model_class: type[_M], path: str | os.PathLike[str], config: SSAConfig | None = None, *,
                  dataset: str | None = None) -> _M:
    """Build a ``model_class`` (:class:`ssa.SSAModel`) from the authors' ``model_final.pth``
    (``SSAModel.from_official`` / :func:`ssa.convert_official`).

    ``config`` describes the checkpoint's network (default: the paper preset ``ssa-convnext-large``, the
    network of all released checkpoints). ``dataset`` ("mevis", "ytvos" or "davis") sets the official
    test-time behaviour for that benchmark in the returned config (short side, query selection). Every
    tensor of the checkpoint must be used and every tensor of the network filled, shapes equal, else an
    :class:`OfficialCheckpointError` lists the keys. Returns the model in eval mode, on the CPU.
    """
    if config is None:
        config = SSAConfig.from_preset("ssa-convnext-large")
    if not isinstance(config, SSAConfig):
        raise TypeError(f"config must be an SSAConfig, got {type(config).__name__}")
    if dataset is not None:
        if dataset not in OFFICIAL_DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(OFFICIAL_DATASETS)}")
        release = OFFICIAL_DATASETS[dataset]
        config = dataclasses.replace(config, image_size=release.image_size, selection=release.selection)
    official, extra = read_official(path)
    has_clip = any(k.startswith("backbone.clip_model.") for k in official)
    tensors = _expected_tensors(config, model_class)
    expected = {k: shape for k, (shape, _) in tensors.items()}
    expected_dtypes = {k: dtype for k, (_, dtype) in tensors.items()}
    if not has_clip:  # a stripped checkpoint: CLIP comes from open_clip's weights
        if not config.clip_pretrained:
            raise OfficialCheckpointError(
                f"{path} holds no frozen CLIP tensors (backbone.clip_model.*) and the config names no "
                "clip_pretrained weights to take them from"
            )
        expected = {k: v for k, v in expected.items() if not k.startswith("backbone.")}
    state = convert_state_dict(official, expected, source=str(path))
    check_weights({k: t.dtype for k, t in state.items()}, expected_dtypes, path, tensors=state)
    clip_pretrained = None if has_clip else config.clip_pretrained
    model = model_class(dataclasses.replace(config, clip_pretrained=clip_pretrained))
    model.config = config
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or (has_clip and result.missing_keys):  # guarded by convert_state_dict
        raise OfficialCheckpointError(f"load_state_dict disagreed: {result}")
    if has_clip:
        _compare_clip(model, config)
    logger.info("converted %s (iteration %s): %d tensors", path, extra.get("iteration"), len(state))
    return model.eval()




def _compare_clip(model: Any, config: SSAConfig) -> None:
    """Compare the checkpoint's frozen CLIP with open_clip's weights named by the config, when they are
    in the local cache (nothing is downloaded); logs the result."""
    if not config.clip_pretrained or config.clip_config is not None:
        return
    import open_clip

    try:
        pretrained = open_clip.get_pretrained_cfg(config.clip_model, config.clip_pretrained)
        hf_hub = (pretrained or {}).get("hf_hub", "")
        from huggingface_hub import try_to_load_from_cache

        repo_id = hf_hub.rstrip("/")
        cached = None
        for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(repo_id, filename)
            if isinstance(hit, str):
                cached = hit
                break
    except Exception as err:  # pragma: no cover - depends on the local cache
        logger.info("could not look up open_clip's %s weights in the cache: %s", config.clip_pretrained, err)
        return
    if cached is None:
        logger.info("open_clip's %s/%s weights are not cached: the checkpoint's CLIP was not compared",
                    config.clip_model, config.clip_pretrained)
        return
    reference = open_clip.create_model(config.clip_model, pretrained=cached).state_dict()
    ours = model.backbone.clip.state_dict()
    diff = max(float((ours[k].float() - v.float()).abs().max()) for k, v in reference.items() if k in ours)
    logger.info("the checkpoint's CLIP differs from open_clip's %s by at most %.3g",
                config.clip_pretrained, diff)


def _place(model: SSAModel, device: str | torch.device | None, dtype: torch.dtype | None) -> SSAModel:
    """The model on ``device`` (default CPU), cast to ``dtype`` when given, in eval mode."""
    model.to(device=torch.device(device) if device is not None else torch.device("cpu"))
    if dtype is not None:
        model.to(dtype=dtype)
    return model.eval()


_OFFICIAL_SUFFIXES = (".pth", ".pt")


def _official_checkpoint_file(name_or_path: str | os.PathLike[str]) -> Path | None:
    """The path of an official checkpoint file (``*.pth`` / ``*.pt``, not a directory), or None.
    ``FileNotFoundError`` when such a path names no file."""
    name = os.fspath(name_or_path)
    if not isinstance(name, str) or not name.lower().endswith(_OFFICIAL_SUFFIXES):
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return None
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    return path


_PATH_LIKE = re.compile(r"^(\.{1,2}([/\\]|$)|~|/)|\\")


def _resolve_files(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    local_files_only: bool,
    token: str | bool | None,
) -> tuple[Path, Path]:
    """Local paths of ``config.json`` and ``model.safetensors``."""
    name = os.fspath(name_or_path)
    if not isinstance(name, str) or not name:
        raise ValueError(f"expected a checkpoint directory or Hub repo id, got {name_or_path!r}")
    directory = _bundled_weights_dir(name)
    if directory is None:
        path = Path(name).expanduser()
        if path.is_dir():
            directory = path
        elif path.exists():
            raise NotADirectoryError(
                f"{path} is a file; pass the checkpoint directory that holds {CONFIG_NAME} and "
                f"{WEIGHTS_NAME}, or an official .pth checkpoint file"
            )
    if directory is not None:
        if revision is not None:
            logger.warning("revision=%r is ignored for the local checkpoint %s", revision, directory)
        files = (directory / CONFIG_NAME, directory / WEIGHTS_NAME)
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"SSA checkpoint directory {directory} has no {file.name} ({file})")
        return files

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    not_found = (
        f"{name!r} is neither an existing local directory nor a valid Hugging Face Hub repo id "
        "('name' or 'namespace/name')"
    )
    if isinstance(name_or_path, os.PathLike) or _PATH_LIKE.search(name):
        raise FileNotFoundError(not_found)
    try:
        validate_repo_id(name)
    except HFValidationError as err:
        if "/" in name or os.sep in name:
            raise FileNotFoundError(f"{not_found}: {err}") from err
        raise ValueError(f"{not_found}: {err}") from err
    return (
        _hub_file(name, CONFIG_NAME, revision, cache_dir, local_files_only, token),
        _hub_file(name, WEIGHTS_NAME, revision, cache_dir, local_files_only, token),
    )


def _hub_offline() -> bool:
    """Whether Hub offline mode is on, as huggingface_hub sees it or as the environment now says."""
    from huggingface_hub import constants

    is_offline = getattr(constants, "is_offline_mode", None)
    if callable(is_offline) and is_offline():
        return True
    if getattr(constants, "HF_HUB_OFFLINE", False):
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_file(
    repo_id: str,
    filename: str,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    local_files_only: bool,
    token: str | bool | None,
) -> Path:
    """Download (or find in the cache) one file of a Hub repo; failures become WeightsNotFoundError."""
    import huggingface_hub
    from huggingface_hub.utils import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )

    offline = _hub_offline()
    where = f"{repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id, filename, repo_type="model", revision=revision,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            local_files_only=local_files_only or offline, token=token,
            library_name="ssa", library_version=__version__,
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError) as err:
        if offline:
            reason = "offline mode is on (HF_HUB_OFFLINE=1)"
        elif local_files_only:
            reason = "local_files_only=True was passed"
        else:
            reason = f"the Hugging Face Hub could not be reached ({type(err).__name__})"
        raise WeightsNotFoundError(
            _not_cached_message(repo_id, where, filename, reason, cache_dir, offline, local_files_only),
            repo_id=repo_id, reason=reason,
        ) from err
    except HfHubHTTPError as err:  # gated, missing repo / revision / file, any other Hub answer
        verb, reason, detail = _hub_error_reason(err, revision, filename)
        raise WeightsNotFoundError(f"cannot {verb} SSA weights {where}: {reason}{detail}",
                                   repo_id=repo_id, reason=reason) from err
    return Path(path)


def _hub_error_reason(err: Exception, revision: str | None, filename: str) -> tuple[str, str, str]:
    """(verb, reason, detail) of a Hub HTTP error, most specific class first (GatedRepoError is a
    RepositoryNotFoundError)."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(err, GatedRepoError):
        reason = "the repo is gated: accept its terms on the Hub and pass a token (or `hf auth login`)"
        return "access", reason, f". ({err})"
    if isinstance(err, RepositoryNotFoundError):
        reason = "the repo does not exist, or it is private and no valid token was given"
        return "access", reason, f". ({err})"
    if isinstance(err, RevisionNotFoundError):
        return "access", f"revision {revision!r} does not exist in the repo", f". ({err})"
    if isinstance(err, EntryNotFoundError):
        return "load", f"the repo has no {filename}; is it an SSA checkpoint?", f" ({err})"
    return "download", f"the Hub answered with an error: {err}", ""


def _not_cached_message(
    repo_id: str,
    where: str,
    filename: str,
    reason: str,
    cache_dir: str | os.PathLike[str] | None,
    offline: bool,
    local_files_only: bool,
) -> str:
    from huggingface_hub import constants

    cache = os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    if offline:
        first = "unset HF_HUB_OFFLINE and run once with an internet connection (the files are then cached)"
    elif local_files_only:
        first = "run once with local_files_only=False and an internet connection (the files are then cached)"
    else:
        first = "connect to the internet once (the files are then cached)"
    return (
        f"SSA weights {where} are not in the local Hugging Face cache ({cache}; missing {filename}) "
        f"and cannot be downloaded: {reason}. To fix it: {first}; or, on an air-gapped machine, run "
        f"`huggingface-cli download {repo_id}` (`hf download {repo_id}`) on a connected one and copy its "
        "cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub) here; or pass a local checkpoint "
        f"directory holding {CONFIG_NAME} and {WEIGHTS_NAME}."
    )


def _read_config(config_file: Path) -> SSAConfig:
    try:
        values = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidCheckpointError(f"{config_file} is not valid JSON: {err}") from err
    if not isinstance(values, dict):
        raise InvalidCheckpointError(f"{config_file} must hold a JSON object, got {type(values).__name__}")
    try:
        return SSAConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise InvalidCheckpointError(f"{config_file} is not a valid SSA config: {err}") from err


def _read_header(weights_file: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]], dict[str, str]]:
    """The safetensors metadata, and the shape and dtype (``"F32"``, ``"I32"``, ...) of every tensor, read
    from the header only."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(weights_file), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            slices = {key: f.get_slice(key) for key in f.keys()}
            shapes = {key: tuple(s.get_shape()) for key, s in slices.items()}
            dtypes = {key: str(s.get_dtype()) for key, s in slices.items()}
    except Exception as err:  # SafetensorError: truncated, corrupt or not safetensors at all
        raise InvalidCheckpointError(
            f"{weights_file} is not a readable safetensors file ({err}); it may be truncated or corrupt: "
            "download or save it again"
        ) from err
    return metadata, shapes, dtypes


def _load_tensors(weights_file: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(os.fspath(weights_file), device="cpu")
    except Exception as err:
        raise InvalidCheckpointError(f"could not read the tensors of {weights_file}: {err}") from err


def _checkpoint_kind(metadata: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]]) -> WeightsKind:
    declared = metadata.get("ssa_weights")
    if declared in ("trainable", "full"):
        return declared  # type: ignore[return-value]
    return "full" if any(k.startswith(BACKBONE_PREFIX) for k in shapes) else "trainable"


def expected_shapes(config: SSAConfig, model_class: type[nn.Module]) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of the ``model_class`` network the config describes, from a meta-device model
    (no memory, no download)."""
    return {key: shape for key, (shape, _) in _expected_tensors(config, model_class).items()}


def _expected_tensors(config: SSAConfig, model_class: type[nn.Module]
                      ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """State-dict shapes and dtypes of the network the config describes (a meta-device model)."""
    with torch.device("meta"):
        skeleton = model_class(dataclasses.replace(config, clip_pretrained=None))
    return {key: (tuple(value.shape), value.dtype) for key, value in skeleton.state_dict().items()}


def _is_floating(dtype: str | torch.dtype) -> bool:
    """A torch dtype, or a safetensors header dtype ("F32", "BF16", "F8_E4M3", "I32", "BOOL", ...)."""
    if isinstance(dtype, torch.dtype):
        return dtype.is_floating_point
    return dtype.startswith(("F", "BF"))


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:_MAX_LISTED]) + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED
                                           else "")


def check_weights(
    dtypes: Mapping[str, str | torch.dtype],
    expected: Mapping[str, torch.dtype],
    where: str | os.PathLike[str],
    tensors: Mapping[str, Tensor] | None = None,
) -> None:
    """Raise :class:`InvalidCheckpointError` naming the keys of weights that would load silently wrong.

    ``dtypes``: the stored dtype of each key (torch dtypes, or safetensors header names such as
    ``"I32"``). A key the network holds in floating point must be stored in floating point (any width;
    an int32 or bool tensor would be cast to garbage), and one it holds as integers must not be stored as
    floats. With ``tensors``, every floating tensor must also be finite (no NaN or inf: an all-NaN
    weight gives empty masks at high confidence). Keys absent from ``expected`` are not looked at.
    """
    wrong = [f"{key} ({dtypes[key]}, expected {str(expected[key]).removeprefix('torch.')})"
             for key, dtype in dtypes.items()
             if key in expected and _is_floating(dtype) != _is_floating(expected[key])]
    if wrong:
        raise InvalidCheckpointError(f"{where}: {len(wrong)} tensor(s) of the wrong dtype: {_listed(wrong)}")
    if tensors is None:
        return
    bad = [key for key, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise InvalidCheckpointError(
            f"{where}: {len(bad)} tensor(s) hold NaN or infinite values: {_listed(bad)}; the checkpoint is "
            "damaged (or was saved from a diverged training run)"
        )


def _validate_against_config(
    model_class: type[nn.Module],
    config: SSAConfig,
    shapes: Mapping[str, tuple[int, ...]],
    dtypes: Mapping[str, str],
    kind: WeightsKind,
    *,
    strict: bool,
    weights_file: Path,
    config_file: Path,
) -> None:
    tensors = _expected_tensors(config, model_class)
    if kind == "trainable":
        tensors = {k: v for k, v in tensors.items() if not k.startswith(BACKBONE_PREFIX)}
    expected = {k: shape for k, (shape, _) in tensors.items()}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [
        f"{k}: checkpoint shape {shapes[k]} vs config shape {expected[k]}"
        for k in expected if k in shapes and tuple(shapes[k]) != expected[k]
    ]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): " + "; ".join(wrong[:_MAX_LISTED]))
    if strict and missing:
        problems.append(f"{len(missing)} missing key(s): {missing[:_MAX_LISTED]}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {unexpected[:_MAX_LISTED]}")
    if problems:
        raise InvalidCheckpointError(
            f"{weights_file} ({kind} weights) does not match the network of {config_file}: "
            + " | ".join(problems)
        )
    check_weights(dtypes, {k: dtype for k, (_, dtype) in tensors.items()}, weights_file)


def _load_clip(model: SSAModel, config: SSAConfig, *, cache_dir: str | os.PathLike[str] | None) -> None:
    """Fetch the frozen CLIP of a trainable checkpoint from open_clip's Hub weights."""
    try:
        model.backbone.load_pretrained(
            config.clip_pretrained, cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
        )
    except RuntimeError as err:
        if isinstance(err.__cause__, OSError):  # not cached / offline / repo missing
            raise WeightsNotFoundError(
                f"the checkpoint stores only trainable weights and its frozen CLIP could not be fetched: "
                f"{err}",
                repo_id=clip_base_model(config), reason=str(err.__cause__),
            ) from err
        raise


# ----------------------------------------------------------------------------------------------------
# sharing
# ----------------------------------------------------------------------------------------------------
def push_to_hub(
    model: SSAModel,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload SSA model",
    revision: str | None = None,
    weights: Literal["auto", "trainable", "full"] = "auto",
) -> str:
    """Create (if needed) the Hub repo ``repo_id`` and upload the checkpoint; returns the commit URL."""
    from huggingface_hub import HfApi

    _resolve_weights_kind(model, weights)  # fail before touching the network
    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    repo_id = getattr(repo_url, "repo_id", None) or repo_id
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ssa-push-") as tmp:
        folder = _save(model, Path(tmp) / "checkpoint", weights=weights, overwrite=False, model_card=True,
                       repo_id=repo_id)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type="model", revision=revision,
            commit_message=commit_message,
        )
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("pushed SSA checkpoint to %s: %s", repo_id, url)
    return url


# ----------------------------------------------------------------------------------------------------
# importing original checkpoints
# ----------------------------------------------------------------------------------------------------
def load_pth_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The state dict of a PyTorch ``.pth`` checkpoint, read with ``weights_only=True`` (no arbitrary
    unpickling). ``{"model": sd}`` and ``{"state_dict": sd}`` wrappers are unwrapped; non-tensor
    entries are dropped. Keys are returned as stored (map them to SSA names before loading)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(
            f"{path} holds objects other than tensors and plain containers; refusing to unpickle it "
            f"(weights_only=True). {err}"
        ) from err
    for _ in range(3):
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in ("model", "state_dict") if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    state = {str(k): v for k, v in _tensor_items(obj)}
    if not state:
        raise ValueError(f"{path} holds no tensors")
    return state


def _tensor_items(obj: Mapping[Any, Any]) -> Iterator[tuple[Any, Tensor]]:
    for key, value in obj.items():
        if isinstance(value, Tensor):
            yield key, value
