"""Weight matching: specs from modules, planted permutations, function preservation, REPAIR."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evomerge.core.permutation import (
    agreement,
    apply_permutation,
    compose,
    identity_perms,
    invert,
    lerp_state,
    permutation_spec,
    random_perms,
    repair,
    weight_matching,
)
from evomerge.errors import UserError
from evomerge.zoo.models import build_model


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3)).eval()


def cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10), nn.ReLU(), nn.Linear(10, 3),
    )
    with torch.no_grad():  # non-trivial running statistics
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


MODELS = {
    "mlp": (mlp, (5, 3, 4)),
    "cnn": (cnn, (5, 1, 8, 8)),
    "transformer": (lambda s: build_model("transformer", "digits", 10, s).eval(), (5, 1, 8, 8)),
}


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def run(net: nn.Module, sd, x):
    net.load_state_dict(sd)
    with torch.no_grad():
        return net(x)


@pytest.fixture(params=list(MODELS))
def case(request):
    make, shape = MODELS[request.param]
    return make, torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def test_spec_of_mlp():
    spec = permutation_spec(mlp(0))
    assert spec.sizes == {"1": 16, "3": 16}
    assert [a and a.perm for a in spec.axes["3.weight"]] == ["3", "1"]
    assert [a and a.perm for a in spec.axes["6.weight"]] == [None, "3"]  # logits are never permuted
    assert spec.axes["4.weight"][0].perm == "3"  # the LayerNorm follows its linear layer
    assert spec.units == {"1": ("1", -1), "3": ("4", -1)}


def test_spec_of_cnn_flatten_block():
    spec = permutation_spec(cnn(0))
    fc_in = spec.axes["6.weight"][1]
    assert (fc_in.perm, fc_in.block) == ("3", 16)  # each channel owns 4*4 flattened inputs
    assert spec.axes["1.running_mean"][0].perm == "0" and "1.running_mean" in spec.buffers
    assert "1.num_batches_tracked" not in spec.axes


def test_spec_of_transformer_heads_and_residual():
    spec = permutation_spec(build_model("transformer", "digits", 10, 0))
    assert spec.sizes["layers.block1.self_attn.heads"] == 4
    qkv = spec.axes["layers.block1.self_attn.in_proj_weight"]
    assert (qkv[0].block, qkv[0].segments, qkv[1].perm) == (8, 3, "layers.embed.residual")
    assert spec.axes["layers.embed.pos"][2].perm == "layers.embed.residual"


@pytest.fixture
def planted(case):
    """A model, its state, its spec, a random permutation of it, and an input batch."""
    make, x = case
    net = make(0)
    sd = snapshot(net)
    spec = permutation_spec(net)
    perms = random_perms(spec, torch.Generator().manual_seed(1))
    return net, sd, spec, perms, x


def test_permuted_model_computes_the_same_function(planted):
    net, sd, spec, perms, x = planted
    permuted = apply_permutation(spec, perms, sd)
    assert any(not torch.equal(permuted[k], sd[k]) for k in sd)
    torch.testing.assert_close(run(net, permuted, x), run(net, sd, x), atol=1e-5, rtol=1e-5)


def test_weight_matching_recovers_planted_permutation(planted):
    _, sd, spec, perms, _ = planted
    permuted = apply_permutation(spec, perms, sd)
    found = weight_matching(spec, sd, permuted)
    for g in spec.sizes:
        assert torch.equal(found[g], invert(perms)[g]), g
    restored = apply_permutation(spec, found, permuted)
    assert all(torch.equal(restored[k], sd[k]) for k in sd)


def test_weight_matching_increases_agreement_of_independent_models():
    a, b = snapshot(mlp(0)), snapshot(mlp(1))
    spec = permutation_spec(mlp(0))
    one = agreement(spec, a, apply_permutation(spec, weight_matching(spec, a, b), b))
    assert one > agreement(spec, a, b)
    several = agreement(spec, a, apply_permutation(spec, weight_matching(spec, a, b, restarts=5), b))
    assert several >= one


def test_invert_and_compose():
    spec = permutation_spec(mlp(0))
    g = torch.Generator().manual_seed(3)
    p, q = random_perms(spec, g), random_perms(spec, g)
    sd = snapshot(mlp(0))
    both = apply_permutation(spec, q, apply_permutation(spec, p, sd))
    direct = apply_permutation(spec, compose(p, q), sd)
    assert all(torch.equal(both[k], direct[k]) for k in sd)
    assert all(torch.equal(v, torch.arange(len(v))) for v in compose(p, invert(p)).values())


def test_soft_identity_matrix_is_a_no_op():
    spec = permutation_spec(cnn(0))
    sd = snapshot(cnn(0))
    eye = {g: torch.eye(n) for g, n in spec.sizes.items()}
    out = apply_permutation(spec, eye, sd)
    assert all(torch.allclose(out[k].float(), sd[k].float()) for k in sd)


def test_lerp_state_endpoints_and_midpoint():
    a, b = snapshot(mlp(0)), snapshot(mlp(1))
    assert all(torch.equal(lerp_state(a, b, 0.0)[k], a[k]) for k in a)
    torch.testing.assert_close(lerp_state(a, b, 0.5)["1.weight"], (a["1.weight"] + b["1.weight"]) / 2)


def test_unsupported_module_is_a_user_error():
    net = nn.Sequential(nn.Linear(4, 4), nn.GRU(4, 4))
    with pytest.raises(UserError, match="no permutation rule for module '1.' \\(GRU\\)"):
        permutation_spec(net)


def test_mismatched_flatten_is_a_user_error():
    net = nn.Sequential(nn.Conv1d(1, 3, 3), nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(UserError, match="not a multiple of 3"):
        permutation_spec(net)


def unit_stats(net, sd, x, name):
    out = {}
    h = dict(net.named_modules())[name].register_forward_hook(lambda m, i, o: out.setdefault("o", o))
    run(net, sd, x)
    h.remove()
    flat = out["o"].movedim(1 if out["o"].ndim > 2 else -1, 0).reshape(out["o"].shape[1], -1)
    return flat.mean(1), flat.std(1)


@pytest.mark.parametrize("make,shape", [(mlp, (256, 3, 4)), (cnn, (256, 1, 8, 8))])
def test_repair_matches_interpolated_unit_statistics(make, shape):
    net = make(0)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    a, b = snapshot(make(0)), snapshot(make(1))
    spec = permutation_spec(net)
    b = apply_permutation(spec, weight_matching(spec, a, b), b)
    mid = lerp_state(a, b, 0.5)
    fixed = repair(net, spec, mid, [a, b], [0.5, 0.5], x)
    for group, (name, _) in spec.units.items():
        (ma, sa), (mb, sb) = unit_stats(net, a, x, name), unit_stats(net, b, x, name)
        m, s = unit_stats(net, fixed, x, name)
        torch.testing.assert_close(m, (ma + mb) / 2, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(s, (sa + sb) / 2, atol=1e-4, rtol=1e-3)


def test_repair_of_an_endpoint_is_a_no_op():
    net = mlp(0)
    a = snapshot(net)
    x = torch.randn(64, 3, 4)
    fixed = repair(net, permutation_spec(net), a, [a, a], [0.5, 0.5], x)
    assert all(torch.allclose(fixed[k], a[k], atol=1e-5) for k in a)
