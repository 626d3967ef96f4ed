"""ssa.train: fine-tuning (:func:`finetune`), the Hungarian matcher, the losses of Eq. 8, and the
pretraining of a CLIP text tower that has no weights (:func:`pretrain_text_tower`)."""

from ssa.train.finetune import TrainConfig, finetune, latest_checkpoint
from ssa.train.losses import LossConfig, SSACriterion
from ssa.train.matcher import HungarianMatcher
from ssa.train.text_pretraining import pretrain_text_tower

__all__ = ["TrainConfig", "finetune", "latest_checkpoint", "LossConfig", "SSACriterion", "HungarianMatcher",
           "pretrain_text_tower"]
