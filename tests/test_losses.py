"""The Hungarian matcher, point sampling and the training objective (Eq. 8)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import build, random_frames

from ssa.modeling.outputs import FrameOutput, SSAOutput, VideoPredictions
from ssa.train.losses import LossConfig, SSACriterion
from ssa.train.matcher import (
    HungarianMatcher,
    match_cost,
    pairwise_bce_cost,
    pairwise_dice_cost,
    point_sample,
    uncertain_points,
    uniform_points,
)

FAST = LossConfig(num_points=1024)


# -- helpers -------------------------------------------------------------------------------------------
def rect_masks(k: int, t: int, h: int, w: int, seed: int, absent: float = 0.0) -> torch.Tensor:
    """(K, T, H, W) bool random rectangles; each (object, frame) left empty with prob. ``absent``."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(k, t, h, w, dtype=torch.bool)
    for i in range(k):
        for j in range(t):
            if torch.rand((), generator=g) < absent:
                continue
            y0 = int(torch.randint(0, h // 2, (), generator=g))
            x0 = int(torch.randint(0, w // 2, (), generator=g))
            y1 = y0 + int(torch.randint(2, h // 2, (), generator=g))
            x1 = x0 + int(torch.randint(2, w // 2, (), generator=g))
            masks[i, j, y0:y1, x0:x1] = True
    return masks


def upsample(masks: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest upsampling of (..., h, w) masks by an integer factor (pixel replication)."""
    return masks.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def make_output(frame_cls: torch.Tensor, frame_masks: torch.Tensor, video_cls: torch.Tensor,
                video_masks: torch.Tensor, frame_queries: torch.Tensor, video_queries: torch.Tensor,
                aux: int = 1) -> SSAOutput:
    """An SSAOutput from hand-made predictions; aux layers are copies of the last layer."""
    p, t, n = frame_cls.shape[:3]
    frames = FrameOutput(
        queries=frame_queries, sentences=torch.zeros(p, t, frame_queries.shape[-1]),
        mask_features=torch.zeros(p, t, 1, *frame_masks.shape[-2:]), class_logits=frame_cls,
        mask_logits=frame_masks, aux_class_logits=[frame_cls] * aux,
        aux_mask_logits=[frame_masks] * aux,
    )
    return SSAOutput(
        class_logits=video_cls, mask_logits=video_masks, frame_queries=frame_queries,
        trajectory_order=torch.arange(n).expand(p, t, n), ensemble_weights=torch.full((p, t, n), 1 / t),
        video_queries=video_queries, trajectories=frame_queries,
        clip_index=torch.zeros(p, dtype=torch.long), expressions=["x"] * p,
        frames=frames, aux_class_logits=[video_cls] * aux, aux_mask_logits=[video_masks] * aux,
    )


def perfect_output(targets: list[torch.Tensor], n: int = 6, c: int = 16, logit: float = 50.0,
                   seed: int = 0) -> SSAOutput:
    """Predictions equal to low-resolution targets (K, T, h, w), objects on permuted query slots."""
    p, t, h, w = len(targets), targets[0].shape[1], *targets[0].shape[-2:]
    g = torch.Generator().manual_seed(seed)
    referred, nothing = torch.tensor([logit, -logit]), torch.tensor([-logit, logit])
    frame_cls = nothing.expand(p, t, n, 2).clone()
    frame_masks = torch.full((p, t, n, h, w), -logit)
    video_cls = nothing.expand(p, n, 2).clone()
    video_masks = torch.full((p, n, t, h, w), -logit)
    frame_queries = torch.randn(p, t, n, c, generator=g)
    video_queries = torch.randn(p, n, c, generator=g)
    obj = 0
    for i, tgt in enumerate(targets):
        slots = torch.randperm(n, generator=g)
        for k in range(tgt.shape[0]):
            q, signed = int(slots[k]), torch.where(tgt[k], logit, -logit)  # (T, h, w)
            e = F.one_hot(torch.tensor(obj), c).float()
            obj += 1
            video_masks[i, q] = signed
            video_queries[i, q] = e
            if tgt[k].any():
                video_cls[i, q] = referred
            for j in range(t):
                frame_masks[i, j, q] = signed[j]
                frame_queries[i, j, q] = e
                if tgt[k, j].any():
                    frame_cls[i, j, q] = referred
    return make_output(frame_cls, frame_masks, video_cls, video_masks, frame_queries, video_queries)


def random_output(p: int, t: int, n: int, h: int, w: int, c: int = 16, seed: int = 0) -> SSAOutput:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_()

    return make_output(r(p, t, n, 2), r(p, t, n, h, w), r(p, n, 2), r(p, n, t, h, w), r(p, t, n, c),
                       r(p, n, c))


# -- matcher -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 4), (5, 3), (3, 5), (1, 1)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_cost_is_the_brute_force_optimum(shape: tuple[int, int], seed: int) -> None:
    n, k = shape
    cost = torch.rand(n, k, generator=torch.Generator().manual_seed(seed))
    rows, cols = match_cost(cost)
    assert rows.dtype == cols.dtype == torch.long
    assert len(rows) == min(n, k) and len(set(rows.tolist())) == len(rows) == len(set(cols.tolist()))
    assert rows.tolist() == sorted(rows.tolist())
    if n >= k:  # every target gets a distinct prediction
        best = min(itertools.permutations(range(n), k), key=lambda pr: sum(cost[pr[j], j] for j in range(k)))
        expected = sorted((pr, j) for j, pr in enumerate(best))
    else:  # every prediction gets a distinct target
        best = min(itertools.permutations(range(k), n), key=lambda pc: sum(cost[i, pc[i]] for i in range(n)))
        expected = [(i, pc) for i, pc in enumerate(best)]
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == expected
    optimum = float(sum(cost[i, j] for i, j in expected))
    assert math.isclose(float(cost[rows, cols].sum()), optimum, rel_tol=1e-6)


def test_match_cost_hand_made_and_edge_cases() -> None:
    # The greedy choice (0 → 0, cost 1) is not optimal: 0 → 1, 1 → 0 costs 2 + 2 = 4 < 1 + 9.
    rows, cols = match_cost(torch.tensor([[1.0, 2.0], [2.0, 9.0]]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    for shape in [(4, 0), (0, 3), (0, 0)]:
        rows, cols = match_cost(torch.zeros(shape))
        assert rows.numel() == cols.numel() == 0 and rows.dtype == torch.long
    rows, cols = match_cost(torch.tensor([[float("nan"), 0.0], [0.0, float("inf")]]))  # no crash
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    with pytest.raises(ValueError, match="2-D"):
        match_cost(torch.zeros(2, 2, 2))


def test_pairwise_costs_equal_elementwise_losses() -> None:
    g = torch.Generator().manual_seed(0)
    pred, tgt = torch.randn(5, 40, generator=g), (torch.rand(3, 40, generator=g) > 0.5).float()
    bce, dice = pairwise_bce_cost(pred, tgt), pairwise_dice_cost(pred, tgt)
    for i in range(5):
        for k in range(3):
            ref = F.binary_cross_entropy_with_logits(pred[i], tgt[k])
            s = pred[i].sigmoid()
            ref_dice = 1 - (2 * (s * tgt[k]).sum() + 1) / (s.sum() + tgt[k].sum() + 1)
            assert torch.allclose(bce[i, k], ref, atol=1e-5)
            assert torch.allclose(dice[i, k], ref_dice, atol=1e-5)


@pytest.mark.parametrize("tube", [False, True])
def test_matcher_recovers_a_permutation_from_noisy_copies(tube: bool) -> None:
    n, k, t = 7, 3, (3 if tube else 1)
    g = torch.Generator().manual_seed(1)
    low = rect_masks(k, t, 16, 16, seed=3)  # (K, T, 16, 16)
    targets = upsample(low, 4)  # full resolution (K, T, 64, 64)
    perm = torch.randperm(n, generator=g)[:k]  # target j is predicted by query perm[j]
    logits = torch.randn(n, t, 16, 16, generator=g) * 3
    logits[perm] = 4 * (2 * low.float() - 1) + torch.randn(k, t, 16, 16, generator=g) * 2
    class_logits = torch.randn(n, 2, generator=g)  # uninformative
    matcher = HungarianMatcher(num_points=512)
    if not tube:
        logits, targets = logits[:, 0], targets[:, 0]
    pred_idx, tgt_idx = matcher(class_logits, logits, targets, generator=torch.Generator().manual_seed(0))
    assert dict(zip(tgt_idx.tolist(), pred_idx.tolist(), strict=True)) == {j: int(perm[j]) for j in range(k)}
    empty = matcher(class_logits, logits, targets[:0])
    assert empty[0].numel() == empty[1].numel() == 0


def test_point_sample_coordinates_are_resolution_agnostic() -> None:
    low = torch.zeros(1, 1, 4, 8)
    low[0, 0, 0, -1] = 1.0  # top-right pixel
    pts = torch.tensor([[[0.97, 0.1], [0.1, 0.1], [0.97, 0.9]]])  # (x, y)
    assert point_sample(low, pts, mode="nearest")[0, 0].tolist() == [1.0, 0.0, 0.0]
    # A mask and its 4x nearest upsampling read the same label at every point.
    masks = rect_masks(2, 1, 16, 16, seed=0)[:, 0].float()[None]  # (1, 2, 16, 16)
    pts = uniform_points((1,), 4000, generator=torch.Generator().manual_seed(0))
    a = point_sample(masks, pts, mode="nearest")
    b = point_sample(upsample(masks, 4), pts, mode="nearest")
    assert torch.equal(a, b)
    # Bilinear logits of the low-res grid agree in sign with the full-res labels.
    logits = point_sample(10 * (2 * masks - 1), pts)
    assert ((logits > 0).float() == b).float().mean() > 0.99  # (bilinear level sets round the corners)


def test_uncertain_points_prefer_the_boundary() -> None:
    logits = torch.full((1, 1, 32, 32), -20.0)
    logits[..., 8:24, 8:24] = 20.0
    pts = uncertain_points(logits, 200, oversample_ratio=20, importance_sample_ratio=1.0,
                           generator=torch.Generator().manual_seed(0))
    assert pts.shape == (1, 200, 2) and pts.min() >= 0 and pts.max() <= 1
    near = point_sample(logits, pts).abs() < 19.0  # within a pixel of the square's edge
    uniform = point_sample(logits, uniform_points((1,), 200, generator=torch.Generator().manual_seed(0)))
    assert near.float().mean() > 0.9 > (uniform.abs() < 19.0).float().mean()


# -- the criterion -------------------------------------------------------------------------------------
def test_loss_config_json_and_validation() -> None:
    cfg = LossConfig(sim_weight=1.0, num_points=256, deep_supervision=False)
    assert LossConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert LossConfig().to_dict()["num_points"] == 12544
    with pytest.raises(ValueError, match="bogus"):
        LossConfig.from_dict({"bogus": 1})
    for field, value in [("num_points", 0), ("no_object_weight", 0.0), ("no_object_weight", -1.0),
                         ("mask_weight", float("nan")), ("importance_sample_ratio", 1.5),
                         ("oversample_ratio", 0.5), ("deep_supervision", 1),
                         ("deep_supervision", "yes")]:
        with pytest.raises(ValueError, match=field):
            LossConfig(**{field: value})


def test_perfect_predictions_give_near_zero_mask_and_class_loss() -> None:
    low = [rect_masks(2, 3, 48, 48, seed=0, absent=0.3), rect_masks(1, 3, 48, 48, seed=1)]
    low[0][1, 0] = False  # object 1 of pair 0 absent in frame 0, present later
    targets = [upsample(x, 2) for x in low]  # targets at twice the logits' resolution
    crit = SSACriterion(FAST)
    perfect = crit(perfect_output(low, logit=50.0), targets, generator=torch.Generator().manual_seed(0))
    rand = crit(random_output(2, 3, 6, 48, 48), targets, generator=torch.Generator().manual_seed(0))
    # Not exactly 0: bilinear interpolation of per-pixel logits blurs the edges and rounds the corners,
    # and importance sampling puts most points right there.
    weights = {"class": 2.0, "mask": 5.0, "dice": 5.0}
    for level in ("frame", "video"):
        for name, weight in weights.items():
            per_layer = float(perfect[f"loss_{level}_{name}"]) / (2 * weight)  # 2 layers, weighted
            assert per_layer < (1e-3 if name == "class" else 0.03), (level, name, perfect)
            assert float(rand[f"loss_{level}_{name}"]) / (2 * weight) > 0.1
    assert perfect["loss"] < rand["loss"]
    # One-hot embeddings per object: within a pair, every matched frame and video embedding meets every
    # other (itself included); the same object gives dot product 1 (BCE softplus(-1)), another object 0
    # (BCE log 2). Members per object: its visible frames (frame matches) + 1 (its tube's video match).
    same, diff = 0, 0
    for x in low:
        members = [int(obj.flatten(1).any(-1).sum()) + int(obj.any()) for obj in x]
        same += sum(m * m for m in members)
        diff += sum(members) ** 2 - sum(m * m for m in members)
    expected_sim = (same * F.softplus(torch.tensor(-1.0)) + diff * math.log(2)) / (same + diff)
    assert perfect["loss_sim"] == pytest.approx(float(expected_sim), abs=1e-4)
    assert math.isclose(float(perfect["loss"]), float(perfect["loss_frame"] + perfect["loss_video"]
                                                      + 1.0 * perfect["loss_sim"]), rel_tol=1e-5)


def test_similarity_loss_hand_computed() -> None:
    # One pair, one frame, two objects: frame embeddings f0 = (1, 0), f1 = (0, 1) and video embeddings
    # v0 = (1, 0), v1 = (2, 2) carry objects 0, 1. Every member meets every member, itself included:
    # the logit is the dot product, the target 1 for the same object.
    low = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    low[0, 0, :4], low[1, 0, 4:] = True, True
    out = perfect_output([low], n=2, c=2)
    fq, vq = out.frame_queries.clone(), out.video_queries.clone()
    # the query slot of each object: the one whose video mask covers it
    q = [int((out.mask_logits[0, :, 0, y, 0] > 0).nonzero()) for y in (0, 7)]
    fq[0, 0, q[0]], fq[0, 0, q[1]] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    vq[0, q[0]], vq[0, q[1]] = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 2.0])
    out.frame_queries, out.video_queries = fq, vq
    loss = SSACriterion(LossConfig(num_points=256))(out, [low])["loss_sim"]
    sp = F.softplus
    # rows f0, f1, v0, v1; (dot product, same object)
    table = [[(1, 1), (0, 0), (1, 1), (2, 0)],
             [(0, 0), (1, 1), (0, 0), (2, 1)],
             [(1, 1), (0, 0), (1, 1), (2, 0)],
             [(2, 0), (2, 1), (2, 0), (8, 1)]]
    expected = sum(float(sp(torch.tensor(-x if same else x, dtype=torch.float)))
                   for row in table for x, same in row) / 16
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_similarity_compares_queries_within_a_pair_only() -> None:
    # Two pairs, one object each, all embeddings (1, 1): each pair's frame and video embedding meet each
    # other and themselves (4 positives of logit 2 per pair), never the other pair's members (which could
    # be the same object under another expression); a batch split over DDP ranks gives the same L_sim.
    low = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    low[0, 0, :4] = True
    out = perfect_output([low, low], n=2, c=2)
    out.frame_queries = torch.ones_like(out.frame_queries)
    out.video_queries = torch.ones_like(out.video_queries)
    sp = F.softplus
    loss = SSACriterion(LossConfig(num_points=256))(out, [low, low])["loss_sim"]
    assert float(loss) == pytest.approx(float(sp(torch.tensor(-2.0))), rel=1e-5)
    out.video_queries[1] = -out.video_queries[1]  # pair 1's video embedding now points away
    loss = SSACriterion(LossConfig(num_points=256))(out, [low, low])["loss_sim"]
    expected = (6 * sp(torch.tensor(-2.0)) + 2 * sp(torch.tensor(2.0))) / 8
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_video_loss_is_the_mean_over_the_frame_decoders_last_layers() -> None:
    # The official training runs the video stage on the last frame-decoder layers' queries too; L_v and
    # L_sim are their mean: a perfect last version plus a random earlier one lands half-way.
    low = [rect_masks(2, 3, 16, 16, seed=4), rect_masks(1, 3, 16, 16, seed=5)]
    crit = SSACriterion(LossConfig(num_points=4096))
    perfect, rand = perfect_output(low, logit=50.0), random_output(2, 3, 6, 16, 16)
    alone = crit(perfect, low, generator=torch.Generator().manual_seed(0))
    bad = crit(rand, low, generator=torch.Generator().manual_seed(0))
    perfect.earlier_layers = [VideoPredictions(
        class_logits=rand.class_logits, mask_logits=rand.mask_logits, frame_embed=rand.frame_queries,
        video_embed=rand.video_queries, aux_class_logits=rand.aux_class_logits,
        aux_mask_logits=rand.aux_mask_logits)]
    both = crit(perfect, low, generator=torch.Generator().manual_seed(0))
    for key in ("loss_video_class", "loss_video_mask", "loss_video_dice"):
        assert float(both[key]) == pytest.approx((float(alone[key]) + float(bad[key])) / 2, rel=0.05), key
    assert float(both["loss_frame"]) == pytest.approx(float(alone["loss_frame"]), rel=1e-3)
    assert float(both["loss_sim"]) > float(alone["loss_sim"]) + 0.1


def test_per_pair_generators_make_a_pair_independent_of_its_batch() -> None:
    low = [rect_masks(2, 3, 16, 16, seed=4), rect_masks(1, 3, 16, 16, seed=5)]
    out = random_output(2, 3, 6, 16, 16)
    crit = SSACriterion(LossConfig(num_points=64))
    both = crit(out, low, generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    # the same pair 1 next to another pair 0 draws the same points: only pair 0's terms change
    other = crit(out, low, generator=[torch.Generator().manual_seed(s) for s in (9, 2)])
    assert float(both["loss"]) != float(other["loss"])
    with pytest.raises(ValueError, match="generators"):
        crit(out, low, generator=[torch.Generator()])


def test_class_loss_is_the_no_object_weighted_cross_entropy() -> None:
    low = [rect_masks(2, 3, 16, 16, seed=2, absent=0.3), rect_masks(1, 3, 16, 16, seed=3)]
    out = perfect_output(low, n=5)  # the masks decide the matching
    g = torch.Generator().manual_seed(0)
    frame_cls, video_cls = torch.randn(2, 3, 5, 2, generator=g), torch.randn(2, 5, 2, generator=g)
    frame_labels = (out.frames.class_logits[..., 0] < 0).long()  # perfect: referred where visible
    video_labels = (out.class_logits[..., 0] < 0).long()
    assert 0 < int((frame_labels == 0).sum()) < frame_labels.numel()
    out = make_output(frame_cls, out.frames.mask_logits, video_cls, out.mask_logits, out.frame_queries,
                      out.video_queries, aux=0)
    cfg = LossConfig(num_points=256, no_object_weight=0.25)
    losses = SSACriterion(cfg)(out, [upsample(x, 2) for x in low])
    w = torch.tensor([1.0, 0.25])
    frame = F.cross_entropy(frame_cls.reshape(-1, 2), frame_labels.flatten(), weight=w)
    video = F.cross_entropy(video_cls.reshape(-1, 2), video_labels.flatten(), weight=w)
    assert float(losses["loss_frame_class"]) == pytest.approx(2.0 * float(frame), rel=1e-5)
    assert float(losses["loss_video_class"]) == pytest.approx(2.0 * float(video), rel=1e-5)


def test_nothing_referred_pushes_every_query_to_no_object() -> None:
    out = random_output(2, 3, 5, 8, 8)
    targets = [torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, 3, 8, 8, dtype=torch.bool)]
    losses = SSACriterion(FAST)(out, targets)
    for name in ("loss_frame_mask", "loss_frame_dice", "loss_video_mask", "loss_video_dice", "loss_sim"):
        assert losses[name] == 0.0
    assert losses["loss_frame_class"] > 0 and losses["loss_video_class"] > 0
    losses["loss"].backward()
    for logits in (out.frames.class_logits, out.class_logits):
        assert (logits.grad[..., 0] > 0).all() and (logits.grad[..., 1] < 0).all()  # descent → no object
    for x in (out.frames.mask_logits, out.mask_logits, out.frame_queries, out.video_queries):
        assert x.grad is not None and not x.grad.any()  # connected to the graph, zero gradient
    # A target tensor whose object never appears counts as nothing referred.
    empty = [torch.zeros(1, 3, 8, 8), torch.zeros(0, 3, 8, 8)]
    again = SSACriterion(FAST)(out, empty)["loss"].detach()
    assert float(again) == pytest.approx(float(losses["loss"].detach()), rel=1e-6)


def test_targets_resolution_does_not_matter() -> None:
    low = [rect_masks(2, 3, 16, 16, seed=5, absent=0.2), rect_masks(3, 3, 16, 16, seed=6)]
    out = random_output(2, 3, 6, 16, 16)
    crit = SSACriterion(FAST)
    a = crit(out, low, generator=torch.Generator().manual_seed(3))
    full = [upsample(x, 4).to(torch.uint8) * 255 for x in low]  # 0/255 uint8 at 4x the resolution
    b = crit(out, full, generator=torch.Generator().manual_seed(3))
    assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-6)


def test_bad_targets_raise_value_error() -> None:
    out = random_output(2, 3, 5, 8, 8)
    crit = SSACriterion(FAST)
    good = torch.zeros(1, 3, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="1 targets tensors for 2"):
        crit(out, [good])
    with pytest.raises(ValueError, match=r"targets\[1\] has 4 frames .*\(1, 4, 8, 8\).*T=3"):
        crit(out, [good, torch.zeros(1, 4, 8, 8)])
    with pytest.raises(ValueError, match=r"targets\[0\] must be 4-D .*\(3, 8, 8\)"):
        crit(out, [good[0], good])
    with pytest.raises(ValueError, match="empty spatial size"):
        crit(out, [good, torch.zeros(1, 3, 0, 8)])
    out.frames = None
    with pytest.raises(ValueError, match="with_frames=True"):
        crit(out, [good, good])


def test_same_seed_same_loss() -> None:
    low = [rect_masks(2, 3, 16, 16, seed=7, absent=0.2), rect_masks(1, 3, 16, 16, seed=8)]
    out = random_output(2, 3, 6, 16, 16)
    crit = SSACriterion(FAST)

    def run(seed: int) -> dict[str, float]:
        torch.manual_seed(seed)
        return {k: float(v) for k, v in crit(out, low).items()}

    assert run(0) == run(0)
    assert run(0)["loss"] != run(1)["loss"]  # the points do depend on the seed
    by_gen = [float(crit(out, low, generator=torch.Generator().manual_seed(4))["loss"]) for _ in range(2)]
    assert by_gen[0] == by_gen[1]


def test_deep_supervision_sums_the_layers_and_autocast_computes_in_fp32() -> None:
    low = [rect_masks(2, 3, 16, 16, seed=9)]
    out = random_output(1, 3, 6, 16, 16)  # aux layers are copies of the last one
    gen = torch.Generator
    with_aux = SSACriterion(FAST)(out, low, generator=gen().manual_seed(0))
    last = SSACriterion(LossConfig(num_points=1024, deep_supervision=False))(out, low,
                                                                            generator=gen().manual_seed(0))
    assert float(with_aux["loss_video"]) == pytest.approx(2 * float(last["loss_video"]), rel=0.05)
    half = make_output(*(x.detach().bfloat16() for x in (
        out.frames.class_logits, out.frames.mask_logits, out.class_logits, out.mask_logits,
        out.frame_queries, out.video_queries)))
    ref = SSACriterion(FAST)(half, low, generator=gen().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = SSACriterion(FAST)(half, low, generator=gen().manual_seed(0))
    assert mixed["loss"].dtype == torch.float32 and torch.isfinite(mixed["loss"])
    assert float(mixed["loss"]) == float(ref["loss"])


def test_single_process_distributed_normalisation(tmp_path) -> None:
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    low = [rect_masks(2, 3, 16, 16, seed=10)]
    out = random_output(1, 3, 6, 16, 16)
    plain = float(SSACriterion(FAST)(out, low, generator=torch.Generator().manual_seed(0))["loss"])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = float(SSACriterion(FAST)(out, low, generator=torch.Generator().manual_seed(0))["loss"])
    finally:
        dist.destroy_process_group()
    assert ddp == pytest.approx(plain, rel=1e-6)


# -- on the tiny model ---------------------------------------------------------------------------------
def test_training_steps_lower_the_loss_and_gradients_reach_the_heads() -> None:
    model = build("ssa-tiny").train()
    frames = random_frames(4, 64, 64, b=1, seed=1)  # (1, 4, 3, 64, 64)
    expressions = ["the two boxes"]
    targets = [rect_masks(2, 4, 64, 64, seed=12, absent=0.25)]
    crit = SSACriterion(LossConfig(num_points=1024))
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=0.05)

    def step_loss() -> torch.Tensor:
        return crit(model(frames, expressions), targets, generator=torch.Generator().manual_seed(0))["loss"]

    first = None
    for i in range(6):
        opt.zero_grad(set_to_none=True)
        loss = step_loss()
        loss.backward()
        if i == 0:
            first = float(loss)
            grads = {name: p.grad for name, p in model.named_parameters()}
            for prefix in ("frame_decoder.", "video_decoder.", "ensemble.", "temporal_enhancement.",
                           "pixel_decoder.", "adapters."):
                hit = [g for n, g in grads.items() if n.startswith(prefix) and g is not None and g.any()]
                assert hit, f"no gradient reaches {prefix}"
            clip = list(model.backbone.clip.parameters())
            assert clip and all(not p.requires_grad and p.grad is None for p in clip)
        opt.step()
    with torch.no_grad():
        final = float(step_loss())
    assert math.isfinite(first) and final < 0.85 * first, (first, final)
