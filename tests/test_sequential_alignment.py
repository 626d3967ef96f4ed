import pytest
import torch

from ssa.modeling.sequential_alignment import (
    QueryPositionEncoding,
    TemporalEnhancement,
    TrajectoryEnsemble,
    apply_order,
    hungarian_trajectories,
    mask_geometry,
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


def test_mask_geometry_of_hand_made_masks():
    logits = torch.full((2, 5, 9), -30.0)  # 2 masks on a 5 x 9 grid (y, x in [-1, 1])
    logits[0, 0:2, 0:3] = 30.0  # 2 x 3 block in the top-left corner
    logits[1, 4, 8] = 30.0  # one pixel, bottom-right
    geo = mask_geometry(logits)
    ys, xs = torch.linspace(-1, 1, 5), torch.linspace(-1, 1, 9)
    assert torch.allclose(geo[0], torch.tensor([ys[:2].mean(), xs[:3].mean(), (6 / 45) ** 0.5, 1.0]),
                          atol=1e-5)
    assert torch.allclose(geo[1], torch.tensor([1.0, 1.0, (1 / 45) ** 0.5, 1.0]), atol=1e-5)
    # moving the block right by 2 pixels moves only the x centre, by 2 grid steps
    shifted = torch.roll(logits[0], 2, dims=-1)
    delta = mask_geometry(shifted) - geo[0]
    assert torch.allclose(delta, torch.tensor([0.0, 2 * (xs[1] - xs[0]), 0.0, 0.0]), atol=1e-5)
    assert not mask_geometry(logits.requires_grad_()).requires_grad  # a measurement, no gradient


def test_query_position_encoding_tells_identical_queries_apart_by_where_their_masks_are():
    torch.manual_seed(0)
    enc = QueryPositionEncoding(16)
    queries = torch.randn(1, 16).expand(2, 16)  # two identical queries (two look-alike objects)
    logits = torch.full((2, 8, 8), -30.0)
    logits[0, 2:4, 1:3] = 30.0  # left
    logits[1, 2:4, 5:7] = 30.0  # right, same shape and size
    out = enc(queries, logits)
    assert out.shape == (2, 16)
    assert not torch.allclose(out[0], out[1])
    expected = queries + enc.proj(mask_geometry(logits))
    assert torch.allclose(out, expected)
    with pytest.raises(ValueError, match="same queries"):
        enc(queries, logits[:1])
