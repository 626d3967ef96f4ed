"""`SSAConfig`: the one JSON-serialisable description of an SSA network.

A checkpoint's ``config.json`` is ``SSAConfig.to_dict()``; it fully determines the architecture.
Presets (DESIGN.md section 3) are plain constructors, not a registry: ``SSAConfig.from_preset(name)``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SSAConfig", "PRESETS"]


@dataclass
class SSAConfig:
    """Architecture of an SSA model.

    The defaults are the paper's network (``ssa-convnext-large``). Sizes that the paper does not state
    were chosen so that the trainable parameter count matches its Table 6 (46.5M with the adapter,
    39.4M without); see ``benchmarks/param_count.py``.
    """

    # -- frozen CLIP (Eq. 2) -------------------------------------------------------------------------
    clip_model: str = "convnext_large_d_320"
    """open_clip model name (``open_clip.list_models()``), used when ``clip_config`` is None."""
    clip_pretrained: str | None = "laion2b_s29b_b131k_ft_soup"
    """open_clip pretrained tag; None builds randomly initialised CLIP weights (no download)."""
    clip_config: dict[str, Any] | None = None
    """An explicit open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) instead of a
    named model; the tiny preset uses it."""
    image_size: int = 448
    """Short side frames are resized to by the pipeline."""
    max_size: int = 1333
    """Cap on the long side after resizing."""

    # -- widths shared by the heads --------------------------------------------------------------------
    hidden_dim: int = 256  # C
    num_queries: int = 20  # N, instance queries per frame
    num_heads: int = 8
    dropout: float = 0.0

    # -- semantic alignment refine module, the adapter (Eq. 3-4) ---------------------------------------
    use_adapter: bool = True
    adapter_dim: int = 256
    """Joint width in which visual and text features meet inside each adapter."""

    # -- pixel decoder (multi-scale deformable attention encoder + FPN) --------------------------------
    pixel_decoder_layers: int = 6
    pixel_decoder_heads: int = 8
    pixel_decoder_points: int = 4
    pixel_decoder_ffn_dim: int = 1024
    mask_dim: int = 256

    # -- instance query generation (Eq. 5) --------------------------------------------------------------
    bidirectional: bool = True
    """Bi-directional encoder: visual tokens first attend to the text before the sentence reads them
    (Tab. 7 row 2 switches this off)."""

    # -- frame query decoder (masked attention) --------------------------------------------------------
    frame_decoder_layers: int = 9
    frame_decoder_ffn_dim: int = 2048

    # -- sequential object alignment (Eq. 6-7) ----------------------------------------------------------
    trajectory: bool = True
    """Hungarian trajectories + temporal enhancement + ensemble. False: video queries are the plain
    mean of the (unaligned) frame queries (Tab. 7 row 4)."""
    ensemble: bool = True
    """Trajectory-to-instance ensemble (Eq. 7). False: uniform temporal weights (Tab. 7 row 3)."""
    trajectory_masks: bool = False
    """Not in the paper. False (paper, §3.4): one mask embedding Q_emb per video query for every frame,
    masks = Q_emb · F_mask^t. True: the video decoder only scores, and video query i's mask at frame t is
    that of trajectory i, the frame decoder's mask of the trajectory's query at frame t, so a mask can
    follow one of two look-alike objects (a single embedding cannot: identical objects have identical
    mask features). These masks carry no gradient from the video level: the frame-level loss trains them
    (use it with ``LossConfig.frame_all_instances``), the video-level loss the scores."""
    query_positions: bool = False
    """Not in the paper. True: the centroid of each frame query's mask, sine-encoded and projected, is
    added to the query before the trajectories (``MaskPositionEncoding``), so the Hungarian linking and
    the temporal enhancement see where look-alike objects are and how they move."""
    motion_features: bool = False
    """Not in the paper. True: a small convolutional encoder of each frame's temporal difference
    x_t - x_{t-1} adds local motion to the mask features and to the stride-8 features the frame decoder
    reads (``PixelMotionEncoder``), so that look-alike objects moving differently get different pixel
    features and a mask Q_emb · F_mask^t can cover one of them only."""
    temporal_layers: int = 8
    """Temporal enhancement layers (Eq. 6). The paper gives no depth; 8 makes the trainable count
    match its Table 6 (39.4M without the adapter)."""
    temporal_kernel: int = 3
    temporal_ffn_dim: int = 2048

    # -- video query decoder ----------------------------------------------------------------------------
    video_decoder_layers: int = 3
    video_decoder_ffn_dim: int = 2048

    preset: str | None = field(default=None, compare=False)
    """Name of the preset this config came from (informational)."""

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        positive = [
            "image_size", "max_size", "hidden_dim", "num_queries", "num_heads", "adapter_dim",
            "pixel_decoder_layers", "pixel_decoder_heads", "pixel_decoder_points",
            "pixel_decoder_ffn_dim", "mask_dim", "frame_decoder_layers", "frame_decoder_ffn_dim",
            "temporal_layers", "temporal_kernel", "temporal_ffn_dim", "video_decoder_layers",
            "video_decoder_ffn_dim",
        ]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SSAConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"SSAConfig.hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.hidden_dim % self.pixel_decoder_heads:
            raise ValueError(
                f"SSAConfig.hidden_dim ({self.hidden_dim}) must be divisible by pixel_decoder_heads "
                f"({self.pixel_decoder_heads})"
            )
        if self.temporal_kernel % 2 == 0:
            raise ValueError(f"SSAConfig.temporal_kernel must be odd, got {self.temporal_kernel}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SSAConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.max_size < self.image_size:
            raise ValueError(f"SSAConfig.max_size ({self.max_size}) < image_size ({self.image_size})")
        if self.clip_config is None and not self.clip_model:
            raise ValueError("SSAConfig needs either clip_model or clip_config")
        if self.clip_config is not None:
            missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(self.clip_config)
            if missing:
                raise ValueError(f"SSAConfig.clip_config lacks keys {sorted(missing)}")

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
    # Tests and the CPU demo: every module present, every size small.
    "ssa-tiny": {
        "clip_model": "",
        "clip_pretrained": None,
        "clip_config": _TINY_CLIP,
        "image_size": 128,
        "max_size": 256,
        "hidden_dim": 64,
        "num_queries": 8,
        "num_heads": 4,
        "adapter_dim": 32,
        "pixel_decoder_layers": 2,
        "pixel_decoder_heads": 4,
        "pixel_decoder_points": 2,
        "pixel_decoder_ffn_dim": 128,
        "mask_dim": 64,
        "frame_decoder_layers": 3,
        "frame_decoder_ffn_dim": 128,
        "temporal_layers": 1,
        "temporal_ffn_dim": 128,
        "video_decoder_layers": 2,
        "video_decoder_ffn_dim": 128,
    },
}
