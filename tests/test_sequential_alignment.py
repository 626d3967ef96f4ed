import math

import pytest
import torch

from ssa.modeling.common import sine_encoding
from ssa.modeling.sequential_alignment import (
    MaskPositionEncoding,
    TemporalEnhancement,
    TrajectoryEnsemble,
    apply_order,
    hungarian_trajectories,
)


def test_hungarian_recovers_identity_under_permutations():
    g = torch.Generator().manual_seed(0)
    b, t, n, c = 3, 7, 20, 32
    base = torch.randn(b, n, c, generator=g)  # one set of instances per clip
    perms = torch.stack([torch.stack([torch.randperm(n, generator=g) for _ in range(t)]) for _ in range(b)])
    queries = torch.empty(b, t, n, c)
    for bi in range(b):
        for ti in range(t):
            # frame ti's query j is instance perms[bi, ti, j], plus noise
            queries[bi, ti] = base[bi, perms[bi, ti]] + 0.05 * torch.randn(n, c, generator=g)
    order = hungarian_trajectories(queries)
    assert order.shape == (b, t, n) and order.dtype == torch.long
    # Trajectory i must be the same instance in every frame: instance id at (t, i) = perms[t, order[t, i]].
    instance = torch.gather(perms, 2, order)
    assert torch.equal(instance, instance[:, :1].expand_as(instance))
    # each frame's order is a permutation
    assert torch.equal(order.sort(dim=-1).values, torch.arange(n).expand(b, t, n))
    aligned = apply_order(queries, order)
    assert aligned.shape == queries.shape
    for bi in range(b):
        for ti in range(t):
            ids = instance[bi, ti]
            assert torch.allclose(aligned[bi, ti], base[bi, ids], atol=0.3)


def test_hungarian_follows_drifting_instances():
    # Instances drift slowly; matching to the previous (re-ordered) frame must track the drift.
    g = torch.Generator().manual_seed(1)
    t, n, c = 12, 6, 16
    x = torch.randn(n, c, generator=g)
    frames, ids = [], []
    for _ in range(t):
        x = x + 0.3 * torch.randn(n, c, generator=g)
        p = torch.randperm(n, generator=g)
        frames.append(x[p])
        ids.append(p)
    order = hungarian_trajectories(torch.stack(frames)[None])[0]
    inst = torch.stack([ids[ti][order[ti]] for ti in range(t)])
    assert torch.equal(inst, inst[:1].expand_as(inst))


def test_ensemble_weights_sum_to_one_over_time():
    torch.manual_seed(0)
    ens = TrajectoryEnsemble(16)
    torch.nn.init.normal_(ens.fc.weight)
    traj = torch.randn(2, 5, 4, 16)
    video, weights = ens(traj)
    assert video.shape == (2, 4, 16) and weights.shape == (2, 5, 4)
    assert torch.allclose(weights.sum(dim=1), torch.ones(2, 4), atol=1e-6)
    assert (weights.std(dim=1) > 0).all()  # not uniform: the FC scores frames
    expected = (weights[..., None] * traj).sum(dim=1)
    assert torch.allclose(video, expected, atol=1e-6)


def test_temporal_enhancement_mixes_time_within_a_trajectory_only():
    torch.manual_seed(0)
    te = TemporalEnhancement(16, 4, num_layers=2, kernel=3, ffn_dim=32).eval()
    x = torch.randn(1, 6, 3, 16)
    y = te(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[0, 0, 1] += 1.0  # trajectory 1, frame 0
    y2 = te(x2)
    changed = (y2 - y).abs().amax(dim=-1)[0]  # (T, N)
    assert (changed[:, 1] > 1e-4).all()  # every frame of trajectory 1 sees it (long-term attention)
    assert torch.allclose(changed[:, [0, 2]], torch.zeros(6, 2), atol=1e-6)  # other trajectories do not


def _dot_masks(centres, h=24, w=32):
    """Mask logits (..., h, w): +20 on one pixel per (row, col) in centres (..., 2), -20 elsewhere."""
    centres = torch.as_tensor(centres)
    logits = torch.full((*centres.shape[:-1], h, w), -20.0)
    flat = logits.reshape(-1, h, w)
    for k, (y, x) in enumerate(centres.reshape(-1, 2).tolist()):
        flat[k, y, x] = 20.0
    return logits


def test_mask_position_encoding_adds_the_encoded_mask_centroid():
    torch.manual_seed(0)
    enc = MaskPositionEncoding(16)
    queries = torch.randn(2, 3, 16)
    centres = [[[3, 5], [10, 20], [3, 5]], [[0, 0], [23, 31], [12, 16]]]
    out = enc(queries, _dot_masks(centres))
    assert out.shape == queries.shape
    # by hand: centroid of the one pixel in [0, 1] coordinates, 8 sine channels for y then 8 for x
    y, x = (10 + 0.5) / 24, (20 + 0.5) / 32
    expected_pe = torch.cat([sine_encoding(torch.tensor(y * 16 * math.pi), 8),
                             sine_encoding(torch.tensor(x * 16 * math.pi), 8)])
    assert torch.allclose(out[0, 1], queries[0, 1] + enc.proj(expected_pe), atol=1e-4)
    # same query, same place → same output; same query, another place → another output
    same = enc(queries[:, :1].expand(2, 3, 16), _dot_masks(centres))
    assert torch.allclose(same[0, 0], same[0, 2], atol=1e-5)
    assert (same[0, 0] - same[0, 1]).abs().max() > 1e-2


def test_mask_position_encoding_does_not_backpropagate_into_the_masks_and_checks_shapes():
    enc = MaskPositionEncoding(16)
    logits = _dot_masks([[4, 4], [9, 9]]).requires_grad_()
    queries = torch.randn(2, 16, requires_grad=True)
    enc(queries, logits).sum().backward()
    assert logits.grad is None and queries.grad is not None and enc.proj.weight.grad is not None
    with pytest.raises(ValueError, match="do not match frame queries"):
        enc(torch.randn(3, 16), logits)
    with pytest.raises(ValueError, match="divisible by 4"):
        MaskPositionEncoding(18)


def test_positions_let_trajectories_follow_look_alikes():
    # Two identical objects (same query content) pass each other vertically while two others stay;
    # without positions the linking is a coin toss, with them each trajectory keeps its object.
    torch.manual_seed(0)
    t, c = 8, 32
    content = torch.randn(3, c)
    queries = torch.stack([content[[0, 0, 1, 2]]] * t)[None]  # (1, T, 4, C): queries 0 and 1 are twins
    # twin A goes down column 4, twin B goes up column 28; the others sit still
    centres = torch.tensor([[[2 + 2 * k, 4], [20 - 2 * k, 28], [12, 16], [5, 10]] for k in range(t)])
    # frame decoders list queries in any order: shuffle them per frame
    perms = torch.stack([torch.randperm(4) for _ in range(t)])
    shuffled_q = torch.stack([queries[0, k, perms[k]] for k in range(t)])[None]
    shuffled_c = torch.stack([centres[k, perms[k]] for k in range(t)])[None]
    enc = MaskPositionEncoding(c)
    with torch.no_grad():
        positioned = enc(shuffled_q, _dot_masks(shuffled_c))
    order = hungarian_trajectories(positioned)  # (1, T, 4)
    identity = torch.gather(perms[None], 2, order)  # the object each trajectory holds per frame
    assert torch.equal(identity, identity[:, :1].expand_as(identity))
