"""ssa: referring video object segmentation with Semantic and Sequential Alignment (CVPR 2025).

Public API::

    from ssa import SSAConfig, SSAModel
    model = SSAModel(SSAConfig.from_preset("ssa-convnext-large"))
    out = model(frames, ["the cat jumping away"])     # frames: (T, 3, H, W) CLIP-normalised

    pipe = SSAPipeline.from_pretrained("<hub repo id or local dir>")
    result = pipe("video.mp4", "the cat jumping away")  # RVOSResult: per-frame masks

    model = convert_official("model_final.pth")          # the authors' detectron2 checkpoint

The public names are imported on first use (PEP 562), so that ``import ssa`` and the ``ssa`` command's
argument parsing do not pay for importing torch and open_clip.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ssa.version import __version__

_LAZY = {
    "SSAConfig": "ssa.config",
    "PRESETS": "ssa.config",
    "convert_official": "ssa.convert",
    "SSAModel": "ssa.modeling.model",
    "SSAOutput": "ssa.modeling.outputs",
    "SSAPipeline": "ssa.pipeline",
    "RVOSResult": "ssa.pipeline",
    "FrameMasks": "ssa.pipeline",
}

__all__ = [
    "SSAConfig", "SSAModel", "SSAOutput", "SSAPipeline", "RVOSResult", "FrameMasks", "PRESETS", "__version__",
    "convert_official",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from ssa.config import PRESETS, SSAConfig
    from ssa.convert import convert_official
    from ssa.modeling.model import SSAModel
    from ssa.modeling.outputs import SSAOutput
    from ssa.pipeline import FrameMasks, RVOSResult, SSAPipeline


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ssa' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
