"""Recipes: validation, materialization equal to the definitions, determinism, the evaluator."""

import copy

import pytest
import torch

from evomerge.core.merge import is_trunk_key, merge
from evomerge.data import load_task
from evomerge.errors import ConfigError
from evomerge.recipe.materialize import materialize
from evomerge.recipe.merged import HeadsMerge, MassMerge, StitchMerge
from evomerge.recipe.schema import parse_recipe


def stitch_recipe(**over):
    r = {
        "kind": "stitch",
        "trunk": "mlp-digits-lo",
        "trunk_weight": 1.0,
        "routing": "mixture",
        "branches": [{
            "model": "cnn-digits-hi", "source_layer": "fc2", "target_layer": "fc",
            "aligner": {"name": "ridge", "params": {"alpha": 1e-3}},
            "fit": {"task": "digits/all", "items": 400},
        }],
    }
    r.update(over)
    return r


FT = ["ft-digits-rot90", "ft-digits-flip", "ft-digits-invert", "ft-digits-parity"]


def weights_recipe(method="ties", params=None, mass=None):
    r = {"kind": "weights", "base": "base-digits", "models": FT, "method": method, "params": params or {}}
    if mass:
        r["mass"] = mass
    return r


X = load_task("digits", "all", "val", 0).x[:64]


def test_bad_recipe_names_the_field():
    with pytest.raises(ConfigError, match=r"branches\[0\].aligner.name"):
        parse_recipe({**stitch_recipe(), "branches": [{"model": "m", "source_layer": "a", "target_layer": "b", "aligner": {}}]})
    with pytest.raises(ConfigError, match="routing"):
        parse_recipe(stitch_recipe(routing="telepathy"))
    with pytest.raises(ConfigError, match="kind"):
        parse_recipe({"kind": "soup"})


def test_nulls_from_inactive_genes_take_defaults():
    r = parse_recipe({**weights_recipe(params={"lam": None, "alpha": 0.5}), "mass": {"enabled": None, "layer": "x", "top_k": None}})
    assert r.params == {"alpha": 0.5} and r.mass.enabled is False and r.mass.top_k == 1


def test_stitch_branch_alone_equals_its_definition(tiny_zoo):
    """trunk_weight 0 and one branch: log-softmax of B.forward_from(map(A.forward_to(x)))."""
    built = materialize(stitch_recipe(trunk_weight=0.0), tiny_zoo)
    m = built.module
    assert isinstance(m, StitchMerge)
    a, b = tiny_zoo.adapter("mlp-digits-lo"), tiny_zoo.adapter("cnn-digits-hi")
    with torch.no_grad():
        expected = torch.log_softmax(b.forward_from(m.stitches[0](a.forward_to(X, "fc2")), "fc"), dim=-1)
        torch.testing.assert_close(m(X), expected, atol=1e-5, rtol=0)


def test_mixture_equals_weighted_average_of_probabilities(tiny_zoo):
    m = materialize(stitch_recipe(trunk_weight=3.0), tiny_zoo).module
    a = tiny_zoo.adapter("mlp-digits-lo")
    with torch.no_grad():
        p_own = torch.softmax(a(X), -1)
        p_branch = torch.softmax(m.tails[0].forward_from(m.stitches[0](a.forward_to(X, "fc2")), "fc"), -1)
        torch.testing.assert_close(m(X).exp(), (3 * p_own + p_branch) / 4, atol=1e-5, rtol=0)


def test_same_recipe_same_function_and_sources_untouched(tiny_zoo):
    before = {k: v.clone() for k, v in tiny_zoo.adapter("cnn-digits-hi").state_dict().items()}
    r = stitch_recipe(routing="learned", branches=[{**stitch_recipe()["branches"][0], "tune": {"epochs": 1},
                                                     "aligner": {"name": "mlp", "params": {"epochs": 5}}}])
    m1, m2 = materialize(r, tiny_zoo).module, materialize(copy.deepcopy(r), tiny_zoo).module
    with torch.no_grad():
        assert torch.equal(m1(X), m2(X))
    after = tiny_zoo.adapter("cnn-digits-hi").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_learned_routing_beats_fixed_mixture_on_disjoint_specialists(tiny_zoo):
    """Trunk on classes 0-4, branch on 5-9: a learned router should pick the right specialist."""
    from evomerge.evaluate import accuracy

    task = load_task("digits", "all", "val", 0)
    accs = {}
    for routing in ("mixture", "learned"):
        m = materialize(stitch_recipe(routing=routing), tiny_zoo).module
        accs[routing] = accuracy(lambda x: m(x), task)
    assert accs["learned"] > accs["mixture"] + 0.05, accs


