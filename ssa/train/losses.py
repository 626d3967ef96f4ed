"""The training objective of SSA (Eq. 8): L_train = L_v + L_f + λ_sim · L_sim.

- **L_f** (frame level): per pair p and frame t, the N frame queries are Hungarian-matched
  (:class:`~ssa.train.matcher.HungarianMatcher`) to the referred objects visible in frame t (mask
  nonempty at t). Matched queries are supervised as "referred" (class 0) with BCE + dice on their
  masks; every other query as "no object" (class 1, weight ``no_object_weight``).
- **L_v** (video level): the same for the N video queries against whole tubes (objects with at
  least one nonempty frame). A tube's mask terms cover all T frames, ``num_points`` points per frame
  (so a frame of a tube is sampled as densely as a frame of L_f); the dice is over the tube as one
  mask, the BCE the mean over its T · num_points points.
- **L_sim** (VITA-style, as the official code): per pair, the similarity embeddings of the matched frame
  queries (last frame-decoder layer's matching) and of the matched video queries (last video-decoder
  layer's matching) form one set; the logit of two members is their dot product, the target 1 when
  both were matched to the same object, else 0 (each member with itself included); BCE-with-logits, the
  mean over all these couples of the batch. Members of different pairs are not compared.

Both L_f and L_v are summed over the decoder layers when ``deep_supervision`` (each earlier layer is
matched on its own). As in the official training, the video stage also runs on the frame queries of the
frame decoder's earlier predictions (``SSAConfig.train_frame_layers``, ``output.earlier_layers``): L_v
and L_sim are the mean over these versions. Mask terms are normalised by the number of targets in the
batch (averaged over DDP ranks when torch.distributed is initialised, at least 1); the class term is the
weighted mean of the cross-entropy over all queries. Every mean's denominator is averaged over DDP ranks
the same way, so with per-pair generators a batch split over ranks gives exactly the gradients of the
whole batch.

Point sampling (docs/design.md §5): matching uses uniform random points; the loss uses importance sampling
(``oversample_ratio`` × points drawn uniformly, the ``importance_sample_ratio`` share with the least
certain predicted logit kept, the rest fresh uniform points; ``importance_sample_ratio=0`` gives plain
uniform sampling). All randomness comes from an optional ``torch.Generator`` (or one per pair) passed
to the forward, or from the global RNG (reproducible under ``torch.manual_seed``). Everything is
computed in float32 with autocast disabled, whatever precision the model ran in.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ssa.config import check_field_types
from ssa.modeling.outputs import SSAOutput
from ssa.train.matcher import HungarianMatcher, match_cost, point_sample, uncertain_points

__all__ = ["LossConfig", "SSACriterion"]

logger = logging.getLogger(__name__)


@dataclass
class LossConfig:
    """Weights and sampling of the training objective (Eq. 8). JSON-friendly (``to_dict``/``from_dict``).

    ``class_weight``, ``mask_weight`` and ``dice_weight`` weight both the loss terms and the matching
    costs (as in Mask2Former-style set prediction).
    """

    class_weight: float = 2.0
    """Weight of the referred / no-object cross-entropy (and of −p_referred in the matching cost)."""
    mask_weight: float = 5.0
    """Weight of the point-sampled mask BCE."""
    dice_weight: float = 5.0
    """Weight of the point-sampled dice loss."""
    no_object_weight: float = 0.1
    """Cross-entropy weight of the "no object" class (unmatched queries)."""
    sim_weight: float = 1.0
    """λ_sim of Eq. 8. The official configs set 0.5, but under a key the code never reads, so the official
    runs used 1.0; the paper gives 0.5-1.0."""
    num_points: int = 12544
    """Points per mask (per frame for tubes), for matching and for the loss; 112² at paper scale."""
    oversample_ratio: float = 3.0
    """Loss point sampling: candidates drawn = oversample_ratio × num_points (≥ 1)."""
    importance_sample_ratio: float = 0.75
    """Loss point sampling: share of points taken from the most uncertain candidates (0 = uniform)."""
    deep_supervision: bool = True
    """Also supervise every earlier decoder layer (frame and video decoders), summed."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` (:class:`~ssa.config.ConfigTypeError` for a wrong type) naming the first
        invalid field."""
        check_field_types(self)
        for name in ("class_weight", "mask_weight", "dice_weight", "sim_weight"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"LossConfig.{name} must be a finite number >= 0, got {value!r}")
        value = self.no_object_weight
        if not _is_real(value) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"LossConfig.no_object_weight must be a finite number > 0, got {value!r}")
        if not isinstance(self.num_points, int) or isinstance(self.num_points, bool) or self.num_points <= 0:
            raise ValueError(f"LossConfig.num_points must be a positive integer, got {self.num_points!r}")
        if not _is_real(self.oversample_ratio) or not 1.0 <= self.oversample_ratio < math.inf:
            raise ValueError(f"LossConfig.oversample_ratio must be a finite number >= 1, "
                             f"got {self.oversample_ratio!r}")
        if not _is_real(self.importance_sample_ratio) or not 0.0 <= self.importance_sample_ratio <= 1.0:
            raise ValueError(f"LossConfig.importance_sample_ratio must be in [0, 1], "
                             f"got {self.importance_sample_ratio!r}")
        if not isinstance(self.deep_supervision, bool):
            raise ValueError(f"LossConfig.deep_supervision must be a bool, got {self.deep_supervision!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LossConfig:
        """Build from a dict; unknown keys are an error, not ignored."""
        if not isinstance(values, dict):
            raise TypeError(f"LossConfig.from_dict expects a dict, got {type(values).__name__}")
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown LossConfig field(s) {sorted(unknown)}")
        return cls(**values)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num_targets(count: float, device: torch.device) -> Tensor:
    """Number of targets for normalisation: averaged over DDP ranks when distributed, at least 1."""
    n = torch.tensor(float(count), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return n.clamp(min=1.0)


@dataclass
class _Matches:
    """Matched (prediction, target) pairs of one layer, as parallel long tensors on CPU.

    ``frame`` is the frame index for frame-level matches and None for video-level ones.
    """

    pair: Tensor
    query: Tensor
    target: Tensor
    frame: Tensor | None = None


class SSACriterion(nn.Module):
    """L_train = L_v + L_f + λ_sim · L_sim (Eq. 8) of an :class:`~ssa.modeling.outputs.SSAOutput`.

    ``forward(output, targets)``: ``output`` from the model in training mode (or ``with_frames=True``),
    ``targets[p]`` the (K_p, T, H, W) bool/uint8/float masks of the objects referred to by pair p at any
    spatial size (K_p = 0: nothing referred). Returns a dict of scalar tensors: ``"loss"`` (the total,
    with gradient) and, detached for logging, ``loss_frame`` / ``loss_video`` (L_f, L_v: weighted,
    summed over layers), their weighted components ``loss_{frame,video}_{class,mask,dice}``, and
    ``loss_sim`` (L_sim, before λ_sim). The criterion has no parameters.
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = LossConfig() if config is None else config
        if not isinstance(self.config, LossConfig):
            raise TypeError(f"SSACriterion expects a LossConfig, got {type(self.config).__name__}")
        self.config.validate()
        c = self.config
        self.matcher = HungarianMatcher(c.class_weight, c.mask_weight, c.dice_weight, c.num_points)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.to_dict().items())

    # -- entry point -----------------------------------------------------------------------------------
    def forward(self, output: SSAOutput, targets: list[Tensor], *,
                generator: torch.Generator | Sequence[torch.Generator] | None = None) -> dict[str, Tensor]:
        """The losses of Eq. 8 for P pairs; see the class docstring.

        ``generator``: the source of the sampled points — one generator, or one per pair (then a pair's
        points do not depend on the other pairs in the batch: with per-clip seeds, a batch split over
        DDP ranks gives exactly the loss of the whole batch in one process), or None (global RNG).
        """
        device = output.class_logits.device
        num_pairs = output.class_logits.shape[0]
        if generator is None or isinstance(generator, torch.Generator):
            generators: list[torch.Generator | None] = [generator] * num_pairs
        else:
            generators = list(generator)
            if len(generators) != num_pairs:
                raise ValueError(f"got {len(generators)} generators for {num_pairs} pairs")
        with torch.autocast(device_type=device.type, enabled=False):
            return self._forward(output, targets, generators)

    def _forward(self, output: SSAOutput, targets: list[Tensor],
                 generator: list[torch.Generator | None]) -> dict[str, Tensor]:
        c = self.config
        frames = output.frames
        if frames is None:
            raise ValueError(
                "SSACriterion needs the per-frame predictions (output.frames is None): run the model in "
                "training mode or with with_frames=True"
            )
        p, t, n = frames.class_logits.shape[:3]
        masks = self._check_targets(targets, p, t, output.class_logits.device)
        tubes = [(m.flatten(1) > 0).any(-1) for m in masks]  # per pair (K,): object anywhere in the clip
        visible = [(m.flatten(2) > 0).any(-1) for m in masks]  # per pair (K, T): object in frame t
        device = output.class_logits.device
        num_frame = _num_targets(sum(int(v.sum()) for v in visible), device)
        num_video = _num_targets(sum(int(k.sum()) for k in tubes), device)

        # L_f over the frame decoder's layers, the last one last (its matching feeds L_sim).
        frame_layers = list(zip(frames.aux_class_logits, frames.aux_mask_logits, strict=True))
        if not c.deep_supervision:
            frame_layers = []
        frame_layers.append((frames.class_logits, frames.mask_logits))
        frame_terms = torch.zeros(3, device=device)
        for cls_logits, mask_logits in frame_layers:
            terms, frame_matches = self._frame_layer(cls_logits, mask_logits, masks, visible, num_frame,
                                                     generator)
            frame_terms = frame_terms + terms

        # L_v and L_sim for the video stage of each of the frame decoder's last predictions, averaged
        frame_embed = output.frame_queries if output.frame_embed is None else output.frame_embed
        video_embed = output.video_queries if output.video_embed is None else output.video_embed
        versions = [(output.class_logits, output.mask_logits, output.aux_class_logits,
                     output.aux_mask_logits, frame_embed, video_embed)]
        versions += [(v.class_logits, v.mask_logits, v.aux_class_logits, v.aux_mask_logits, v.frame_embed,
                      v.video_embed) for v in output.earlier_layers]
        video_terms = torch.zeros(3, device=device)
        loss_sim = torch.zeros((), device=device)
        for cls_last, mask_last, cls_aux, mask_aux, f_embed, v_embed in versions:
            video_layers = list(zip(cls_aux, mask_aux, strict=True)) if c.deep_supervision else []
            video_layers.append((cls_last, mask_last))
            for cls_logits, mask_logits in video_layers:
                terms, video_matches = self._video_layer(cls_logits, mask_logits, masks, tubes, num_video,
                                                         generator)
                video_terms = video_terms + terms / len(versions)
            sim = self._similarity(f_embed, v_embed, frame_matches, video_matches)
            loss_sim = loss_sim + sim / len(versions)
        loss_frame, loss_video = frame_terms.sum(), video_terms.sum()
        total = loss_video + loss_frame + c.sim_weight * loss_sim  # Eq. 8
        out = {"loss": total, "loss_frame": loss_frame.detach(), "loss_video": loss_video.detach(),
               "loss_sim": loss_sim.detach()}
        for level, terms in (("frame", frame_terms), ("video", video_terms)):
            for j, name in enumerate(("class", "mask", "dice")):
                out[f"loss_{level}_{name}"] = terms[j].detach()
        return out

    # -- checks ----------------------------------------------------------------------------------------
    @staticmethod
    def _check_targets(targets: list[Tensor], num_pairs: int, num_frames: int, device: torch.device,
                       name: str = "targets") -> list[Tensor]:
        """Validate the targets and return them as float32 (K, T, H, W) on ``device``."""
        if not isinstance(targets, (list, tuple)):
            raise TypeError(f"{name} must be a list of (K, T, H, W) tensors, got {type(targets).__name__}")
        if len(targets) != num_pairs:
            raise ValueError(
                f"got {len(targets)} {name} tensors for {num_pairs} (clip, expression) pairs; "
                f"{name}[p] must hold the masks of pair p's objects"
            )
        out = []
        for i, tgt in enumerate(targets):
            if not isinstance(tgt, Tensor):
                raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(tgt).__name__}")
            if tgt.dim() != 4:
                raise ValueError(
                    f"{name}[{i}] must be 4-D (K, T, H, W) masks, got shape {tuple(tgt.shape)}"
                )
            if tgt.shape[1] != num_frames:
                raise ValueError(
                    f"{name}[{i}] has {tgt.shape[1]} frames (shape {tuple(tgt.shape)}) but the "
                    f"predictions have T={num_frames}"
                )
            if tgt.shape[2] == 0 or tgt.shape[3] == 0:
                raise ValueError(f"{name}[{i}] has an empty spatial size (shape {tuple(tgt.shape)})")
            if tgt.is_complex():
                raise ValueError(f"{name}[{i}] must be bool, integer or float masks, got {tgt.dtype}")
            tgt = tgt.to(device)
            out.append(tgt.float() if tgt.is_floating_point() else (tgt != 0).float())
        return out

    # -- L_f -------------------------------------------------------------------------------------------
    def _frame_layer(self, class_logits: Tensor, mask_logits: Tensor, masks: list[Tensor],
                     visible: list[Tensor], num_targets: Tensor,
                     generator: list[torch.Generator | None]) -> tuple[Tensor, _Matches]:
        """Weighted (class, mask, dice) of one frame-decoder layer and its matches.

        class_logits (P, T, N, 2), mask_logits (P, T, N, h, w); masks[p] (K, T, H, W) the referred
        objects; visible[p] (K, T) where each is in the frame.
        """
        class_logits, mask_logits = class_logits.float(), mask_logits.float()
        pairs, frames, queries, objects = [], [], [], []
        for p, (tgt, vis) in enumerate(zip(masks, visible, strict=True)):
            if not bool(vis.any()):
                continue
            pred_pts, tgt_pts = self.matcher.sample(mask_logits[p].transpose(0, 1), tgt,
                                                    generator=generator[p])  # (T, N, M), (T, K, M)
            cost = self.matcher.cost_matrix(class_logits[p], pred_pts, tgt_pts).cpu()  # (T, N, K)
            vis_cpu = vis.cpu()
            for t in range(cost.shape[0]):
                cols = vis_cpu[:, t].nonzero().flatten()  # objects visible in frame t
                if cols.numel() == 0:
                    continue
                rows, sel = match_cost(cost[t][:, cols])
                pairs.append(torch.full_like(rows, p))
                frames.append(torch.full_like(rows, t))
                queries.append(rows)
                objects.append(cols[sel])
        matches = _Matches(*_cat(pairs, queries, objects), frame=_cat(frames)[0])

        # class: matched → referred (0), the rest → no object (1)
        labels = torch.ones(class_logits.shape[:3], dtype=torch.long)  # (P, T, N)
        labels[matches.pair, matches.frame, matches.query] = 0
        loss_class = self._class_loss(class_logits, labels.to(class_logits.device))

        pred = mask_logits[matches.pair, matches.frame, matches.query][:, None]  # (M, 1, h, w)
        tgt = []
        for p in range(len(masks)):
            mine = matches.pair == p
            tgt.append(masks[p][matches.target[mine], matches.frame[mine]][:, None])  # (M_p, 1, H, W)
        loss_mask, loss_dice = self._mask_losses(pred, tgt, num_targets, mask_logits, generator)
        return self._weighted(loss_class, loss_mask, loss_dice), matches

    # -- L_v -------------------------------------------------------------------------------------------
    def _video_layer(self, class_logits: Tensor, mask_logits: Tensor, masks: list[Tensor],
                     tubes: list[Tensor], num_targets: Tensor, generator: list[torch.Generator | None]
                     ) -> tuple[Tensor, _Matches]:
        """Weighted (class, mask, dice) of one video-decoder layer and its matches.

        class_logits (P, N, 2), mask_logits (P, N, T, h, w).
        """
        class_logits, mask_logits = class_logits.float(), mask_logits.float()
        pairs, queries, objects = [], [], []
        for p, (tgt, tube) in enumerate(zip(masks, tubes, strict=True)):
            keep = tube.nonzero().flatten()  # objects present in at least one frame
            if keep.numel() == 0:
                continue
            rows, sel = self.matcher(class_logits[p], mask_logits[p], tgt[keep], generator=generator[p])
            pairs.append(torch.full_like(rows, p))
            queries.append(rows)
            objects.append(keep.cpu()[sel])
        matches = _Matches(*_cat(pairs, queries, objects))

        labels = torch.ones(class_logits.shape[:2], dtype=torch.long)  # (P, N)
        labels[matches.pair, matches.query] = 0
        loss_class = self._class_loss(class_logits, labels.to(class_logits.device))

        pred = mask_logits[matches.pair, matches.query]  # (M, T, h, w)
        tgt = [masks[p][matches.target[matches.pair == p]] for p in range(len(masks))]  # (M_p, T, H, W)
        loss_mask, loss_dice = self._mask_losses(pred, tgt, num_targets, mask_logits, generator)
        return self._weighted(loss_class, loss_mask, loss_dice), matches

    # -- shared terms ----------------------------------------------------------------------------------
    def _weighted(self, loss_class: Tensor, loss_mask: Tensor, loss_dice: Tensor) -> Tensor:
        c = self.config
        return torch.stack([c.class_weight * loss_class, c.mask_weight * loss_mask,
                            c.dice_weight * loss_dice])

    def _class_loss(self, class_logits: Tensor, labels: Tensor) -> Tensor:
        """Weighted cross-entropy (no-object weight), the weighted mean over all queries: (..., 2), (...).

        The denominator (the sum of the weights) is averaged over DDP ranks, so that the mean is the one
        of the global batch once DDP averages the gradients.
        """
        weight = class_logits.new_tensor([1.0, self.config.no_object_weight])
        labels = labels.reshape(-1)
        total = F.cross_entropy(class_logits.reshape(-1, 2), labels, weight=weight, reduction="sum")
        return total / _num_targets(float(weight[labels].sum()), class_logits.device)

    def _mask_losses(self, pred: Tensor, targets: list[Tensor], num_targets: Tensor, all_logits: Tensor,
                     generator: list[torch.Generator | None]) -> tuple[Tensor, Tensor]:
        """Σ BCE and Σ dice over matched masks, each / num_targets.

        pred (M, T, h, w) matched logits; targets: per pair (M_p, T, H, W), in the order of ``pred``.
        Each of the T frames gets ``num_points`` importance-sampled points; a mask's BCE is the mean
        over its T · num_points points and its dice is over all of them.
        """
        m, t, h, w = pred.shape
        if m == 0:
            zero = all_logits.sum() * 0.0  # keeps the mask head in the graph (DDP)
            return zero, zero
        c = self.config
        maps = pred.reshape(m * t, 1, h, w)
        points, labels, start = [], [], 0
        for p, tgt in enumerate(targets):  # each pair's points from its own generator
            k = tgt.shape[0]
            if k == 0:
                continue
            rows = slice(start * t, (start + k) * t)
            pts = uncertain_points(maps[rows], c.num_points, oversample_ratio=c.oversample_ratio,
                                   importance_sample_ratio=c.importance_sample_ratio,
                                   generator=generator[p])  # (k·T, num_points, 2)
            tgt_maps = tgt.reshape(k * t, 1, *tgt.shape[-2:])
            labels.append(point_sample(tgt_maps, pts, mode="nearest")[:, 0].reshape(k, -1))
            points.append(pts)
            start += k
        logits = point_sample(maps, torch.cat(points))[:, 0].reshape(m, -1)  # (M, T·num_points)
        labels = torch.cat(labels)  # (M, T·num_points)
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(-1)  # (M,)
        prob = logits.sigmoid()
        dice = 1.0 - (2.0 * (prob * labels).sum(-1) + 1.0) / (prob.sum(-1) + labels.sum(-1) + 1.0)  # (M,)
        return bce.sum() / num_targets, dice.sum() / num_targets

    # -- L_sim -----------------------------------------------------------------------------------------
    def _similarity(self, frame_embed: Tensor, video_embed: Tensor, frame: _Matches, video: _Matches
                    ) -> Tensor:
        """L_sim of one version: per pair, the matched frame embeddings (from ``frame_embed`` (P, T, N, C))
        and video embeddings (from ``video_embed`` (P, N, C)) as one set; BCE-with-logits of every
        member's dot product with every member (itself included), target 1 when both carry the same
        object; the mean over all these couples of the batch (denominator averaged over DDP ranks).
        Members of different pairs are not compared: they may be the same object under another
        expression, and a batch split over ranks gives the same loss."""
        frame_embed, video_embed = frame_embed.float(), video_embed.float()
        total = (frame_embed.sum() + video_embed.sum()) * 0.0  # connected, for DDP
        count = 0
        for p in range(frame_embed.shape[0]):
            fm, vm = frame.pair == p, video.pair == p
            members = torch.cat([frame_embed[p, frame.frame[fm], frame.query[fm]],
                                 video_embed[p, video.query[vm]]])  # (M_f + M_v, C)
            if members.shape[0] == 0:
                continue
            ids = torch.cat([frame.target[fm], video.target[vm]]).to(members.device)
            logits = members @ members.T  # (M, M)
            target = (ids[:, None] == ids[None]).to(logits.dtype)
            total = total + F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
            count += logits.numel()
        return total / _num_targets(count, frame_embed.device)


def _cat(*lists: list[Tensor]) -> tuple[Tensor, ...]:
    """Concatenate lists of long tensors (empty list → empty long tensor)."""
    return tuple(torch.cat(x) if x else torch.empty(0, dtype=torch.long) for x in lists)
