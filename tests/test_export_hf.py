"""`evomerge export` of a run over Hugging Face sources: the same tensors as `evomerge merge` of the recipe
over folders, a folder transformers loads without evomerge, a mergekit.yaml that mergekit-yaml turns into
the same (or, for TIES, the documented near-same) tensors, and `evomerge evaluate` reproducing the record."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from evomerge.cli import main
from evomerge.io.tensors import TensorSource
from evomerge.recipe.schema import parse_recipe
from evomerge.search.run_folder import RunFolder
from evomerge.search.space import dump_space, load_space
from evomerge.io.files import file_sha256
from tests.llama_fixtures import save_llama_family

NAMES = ("base", "ft0", "ft1")
MC_ITEMS = [{"context": f"w{i} w{i + 1}", "choices": [f"w{i + 2}", f"w{i + 7}"], "gold": i % 2} for i in range(24)]
RECIPES = {
    "task_arithmetic": {"kind": "weights", "base": "base", "models": ["ft0", "ft1"], "method": "task_arithmetic",
                        "params": {"lam": 0.8, "weights": [0.3, 0.9]}},
    "layerwise_ties": {"kind": "layerwise", "base": "base", "models": ["ft0", "ft1"], "method": "ties", "params": {"lam": 1.0},
                       "groups": [{"attention": {"density": 0.3}, "mlp": {"density": 0.7}, "rest": {}},
                                  {"mlp": {"density": 0.5, "lam": 0.9}}]},
    "layerwise_average": {"kind": "layerwise", "base": "base", "models": ["ft0", "ft1"], "method": "average",
                          "groups": [{"attention": {"weights": [1.0, 2.0]}, "mlp": {}, "rest": {}}, {"mlp": {"weights": [3.0, 1.0]}}]},
    "stack": {"kind": "stack", "slots": [{"model": "ft0", "layer_range": [0, 3]}, {"model": "ft1", "layer_range": [2, 4], "scale": 0.5}]},
    "tsv": {"kind": "weights", "base": "base", "models": ["ft0", "ft1"], "method": "tsv", "params": {"alpha": 0.7}},
}  # fmt: skip


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("llama")
    save_llama_family(root, n=2)
    return root


def read_folder(path: Path) -> dict[str, torch.Tensor]:
    src = TensorSource(path)
    return {k: src.get(k) for k in src.names()}


def make_run(where: Path, models: Path, recipe: dict, test_metrics: dict | None = None) -> Path:
    """A finished run folder over the hf sources in ``models`` whose best candidate is ``recipe``."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC_ITEMS))
    space = {
        "name": "hf-export", "models": [{"name": n, "source": "hf", "path": str(models / n)} for n in NAMES],
        "tasks": [{"name": "mc", "items": "mc.jsonl", "format": {"type": "multiple_choice"}, "metric": "acc_norm"}],
        "recipe": {"kind": "weights", "base": "base", "models": ["ft0", "ft1"], "method": "task_arithmetic",
                   "params": {"lam": {"gene": "lam"}}},
        "genes": [{"name": "lam", "type": "float", "low": 0.1, "high": 1.0}],
        "objectives": [{"name": "acc", "metric": "accuracy", "direction": "max"}], "engine": {"name": "random"},
    }  # fmt: skip
    (where / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    run = RunFolder(where / "run")
    run.create(dump_space(load_space(where / "space.yaml")))
    best = {"id": "c7", "recipe": recipe, "objectives": {"acc": 0.5}, "test_metrics": test_metrics,
            "full_test_accuracy": (test_metrics or {}).get("accuracy/mean")}
    run.write_summary({"space": "hf-export", "best": best, "pareto": [best]})
    return run.path


def export(run: Path, out: Path, *extra: str) -> int:
    return main(["export", str(run), "--out", str(out), "--no-progress", *extra])


def over_folders(recipe: dict, models: Path) -> dict:
    return parse_recipe(recipe).with_models({n: str(models / n) for n in NAMES}).model_dump(mode="json")


@pytest.mark.parametrize("name", ["task_arithmetic", "layerwise_ties", "stack"])
def test_export_equals_merge_of_the_recipe_over_folders(family, tmp_path, name):
    run = make_run(tmp_path, family, RECIPES[name])
    assert export(run, tmp_path / "out", "--max-shard-size", "40KB") == 0
    paths = over_folders(RECIPES[name], family)
    (tmp_path / "r.json").write_text(json.dumps(paths))
    assert main(["merge", str(tmp_path / "r.json"), "--out", str(tmp_path / "merged"), "--no-progress"]) == 0
    ours, merged = read_folder(tmp_path / "out"), read_folder(tmp_path / "merged")
    assert set(ours) == set(merged) and all(torch.equal(ours[k], merged[k]) for k in merged)

    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    shards = sorted(f.name for f in out.glob("*.safetensors"))
    assert len(shards) > 1 and manifest["shards_sha256"] == {f: file_sha256(out / f) for f in shards}
    assert manifest["format"] == "evomerge-hf-export/1" and manifest["candidate"] == "c7" and manifest["space"] == "hf-export"
    assert manifest["recipe"] == parse_recipe(RECIPES[name]).model_dump(mode="json") and manifest["recipe_paths"] == paths
    assert json.loads((out / "recipe.json").read_text()) == paths
    used = {m for _, m in parse_recipe(RECIPES[name]).model_refs()}
    assert [s["name"] for s in manifest["sources"]] == [n for n in NAMES if n in used]
    for s in manifest["sources"]:
        assert s["path"] == str(family / s["name"]) and s["architecture"] == "LlamaForCausalLM"
        assert s["weights_sha256"] == {"model.safetensors": file_sha256(family / s["name"] / "model.safetensors")}
    assert manifest["fitness"] == {"objectives": {"acc": 0.5}, "test_metrics": None, "full_test_accuracy": None}
    assert {"evomerge", "torch", "transformers", "safetensors"} <= set(manifest["versions"])
    assert not list(tmp_path.glob(".out.partial*"))


def test_export_loads_with_transformers_alone(family, tmp_path):
    run = make_run(tmp_path, family, RECIPES["layerwise_ties"])
    assert export(run, tmp_path / "out", "--dtype", "bfloat16") == 0
    code = ("import sys, torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'out')!r}).eval()\n"
            f"ids = AutoTokenizer.from_pretrained({str(tmp_path / 'out')!r})('w1 w5 w9 w3', return_tensors='pt').input_ids\n"
            "with torch.no_grad():\n    torch.save(m(input_ids=ids).logits, sys.argv[1])\n"
            "assert not any(k.startswith('evomerge') for k in sys.modules)\n")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "logits.pt")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from transformers import AutoModelForCausalLM

    from tests.llama_fixtures import tiny_tokenizer

    expect = read_folder(tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert all(v.dtype == torch.bfloat16 for v in expect.values()) and model.dtype == torch.bfloat16
    ids = tiny_tokenizer(64)("w1 w5 w9 w3", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "logits.pt"), model(input_ids=ids).logits)


