"""Pretraining a CLIP text tower that has no pretrained weights (the tiny demo model's).

SSA reads a *frozen, pretrained* CLIP text tower (Eq. 2): every word of an expression reaches the
adapters and the query generation through F_w and F_s. A text tower trained from scratch together
with the segmentation losses does not learn that: on the synthetic benchmark it settles on the
cheapest cue (colour) and maps expressions that differ in shape or motion onto one vector
(``experiments/text_probe.py``). :func:`pretrain_text_tower` stands in for CLIP's pretraining: a short
self-supervised run on the training expressions, after which the tower is frozen
(``finetune(..., unfreeze_clip="visual")``). Three objectives, on the tower's own outputs:

- sentence bag of words: a linear read-out of F_s predicts which tokens the expression contains
  (multi-label, binary cross-entropy), so F_s keeps every word;
- token identity: a linear read-out of F_w at each token predicts that token (cross-entropy), so the
  per-token features stay distinct;
- spread: the log-sum-exp of the scaled cosines between the F_s of distinct expressions of a batch, so
  the sentence features do not share one dominant direction.

The read-out heads are discarded afterwards; only the text tower's weights change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ssa.modeling.backbone import validate_expressions
from ssa.modeling.model import SSAModel

logger = logging.getLogger(__name__)

__all__ = ["pretrain_text_tower"]


def pretrain_text_tower(model: SSAModel, expressions: Sequence[str], *, steps: int = 300,
                        batch_size: int = 64, lr: float = 1e-3, bow_weight: float = 10.0,
                        spread_weight: float = 0.1, spread_scale: float = 5.0, seed: int = 0,
                        progress: bool = True) -> dict[str, float]:
    """Train ``model``'s CLIP text tower in place on ``expressions`` and return the last step's losses.

    Only the text tower's parameters change (token and position embeddings, transformer, final norm,
    text projection); whether they require grad afterwards is as before. Deterministic in ``seed``.
    """
    texts = sorted(set(validate_expressions(list(expressions))))
    if len(texts) < 2:
        raise ValueError(f"text pretraining needs at least 2 distinct expressions, got {len(texts)}")
    if steps < 1 or batch_size < 2 or not lr > 0:
        raise ValueError(f"steps must be >= 1, batch_size >= 2 and lr > 0; got {steps}, {batch_size}, {lr}")
    backbone = model.backbone
    device = backbone.clip.token_embedding.weight.device
    tokens, _ = backbone.tokenize(texts)  # (N, L)
    vocab = torch.unique(tokens[tokens > 0])  # the ids the expressions use, sorted
    index = torch.full((int(vocab.max()) + 1,), -1, dtype=torch.long)
    index[vocab] = torch.arange(len(vocab))

    params = backbone._text_parameters()
    was_trainable = [p.requires_grad for p in params]
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = nn.ModuleDict({"sentence": nn.Linear(backbone.text_dim, len(vocab)),
                               "token": nn.Linear(backbone.text_dim, len(vocab))}).to(device)
    optimizer = torch.optim.AdamW([*params, *heads.parameters()], lr=lr, weight_decay=0.0)
    batch_size = min(batch_size, len(texts))
    losses: dict[str, float] = {}
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for _ in tqdm(range(steps), desc="text pretraining", disable=not progress):
                pick = torch.randperm(len(texts), generator=generator)[:batch_size]
                batch = tokens[pick]
                eot = batch.argmax(dim=-1)  # (B,)
                batch = batch[:, : int(eot.max()) + 1]  # trimmed to the batch's longest, as tokenize() does
                feats = backbone._encode_tokens(batch, [texts[i] for i in pick.tolist()])
                ids = index[batch].to(device)  # (B, L), -1 = padding
                eot = eot.to(device)
                inner = feats.word_mask.clone()  # tokens between start and end-of-text
                inner[:, 0] = False
                inner[torch.arange(len(pick), device=device), eot] = False

                rows = torch.arange(len(pick), device=device)[:, None].expand_as(ids)
                bag = torch.zeros(len(pick), len(vocab), device=device)  # (B, V) which tokens it contains
                bag[rows[inner], ids[inner]] = 1.0
                loss_bow = F.binary_cross_entropy_with_logits(heads["sentence"](feats.sentence), bag)
                loss_token = F.cross_entropy(heads["token"](feats.words[inner]), ids[inner])
                z = F.normalize(feats.sentence, dim=-1)
                cos = z @ z.T  # (B, B)
                off = ~torch.eye(len(pick), dtype=torch.bool, device=device)
                loss_spread = torch.logsumexp(spread_scale * cos[off], dim=0)
                loss = bow_weight * loss_bow + loss_token + spread_weight * loss_spread
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses = {"bow": loss_bow.item(), "token": loss_token.item(), "spread": loss_spread.item(),
                          "mean_cos": cos[off].mean().item()}
    finally:
        for p, trainable in zip(params, was_trainable, strict=True):
            p.requires_grad_(trainable)
    logger.info("text pretraining on %d expressions, %d steps: %s", len(texts), steps,
                ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    return losses