def test_param_accounting(tiny_zoo):
    built = materialize(stitch_recipe(), tiny_zoo)
    trunk = tiny_zoo.adapter("mlp-digits-lo").num_params()
    m = built.module
    tail = sum(p.numel() for n in ["head"] for p in m.tails[0].layers[n].parameters())
    assert built.params == trunk + m.stitch_params() + tail
    assert built.added_params == built.params - trunk


@pytest.mark.parametrize("method, params", [("task_arithmetic", {"lam": 0.3}), ("ties", {"density": 0.5, "lam": 0.7}),
                                            ("dare", {"p": 0.3}), ("tsv", {"alpha": 0.8, "rank": 4})])
def test_weights_merge_equals_core_merge_with_task_heads(tiny_zoo, method, params):
    built = materialize(weights_recipe(method, params), tiny_zoo)
    m = built.module
    assert isinstance(m, HeadsMerge) and m.tasks == [f"digits/{c}" for c in ("rot90", "flip", "invert", "parity")]
    base = tiny_zoo.adapter("base-digits").state_dict()
    fts = [tiny_zoo.adapter(i).state_dict() for i in FT]
    merged = merge(method, base, fts, {**params, **({"seed": 0} if method == "dare" else {})}, keys=is_trunk_key)
    net = copy.deepcopy(tiny_zoo.adapter("ft-digits-parity").module)
    net.load_state_dict({**merged, **{k: v for k, v in fts[3].items() if not is_trunk_key(k)}})
    with torch.no_grad():
        torch.testing.assert_close(m(X, "digits/parity"), net(X))
    assert built.added_params == sum(p.numel() for h in m.heads.values() for p in h.parameters()) - 650


def test_lambda_zero_is_the_base_trunk(tiny_zoo):
    m = materialize(weights_recipe("task_arithmetic", {"lam": 0.0}), tiny_zoo).module
    base = tiny_zoo.adapter("base-digits").module
    with torch.no_grad():
        torch.testing.assert_close(m.net.forward_to(X, "fc3"), base.forward_to(X, "fc3"))


def test_mass_recipe_routes(tiny_zoo):
    m = materialize(weights_recipe("tsv", {"alpha": 1.0}, {"enabled": True, "layer": "layers.fc2.0", "top_k": 1}), tiny_zoo).module
    assert isinstance(m, MassMerge)
    with torch.no_grad():
        out = m(X)
    assert out.shape[0] == len(X) and torch.isfinite(out.max(dim=-1).values).all()


def test_evaluator_scores_tasks_and_sizes(tiny_zoo, monkeypatch):
    from evomerge.fitness.zoo_evaluator import RecipeEvaluator
    from evomerge.search.space import parse_space

    space = parse_space({
        "name": "t", "models": ["mlp-digits-lo", "cnn-digits-hi"],
        "tasks": [{"name": "lo", "dataset": "digits", "condition": "classes_0_4"},
                  {"name": "hi", "dataset": "digits", "condition": "classes_5_9", "weight": 3}],
        "recipe": {**stitch_recipe(), "trunk_weight": {"gene": "w"}},
        "genes": [{"name": "w", "type": "float", "low": 0, "high": 1}],
        "objectives": [{"name": "acc", "metric": "accuracy", "direction": "max"}],
    })
    monkeypatch.setattr("evomerge.fitness.zoo_evaluator.Zoo", lambda seed: tiny_zoo)  # the tiny zoo, not the default one
    ev = RecipeEvaluator(space, split="val")
    res = ev.evaluate("c1", stitch_recipe(trunk_weight=0.5))
    o = res.objectives
    assert res.status == "ok" and abs(o["accuracy/mean"] - (o["accuracy/lo"] + 3 * o["accuracy/hi"]) / 4) < 1e-9
    assert {r.task for r in res.responses} == {"digits/classes_0_4", "digits/classes_5_9"}
    assert sum(r.correct.count(True) for r in res.responses if r.task.endswith("0_4")) == round(o["accuracy/lo"] * len(ev.tasks["lo"]))
    assert o["added_params"] > 0 and o["latency_ms"] > 0
