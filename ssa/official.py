"""The authors' checkpoints: the official detectron2 ``model_final.pth`` format, read and renamed.

The official network (github.com/Tavarich/SSA, ``SSAlignment``) and ssa's compute the same function;
only the parameter names differ. :func:`official_key` maps every official name to ssa's (the rules
below, in order), :func:`convert_state_dict` applies it to a whole state dict and checks that every
official tensor is consumed and every ssa tensor filled with the right shape, and
:func:`read_official` reads a ``.pth`` (``torch.load(weights_only=True)``: nothing is unpickled);
:func:`ssa.convert_official` (``SSAModel.from_official``, built by :func:`ssa.hub.load_official`) returns
the model. The frozen CLIP tensors of the checkpoint are kept, so the converted model runs
offline.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["OFFICIAL_DATASETS", "OfficialRelease", "official_key", "convert_state_dict", "read_official",
           "OfficialCheckpointError"]

logger = logging.getLogger(__name__)

_MAX_LISTED = 8


@dataclasses.dataclass(frozen=True)
class OfficialRelease:
    """What the authors report for a released checkpoint, and how the official code tests it."""

    name: str
    benchmark: str
    jf: float
    image_size: int
    selection: str


OFFICIAL_DATASETS: dict[str, OfficialRelease] = {
    # MeViS: every query with p > 0.5, united; short side 448 (configs/mevis).
    "mevis": OfficialRelease("MeViS", "MeViS val", 48.56, 448, "multi"),
    # Ref-YouTube-VOS and Ref-DAVIS17: the top-1 query; configs/ytvos and configs/davis set 480.
    "ytvos": OfficialRelease("Ref-YouTube-VOS", "Ref-YouTube-VOS val", 64.3, 480, "single"),
    "davis": OfficialRelease("Ref-DAVIS17", "Ref-DAVIS17 val", 67.3, 480, "single"),
}

# (official pattern, ssa replacement), tried in order; the first match wins.
_RULES: list[tuple[str, str]] = [
    (r"^backbone\.clip_model\.", "backbone.clip."),
    # adapters between the CLIP stages
    (r"^backbone\.stage_adapter_layers\.(\d+)\.cross_attention\.multihead_attn\.",
     r"adapters.\1.cross_attention.attn."),
    (r"^backbone\.stage_adapter_layers\.(\d+)\.", r"adapters.\1."),
    (r"^resizer\.layer_norm\.", "text_resizer.norm."),
    (r"^resizer\.fc\.", "text_resizer.fc."),
    # pixel decoder
    (r"^sem_seg_head\.pixel_decoder\.transformer\.level_embed$", "pixel_decoder.level_embed"),
    (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm1\.",
     r"pixel_decoder.layers.\1.norm."),
    (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm2\.",
     r"pixel_decoder.layers.\1.ffn.norm."),
    (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.(linear[12])\.",
     r"pixel_decoder.layers.\1.ffn.\2."),
    (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.self_attn\.",
     r"pixel_decoder.layers.\1.self_attn."),
    (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.fusion_layers\.", "pixel_decoder.fusion_layers."),
    (r"^sem_seg_head\.pixel_decoder\.adapter_1\.weight$", "pixel_decoder.lateral.0.weight"),
    (r"^sem_seg_head\.pixel_decoder\.adapter_1\.norm\.", "pixel_decoder.lateral.1."),
    (r"^sem_seg_head\.pixel_decoder\.layer_1\.weight$", "pixel_decoder.output_conv.0.weight"),
    (r"^sem_seg_head\.pixel_decoder\.layer_1\.norm\.", "pixel_decoder.output_conv.1."),
    (r"^sem_seg_head\.pixel_decoder\.(input_proj|mask_features)\.", r"pixel_decoder.\1."),
    (r"^vita_module\.vita_mask_features\.", "pixel_decoder.video_mask_features."),
    # frame decoder
    (r"^sem_seg_head\.predictor\.query_embed\.", "frame_decoder.query_pos."),
    (r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.multihead_attn\.",
     r"frame_decoder.cross_attn_layers.\1.attn."),
    (r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.norm\.",
     r"frame_decoder.cross_attn_layers.\1.norm."),
    (r"^sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.",
     r"frame_decoder.self_attn_layers.\1.attn."),
    (r"^sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.norm\.",
     r"frame_decoder.self_attn_layers.\1.norm."),
    (r"^sem_seg_head\.predictor\.text_cross_attention_layers\.(\d+)\.multihead_attn\.",
     r"frame_decoder.text_attn_layers.\1.attn."),
    (r"^sem_seg_head\.predictor\.text_cross_attention_layers\.(\d+)\.norm\.",
     r"frame_decoder.text_attn_layers.\1.norm."),
    (r"^sem_seg_head\.predictor\.transformer_ffn_layers\.", "frame_decoder.ffn_layers."),
    (r"^sem_seg_head\.predictor\.class_embed\.", "frame_decoder.class_head."),
    (r"^sem_seg_head\.predictor\.mask_embed\.", "frame_decoder.mask_head."),
    (r"^sem_seg_head\.predictor\.(decoder_norm|level_embed)\.", r"frame_decoder.\1."),
    # sequence stage
    (r"^vita_module\.input_proj_dec\.", "sequence_proj."),
    (r"^vita_module\.short_temporal\.0\.", "temporal_enhancement.short_conv1."),
    (r"^vita_module\.short_temporal\.2\.", "temporal_enhancement.short_conv2."),
    (r"^vita_module\.temporal_norm\.", "temporal_enhancement.short_norm."),
    (r"^vita_module\.long_temporal\.self_attn\.", "temporal_enhancement.long_term.attn."),
    (r"^vita_module\.long_temporal\.norm\.", "temporal_enhancement.long_term.norm."),
    (r"^vita_module\.time_aware_attn\.", "ensemble.fc."),
    # video decoder
    (r"^vita_module\.fusion\.(\d+)\.multihead_attn\.", r"video_decoder.layers.\1.text_attn.attn."),
    (r"^vita_module\.fusion\.(\d+)\.norm\.", r"video_decoder.layers.\1.text_attn.norm."),
    (r"^vita_module\.transformer_cross_attention_layers\.(\d+)\.multihead_attn\.",
     r"video_decoder.layers.\1.frame_attn.attn."),
    (r"^vita_module\.transformer_cross_attention_layers\.(\d+)\.norm\.",
     r"video_decoder.layers.\1.frame_attn.norm."),
    (r"^vita_module\.transformer_self_attention_layers\.(\d+)\.self_attn\.",
     r"video_decoder.layers.\1.self_attn.attn."),
    (r"^vita_module\.transformer_self_attention_layers\.(\d+)\.norm\.",
     r"video_decoder.layers.\1.self_attn.norm."),
    (r"^vita_module\.transformer_ffn_layers\.(\d+)\.", r"video_decoder.layers.\1.ffn."),
    (r"^vita_module\.decoder_norm\.", "video_decoder.norm."),
    (r"^vita_module\.query_embed\.", "video_decoder.query_pos."),
    (r"^vita_module\.fq_pos\.", "video_decoder.frame_slot_pos."),
    (r"^vita_module\.class_embed\.", "video_decoder.class_head."),
    (r"^vita_module\.mask_embed\.", "video_decoder.mask_head."),
    (r"^vita_module\.sim_embed_frame\.", "video_decoder.sim_frame."),
    (r"^vita_module\.sim_embed_clip\.", "video_decoder.sim_clip."),
]
_COMPILED = [(re.compile(p), r) for p, r in _RULES]

# Constant buffers of the official training criteria (the no-object class weight [1, 0.1]).
_DROPPED = {"criterion.empty_weight", "vita_criterion.empty_weight"}


class OfficialCheckpointError(ValueError):
    """An official checkpoint that cannot be converted: unreadable, not the official network, or not
    the network of the given config."""


def official_key(key: str) -> str | None:
    """The ssa name of an official state-dict key; None for a key the rules do not know."""
    for pattern, replacement in _COMPILED:
        if pattern.search(key):
            return pattern.sub(replacement, key, count=1)
    return None


def convert_state_dict(official: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]],
                       *, source: str = "checkpoint") -> dict[str, Tensor]:
    """Rename an official state dict to ssa's names and check it against ``expected`` (the shapes of
    the target model's state dict): every official tensor must be consumed and every expected tensor
    filled, with equal shapes; otherwise :class:`OfficialCheckpointError` lists the keys."""
    converted: dict[str, Tensor] = {}
    unknown, wrong, duplicate = [], [], []
    for key, value in official.items():
        if key in _DROPPED:
            continue
        target = official_key(key)
        if target is None or target not in expected:
            unknown.append(key if target is None else f"{key} (→ {target})")
            continue
        if target in converted:
            duplicate.append(key)
        if tuple(value.shape) != tuple(expected[target]):
            wrong.append(f"{key}: {tuple(value.shape)}, the config's network has {tuple(expected[target])}")
        converted[target] = value
    missing = [k for k in expected if k not in converted]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): " + "; ".join(wrong[:_MAX_LISTED]))
    if missing:
        problems.append(f"{len(missing)} tensor(s) of the network missing from the checkpoint: "
                        f"{missing[:_MAX_LISTED]}")
    if unknown:
        problems.append(f"{len(unknown)} checkpoint tensor(s) with no place in the network: "
                        f"{unknown[:_MAX_LISTED]}")
    if duplicate:
        problems.append(f"{len(duplicate)} duplicate tensor(s): {duplicate[:_MAX_LISTED]}")
    if problems:
        raise OfficialCheckpointError(
            f"{source} does not convert into this SSA network: " + " | ".join(problems)
            + ". Is the config the checkpoint's (convert_official(path, config=...))?"
        )
    return converted


def read_official(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The official state dict of a detectron2 ``.pth`` (``{"model": state_dict, "iteration": N, ...}``)
    and its other plain entries, read with ``torch.load(weights_only=True)``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    _check_torch_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise OfficialCheckpointError(
            f"{path} {_unpickling_problem(err)}; refusing to unpickle it (ssa reads checkpoints with "
            "weights_only=True). If you trust the file, save its state dict alone and convert that: "
            "torch.save({'model': torch.load(path, weights_only=False)['model']}, new_path)"
        ) from err
    except Exception as err:  # a torch file torch cannot read: truncated, corrupt
        raise OfficialCheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from err
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        state = obj["model"]
        extra = {k: v for k, v in obj.items() if k != "model" and not isinstance(v, Mapping)}
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state, extra = obj, {}
    else:
        raise OfficialCheckpointError(
            f"{path} is not a detectron2 checkpoint of the official SSA network: expected a dict with a "
            f"'model' state dict, got {type(obj).__name__}"
            + (f" with keys {sorted(map(str, obj))[:_MAX_LISTED]}" if isinstance(obj, Mapping) else "")
        )
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise OfficialCheckpointError(f"{path}: the state dict holds non-tensor entries {bad[:_MAX_LISTED]}")
    if not any(k.startswith(("sem_seg_head.", "vita_module.")) for k in state):
        raise OfficialCheckpointError(
            f"{path} holds a state dict but not of the official SSA network (no sem_seg_head.* or "
            f"vita_module.* tensors; first keys {list(state)[:_MAX_LISTED]})"
        )
    return dict(state), extra


# torch.save's zip format, and its legacy format (pickle protocol 2 of the magic number
# 0x1950a86a20f9469cfc6c).
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def _check_torch_file(path: Path) -> None:
    """:class:`OfficialCheckpointError` unless the file starts like a ``torch.save`` file."""
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head.startswith(_ZIP_MAGIC) or head == _LEGACY_MAGIC:
        return
    what = "an empty file" if not head else f"a file starting with {head[:8]!r}"
    raise OfficialCheckpointError(
        f"{path} is not a PyTorch checkpoint file (a torch.save file such as the official "
        f"model_final.pth): it is {what}"
    )


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else repr(err)


def _unpickling_problem(err: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, as the end of a sentence about the file."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (f"holds pickled Python objects, not only tensors and plain containers (dict, list, str, "
                f"numbers): it references {found.group(1)}")
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = found.group(1).strip() if found else _first_line(err)
    return f"cannot be read with the weights-only unpickler ({detail}): corrupt, or pickled Python objects"
