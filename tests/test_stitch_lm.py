"""Cross-architecture stitches of causal LMs as views (``stitch`` recipes over Hugging Face sources), on the
tiny LM family: a Llama trunk and a GPT-2 branch over one character tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from evomerge.errors import ConfigError
from evomerge.items import load_items, make_scorer
from evomerge.recipe.schema import parse_recipe
from evomerge.recipe.stitch_view import FitTexts, LMPath, StitchedLM, block_names, fit_router, model_inputs, tail_params
from evomerge.sources.adapters import HFAdapter
from evomerge.zoo.lm import catalog
from evomerge.zoo.lm.family import tiny_family
from evomerge.zoo.lm.tokenizer import char_tokenizer

LM_CROSS_ARCH = Path(__file__).parent.parent / "search_spaces" / "lm_cross_arch.yaml"


@pytest.fixture(scope="module")
def residents(tiny_lm):
    from transformers import AutoModelForCausalLM

    return {m: AutoModelForCausalLM.from_pretrained(tiny_lm.model_dir(m)).eval().requires_grad_(False)
            for m in ("lm-base", "lm-gpt2", "lm-reverse")}


@pytest.fixture(scope="module")
def fit(tiny_lm):
    pairs = {}
    for s in tiny_lm.spec.all_skills():
        files = tiny_lm.items(s)
        pairs[s] = load_items(files.path, files.format, seed=0, name=s).split("train").answered()
    return FitTexts(pairs, char_tokenizer())


def recipe(**fields):
    branch = {"model": "lm-gpt2", "source_layer": "model.layers.0", "target_layer": "transformer.h.0",
              "aligner": {"name": "ridge"}, "fit": {"items": 200}} | fields.pop("branch", {})
    return parse_recipe({"kind": "stitch", "trunk": "lm-base", "branches": [branch], "gate": {"items": 200, "epochs": 60}} | fields)


def val_items(tiny_lm, skill):
    files = tiny_lm.items(skill)
    return load_items(files.path, files.format, seed=0, name=skill).split("val"), files.metric


def left_padded(texts):
    tok = char_tokenizer()
    rows = [tok.encode(t) for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return rows, ids, mask


def test_a_gpt2_folder_is_a_causal_lm_source(tiny_lm):
    from evomerge.sources import HFSource

    source = HFSource.open(path=str(tiny_lm.model_dir("lm-gpt2")))
    assert source.auto_class == "AutoModelForCausalLM" and type(source.load_model()).__name__ == "GPT2LMHeadModel"


def test_block_names_are_read_from_each_architectures_config(residents):
    assert block_names(residents["lm-base"].config.to_dict()) == ["model.layers.0", "model.layers.1"]
    assert block_names(residents["lm-gpt2"].config.to_dict()) == ["transformer.h.0", "transformer.h.1"]


def test_an_output_ensemble_path_mixes_both_models_next_token_distributions_under_left_padding(residents):
    """A path without a stitch runs the branch whole: ``log((2 p_llama + p_gpt2) / 3)``, each row equal to
    its own unpadded run (mask and positions reach both architectures)."""
    llama, gpt2 = HFAdapter.from_model(residents["lm-base"]), HFAdapter.from_model(residents["lm-gpt2"])
    model = StitchedLM(llama, 2.0, [LMPath(gpt2, None, None, None, 1.0)])
    rows, ids, mask = left_padded(["reverse abc: ", "has c abcdef:", "sort hg: "])
    with torch.no_grad():
        out = model(ids, mask).logits
        for r, row in enumerate(rows):
            one = torch.tensor([row])
            p = (2 * residents["lm-base"](one).logits.softmax(-1) + residents["lm-gpt2"](one).logits.softmax(-1)) / 3
            torch.testing.assert_close(out[r, -len(row):], p.log()[0], atol=1e-5, rtol=1e-4)


def test_a_self_stitch_through_a_fitted_ridge_map_reproduces_the_trunk(residents, fit):
    """Llama to itself at the same block: the ridge map fitted on identical rows is the identity, so the
    stitched path (the only one weighted) gives the trunk's own next-token log-probabilities."""
    r = recipe(trunk_weight=0.0, branch={"model": "lm-reverse", "target_layer": "model.layers.0",
                                         "aligner": {"name": "ridge", "params": {"alpha": 1e-9}}})
    r = r.model_copy(update={"trunk": "lm-reverse"})
    view = r.view(residents, fit)
    _, ids, mask = left_padded(["reverse abc: cba", "count a abca: 2"])
    with torch.no_grad():
        want = residents["lm-reverse"](input_ids=ids, attention_mask=mask,
                                       position_ids=model_inputs(ids, mask, None)["position_ids"]).logits.log_softmax(-1)
        got = view(ids, mask).logits
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=2e-3, rtol=1e-3)


