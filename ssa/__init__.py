"""ssa: referring video object segmentation with Semantic and Sequential Alignment (CVPR 2025).

Public API::

    from ssa import SSAConfig, SSAModel
    model = SSAModel(SSAConfig.from_preset("ssa-convnext-large"))
    out = model(frames, ["the cat jumping away"])     # frames: (T, 3, H, W) CLIP-normalised

    pipe = SSAPipeline.from_pretrained("<hub repo id or local dir>")
    result = pipe("video.mp4", "the cat jumping away")  # RVOSResult: per-frame masks

    model = convert_official("model_final.pth")          # the authors' detectron2 checkpoint
"""

__version__ = "0.1.0"

from ssa.config import PRESETS, SSAConfig  # noqa: E402
from ssa.convert import convert_official  # noqa: E402
from ssa.modeling.model import SSAModel  # noqa: E402
from ssa.modeling.outputs import SSAOutput  # noqa: E402
from ssa.pipeline import FrameMasks, RVOSResult, SSAPipeline  # noqa: E402

__all__ = [
    "SSAConfig", "SSAModel", "SSAOutput", "SSAPipeline", "RVOSResult", "FrameMasks", "PRESETS", "__version__",
    "convert_official",
]
