"""C2M3: cycle consistency by construction, planted alignment, objective, and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evomerge.core.c2m3 import c2m3, cycle_error, pairwise_maps, universe_maps
from evomerge.core.permutation import agreement, apply_permutation, compose, identity_perms, permutation_spec, random_perms
from evomerge.errors import UserError


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)).eval()


def cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv1d(1, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def states(make, n):
    return [{k: v.detach().clone() for k, v in make(s).state_dict().items()} for s in range(n)]


@pytest.mark.parametrize("make", [mlp, cnn])
def test_every_cycle_composes_to_identity(make):
    models = states(make, 4)
    spec = permutation_spec(make(0))
    maps = universe_maps(c2m3(spec, models, max_iter=30).perms)
    assert cycle_error(maps, 4) == 0.0
    for i, j, k in [(0, 1, 2), (0, 2, 3), (3, 1, 0), (1, 2, 3)]:
        loop = compose(compose(maps[k, i], maps[j, k]), maps[i, j])
        assert all(torch.equal(p, torch.arange(len(p))) for p in loop.values())


def test_pairwise_matching_is_not_cycle_consistent_on_unrelated_models():
    models = states(mlp, 3)
    spec = permutation_spec(mlp(0))
    assert cycle_error(pairwise_maps(spec, models), 3) > 0.1


@pytest.mark.parametrize("make,shape", [(mlp, (4, 6)), (cnn, (4, 1, 10))])
def test_planted_copies_are_aligned_exactly(make, shape):
    """Three permuted copies of one model: C2M3 undoes the permutations, so the merge is the model."""
    net = make(0)
    spec = permutation_spec(net)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    copies = [apply_permutation(spec, random_perms(spec, g), sd) for _ in range(3)]
    res = c2m3(spec, copies)
    aligned = [apply_permutation(spec, p, c) for p, c in zip(res.perms, copies)]
    assert all(torch.equal(aligned[0][k], a[k]) for a in aligned for k in sd)
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = net(x)
        net.load_state_dict(res.merged)
        torch.testing.assert_close(net(x), ref, atol=1e-5, rtol=1e-5)


def test_alignment_raises_pairwise_agreement():
    models = states(mlp, 3)
    spec = permutation_spec(mlp(0))

    def pairwise(perms):
        mapped = [apply_permutation(spec, p, m) for p, m in zip(perms, models)]
        return sum(agreement(spec, mapped[i], mapped[j]) for i in range(3) for j in range(i + 1, 3))

    res = c2m3(spec, models, max_iter=50)
    assert pairwise(res.perms) > pairwise([identity_perms(spec)] * 3)
    assert res.iterations <= 50 and res.gap >= 0


def test_errors():
    spec = permutation_spec(mlp(0))
    with pytest.raises(UserError, match="at least 2 models"):
        c2m3(spec, states(mlp, 1))
    with pytest.raises(UserError, match="at least 3 models"):
        cycle_error({}, 2)
