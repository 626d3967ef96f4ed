import torch

from ssa.modeling.sequential_alignment import (
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
