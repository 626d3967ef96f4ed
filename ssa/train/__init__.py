"""ssa.train: fine-tuning (:func:`finetune`), the Hungarian matcher and the losses of Eq. 8."""

from ssa.train.finetune import TrainConfig, finetune, latest_checkpoint
from ssa.train.losses import LossConfig, SSACriterion
from ssa.train.matcher import HungarianMatcher

__all__ = ["TrainConfig", "finetune", "latest_checkpoint", "LossConfig", "SSACriterion", "HungarianMatcher"]