@pytest.fixture(scope="module")
def mergekit_runs(family, tmp_path_factory):
    """Each recipe exported, and mergekit-yaml (its own entry point, one process) run on the mergekit.yaml written."""
    pytest.importorskip("mergekit")
    work = tmp_path_factory.mktemp("mergekit")
    jobs = []
    for name in ("task_arithmetic", "layerwise_average", "layerwise_ties", "stack"):
        assert export(make_run(work / name, family, RECIPES[name]), work / name / "out") == 0
        jobs.append((str(work / name / "out" / "mergekit.yaml"), str(work / name / "mk")))
    code = ("import sys, json\nfrom mergekit.scripts.run_yaml import main\n"
            "for cfg, out in json.loads(sys.argv[1]):\n    main([cfg, out, '--random-seed', '0'], standalone_mode=False)\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(jobs)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def differences(work: Path, name: str) -> tuple[float, int, int]:
    """(max abs diff, differing entries, merged tensors) between the export and mergekit's build of its yaml."""
    ours, theirs = read_folder(work / name / "out"), read_folder(work / name / "mk")
    assert set(ours) == set(theirs)
    diff = {k: (ours[k].float() - theirs[k].float()).abs() for k in ours}
    return max(d.max().item() for d in diff.values()), sum(int((d > 0).sum()) for d in diff.values()), len(diff)


@pytest.mark.parametrize("name", ["task_arithmetic", "layerwise_average", "stack"])
def test_mergekit_yaml_builds_the_same_tensors(mergekit_runs, name):
    assert differences(mergekit_runs, name)[0] <= 1e-6
    manifest = json.loads((mergekit_runs / name / "out" / "manifest.json").read_text())
    assert manifest["mergekit"]["file"] == "mergekit.yaml"


def test_mergekit_ties_differs_only_at_the_trim_cut(mergekit_runs):
    """Documented: mergekit keeps floor(density * n) entries per update, evomerge ceil: at most one entry per
    tensor and model is kept by one and not the other, so at most that many outputs differ."""
    worst, differing, tensors = differences(mergekit_runs, "layerwise_ties")
    assert 0 < differing <= 2 * tensors and worst < 0.2
    text = (mergekit_runs / "layerwise_ties" / "out" / "mergekit.yaml").read_text()
    assert text.startswith("# mergekit-yaml") and "floor(density * numel)" in text
    config = yaml.safe_load(text)
    assert [s["sources"][0]["layer_range"] for s in config["slices"]] == [[0, 2], [2, 4]]
    assert config["slices"][0]["sources"][0]["parameters"]["density"] == [
        {"filter": ".self_attn.", "value": 0.3}, {"filter": ".mlp.", "value": 0.7}, {"value": 0.2}]


def test_no_mergekit_yaml_where_mergekit_has_no_method(family, tmp_path):
    assert export(make_run(tmp_path, family, RECIPES["tsv"]), tmp_path / "out") == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert not (tmp_path / "out" / "mergekit.yaml").exists()
    assert manifest["mergekit"]["file"] is None and "TSV-M" in manifest["mergekit"]["reason"]


def test_a_missing_source_folder_exits_2_naming_it(family, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(family, models)
    run = make_run(tmp_path, models, RECIPES["task_arithmetic"])
    shutil.rmtree(models / "ft1")
    assert export(run, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(models / "ft1") in err and "models[2].path" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def score_test_split(folder: Path, run: Path) -> float:
    from evomerge.items import make_scorer
    from evomerge.sources import open_source

    task = RunFolder(run).load_space().tasks[0]
    items = task.item_set.split("test")
    source = open_source({"source": "hf", "path": str(folder)})
    return make_scorer(items).score(source.load_model(), items, tokenizer=source.tokenizer()).accuracy(task.metric)


def test_evaluate_reproduces_the_record_and_refuses_a_changed_shard(family, tmp_path, capsys):
    recipe = RECIPES["task_arithmetic"]
    (tmp_path / "r.json").write_text(json.dumps(over_folders(recipe, family)))
    assert main(["merge", str(tmp_path / "r.json"), "--out", str(tmp_path / "merged"), "--no-progress"]) == 0
    probe = make_run(tmp_path / "probe", family, recipe)
    acc = score_test_split(tmp_path / "merged", probe)
    n = sum(i.split == "test" for i in RunFolder(probe).load_space().tasks[0].item_set)
    for wrong, (metric, code) in enumerate([(acc, 0), ((round(acc * n) + 1) % (n + 1) / n, 1)]):
        run = make_run(tmp_path / f"r{wrong}", family, recipe, {"accuracy/mc": metric, "accuracy/mean": metric})
        assert export(run, tmp_path / f"out{wrong}") == 0
        capsys.readouterr()
        assert main(["evaluate", str(tmp_path / f"out{wrong}")]) == code
        out = capsys.readouterr()
        row = json.loads(out.out)[0]
        assert row["task"] == "mc" and row["items"] == n and row["accuracy"] == acc and row["matches_record"] is (code == 0)
        assert ("differs from the recorded" in out.err) is (code == 1)
    shard = tmp_path / "out0" / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 1
    shard.write_bytes(bytes(data))
    assert main(["evaluate", str(tmp_path / "out0")]) == 2
    err = capsys.readouterr().err
    assert str(shard) in err and "sha256" in err and "Traceback" not in err


def test_a_failure_while_writing_the_manifest_leaves_no_folder(family, tmp_path, monkeypatch):
    import evomerge.search.hf_export as hf_export

    run = make_run(tmp_path, family, RECIPES["task_arithmetic"])
    monkeypatch.setattr(hf_export, "MANIFEST", "no/such/folder/manifest.json")  # the write fails after every shard
    with pytest.raises(FileNotFoundError):
        export(run, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial*"))
