"""Pretraining a CLIP visual tower that has no pretrained weights (the tiny demo model's).

SSA reads a *pretrained* CLIP: its visual features already tell a red circle from a blue square, and
the adapters (Eq. 3-4) only have to align them with the expression. The tiny demo model's ConvNeXt
trunk starts from random weights and must learn colours and shapes from the segmentation losses
alone, together with everything else; after a full training run it still selects objects of the
wrong shape (e.g. "the circle" → two squares) with high scores. :func:`pretrain_visual_tower` stands
in for CLIP's image-text pretraining, at the level of regions (one object, one expression):

- a frame that shows the one object an expression refers to is drawn from the training clips, with
  the masks of every annotated object in it;
- the trunk's stage-3 and stage-4 features are average-pooled inside each object's mask (area-resized
  to each stage) and a linear read-out maps them to the text embedding space;
- referring term: the expression's frozen sentence embedding F_s picks its object among the objects of
  its frame (cross-entropy over cosine similarities), the referring task itself on one frame;
- CLIP's term: a symmetric contrastive loss (InfoNCE) between the referred regions and the batch's
  distinct expressions (identical expressions of different objects are one text with several
  positive regions).

Run it after :func:`~ssa.train.pretrain_text_tower` (it reads the text tower, frozen here). The
read-out is discarded afterwards; only the visual trunk's weights change.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ssa.data.datasets import _ReferringVideoDataset
from ssa.modeling.model import SSAModel
from ssa.train.data import ReferringClips
from ssa.train.finetune import _load_dataset

logger = logging.getLogger(__name__)

__all__ = ["pretrain_visual_tower", "region_embeddings"]


def region_embeddings(stages: list[Tensor], masks: Tensor, owner: Tensor | None = None) -> Tensor:
    """Mask-averaged stage-3 and stage-4 features, concatenated: (R, C3 + C4).

    ``stages`` are the trunk's four stage features of B images, ``masks`` (R, H, W) the regions (float
    or bool, at the image size) and ``owner`` (R,) the image of each region (default: region r is in
    image r). The mask is area-resized to each stage's grid, so a region smaller than a cell still
    weighs the cell it covers.
    """
    pooled = []
    for f in stages[2:]:  # (B, C, h, w)
        f = f if owner is None else f[owner]  # (R, C, h, w)
        w = F.adaptive_avg_pool2d(masks[:, None].float(), f.shape[-2:])  # (R, 1, h, w) area fractions
        pooled.append((f * w).sum((2, 3)) / w.sum((2, 3)).clamp_min(1e-6))
    return torch.cat(pooled, dim=1)


def _draw(clips: ReferringClips, count: int, generator: torch.Generator, step: int
          ) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    """``count`` frames with one visible referred object each. Returns the images (B, 3, H, W), the
    regions (R, H, W) of every visible annotated object of those frames, the frame of each region (R,),
    the region each frame's expression refers to (B,) and the expressions (B). Expressions about
    several objects, or whose object the drawn frame does not show, are skipped."""
    images, regions, owner, referred, texts = [], [], [], [], []
    tries = 0
    while len(images) < count:
        tries += 1
        if tries > 20 * count:
            raise ValueError("the training data has too few frames that show a single referred object")
        index = int(torch.randint(len(clips), (1,), generator=generator))
        item = clips[(step, index)]
        if item["masks"].shape[0] != 1 or not item["masks"][0, 0].any():
            continue
        others = [m for m in item["others"][:, 0] if m.any()]  # (h, w) each
        owner += [len(images)] * (1 + len(others))
        referred.append(len(regions))
        regions += [item["masks"][0, 0], *others]
        images.append(item["frames"][0])
        texts.append(item["expression"])
    h = max(x.shape[-2] for x in images)
    w = max(x.shape[-1] for x in images)
    batch = torch.zeros(len(images), 3, h, w)
    for b, x in enumerate(images):
        batch[b, :, : x.shape[-2], : x.shape[-1]] = x
    masks = torch.zeros(len(regions), h, w, dtype=torch.bool)
    for r, m in enumerate(regions):
        masks[r, : m.shape[-2], : m.shape[-1]] = m
    return batch, masks, torch.tensor(owner), torch.tensor(referred), texts


def pretrain_visual_tower(model: SSAModel, data: _ReferringVideoDataset | str | os.PathLike, *,
                          steps: int = 500, batch_size: int = 48, lr: float = 1e-3, temperature: float = 0.1,
                          seed: int = 0, progress: bool = True) -> dict[str, float]:
    """Train ``model``'s CLIP visual trunk in place on the single-object expressions of ``dataset`` and
    return the last step's loss and region → text accuracy.

    ``data``: a dataset of :mod:`ssa.data` or a MeViS-layout directory (as :func:`~ssa.train.finetune`).
    Frames are taken at the model's ``image_size`` (short side), flipped half of the time with "left"
    and "right" swapped in the expression, as in :func:`~ssa.train.finetune`. Only the visual trunk's
    parameters change; whether they require grad afterwards is as before. Deterministic in ``seed``.
    """
    if steps < 1 or batch_size < 2 or not lr > 0 or not temperature > 0:
        raise ValueError(f"steps must be >= 1, batch_size >= 2, lr > 0 and temperature > 0; got {steps}, "
                         f"{batch_size}, {lr}, {temperature}")
    backbone = model.backbone
    trunk = backbone.clip.visual.trunk
    device = next(trunk.parameters()).device
    mc = model.config
    clips = ReferringClips(_load_dataset(data), num_frames=1, window=1, scales=(mc.image_size,),
                           max_size=mc.max_size, hflip=True, seed=seed, other_objects=True)
    channels = sum(backbone.stage_channels[2:])
    params = list(trunk.parameters())
    was_trainable = [p.requires_grad for p in params]
    was_training = trunk.training
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, backbone.text_dim)).to(device)
    optimizer = torch.optim.AdamW([*params, *head.parameters()], lr=lr, weight_decay=0.05)
    sentences: dict[str, Tensor] = {}
    stats: dict[str, float] = {}
    try:
        for p in params:
            p.requires_grad_(True)
        trunk.train()
        with torch.enable_grad():
            for step in tqdm(range(steps), desc="visual pretraining", disable=not progress):
                images, regions, owner, referred, texts = _draw(clips, batch_size, generator, step)
                unique = list(dict.fromkeys(texts))
                missing = [t for t in unique if t not in sentences]
                if missing:
                    with torch.no_grad():
                        encoded = backbone._encode_text(missing).sentence
                    sentences.update(zip(missing, encoded, strict=True))
                owner, referred = owner.to(device), referred.to(device)
                text = F.normalize(torch.stack([sentences[t] for t in unique]), dim=-1)  # (U, D)
                stages = backbone._encode_image(images.to(device))
                region = head(region_embeddings(stages, regions.to(device), owner))
                region = F.normalize(region, dim=-1)  # (R, D)
                target = torch.tensor([unique.index(t) for t in texts], device=device)  # (B,)
                # referring: each expression against the objects of its own frame (no false negatives)
                sim = (text[target][owner] * region).sum(-1) / temperature  # (R,)
                same = owner[None, :] == torch.arange(len(texts), device=device)[:, None]  # (B, R)
                frame_logits = sim[None, :].masked_fill(~same, float("-inf"))  # (B, R)
                loss_refer = F.cross_entropy(frame_logits, referred)
                # CLIP's contrast over the batch: referred regions against the distinct expressions
                logits = region[referred] @ text.T / temperature  # (B, U)
                loss_region = F.cross_entropy(logits, target)
                positive = target[None, :] == torch.arange(len(unique), device=device)[:, None]  # (U, B)
                log_p = logits.T.log_softmax(dim=1)
                loss_text = -(torch.logsumexp(log_p.masked_fill(~positive, float("-inf")), dim=1)).mean()
                loss = loss_refer + (loss_region + loss_text) / 2
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                stats = {"loss": loss.item(), "refer_loss": loss_refer.item(),
                         "refer_accuracy": (frame_logits.argmax(1) == referred).float().mean().item(),
                         "text_accuracy": (logits.argmax(1) == target).float().mean().item()}
    finally:
        for p, trainable in zip(params, was_trainable, strict=True):
            p.requires_grad_(trainable)
        trunk.train(was_training)
    logger.info("visual pretraining on %d expressions, %d steps: %s", len(clips), steps,
                ", ".join(f"{k} {v:.4f}" for k, v in stats.items()))
    return stats
