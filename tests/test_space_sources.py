"""Space files that name Hugging Face folders and item files: good ones load, and every bad input
exits 2 through the CLI naming the file and the field or line, before any model is trained."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from evomerge.cli import main
from evomerge.commands.search import item_ids
from evomerge.core.merge.task_arithmetic import TaskArithmeticParams
from evomerge.recipe.schema import parse_recipe
from evomerge.search.space import ItemTaskSpec, decode, dump_space, load_space, with_overrides
from tests.llama_fixtures import save_llama_family, tiny_llama_config
from tests.lm_tiny import char_tokenizer, tiny_bert_classifier

MC_ITEMS = [{"context": f"w{i} w{i + 1}", "choices": [f"w{i + 2}", f"w{i + 3}"], "gold": i % 2} for i in range(10)]
SPACE = {
    "name": "hf-pair",
    "models": [{"name": "base", "source": "hf", "path": "models/base"},
               {"name": "ft0", "source": "hf", "path": "models/ft0"},
               {"name": "ft1", "source": "hf", "path": "models/ft1"}],
    "tasks": [{"name": "mc", "items": "mc.jsonl", "format": {"type": "multiple_choice"}, "metric": "acc_norm"}],
    "recipe": {"kind": "weights", "base": "base", "models": ["ft0", "ft1"], "method": "task_arithmetic",
               "params": {"lam": {"gene": "lam"}}},
    "genes": [{"name": "lam", "type": "float", "low": 0.1, "high": 1.0}],
    "objectives": [{"name": "acc", "metric": "accuracy", "direction": "max"}],
    "engine": {"name": "random"},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """``base``, ``ft0``, ``ft1`` (one Llama family, tokenizers saved), ``wide`` (vocabulary 80),
    ``bert`` (another architecture), ``untokenized`` (no tokenizer), ``truncated`` (a cut shard),
    ``empty`` (no config.json)."""
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("models")
    save_llama_family(root, n=2)
    save_llama_family(root / "other", n=0, vocab_size=80)
    (root / "other" / "base").rename(root / "wide")
    bert, _ = tiny_bert_classifier()
    bert.save_pretrained(root / "bert")
    char_tokenizer(bos=False).save_pretrained(root / "bert")
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(root / "untokenized")
    shutil.copytree(root / "ft1", root / "truncated")
    shard = root / "truncated" / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    (root / "empty").mkdir()
    return root


def write_space(tmp_path: Path, models: Path, edit=lambda d: None, items: list[str] | None = None) -> Path:
    """The space (edited) in ``tmp_path`` beside ``mc.jsonl`` and a link to the models."""
    (tmp_path / "models").symlink_to(models)
    lines = items if items is not None else [json.dumps(r) for r in MC_ITEMS]
    (tmp_path / "mc.jsonl").write_text("\n".join(lines) + "\n")
    data = copy.deepcopy(SPACE)
    edit(data)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def model(data: dict, i: int, **fields) -> None:
    data["models"][i].update(fields)


def task(data: dict, **fields) -> None:
    data["tasks"][0].update(fields)


def test_space_naming_two_llama_folders_with_an_item_file_loads(tmp_path, models):
    path = write_space(tmp_path, models)
    space = load_space(path)
    assert space.model_names == ["base", "ft0", "ft1"] and set(space.sources) == {"base", "ft0", "ft1"}
    assert space.models[1]["path"] == str((tmp_path / "models" / "ft0").absolute())
    mc = space.tasks[0]
    assert isinstance(mc, ItemTaskSpec) and len(mc.item_set) == 10 and mc.format["type"] == "multiple_choice"
    ids = item_ids(space, "val")
    assert list(ids) == [("mc", "val")] and list(ids[("mc", "val")]) == [i.id for i in mc.item_set if i.split == "val"]
    assert 0 < len(ids[("mc", "val")]) < 10
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    (elsewhere / "space.yaml").write_text(dump_space(space))  # what a run folder keeps: absolute paths
    assert dump_space(load_space(elsewhere / "space.yaml")) == dump_space(space)
    assert with_overrides(space, **{"budget.evaluations": 5}).budget.evaluations == 5  # what --budget does


def test_format_file_and_layerwise_recipe_load(tmp_path, models):
    def edit(d: dict) -> None:
        task(d, format="fmt.yaml", metric="acc", seed=3, val_fraction=0.3)
        d["recipe"] = {"kind": "layerwise", "base": "base", "models": ["ft0", "ft1"], "method": "ties",
                       "groups": [{"attention": {"density": {"gene": "lam"}}}, {"mlp": {"density": 0.5}}]}

    path = write_space(tmp_path, models, edit)
    (tmp_path / "fmt.yaml").write_text("format: {type: multiple_choice, target_delimiter: ' '}\n")
    space = load_space(path)
    assert space.tasks[0].format["target_delimiter"] == " "
    assert sum(i.split == "val" for i in space.tasks[0].item_set) == 3


def test_val_items_keeps_the_first_validation_items_and_every_test_item(tmp_path, models):
    items = [json.dumps({**r, "split": "val" if i < 6 else "test"}) for i, r in enumerate(MC_ITEMS)]
    space = load_space(write_space(tmp_path, models, lambda d: task(d, val_items=4), items))
    mc = space.tasks[0].item_set
    assert [i.fields["context"] for i in mc.split("val")] == [f"w{i} w{i + 1}" for i in range(4)]
    assert len(mc.split("test")) == 4 and list(item_ids(space, "val")[("mc", "val")]) == list(mc.split("val").ids)


def grid_recipe(d: dict, shape: list[int]) -> None:
    """A layer-wise grid over 2 groups x (attention, mlp) whose per-model weights are array gene ``w``."""
    d["recipe"] = {"kind": "layerwise", "base": "base", "models": ["ft0", "ft1"], "method": "task_arithmetic",
                   "groups": 2, "filters": ["attention", "mlp"], "grid": {"weights": {"gene": "w"}},
                   "params": {"lam": {"gene": "lam"}}}
    d["genes"].append({"name": "w", "type": "float", "low": 0.1, "high": 0.9, "shape": shape})


def test_an_array_gene_feeds_a_layerwise_grid(tmp_path, models):
    space = load_space(write_space(tmp_path, models, lambda d: grid_recipe(d, [2, 2, 2])))
    assert [g.name for g in space.scalar_genes][:3] == ["lam", "w[0,0,0]", "w[0,0,1]"]
    assert len(space.scalar_genes) == 9
    genome = {"lam": 0.5, **{f"w[{g},{f},{t}]": round(0.1 * (1 + 4 * g + 2 * f + t), 1)
                             for g in range(2) for f in range(2) for t in range(2)}}
    recipe = decode(space, genome)
    assert recipe["grid"]["weights"] == [[[0.1, 0.2], [0.3, 0.4]], [[0.5, 0.6], [0.7, 0.8]]]
    resolve = parse_recipe(recipe).resolver(4)  # the family has 4 layers: group 1 holds layers 2 and 3
    assert resolve("model.layers.3.self_attn.q_proj.weight") == TaskArithmeticParams(lam=0.5, weights=[0.5, 0.6])
    assert resolve("model.layers.0.mlp.up_proj.weight") == TaskArithmeticParams(lam=0.5, weights=[0.3, 0.4])
    assert resolve("model.layers.0.input_layernorm.weight") is None  # rest is not in the grid's filters


def test_vocabulary_mismatch_is_accepted_with_backbone_only(tmp_path, models):
    space = load_space(write_space(tmp_path, models, lambda d: (model(d, 2, path="models/wide"),
                                                                 d.update(backbone_only=True))))
    assert space.backbone_only


BAD = {
    "missing-directory": (lambda d: model(d, 1, path="models/nowhere"), "models[1].path",
                          "an existing Hugging Face model directory"),
    "no-config": (lambda d: model(d, 1, path="models/empty"), "models[1].path", "it has no config.json"),
    "truncated-shard": (lambda d: model(d, 2, path="models/truncated"), "models[2]", "truncated or corrupt"),
    "unknown-source": (lambda d: model(d, 0, source="s3"), "models[0].source", "a model source (hf, torch, zoo)"),
    "duplicate-name": (lambda d: model(d, 1, name="base"), "models[1].name", "a unique name"),
    "no-tokenizer": (lambda d: model(d, 1, path="models/untokenized"), "models[1].path",
                     "a directory with a tokenizer"),
    "zoo-model-for-text": (lambda d: d["models"].append("mlp-digits"), "models[3]", "task 'mc' (multiple_choice)"),
    "architectures": (lambda d: model(d, 1, path="models/bert"), "recipe.models[0]", "different architectures"),
    "vocabularies": (lambda d: model(d, 2, path="models/wide"), "recipe.models[1]", "backbone_only: true"),
    "array-gene-grid-shape": (lambda d: grid_recipe(d, [2, 2, 3]), "recipe.grid.weights[0][0]",
                              "a list of 2 values (one per model), got [0.1, 0.1, 0.1] (when every element of gene 'w' is 0.1)"),
    "array-gene-grid-groups": (lambda d: grid_recipe(d, [3, 2, 2]), "recipe.grid.weights",
                               "a list of 2 entries (one per layer group)"),
    "backbone-only-not-bool": (lambda d: d.update(backbone_only="yes"), "backbone_only", "a valid boolean"),
    "missing-item-file": (lambda d: task(d, items="nothing.jsonl"), "tasks[0].items", "an existing item file"),
    "unknown-format": (lambda d: task(d, format={"type": "ranking"}), "tasks[0].format.type",
                       "one of classification, multiple_choice, generation"),
    "format-key-typo": (lambda d: task(d, format={"type": "multiple_choice", "contxt": "q"}),
                        "tasks[0].format.contxt", "no such field"),
    "missing-format-file": (lambda d: task(d, format="nofmt.yaml"), "tasks[0].format", "an existing YAML file"),
    "metric": (lambda d: task(d, metric="exact_match"), "tasks[0].metric", "(acc, acc_norm)"),
    "val-fraction": (lambda d: task(d, val_fraction=2), "tasks[0].val_fraction", "less than or equal to 1"),
    "val-items": (lambda d: task(d, val_items=0), "tasks[0].val_items", "greater than or equal to 1"),
}


def run_search(space: Path, tmp_path: Path, capsys, monkeypatch) -> str:
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path / "cache"))
    capsys.readouterr()
    code = main(["search", "--space", str(space), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache" / "zoo").exists()  # nothing spent
    return err


@pytest.mark.parametrize("case", list(BAD))
def test_bad_space_exits_2_naming_file_and_field(tmp_path, models, case, capsys, monkeypatch):
    edit, field, expected = BAD[case]
    space = write_space(tmp_path, models, edit)
    err = run_search(space, tmp_path, capsys, monkeypatch)
    assert f"{space}: field '{field}'" in err and expected in err, err


@pytest.mark.parametrize(("lines", "edit", "where", "expected"), [
    ([json.dumps(MC_ITEMS[0]), '{"context": "w1", "choices": ['], lambda d: None, "mc.jsonl:2", "one JSON object"),
    ([json.dumps(MC_ITEMS[0])], lambda d: task(d, format={"type": "multiple_choice", "context": "question"}),
     "mc.jsonl:1: field 'question'", "the format block names this field"),
])
def test_bad_item_file_exits_2_naming_file_and_line(tmp_path, models, lines, edit, where, expected, capsys,
                                                      monkeypatch):
    err = run_search(write_space(tmp_path, models, edit, items=lines), tmp_path, capsys, monkeypatch)
    assert where in err and expected in err, err


def test_space_mixing_sources_with_built_in_tasks_exits_2_before_any_evaluation(tmp_path, models, capsys, monkeypatch):
    def edit(d: dict) -> None:
        d["tasks"].append({"name": "digits", "dataset": "digits"})

    space = write_space(tmp_path, models, edit)
    err = run_search(space, tmp_path, capsys, monkeypatch)
    assert "field 'tasks[1]'" in err and "an item-file task" in err, err
    assert not (tmp_path / "run").exists()
    assert main(["probe", "--space", str(space), "--out", str(tmp_path / "probe")]) == 2
    assert "probe takes zoo model ids" in capsys.readouterr().err


def test_zoo_ids_and_zoo_source_entries_load_side_by_side(tmp_path, models):
    def edit(d: dict) -> None:
        d["models"] = ["base-mnist1d", {"name": "reverse", "source": "zoo", "id": "ft-mnist1d-reverse"}]
        d["tasks"] = [{"name": "reverse", "dataset": "mnist1d", "condition": "reverse"}]
        d["recipe"].update(base="base-mnist1d", models=["reverse"])

    space = load_space(write_space(tmp_path, models, edit), known_models={"base-mnist1d"})
    assert space.model_names == ["base-mnist1d", "reverse"] and space.sources["reverse"].kind == "zoo"
    assert not space.builtin_only
