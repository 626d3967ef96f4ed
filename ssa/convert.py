"""Convert the authors' checkpoints: the official detectron2 ``model_final.pth`` → :class:`~ssa.SSAModel`.

The format (key renaming rules, reading the file safely, the released checkpoints' settings) is
:mod:`ssa.official`; the model is built and checked by :func:`ssa.hub.load_official`.
"""

from __future__ import annotations

import os

from ssa.config import SSAConfig
from ssa.modeling.model import SSAModel
from ssa.official import OFFICIAL_DATASETS, OfficialCheckpointError

__all__ = ["convert_official", "OFFICIAL_DATASETS", "OfficialCheckpointError"]


def convert_official(path: str | os.PathLike[str], config: SSAConfig | None = None, *,
                     dataset: str | None = None) -> SSAModel:
    """Build an :class:`~ssa.SSAModel` from the authors' ``model_final.pth`` (``SSAModel.from_official``).

    ``config`` describes the checkpoint's network (default: the paper preset ``ssa-convnext-large``, the
    network of all released checkpoints). ``dataset`` ("mevis", "ytvos" or "davis") sets the official
    test-time behaviour for that benchmark in the returned config (short side, query selection). Every
    tensor of the checkpoint must be used and every tensor of the network filled, shapes equal, else an
    :class:`OfficialCheckpointError` lists the keys. Returns the model in eval mode, on the CPU.
    """
    return SSAModel.from_official(path, config, dataset=dataset)
