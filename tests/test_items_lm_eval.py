"""Agreement with lm-eval-harness: on a tiny causal LM, evomerge's per-item ``acc``, ``acc_norm`` and
``exact_match`` equal lm-eval's ``--log_samples`` output on the same items, item for item (100%).

lm-eval runs as its CLI, offline, on the saved model directory with local task YAMLs over local JSONL.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from evomerge.items import load_items, make_scorer
from tests.lm_tiny import tiny_llama

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow  # lm-eval's own start-up dominates (~40 s)

MC = {"type": "multiple_choice", "context": "question", "choices": "options", "gold": "answer"}
GEN = {"type": "generation", "prompt": "prompt", "target": "target", "until": [".", "\n"], "max_gen_toks": 10,
       "normalize": {"ignore_case": True, "ignore_punctuation": True}}
GEN_RE = {**GEN, "filter": {"regex": "[a-z]+", "group_select": 0, "fallback": "[none]"}, "normalize": {}}

WORDS = ["cat", "dog", "a", "blue sky", "seventeen", "no", "Yes!", "the quick brown fox", "42", "x y", "zebra", "moon"]


def mc_docs(rng: random.Random, n: int) -> list[dict]:
    docs = []
    for i in range(n):
        k = rng.randint(2, 5)
        options = rng.sample(WORDS, k)
        question = f"Q{i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 6)))
        if i % 5 == 1:
            question += " "  # trailing space moves into the continuation
        if i == 3:
            question = ""  # empty context: the BOS token stands for it
        gold = rng.randrange(k)
        # a gold given as the choice's text (lm-eval looks it up); not a numeric text, which the datasets
        # library would decode to a number in a column that mixes texts and integers
        by_text = i % 4 == 2 and not options[gold].isdigit()
        docs.append({"question": question, "options": options, "answer": options[gold] if by_text else gold})
    return docs


TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
"""


