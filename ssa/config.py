"""`SSAConfig`: the one JSON-serialisable description of an SSA network.

A checkpoint's ``config.json`` is ``SSAConfig.to_dict()``; it fully determines the architecture.
Presets are plain constructors, not a registry: ``SSAConfig.from_preset(name)``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SSAConfig", "PRESETS", "ConfigTypeError", "check_field_types"]


@dataclass
class SSAConfig:
    """Architecture of an SSA model: the official network (github.com/Tavarich/SSA) at any width.

    The defaults are the network of the authors' released checkpoints (``ssa-convnext-large``, MeViS
    config): 46,847,569 trainable parameters (39,832,517 without the adapters).
    """

    # -- frozen CLIP (Eq. 2) -------------------------------------------------------------------------
    clip_model: str = "convnext_large_d_320"
    """open_clip model name (``open_clip.list_models()``), used when ``clip_config`` is None."""
    clip_pretrained: str | None = "laion2b_s29b_b131k_ft_soup"
    """open_clip pretrained tag; None builds randomly initialised CLIP weights (no download)."""
    clip_config: dict[str, Any] | None = None
    """An explicit open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) instead of a
    named model; the tiny preset uses it."""
    clip_trunk: dict[str, Any] | None = None
    """A custom timm ConvNeXt trunk for ``clip_config``: ``{"depths": [...], "dims": [...]}`` (and
    optionally ``ls_init_value``), used instead of ``vision_cfg.timm_model_name``."""
    max_words: int = 40
    """F_w keeps the first ``max_words`` token positions (the official cap); F_s is read from the full
    77-token context."""
    image_size: int = 448
    """Short side frames are resized to by the pipeline (``MIN_SIZE_TEST``)."""
    max_size: int = 1333
    """Cap on the long side after resizing."""

    # -- widths shared by the heads --------------------------------------------------------------------
    hidden_dim: int = 256  # C
    num_queries: int = 20  # N, instance queries per frame (and video queries)
    num_heads: int = 8
    """Heads of the frame and video decoders' attention layers and of the temporal attention."""
    dropout: float = 0.0
    """Dropout inside the frame and video decoders (the official 0.0)."""
    mask_dim: int = 256

    # -- semantic alignment refine module, the adapters between the CLIP stages (Eq. 3-4) ---------------
    use_adapter: bool = True
    """False: the CLIP stages run unadapted (Tab. 6 'without adapter')."""
    adapter_dim: int = 256
    adapter_heads: int = 8
    adapter_dropout: float = 0.1

    # -- text resizer: F_s (CLIP width) -> hidden_dim ---------------------------------------------------
    text_dropout: float = 0.1

    # -- pixel decoder: 6 x [text fusion (Eq. 5) -> deformable encoder layer] + FPN ---------------------
    pixel_decoder_layers: int = 6
    pixel_decoder_heads: int = 8
    pixel_decoder_points: int = 4
    pixel_decoder_ffn_dim: int = 1024
    fusion_dim: int = 512
    """Joint width of the bi-directional text fusion blocks (Eq. 5)."""
    fusion_heads: int = 4
    fusion_dropout: float = 0.1
    bidirectional: bool = True
    """Eq. 5 in both directions. False: the visual tokens do not read the text, only the sentence reads
    the visual tokens (Tab. 7 'w/o bi-directional')."""

    # -- frame query decoder (masked attention + text cross-attention) ---------------------------------
    frame_decoder_layers: int = 9
    frame_decoder_ffn_dim: int = 2048

    # -- sequential object alignment (Eq. 6-7) ----------------------------------------------------------
    trajectory: bool = True
    """Hungarian trajectories + temporal enhancement (Eq. 6). False: the frame queries are used in their
    decoder order without enhancement (Tab. 7 'w/o trajectory')."""
    ensemble: bool = True
    """Trajectory-to-instance ensemble (Eq. 7). False: uniform temporal weights (Tab. 7 'w/o ensemble')."""

    # -- video query decoder ----------------------------------------------------------------------------
    video_decoder_layers: int = 6
    video_decoder_ffn_dim: int = 2048
    train_frame_layers: int = 3
    """In training, the sequence stages and the video decoder run on the frame queries of this many last
    frame-decoder predictions (the official ``LAST_LAYER_NUM`` 3), each supervised by L_v and L_sim;
    inference uses the last one only."""

    # -- experimental: not in the official network (ssa.experimental) -------------------------------
    experimental_motion_features: bool = False
    """Pixel motion features (:mod:`ssa.experimental.motion`): an encoder of each frame's temporal
    difference adds to the mask features and the frame decoder's stride-8 level. Not in the official
    network (official checkpoints have it off); measured on the demo model in docs/demo-model.md."""

    # -- test-time behaviour (the pipeline's defaults) --------------------------------------------------
    selection: str = "multi"
    """Default selection of video queries: "multi" (every query with score > ``threshold``, united: the
    official MeViS rule) or "single" (the best one: Ref-YouTube-VOS / Ref-DAVIS)."""
    threshold: float = 0.5

    preset: str | None = field(default=None, compare=False)
    """Name of the preset this config came from (informational)."""

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` (or :class:`ConfigTypeError`) naming the first inconsistent field."""
        check_field_types(self)
        positive = [
            "image_size", "max_size", "max_words", "hidden_dim", "num_queries", "num_heads", "mask_dim",
            "adapter_dim", "adapter_heads", "pixel_decoder_layers", "pixel_decoder_heads",
            "pixel_decoder_points", "pixel_decoder_ffn_dim", "fusion_dim", "fusion_heads",
            "frame_decoder_layers", "frame_decoder_ffn_dim", "video_decoder_layers", "video_decoder_ffn_dim",
            "train_frame_layers",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"SSAConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        for width, heads in [("hidden_dim", "num_heads"), ("hidden_dim", "pixel_decoder_heads"),
                             ("adapter_dim", "adapter_heads"), ("fusion_dim", "fusion_heads")]:
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(f"SSAConfig.{width} ({getattr(self, width)}) must be divisible by {heads} "
                                 f"({getattr(self, heads)})")
        for name in ("hidden_dim", "adapter_dim"):
            if getattr(self, name) % 4:
                raise ValueError(f"SSAConfig.{name} must be divisible by 4 (2-D sine positions), "
                                 f"got {getattr(self, name)}")
        for name in ("dropout", "adapter_dropout", "text_dropout", "fusion_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"SSAConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.train_frame_layers > self.frame_decoder_layers + 1:
            raise ValueError(f"SSAConfig.train_frame_layers ({self.train_frame_layers}) exceeds the frame "
                             f"decoder's {self.frame_decoder_layers + 1} predictions (initial + per layer)")
        if self.max_size < self.image_size:
            raise ValueError(f"SSAConfig.max_size ({self.max_size}) < image_size ({self.image_size})")
        if self.selection not in ("multi", "single"):
            raise ValueError(f"SSAConfig.selection must be 'multi' or 'single', got {self.selection!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"SSAConfig.threshold must be in [0, 1], got {self.threshold}")
        if self.clip_config is None and not self.clip_model:
            raise ValueError("SSAConfig needs either clip_model or clip_config")
        if self.clip_config is not None:
            missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(self.clip_config)
            if missing:
                raise ValueError(f"SSAConfig.clip_config lacks keys {sorted(missing)}")
        if self.clip_trunk is not None:
            if self.clip_config is None:
                raise ValueError("SSAConfig.clip_trunk describes the trunk of an explicit clip_config")
            depths, dims = self.clip_trunk.get("depths"), self.clip_trunk.get("dims")
            unknown = set(self.clip_trunk) - {"depths", "dims", "ls_init_value"}
            scale = self.clip_trunk.get("ls_init_value", 1e-6)
            bad_scale = isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0
            if unknown or not _int_list(depths, 4) or not _int_list(dims, 4) or bad_scale:
                raise ValueError("SSAConfig.clip_trunk must be {'depths': [4 ints], 'dims': [4 ints]} "
                                 f"(optionally a positive 'ls_init_value'), got {self.clip_trunk!r}")

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SSAConfig:
        """The config of a named preset (``ssa-convnext-large``, ``ssa-convnext-base``, ``ssa-tiny``),
        with optional field overrides, e.g. ``from_preset("ssa-convnext-large", clip_pretrained=None)``."""
        if not isinstance(name, str) or name not in PRESETS:
            raise ValueError(f"unknown SSA preset {name!r}; available presets: {sorted(PRESETS)}")
        values = dict(PRESETS[name])
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"SSAConfig has no field(s) {sorted(unknown)}")
        values.update(overrides)
        values["preset"] = name
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SSAConfig:
        """Build from a dict (e.g. a checkpoint's config.json); unknown keys are an error, not ignored."""
        if not isinstance(values, dict):
            raise TypeError(f"SSAConfig.from_dict expects a dict, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"config has unknown SSAConfig field(s) {sorted(unknown)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> SSAConfig:
        """Parse a JSON string or read a ``config.json`` file."""
        path = Path(text_or_path) if not str(text_or_path).lstrip().startswith("{") else None
        text = path.read_text() if path is not None else str(text_or_path)
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            where = f"{path}" if path is not None else "config JSON"
            raise ValueError(f"{where} is not valid JSON: {err}") from err
        return cls.from_dict(values)


class ConfigTypeError(TypeError, ValueError):
    """A config field holds a value of the wrong type (e.g. the string ``"false"`` for a bool). Both a
    ``TypeError`` and a ``ValueError``, so callers catching either for bad config values catch it."""


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_field_types(config: Any) -> None:
    """Raise :class:`ConfigTypeError` naming ``<Config>.<field>`` unless every field of the dataclass
    ``config`` holds a value of its declared type.

    The one type check of ssa's configs (:class:`SSAConfig`, ``TrainConfig``, ``LossConfig``), run when
    one is built or loaded: a bool is not an int or a float, a string is never a bool or a number, an int
    is a float, ``list[int]`` takes a list (or tuple) of ints, a nested config must be of its class.
    """
    owner = type(config).__name__
    hints = _field_types(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _matches(value, hints[f.name]):
            raise ConfigTypeError(f"{owner}.{f.name} must be {_describe(hints[f.name])}, got "
                                  f"{type(value).__name__} {value!r}")


def _matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is Any:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        key = typing.get_args(annotation)[0] if typing.get_args(annotation) else Any
        return isinstance(value, dict) and all(_matches(k, key) for k in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _describe(annotation: Any) -> str:
    return str(annotation).replace("typing.", "") if typing.get_origin(annotation) else getattr(
        annotation, "__name__", str(annotation))


def _int_list(value: Any, length: int) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == length
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


# The tiny CLIP: open_clip's CLIP built from an explicit config on timm's convnext_atto trunk, text
# width 128 with 2 layers. It is never pretrained; it exists for tests and the synthetic demo model.
_TINY_CLIP = {
    "embed_dim": 128,
    "vision_cfg": {
        "timm_model_name": "convnext_atto",
        "timm_model_pretrained": False,
        "timm_pool": "avg",
        "timm_proj": "linear",
        "image_size": 128,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}

PRESETS: dict[str, dict[str, Any]] = {
    # The paper: ConvNeXt-Large CLIP, all heads at full size.
    "ssa-convnext-large": {},
    # Lighter backbone, same heads.
    "ssa-convnext-base": {
        "clip_model": "convnext_base_w",
        "clip_pretrained": "laion2b_s13b_b82k_augreg",
        "image_size": 448,
    },
    # Tests and the CPU demo: the official network at small widths.
    "ssa-tiny": {
        "clip_model": "",
        "clip_pretrained": None,
        "clip_config": _TINY_CLIP,
        "image_size": 128,
        "max_size": 256,
        "hidden_dim": 64,
        "num_queries": 8,
        "num_heads": 4,
        "mask_dim": 64,
        "adapter_dim": 32,
        "adapter_heads": 4,
        "pixel_decoder_layers": 2,
        "pixel_decoder_heads": 4,
        "pixel_decoder_points": 2,
        "pixel_decoder_ffn_dim": 128,
        "fusion_dim": 64,
        "fusion_heads": 2,
        "frame_decoder_layers": 3,
        "frame_decoder_ffn_dim": 128,
        "video_decoder_layers": 2,
        "video_decoder_ffn_dim": 128,
    },
}