def test_with_the_branch_weighted_zero_the_scorers_give_the_trunks_answers(tiny_lm, residents, fit):
    """Greedy decoding of the view (no cache, its own loop) and its multiple-choice log-likelihoods (no
    shared context) give the per-item answers transformers' cached ``generate`` gives the trunk."""
    view = recipe(branch={"weight": 0.0}).view(residents, fit)
    tok = char_tokenizer()
    for skill in ("reverse", "count", "compare", "member"):
        items, metric = val_items(tiny_lm, skill)
        scorer = make_scorer(items)
        ours = scorer.score(view, items, tokenizer=tok, batch_size=16)
        theirs = scorer.score(residents["lm-base"], items, tokenizer=tok, batch_size=16)
        assert ours.answers(metric).tolist() == theirs.answers(metric).tolist()
        if skill in ("reverse", "count"):
            assert [o.text for o in ours.outputs] == [o.text for o in theirs.outputs]


def test_greedy_generation_with_key_value_caches_equals_it_without(residents, fit):
    """Every model run keeps its cache (the branch's through its hook): the same tokens as recomputing the
    whole sequence at each step, for a stitch that routes both paths."""
    from transformers import StoppingCriteriaList

    view = recipe(routing="learned", branch={"source_layer": "model.layers.1", "target_layer": "transformer.h.0"}).view(residents, fit)
    _, ids, mask = left_padded(["reverse abcd: ", "upper ab: ", "shift hgfe: ", "sort cab: "])
    cached = view.generate(ids, mask, max_length=ids.shape[1] + 8, stopping_criteria=StoppingCriteriaList(), pad_token_id=0)
    whole = view.generate(ids, mask, max_length=ids.shape[1] + 8, stopping_criteria=StoppingCriteriaList(), pad_token_id=0,
                          use_cache=False)
    assert cached.shape[1] > ids.shape[1] and torch.equal(cached, whole)


def test_params_count_the_trunk_the_branch_tail_the_map_and_the_router(residents, fit):
    gpt2 = residents["lm-gpt2"]
    r = recipe(routing="learned", branch={"target_layer": "transformer.h.0"})
    view = r.view(residents, fit)
    total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    tail = total(gpt2) - total(gpt2.transformer.h[0]) - total(gpt2.transformer.wpe)  # the tied head (wte) runs
    assert tail_params(HFAdapter.from_model(gpt2), "transformer.h.0") == tail
    d = 32  # both tiny models' width: ridge is a 32x32 linear map with a bias
    gate = (d + 2 * gpt2.config.vocab_size + 1) * 2
    assert r.view_params(view) == total(residents["lm-base"]) + tail + d * d + d + gate


def test_tasks_without_training_items_are_left_out_of_the_fit(residents, fit):
    partial = FitTexts({**{t: fit.pairs[t] for t in ("reverse", "upper")}, "nothing": []}, fit.tokenizer)
    assert list(partial.pairs) == ["reverse", "upper"]
    view = recipe(routing="learned", branch={"fit": {"items": 60, "conditioning": "task"}}).view(residents, partial)
    assert view(*left_padded(["upper ab: "])[1:]).logits.shape[-1] == residents["lm-base"].config.vocab_size


def test_views_leave_the_resident_sources_unchanged_and_without_hooks(residents, fit):
    before = {m: {k: v.clone() for k, v in model.state_dict().items()} for m, model in residents.items()}
    for routing in ("mixture", "confidence", "learned"):
        view = recipe(routing=routing, branch={"fit": {"items": 100, "conditioning": "task"}}).view(residents, fit)
        view(*left_padded(["upper abc: "])[1:])
    for m, model in residents.items():
        assert all(torch.equal(v, before[m][k]) for k, v in model.state_dict().items())
        assert not any(mod._forward_hooks for mod in model.modules())