def write_tasks(tmp: Path) -> Path:
    tasks = tmp / "tasks"
    tasks.mkdir()
    (tasks / "mc.yaml").write_text(TASK.format(name="evm_mc", data=tmp / "mc.jsonl") + """output_type: multiple_choice
doc_to_text: question
doc_to_choice: options
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    gen = """output_type: generate_until
doc_to_text: prompt
doc_to_target: target
generation_kwargs:
  until: [".", "\\n"]
  max_gen_toks: 10
  do_sample: false
"""
    (tasks / "gen.yaml").write_text(TASK.format(name="evm_gen", data=tmp / "gen.jsonl") + gen + """metric_list:
  - metric: exact_match
    ignore_case: true
    ignore_punctuation: true
""")
    (tasks / "gen_re.yaml").write_text(TASK.format(name="evm_gen_re", data=tmp / "gen_re.jsonl") + gen + """filter_list:
  - name: first_word
    filter:
      - function: regex
        regex_pattern: "[a-z]+"
        group_select: 0
        fallback: "[none]"
      - function: take_first
metric_list:
  - metric: exact_match
""")
    return tasks


def write_jsonl(path: Path, docs: list[dict]) -> None:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))


def samples(out: Path, task: str) -> list[dict]:
    (path,) = out.rglob(f"samples_{task}_[0-9]*.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return sorted(rows, key=lambda r: r["doc_id"])


@pytest.fixture(scope="module")
def agreement(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm_eval")
    model, tok = tiny_llama(tmp / "model", seed=1)
    rng = random.Random(0)
    write_jsonl(tmp / "mc.jsonl", mc_docs(rng, 30))
    prompts = [f"{rng.choice(WORDS)} {i} " + "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(1, 12))) for i in range(24)]
    # targets: the model's own continuation for some items (in another case, with punctuation), others wrong
    write_jsonl(tmp / "gen.jsonl", [{"prompt": p, "target": "?"} for p in prompts])
    draft = load_items(tmp / "gen.jsonl", GEN)
    raw = [o.text for o in make_scorer(draft).score(model, draft, tokenizer=tok, batch_size=5).outputs]
    variants = [lambda s: s, lambda s: s.upper() + "!", lambda s: "wrong", lambda s: s[:-1] if len(s) > 1 else "zz"]
    write_jsonl(tmp / "gen.jsonl", [{"prompt": p, "target": variants[i % 4](r)} for i, (p, r) in enumerate(zip(prompts, raw))])
    first = [w[0] if (w := __import__("re").findall("[a-z]+", r)) else "[none]" for r in raw]
    write_jsonl(tmp / "gen_re.jsonl", [{"prompt": p, "target": f if i % 3 else "nope"} for i, (p, f) in enumerate(zip(prompts, first))])
    tasks = write_tasks(tmp)
    lm_eval = shutil.which("lm_eval", path=str(Path(os.sys.executable).parent)) or "lm_eval"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp / "hf"),
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [lm_eval, "--model", "hf", "--model_args", f"pretrained={tmp / 'model'},dtype=float32", "--include_path", str(tasks),
         "--tasks", "evm_mc,evm_gen,evm_gen_re", "--log_samples", "--output_path", str(tmp / "out"), "--device", "cpu",
         "--batch_size", "4"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = {}
    for name, path, fmt in (("evm_mc", "mc.jsonl", MC), ("evm_gen", "gen.jsonl", GEN), ("evm_gen_re", "gen_re.jsonl", GEN_RE)):
        items = load_items(tmp / path, fmt)
        ours[name] = (items, make_scorer(items).score(model, items, tokenizer=tok, batch_size=8))
    return {name: (items, result, samples(tmp / "out", name)) for name, (items, result) in ours.items()} | {"out": tmp / "out"}


def test_multiple_choice_acc_and_acc_norm_equal_lm_evals(agreement):
    items, result, logged = agreement["evm_mc"]
    assert len(logged) == len(items) == 30
    assert [r["doc_hash"] for r in logged] == list(items.ids)
    for metric in ("acc", "acc_norm"):
        theirs = np.array([r[metric] == 1.0 for r in logged])
        assert np.array_equal(result.correct[metric], theirs), metric
        assert 0 < theirs.sum() < len(theirs)  # both answers occur
    assert not np.array_equal(result.correct["acc"], result.correct["acc_norm"])  # the length normalisation matters
    for r, out in zip(logged, result.outputs):
        np.testing.assert_allclose(out.loglikelihoods, [float(x[0]) for x in r["filtered_resps"]], rtol=0, atol=1e-5)
        assert [str(g) for g in out.greedy] == [x[1] for x in r["filtered_resps"]]


@pytest.mark.parametrize("task", ["evm_gen", "evm_gen_re"])
def test_generation_exact_match_equals_lm_evals(agreement, task):
    items, result, logged = agreement[task]
    assert [r["doc_hash"] for r in logged] == list(items.ids)
    assert [o.filtered for o in result.outputs] == [r["filtered_resps"][0] for r in logged]
    assert [o.text for o in result.outputs] == [r["resps"][0][0] for r in logged]
    theirs = np.array([r["exact_match"] == 1.0 for r in logged])
    assert np.array_equal(result.correct["exact_match"], theirs)
    assert 0 < theirs.sum() < len(theirs)


def test_loglikelihoods_equal_hflm_in_process_with_truncation():
    """Both evaluation paths (shared context, whole requests) against ``HFLM.loglikelihood`` in-process,
    on a model whose 24 positions force lm-eval's left truncation for the long requests."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from evomerge.items.scorers.lm import CausalLM
    from evomerge.items.scorers.multiple_choice import loglikelihoods

    model, tok = tiny_llama(seed=2, max_positions=24)
    rng = random.Random(1)
    requests = [("".join(rng.choice("abc de") for _ in range(rng.randint(0, 30))), " " + rng.choice(WORDS)) for _ in range(40)]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu")
    theirs = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)], disable_tqdm=True)
    ours = CausalLM(model, tok, "cpu")
    assert any(len(c) + len(t) > 25 for c, t in (ours.encode_pair(*r) for r in requests))
    def agree(got, expected):  # log-likelihoods to 1e-5, is_greedy exactly
        np.testing.assert_allclose([ll for ll, _ in got], [ll for ll, _ in expected], rtol=0, atol=1e-5)
        assert [g for _, g in got] == [bool(g) for _, g in expected]

    agree(loglikelihoods(ours, requests, 8), theirs)
    short = [r for r in requests if sum(map(len, ours.encode_pair(*r))) <= 25]
    short_theirs = [t for r, t in zip(requests, theirs) if r in short]
    agree(loglikelihoods(ours, short, 8, share_context=True), short_theirs)
    agree(loglikelihoods(ours, short, 3, share_context=False), short_theirs)


