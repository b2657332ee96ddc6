"""Routing: task-conditioned path mixing and MASS input-adaptive subspace routing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evomerge.core.merge import merge, task_vectors
from evomerge.core.route import MASS, TaskMix
from evomerge.errors import UserError


def test_task_mix_endpoints_and_per_sample_tasks():
    mix = TaskMix([0.0, 1.0, 0.25])
    stitched, native = torch.full((3, 4), 2.0), torch.full((3, 4), -2.0)
    assert torch.equal(mix(stitched, native, 0), native)
    assert torch.equal(mix(stitched, native, 1), stitched)
    out = mix(stitched, native, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(out[:, 0], torch.tensor([-2.0, 2.0, -1.0]))


def test_task_mix_alpha_is_learnable_and_clamped():
    mix = TaskMix([0.5, 1.5])
    stitched, native = torch.ones(2, 3, 5), torch.zeros(2, 3, 5)
    assert torch.equal(mix(stitched, native, 1), stitched)  # 1.5 acts as 1
    mix(stitched, native, 0).sum().backward()
    assert mix.alpha.grad[0].item() == pytest.approx(30.0) and mix.alpha.grad[1].item() == 0.0


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleDict(
            {"fc1": nn.Sequential(nn.Linear(8, 8), nn.ReLU()), "fc2": nn.Sequential(nn.Linear(8, 8), nn.ReLU()), "head": nn.Linear(8, 3)}
        )

    def forward(self, x):
        for layer in self.layers.values():
            x = layer(x)
        return x


def family():
    """A base and two fine-tunes whose first-layer updates read disjoint input coordinates."""
    torch.manual_seed(0)
    net = Net()
    base = {k: v.detach().clone() for k, v in net.state_dict().items()}
    fts = []
    for t in range(2):
        sd = {k: v + 0.3 * torch.randn_like(v) for k, v in base.items()}
        mask = torch.zeros(8)
        mask[4 * t : 4 * t + 4] = 1
        sd["layers.fc1.0.weight"] = base["layers.fc1.0.weight"] + torch.randn(8, 8) * mask  # rows read task t's coords
        fts.append(sd)
    return net, base, fts


def task_inputs(t: int, n: int = 16) -> torch.Tensor:
    x = torch.zeros(n, 8)
    x[:, 4 * t : 4 * t + 4] = torch.randn(n, 4, generator=torch.Generator().manual_seed(t))
    return x


def run(net, sd, x):
    net.load_state_dict(sd)
    with torch.no_grad():
        return net(x)


def test_mass_routes_to_the_right_task_and_recovers_its_model():
    net, base, fts = family()
    mass = MASS.from_finetuned(Net(), base, fts, layer="layers.fc1.0", route_rank=4, rank=8)
    for t in range(2):
        x = task_inputs(t)
        probs, selected = mass.route(x)
        assert selected[:, t].all() and not selected[:, 1 - t].any()
        assert (probs[:, t] > 0.99).all()
        # one task at full rank: TSV-M is that task's model, with its own head
        torch.testing.assert_close(mass(x), run(net, fts[t], x), atol=1e-4, rtol=1e-4)


def test_mass_mixed_batch_and_cache_per_combination():
    net, base, fts = family()
    mass = MASS.from_finetuned(Net(), base, fts, layer="layers.fc1.0", route_rank=4, rank=8)
    x = torch.cat([task_inputs(0, 5), task_inputs(1, 7)])
    out = mass(x)
    torch.testing.assert_close(out[:5], run(net, fts[0], x[:5]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[5:], run(net, fts[1], x[5:]), atol=1e-4, rtol=1e-4)
    assert set(mass.cache) == {(0, 1), (0,), (1,)}


def test_mass_selecting_all_tasks_is_tsv_merge_with_mixed_heads():
    net, base, fts = family()
    mass = MASS.from_finetuned(Net(), base, fts, layer="layers.fc2.0", route_rank=2, top_k=2)
    x = torch.randn(6, 8)
    probs, selected = mass.route(x)
    assert selected.all()
    trunk = merge("tsv", base, fts, {"rank": None}, keys=lambda k: not k.startswith("layers.head."))
    expect = sum(
        probs[:, t : t + 1] * run(net, {**trunk, **{k: v for k, v in fts[t].items() if k.startswith("layers.head.")}}, x)
        for t in range(2)
    )
    torch.testing.assert_close(mass(x), expect, atol=1e-5, rtol=1e-5)


def test_mass_threshold_keeps_tasks_above_it():
    net, base, fts = family()
    mass = MASS.from_finetuned(Net(), base, fts, layer="layers.fc1.0", route_rank=4, threshold=0.0)
    assert mass.route(task_inputs(0))[1].all()
    mass.threshold = 1.1  # nothing passes: the most probable task is still kept
    assert mass.route(task_inputs(0))[1].sum(dim=1).eq(1).all()


def test_mass_residuals_known_answer():
    net, base, fts = family()
    mass = MASS.from_finetuned(Net(), base, fts, layer="layers.fc1.0", route_rank=4)
    z = torch.tensor([[1.0, 0, 0, 0, 1.0, 0, 0, 0]])
    torch.testing.assert_close(mass.residuals(z), torch.full((1, 2), 2**-0.5), atol=1e-5, rtol=0)


def test_mass_errors():
    net, base, fts = family()
    with pytest.raises(UserError, match="not a Linear sub-module; Linear layers: layers.fc1.0"):
        MASS.from_finetuned(Net(), base, fts, layer="layers.fc1")
    with pytest.raises(UserError, match="top_k must be in 1..2"):
        MASS.from_finetuned(Net(), base, fts, layer="layers.fc1.0", top_k=3)
    with pytest.raises(UserError, match="one head per task"):
        MASS(Net(), base, task_vectors(base, fts), [{}], layer="layers.fc1.0")


def test_mass_heads_of_different_widths_are_padded():
    net, base, fts = family()
    fts[1]["layers.head.weight"] = fts[1]["layers.head.weight"][:2]
    fts[1]["layers.head.bias"] = fts[1]["layers.head.bias"][:2]
    mass = MASS.from_finetuned(Net(), base, fts, layer="layers.fc1.0", route_rank=4, rank=8)
    out = mass(torch.cat([task_inputs(0, 3), task_inputs(1, 4)]))
    assert out.shape == (7, 3)
    assert torch.isfinite(out[:3]).all() and torch.isinf(out[3:, 2]).all() and torch.isfinite(out[3:, :2]).all()


def test_mass_merge_of_a_task_subset_is_the_tsv_merge_of_those_tasks():
    """The stored TSV-C factors give the same merge as TSV run on the subset's fine-tunes."""
    net, base, fts = family()
    fts.append({k: v + 0.2 * torch.randn_like(v) for k, v in base.items()})
    mass = MASS.from_finetuned(Net(), base, fts, layer="layers.fc1.0", route_rank=2, rank=3, alpha=0.7)
    trunk = lambda k: not k.startswith("layers.head.")  # noqa: E731
    for tasks in [(1,), (0, 2), (0, 1, 2)]:
        expect = merge("tsv", base, [fts[t] for t in tasks], {"rank": 3, "alpha": 0.7}, keys=trunk)
        got = mass.merged(tasks)
        for k in expect:
            torch.testing.assert_close(got[k], expect[k], atol=1e-5, rtol=1e-5)
