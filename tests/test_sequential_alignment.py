
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
    te = TemporalEnhancement(16, 4).eval()
    x = torch.randn(1, 6, 3, 16)
    y = te(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[0, 0, 1] += 1.0  # trajectory 1, frame 0
    y2 = te(x2)
    changed = (y2 - y).abs().amax(dim=-1)[0]  # (T, N)
    assert (changed[:, 1] > 1e-4).all()  # every frame of trajectory 1 sees it (long-term attention)
    assert torch.allclose(changed[:, [0, 2]], torch.zeros(6, 2), atol=1e-6)  # other trajectories do not


def test_temporal_enhancement_is_one_conv_block_and_one_attention_with_replicate_padding():
    torch.manual_seed(0)
    te = TemporalEnhancement(8, 2).eval()
    names = sorted({n.split(".")[0] for n, _ in te.named_parameters()})
    assert names == ["long_term", "short_conv1", "short_conv2", "short_norm"]
    assert te.short_conv1.kernel_size == (5,) and te.short_conv2.kernel_size == (3,)
    x = torch.randn(1, 4, 2, 8)
    # by hand: LN(x + conv3(relu(conv5(x)))) with replicate 'same' padding, then the attention layer
    seq = x.permute(0, 2, 3, 1).reshape(2, 8, 4)
    pad5 = torch.cat([seq[..., :1]] * 2 + [seq] + [seq[..., -1:]] * 2, dim=-1)
    h = torch.relu(torch.nn.functional.conv1d(pad5, te.short_conv1.weight, te.short_conv1.bias))
    pad3 = torch.cat([h[..., :1], h, h[..., -1:]], dim=-1)
    y = seq + torch.nn.functional.conv1d(pad3, te.short_conv2.weight, te.short_conv2.bias)
    y = te.short_norm(y.transpose(1, 2))
    from ssa.modeling.common import sine_position_1d

    y = te.long_term(y, pos=sine_position_1d(4, 8)[None])  # positions 1..T
    expected = y.reshape(1, 2, 4, 8).permute(0, 2, 1, 3)
    assert torch.allclose(te(x), expected, atol=1e-5)