@pytest.mark.parametrize("task", ["evm_mc", "evm_gen", "evm_gen_re"])
def test_written_sample_logs_are_lm_evals_line_for_line(agreement, task, tmp_path):
    """evomerge's --log-samples writer gives lm-eval's lines (log-likelihoods to 1e-5; the regex
    filter's name aside, which lm-eval takes from the task YAML), and the lm-eval reader reads both
    folders into the same response matrix."""
    from evomerge.fitness.readers import ReadOptions, read_matrix
    from evomerge.items.sample_log import write_sample_log

    items, result, logged = agreement[task]
    samples_file, _ = write_sample_log(tmp_path, "tiny/llama", task, items, result, version="test")
    ours = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert samples_file.parent.name == "tiny__llama" and len(ours) == len(logged)
    exact = ["doc_id", "doc", "target", "arguments", "metrics", "doc_hash", "prompt_hash", "target_hash",
             *result.correct]
    for mine, theirs in zip(ours, logged):
        assert {k: mine[k] for k in exact} == {k: theirs[k] for k in exact}
        assert set(mine) == set(theirs)
        if task == "evm_mc":
            np.testing.assert_allclose([float(x[0]) for x in mine["filtered_resps"]],
                                       [float(x[0]) for x in theirs["filtered_resps"]], rtol=0, atol=1e-5)
            assert [x[1] for x in mine["filtered_resps"]] == [x[1] for x in theirs["filtered_resps"]]
        else:
            assert (mine["resps"], mine["filtered_resps"]) == (theirs["resps"], theirs["filtered_resps"])
    flt = {"evm_gen_re": "first_word"}.get(task)
    a = read_matrix("lm-eval", [tmp_path], ReadOptions(task=task, filter=flt and "regex"))
    b = read_matrix("lm-eval", [agreement["out"]], ReadOptions(task=task, filter=flt))
    assert a.item_ids == b.item_ids == list(items.ids)
    np.testing.assert_array_equal(a.values, b.values)


def test_evaluate_scores_a_model_folder_on_an_item_file_and_logs_samples(agreement, tmp_path, capsys):
    """``evomerge evaluate DIR --items FILE --format SPEC --log-samples OUT``: lm-eval's accuracies, and
    logs the lm-eval reader reads into lm-eval's own response matrix."""
    from evomerge.cli import main
    from evomerge.fitness.readers import ReadOptions, read_matrix

    root = agreement["out"].parent
    code = main(["evaluate", str(root / "model"), "--items", str(root / "mc.jsonl"), "--format", json.dumps(MC),
                 "--log-samples", str(tmp_path / "logs"), "--batch-size", "7"])
    assert code == 0
    (row,) = json.loads(capsys.readouterr().out)
    items, result, logged = agreement["evm_mc"]
    assert (row["items"], row["split"]) == (len(items), "all")
    for metric in ("acc", "acc_norm"):
        assert row[metric] == pytest.approx(np.mean([r[metric] for r in logged]), abs=1e-12)
    ours = read_matrix("lm-eval", [tmp_path / "logs"], ReadOptions(task="mc"))
    theirs = read_matrix("lm-eval", [agreement["out"]], ReadOptions(task="evm_mc"))
    assert ours.item_ids == theirs.item_ids
    np.testing.assert_array_equal(ours.values, theirs.values)


@pytest.mark.parametrize(("args", "message"), [
    (["--items", "{root}/mc.jsonl"], "--items needs --format"),
    (["--log-samples", "{tmp}/x"], "--format and --log-samples go with --items"),
    (["--items", "{root}/mc.jsonl", "--format", "{{type: multiple_choice, context: nope}}"], "mc.jsonl:1: field 'nope'"),
    (["--items", "{root}/mc.jsonl", "--format", "{{type: ranking}}"], "format.type"),
])
def test_evaluate_items_bad_input_exits_2(agreement, tmp_path, capsys, args, message):
    from evomerge.cli import main

    root = agreement["out"].parent
    argv = ["evaluate", str(root / "model"), *(a.format(root=root, tmp=tmp_path) for a in args)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_evaluate_items_on_a_folder_without_config_exits_2(agreement, tmp_path, capsys):
    from evomerge.cli import main

    root = agreement["out"].parent
    assert main(["evaluate", str(tmp_path), "--items", str(root / "mc.jsonl"), "--format", json.dumps(MC)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "config.json" in err