def test_the_learned_router_raises_the_mixture_likelihood_of_the_answers(residents, fit):
    """The gate maximizes Σ log Σ_k g_k w_k p_k(answer token) (Jacobs et al. 1991): on its fit texts it beats
    the fixed equal mixture it starts from."""
    fixed = recipe().view(residents, fit)
    learned = recipe(routing="learned").view(residents, fit)

    def loglik(model):
        total, n = 0.0, 0
        for task in fit.pairs:
            for inputs, answer in fit.batches(task, 28):
                with torch.no_grad():
                    logp = model(inputs["input_ids"], inputs["attention_mask"]).logits
                y = inputs["input_ids"][:, 1:][answer[:, :-1]]
                total += float(logp[answer].gather(-1, y[:, None]).sum())
                n += len(y)
        return total / n

    assert loglik(learned) > loglik(fixed) + 0.01


def test_stitch_fields_are_checked_against_the_sources_naming_the_field(residents):
    configs = {m: model.config.to_dict() for m, model in residents.items()}
    tasks = ["reverse", "upper"]
    cases = [({"branch": {"target_layer": "transformer.h.9"}}, "branches[0].target_layer", "transformer.h.1"),
             ({"branch": {"source_layer": "transformer.h.0"}}, "branches[0].source_layer", "model.layers.0"),
             ({"branch": {"fit": {"conditioning": "class"}}}, "branches[0].fit.conditioning", "none or task"),
             ({"branch": {"fit": {"conditions": ["sort"]}}}, "branches[0].fit", "training items"),
             ({"branch": {"tune": {"epochs": 1}}}, "branches[0].tune.epochs", "zoo models only"),
             ({"gate": {"task": "nope"}}, "gate.task", "training items")]
    for fields, field, expected in cases:
        with pytest.raises(ConfigError) as err:
            recipe(**fields).check_sources(configs, "space.yaml", "recipe", tasks)
        assert err.value.field == f"recipe.{field}" and expected in str(err.value)
    wide = dict(configs, **{"lm-gpt2": dict(configs["lm-gpt2"], vocab_size=99)})
    with pytest.raises(ConfigError, match="trunk's vocabulary"):
        recipe().check_sources(wide, "space.yaml", "recipe", tasks)


def tiny_cross_arch(tiny_lm, tmp_path, monkeypatch) -> Path:
    """The shipped lm_cross_arch.yaml on the tiny family (2 blocks each), at a budget of 3."""
    monkeypatch.setenv("EVOMERGE_CACHE", str(tiny_lm.root.parent.parent))
    monkeypatch.setattr(catalog, "DEFAULT_SPEC", tiny_family())
    space = yaml.safe_load(LM_CROSS_ARCH.read_text())
    genes = {g["name"]: g for g in space["genes"]}
    genes["source_layer"]["choices"] = ["model.layers.0", "model.layers.1"]
    genes["target_layer"]["choices"] = ["transformer.h.0"]
    genes["lowrank_rank"]["high"], genes["cca_k"]["high"] = 16, 16
    space["recipe"]["gate"], space["recipe"]["branches"][0]["fit"]["items"] = {"items": 140, "epochs": 30}, 140
    space["budget"], space["engine"] = {"evaluations": 3}, {"name": "random"}
    path = tmp_path / "lm_cross_arch.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def test_the_shipped_cross_arch_space_searches_stitches_of_the_two_architectures(tiny_lm, tmp_path, monkeypatch, capsys):
    from evomerge.cli import main
    from evomerge.search.space import check_searchable, load_space

    path = tiny_cross_arch(tiny_lm, tmp_path, monkeypatch)
    check_searchable(load_space(path))
    run = tmp_path / "run"
    assert main(["search", "--space", str(path), "--run-dir", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluations"] == 3 and summary["failed"] == 0
    rows = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert {r["recipe"]["kind"] for r in rows} == {"stitch"}
    assert all(r["objectives"]["added_params"] > 0 for r in rows)
    tasks = {json.loads(line)["task"] for line in (run / "responses.jsonl").read_text().splitlines()}
    assert tasks == set(tiny_lm.spec.all_skills())
    assert main(["export", str(run), "--out", str(tmp_path / "export"), "--no-progress"]) == 2
    assert "no single Hugging Face model holds it" in capsys.readouterr().err


def test_the_unmodified_cross_arch_space_is_refused_on_the_tiny_family_naming_the_layer(tiny_lm, monkeypatch, capsys):
    """lm_cross_arch.yaml names blocks 0-3 of the 4-block family: on 2-block models the search exits 2 before any budget."""
    from evomerge.cli import main

    monkeypatch.setenv("EVOMERGE_CACHE", str(tiny_lm.root.parent.parent))
    monkeypatch.setattr(catalog, "DEFAULT_SPEC", tiny_family())
    assert main(["search", "--space", str(LM_CROSS_ARCH), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "recipe.branches[0]" in err and "Traceback" not in err
