"""End to end over Hugging Face folders: search a layer-wise merge of two fine-tunes on item files,
export the winner, load it with transformers alone in a fresh process, and get the per-item answers
the search recorded, exactly. A causal-LM pair (multiple choice + generation) and an encoder
classifier pair (text classification); and a layer stack over the causal-LM pair (built as views)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evomerge.cli import main
from examples.skill_pair import SPACE
from tests.hf_skills import encoder_pair, lm_pair

LM_TASKS = SPACE["tasks"]
ENCODER_TASKS = [{"name": "cls", "items": "cls.jsonl", "metric": "acc", "format": {"type": "classification", "input": "text"}}]

#: Loads the export with transformers alone, then scores the val items with evomerge's scorers.
RESCORE = r"""
import json, sys
import torch, transformers
torch.set_num_threads(1)
folder, auto, tasks = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
model = getattr(transformers, auto).from_pretrained(folder).eval()
tok = transformers.AutoTokenizer.from_pretrained(folder)
assert "evomerge" not in sys.modules
from evomerge.items import load_items, make_scorer
out = {}
for t in tasks:
    items = load_items(t["items"], t["format"], seed=0, val_fraction=0.5).split("val")
    out[t["name"]] = make_scorer(items).score(model, items, tokenizer=tok).answers(t["metric"]).astype(int).tolist()
print(json.dumps(out))
"""


def write_space(root: Path, models: list[str], tasks: list[dict], **fields) -> Path:
    """The worked example's space (layer-wise TIES with an array gene of densities, or TSV-M) over
    ``base`` and ``models`` on ``tasks``, at a budget of 6; ``fields`` replace the space's (a recipe and its genes)."""
    space = {**SPACE, "name": root.name, "models": [{"name": m, "source": "hf", "path": m} for m in ["base", *models]],
             "tasks": tasks, "recipe": {**SPACE["recipe"], "models": models},
             "engine": {"name": "optuna_tpe", "population": 4}, "budget": {"evaluations": 6}, **fields}
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def recorded_answers(run: Path, candidate: str) -> dict[str, list[int]]:
    rows = [json.loads(line) for line in (run / "responses.jsonl").read_text().splitlines()]
    return {r["task"]: [int(c) for c in r["correct"]] for r in rows if r["id"] == candidate and r["split"] == "val"}


def search_export_reload(root: Path, models: list[str], tasks: list[dict], auto: str, **fields) -> tuple[dict, dict, dict]:
    """``evomerge search`` then ``evomerge export`` (in this process), then the export re-scored in a fresh one."""
    space, run, out = write_space(root, models, tasks, **fields), root / "run", root / "export"
    assert main(["search", "--space", str(space), "--run-dir", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluations"] == 6 and summary["failed"] == 0
    assert main(["export", str(run), "--out", str(out), "--no-progress"]) == 0
    tasks_abs = [{**t, "items": str(root / t["items"])} for t in tasks]
    proc = subprocess.run([sys.executable, "-c", RESCORE, str(out), auto, json.dumps(tasks_abs)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1]), recorded_answers(run, summary["best"]["id"]), summary["best"]


@pytest.fixture(scope="module")
def lm_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_pair")
    lm_pair(root, steps=60)
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path / "cache"))


def test_causal_lm_pair_search_export_reload_gives_the_recorded_answers(lm_root):
    reloaded, recorded, best = search_export_reload(lm_root, ["up", "down"], LM_TASKS, "AutoModelForCausalLM")
    assert set(recorded) == {"mc", "gen"} and all(len(v) == 12 for v in recorded.values())
    assert reloaded == recorded
    assert best["recipe"]["kind"] == "layerwise" and best["recipe"]["method"] in ("ties", "tsv")


def test_encoder_classifier_pair_search_export_reload_gives_the_recorded_answers(tmp_path):
    encoder_pair(tmp_path)
    reloaded, recorded, _ = search_export_reload(tmp_path, ["digit", "vowel"], ENCODER_TASKS,
                                                 "AutoModelForSequenceClassification")
    assert set(recorded) == {"cls"} and len(recorded["cls"]) == 16
    assert reloaded == recorded


#: Three one-layer slots over the pair and their base (2 layers each), each slot's model, layer and scale searched.
STACK = {"recipe": {"kind": "stack", "slots": [{"model": {"gene": f"model{i}"}, "start": {"gene": f"start{i}"}, "length": 1,
                                                "scale": {"gene": f"scale{i}"}} for i in range(3)]},
         "genes": [g for i in range(3) for g in ({"name": f"model{i}", "type": "categorical", "choices": ["base", "up", "down"]},
                                                 {"name": f"start{i}", "type": "int", "low": 0, "high": 1},
                                                 {"name": f"scale{i}", "type": "float", "low": 0.5, "high": 1.5})],
         "objectives": [{"name": "acc", "metric": "accuracy", "direction": "max"},
                        {"name": "added_params", "metric": "added_params", "direction": "min"}]}


def linked(lm_root: Path, root: Path) -> Path:
    """``root`` holding links to the pair's models and item files (a space and run of its own)."""
    root.mkdir()
    for name in ("base", "up", "down", "mc.jsonl", "gen.jsonl"):
        (root / name).symlink_to(lm_root / name)
    return root


def test_a_layer_stack_searched_over_views_exports_a_model_with_the_recorded_answers(lm_root, tmp_path):
    """Every candidate a view over the three resident sources; the export (mergekit passthrough) answers alike."""
    root = linked(lm_root, tmp_path / "stack")
    reloaded, recorded, best = search_export_reload(root, ["up", "down"], LM_TASKS, "AutoModelForCausalLM", **STACK)
    assert best["recipe"]["kind"] == "stack" and len(best["recipe"]["slots"]) == 3
    assert reloaded == recorded and all(len(v) == 12 for v in recorded.values())
    from safetensors.torch import load_file
    from transformers import AutoConfig

    exported = sum(t.numel() for f in (root / "export").glob("*.safetensors") for t in load_file(f).values())
    assert AutoConfig.from_pretrained(root / "export").num_hidden_layers == 3 and best["test_metrics"]["params"] == exported


def test_a_stack_whose_ranges_overrun_a_source_exits_2_naming_the_field(lm_root, tmp_path, capsys):
    slots = [{"model": "up", "start": {"gene": "start"}, "length": 2}]
    space = write_space(linked(lm_root, tmp_path / "stack"), ["up", "down"], LM_TASKS,
                        recipe={"kind": "stack", "slots": slots}, genes=[{"name": "start", "type": "int", "low": 0, "high": 1}])
    assert main(["search", "--space", str(space), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "recipe.slots[0].layer_range': expected a range within the 2 layers of 'up'" in capsys.readouterr().err
