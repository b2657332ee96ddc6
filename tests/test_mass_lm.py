"""MASS routing over Hugging Face causal LMs (``mass`` on ``weights`` / ``layerwise`` recipes over sources), on
the tiny LM family: each sequence routed to the fine-tunes whose updates explain it, then scored by the
merge of those fine-tunes written into the resident base."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evomerge.errors import ConfigError
from evomerge.io.tensors import TensorSource
from evomerge.items import load_items, make_scorer
from evomerge.recipe.inplace import InPlaceBuilder
from evomerge.recipe.mass_view import RoutedCache, check_mass
from evomerge.recipe.schema import parse_recipe
from evomerge.zoo.lm.tokenizer import char_tokenizer

SKILLS = ["reverse", "sort", "count", "compare"]


@pytest.fixture(scope="module")
def builder(tiny_lm):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm.model_dir("lm-base")).eval().requires_grad_(False)
    return InPlaceBuilder(model, TensorSource(tiny_lm.model_dir("lm-base")),
                          {s: TensorSource(tiny_lm.model_dir(f"lm-{s}")) for s in SKILLS})


def routed(layer="model.layers.0.self_attn.q_proj", kind="weights", **mass):
    """A routed recipe; at this layer and route rank the tiny family's reverse and compare items are routed
    to several fine-tunes each."""
    recipe = {"kind": kind, "base": "base", "models": SKILLS, "method": "tsv",
              "mass": {"enabled": True, "layer": layer, "route_rank": 8} | mass}
    recipe |= {"params": {}} if kind == "weights" else {"groups": 2, "grid": {"alpha": [[1.0] * 3] * 2}}
    return parse_recipe(recipe)


def items_of(tiny_lm, skill, n=24):
    files = tiny_lm.items(skill)
    val = load_items(files.path, files.format, seed=0, name=skill).split("val")
    return val.subset(list(val.ids)[:n]), files.metric


def routes_of(view, items):
    return view.route_texts([prompt for prompt, _ in items.answered()], char_tokenizer(), batch_size=10)


@pytest.mark.parametrize("kind", ["weights", "layerwise"])
def test_each_item_is_answered_by_the_fine_tune_it_is_routed_to(tiny_lm, builder, kind):
    """With ``top_k`` 1 and TSV-M's default rank a selected task's merge is its fine-tune exactly, so every
    item's answer (generation, and multiple choice: all choices under one route) is that fine-tune's."""
    from transformers import AutoModelForCausalLM

    view = routed(kind=kind).routed_view(builder)
    fts = {s: AutoModelForCausalLM.from_pretrained(tiny_lm.model_dir(f"lm-{s}")).eval() for s in SKILLS}
    for skill in ("reverse", "compare"):
        items, metric = items_of(tiny_lm, skill)
        scorer = make_scorer(items)
        routes = routes_of(view, items)
        assert all(len(r) == 1 for r in routes) and len(set(routes)) > 1  # a mixed batch: several merges
        got = scorer.score(view, items, tokenizer=char_tokenizer(), batch_size=64)
        for t in {r[0] for r in routes}:
            rows = [i for i, r in enumerate(routes) if r == (t,)]
            want = scorer.score(fts[SKILLS[t]], items, tokenizer=char_tokenizer(), batch_size=64)
            np.testing.assert_array_equal(got.correct[metric][rows], want.correct[metric][rows])
            if skill == "compare":  # the log-likelihoods themselves, choice by choice
                np.testing.assert_allclose([got.outputs[i].loglikelihoods for i in rows],
                                           [want.outputs[i].loglikelihoods for i in rows], rtol=1e-4, atol=1e-4)
            else:
                assert [got.outputs[i] for i in rows] == [want.outputs[i] for i in rows]


def test_selecting_every_task_is_the_static_merge_and_leaves_the_builder_consistent(tiny_lm, builder):
    items, metric = items_of(tiny_lm, "sort")
    scorer = make_scorer(items)
    view = routed(top_k=4).routed_view(builder)
    got = scorer.score(view, items, tokenizer=char_tokenizer(), batch_size=64)
    static = builder.build(parse_recipe({"kind": "weights", "base": "base", "models": SKILLS, "method": "tsv"}))
    want = scorer.score(static, items, tokenizer=char_tokenizer(), batch_size=64)
    assert [o for o in got.outputs] == [o for o in want.outputs]
    view.use((0,))  # a routed view wrote one fine-tune's merge; the next in-place build rewrites every tensor
    base = builder.build(parse_recipe({"kind": "weights", "base": "base", "models": SKILLS, "method": "task_arithmetic",
                                       "params": {"lam": 0.0}}))
    for name, t in base.state_dict().items():
        torch.testing.assert_close(t, builder.base_reader.get(name, torch.float32))


def test_a_routed_cache_reorders_each_routes_rows():
    class Rows:
        def __init__(self, rows):
            self.rows = rows

        def reorder_cache(self, index):
            self.rows = [self.rows[i] for i in index.tolist()]

    cache = RoutedCache([(0,), (1,), (0,)])
    cache.caches = {(0,): Rows(["a", "c"]), (1,): Rows(["b"])}
    cache.reorder_cache(torch.tensor([2, 2, 1, 0]))
    assert cache.routes == [(0,), (0,), (1,), (0,)]
    assert cache.caches[(0,)].rows == ["c", "c", "a"] and cache.caches[(1,)].rows == ["b"]


def test_params_count_the_base_and_every_task_vector(builder):
    view = routed().routed_view(builder)
    n = sum(p.numel() for p in builder.module.parameters())
    assert view.num_params() == n + len(SKILLS) * sum(t.numel() for t in builder.targets.values())


@pytest.mark.parametrize("change, field, expected", [
    ({"method": "ties"}, "recipe.method", "tsv"),
    ({"mass": {"enabled": True, "layer": "model.layers.1.self_attn"}}, "recipe.mass.layer", "model.layers.0.self_attn.q_proj"),
    ({"mass": {"enabled": True, "layer": "model.layers.0.mlp.up_proj", "top_k": 5}}, "recipe.mass.top_k", "at most 4"),
    ({"params": {"rank": [2, 2, 2, 2]}}, "recipe.params.rank", "per-model"),
])
def test_a_bad_routed_recipe_names_its_field(tiny_lm, builder, change, field, expected):
    recipe = parse_recipe({"kind": "weights", "base": "base", "models": SKILLS, "method": "tsv",
                           "mass": {"enabled": True, "layer": "model.layers.0.mlp.up_proj"}} | change)
    with pytest.raises(ConfigError) as err:
        check_mass(recipe, builder.module.config.to_dict(), "space.yaml")
    assert err.value.field == field and expected in str(err.value)


def test_a_routed_recipe_is_not_merged_into_a_folder_or_a_mergekit_config():
    from evomerge.recipe.kind import NoMergekitConfig

    for kind in ("weights", "layerwise"):
        r = routed(kind=kind)
        assert r.routed and not r.in_place
        with pytest.raises(ConfigError, match="merges per input"):
            r.plan("run/best.json", None, torch.float32, None)
        with pytest.raises(NoMergekitConfig):
            r.mergekit_config()




def test_mass_without_a_layer_is_refused_when_enabled_only():
    from evomerge.recipe.schema import parse_recipe as parse

    base = {"kind": "weights", "base": "base", "models": SKILLS, "method": "tsv"}
    assert not parse(base | {"mass": {"enabled": None, "layer": None, "top_k": None}}).routed  # inactive genes
    with pytest.raises(ConfigError) as err:
        parse(base | {"mass": {"enabled": True}})
    assert err.value.field == "mass.layer"


def test_the_shipped_lm_space_searches_mass_routed_merges_end_to_end(tiny_lm, tmp_path, monkeypatch, capsys):
    """lm_skills.yaml on the tiny family with TSV-M and MASS forced on: every candidate routed, scored on every
    skill, parameters counting the task vectors MASS holds; export of such a run exits 2 saying why."""
    import json

    import yaml

    from evomerge.cli import main
    from evomerge.zoo.lm import catalog
    from evomerge.zoo.lm.family import tiny_family

    monkeypatch.setenv("EVOMERGE_CACHE", str(tiny_lm.root.parent.parent))
    monkeypatch.setattr(catalog, "DEFAULT_SPEC", tiny_family())
    shipped = Path(__file__).parent.parent / "search_spaces" / "lm_skills.yaml"
    space = yaml.safe_load(shipped.read_text().replace("model.layers.3.", "model.layers.0."))
    space["genes"] = [g for g in space["genes"] if g["name"] not in ("lam", "density", "drop_rate", "alpha", "rank")]
    space["recipe"]["grid"] = {}  # every cell TSV-M at its defaults, as under MASS
    genes = {g["name"]: g for g in space["genes"]}
    genes["method"]["choices"], genes["mass"]["choices"] = ["tsv"], [True]
    space["budget"], space["engine"] = {"evaluations": 3}, {"name": "random"}
    path = tmp_path / "lm_skills.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    run = tmp_path / "run"
    assert main(["search", "--space", str(path), "--run-dir", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluations"] == 3 and summary["failed"] == 0
    rows = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert all(r["recipe"]["mass"]["enabled"] for r in rows)
    tasks = {json.loads(line)["task"] for line in (run / "responses.jsonl").read_text().splitlines()}
    assert tasks == set(SKILLS)
    assert main(["export", str(run), "--out", str(tmp_path / "export"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "merges per input" in err and "Traceback" not in err


def test_the_best_single_model_candidate_is_named_for_export(tmp_path):
    """A run whose best is routed names its best candidate that one folder can hold (the space's first
    objective, its direction), skipping failed and routed candidates."""
    import json
    from types import SimpleNamespace

    from evomerge.search.run_export import best_single_model
    from evomerge.search.run_folder import RunFolder

    static = {"kind": "weights", "base": "base", "models": SKILLS, "method": "tsv"}
    mass = static | {"mass": {"enabled": True, "layer": "model.layers.0.mlp.up_proj"}}
    rows = [{"id": "c0", "status": "ok", "recipe": mass, "objectives": {"accuracy": 0.9}},
            {"id": "c1", "status": "ok", "recipe": static, "objectives": {"accuracy": 0.5}},
            {"id": "c2", "status": "ok", "recipe": static, "objectives": {"accuracy": 0.6}},
            {"id": "c3", "status": "failed", "recipe": static, "error": "boom"}]
    (tmp_path / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    space = SimpleNamespace(objectives=[SimpleNamespace(name="accuracy", direction="max")])
    assert best_single_model(RunFolder(tmp_path), space) == "c2"
    space.objectives[0].direction = "min"
    assert best_single_model(RunFolder(tmp_path), space) == "c1"
