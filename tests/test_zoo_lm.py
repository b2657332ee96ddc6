"""The built-in language-model family, in miniature (``tiny_family``): Hugging Face folders that
transformers loads, item files in the public format, deterministic training, records, spaces that
name the family through ``${lm}``."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evomerge.errors import ConfigError
from evomerge.items import load_items, parse_format
from evomerge.items.readers import format_block
from evomerge.zoo.lm import catalog
from evomerge.zoo.lm.catalog import LMZoo
from evomerge.zoo.lm.family import BASE, tiny_family, train_member
from evomerge.zoo.lm.skills import SKILLS, generate, training_text


def test_the_family_builds_every_member(tiny_lm):
    assert set(tiny_lm.trained) == set(tiny_lm.ids()) == {"lm-base", "lm-reverse", "lm-sort", "lm-count", "lm-compare", "lm-gpt2"}


def test_models_are_hugging_face_folders_with_the_character_tokenizer(tiny_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    folder = tiny_lm.model_dir("lm-reverse")
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.decode(tok("reverse abc: cba\n", add_special_tokens=False)["input_ids"]) == "reverse abc: cba\n"
    assert len(tok("sort hgf: ", add_special_tokens=False)["input_ids"]) == len("sort hgf: ")  # one token a character
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tiny_lm.record("lm-reverse")["params"] == sum(p.numel() for p in model.parameters())
    other = AutoModelForCausalLM.from_pretrained(tiny_lm.model_dir("lm-gpt2"), local_files_only=True)
    assert type(other).__name__ == "GPT2LMHeadModel" and other.config.vocab_size == model.config.vocab_size
    assert AutoTokenizer.from_pretrained(tiny_lm.model_dir("lm-gpt2")).get_vocab() == tok.get_vocab()  # one tokenizer


def test_item_files_hold_disjoint_val_and_test_items_in_the_public_format(tiny_lm):
    n, fit = tiny_family().held_out, tiny_family().fit_items
    assert tiny_lm.spec.all_skills() == ("reverse", "sort", "count", "compare", "upper", "shift", "member")
    for skill in tiny_lm.spec.all_skills():
        files = tiny_lm.items(skill)
        items = load_items(files.path, parse_format(*format_block(str(files.format_file))), seed=0)
        assert items.kind == SKILLS[skill].type
        val, test = items.split("val"), items.split("test")
        assert len(val) == len(test) == n and len(items.split("train")) == fit
        prompts = [training_text(i.doc)[0] for i in [*val, *test]]
        assert len(set(prompts)) == 2 * n  # distinct, so val and test are disjoint
        train = [training_text(i)[0] for i in generate(skill, 400, 0, "train")]
        assert not set(train) & set(prompts)  # never trained on
        assert [training_text(i.doc)[0] for i in items.split("train")] == train[:fit]  # the first training items


def test_records_score_every_model_on_every_skill(tiny_lm):
    for mid in tiny_lm.ids():
        rec = tiny_lm.record(mid)
        arch = "GPT2LMHeadModel" if mid == "lm-gpt2" else "LlamaForCausalLM"
        assert rec["dataset"] == "lm" and rec["architecture"] == arch and rec["family"] == "lm"
        assert set(rec["skills"]) == {"reverse", "sort", "count", "compare", "upper", "shift", "member"}
        assert all(0.0 <= v[s] <= 1.0 for v in rec["skills"].values() for s in ("val", "test"))
    base, ft = tiny_lm.record("lm-base"), tiny_lm.record("lm-compare")
    assert ft["condition"] == "compare" and ft["test_accuracy"] == ft["skills"]["compare"]["test"]
    assert base["test_accuracy"] == pytest.approx(sum(base["skills"][s]["test"] for s in tiny_lm.spec.skills) / 4, abs=1e-4)
    gpt2 = tiny_lm.record("lm-gpt2")
    assert gpt2["condition"] == "upper+shift+member" and gpt2["base"] is None
    assert gpt2["test_accuracy"] == pytest.approx(sum(gpt2["skills"][s]["test"] for s in ("upper", "shift", "member")) / 3, abs=1e-4)
    # 20 steps on the rule task lift it well above the base (about 0.45 -> 0.8 on 60 items)
    assert ft["skills"]["compare"]["test"] >= base["skills"]["compare"]["test"] + 0.15


def test_training_is_deterministic_for_a_seed(tiny_lm, tmp_path):
    spec = tiny_family()
    train_member(spec, BASE, 0, tmp_path / "again", None)
    a = load_file(str(tiny_lm.model_dir("lm-base") / "model.safetensors"))
    b = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    train_member(spec, BASE, 1, tmp_path / "other", None)
    c = load_file(str(tmp_path / "other" / "model.safetensors"))
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_a_changed_spec_or_seed_is_a_new_family(tiny_lm):
    assert LMZoo(0, tiny_lm.root.parent.parent, tiny_family()).root == tiny_lm.root
    assert LMZoo(1, tiny_lm.root.parent.parent, tiny_family()).root != tiny_lm.root
    other = tiny_family().model_copy(update={"ft_steps": 21})
    assert LMZoo(0, tiny_lm.root.parent.parent, other).root != tiny_lm.root


LM_SPACE = Path(__file__).parent.parent / "search_spaces" / "lm_skills.yaml"


def test_the_shipped_lm_space_names_the_built_family_through_the_lm_variable(tiny_lm, tmp_path, monkeypatch):
    from evomerge.search.space import check_searchable, load_space

    monkeypatch.setenv("EVOMERGE_CACHE", str(tiny_lm.root.parent.parent))
    monkeypatch.setattr(catalog, "DEFAULT_SPEC", tiny_family())
    space = load_space(LM_SPACE)
    with pytest.raises(ConfigError) as err:  # MASS routing layers of the 4-layer family: the tiny one has 2
        check_searchable(space)
    assert err.value.field == "recipe.mass.layer" and "model.layers.1.mlp.down_proj" in str(err.value)
    cut = tmp_path / "cut.yaml"
    cut.write_text(LM_SPACE.read_text().replace("model.layers.3.", "model.layers.0."))
    check_searchable(load_space(cut))  # every model an hf source, every task an item file, layerwise in place or routed
    assert {s.path for s in space.sources.values()} == {tiny_lm.model_dir(i) for i in tiny_lm.ids() if i != "lm-gpt2"}
    assert [t.name for t in space.tasks] == list(tiny_family().skills)
    assert len(space.tasks[0].item_set.split("val")) == tiny_family().held_out
    other = tmp_path / "lm_skills.yaml"  # no family built for seed 7
    other.write_text(LM_SPACE.read_text().replace("zoo: {seed: 0}", "zoo: {seed: 7}"))
    with pytest.raises(ConfigError) as err:
        load_space(other)
    assert err.value.field == "models[0].path" and "zoo build --family lm --seed 7" in str(err.value)


LM_STACK = LM_SPACE.with_name("lm_stack.yaml")


def test_the_shipped_stack_space_is_checked_against_the_familys_layers(tiny_lm, tmp_path, monkeypatch):
    """lm_stack.yaml's ranges reach layer 3 of the 4-layer family: on the 2-layer tiny family the search
    stops before any budget naming the field; with its layer genes cut to 2 layers it is searchable."""
    from evomerge.search.space import check_searchable, load_space

    monkeypatch.setenv("EVOMERGE_CACHE", str(tiny_lm.root.parent.parent))
    monkeypatch.setattr(catalog, "DEFAULT_SPEC", tiny_family())
    space = load_space(LM_STACK)
    assert {s.path for s in space.sources.values()} == {tiny_lm.model_dir(i) for i in tiny_lm.ids() if i != "lm-gpt2"}
    assert [o.key for o in space.objectives] == ["accuracy/mean", "added_params"]
    with pytest.raises(ConfigError, match=r"within the 2 layers of"):
        check_searchable(space)
    cut = tmp_path / "lm_stack.yaml"
    cut.write_text(LM_STACK.read_text().replace("high: 3}", "high: 1}").replace(": [0, 1, 2]}", ": [0]}"))
    check_searchable(load_space(cut))  # every model an hf source, every task an item file, the stack a view


def test_zoo_list_json_rows_of_the_family(tiny_lm, monkeypatch, capsys):
    from evomerge.cli import main

    monkeypatch.setenv("EVOMERGE_CACHE", str(tiny_lm.root.parent.parent))
    monkeypatch.setattr(catalog, "DEFAULT_SPEC", tiny_family())
    assert main(["zoo", "list", "--family", "lm", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == ["lm-base", "lm-reverse", "lm-sort", "lm-count", "lm-compare", "lm-gpt2"]
    assert rows[5]["architecture"] == "GPT2LMHeadModel"
    assert {k for r in rows for k in r} >= {"id", "architecture", "dataset", "condition", "params",
                                             "val_accuracy", "test_accuracy", "skills", "built"}
    assert rows[4]["test_accuracy"] == tiny_lm.record("lm-compare")["test_accuracy"]
    assert main(["zoo", "list", "--family", "lm"]) == 0  # the table: a test-accuracy column per skill
    table = capsys.readouterr().out
    assert "skill columns: test accuracy" in table and "member" in table and f"{tiny_lm.record('lm-compare')['test_accuracy']:.3f}" in table
    monkeypatch.setattr(catalog, "DEFAULT_SPEC", tiny_family().model_copy(update={"ft_steps": 5}))
    assert main(["zoo", "list", "--family", "lm", "--json"]) == 0
    assert not any(r["built"] for r in json.loads(capsys.readouterr().out))
