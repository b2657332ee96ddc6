"""Readers of past evaluations and ``evomerge calibrate --from``.

One module-scoped fixture runs lm-eval-harness itself (in process, offline, local task YAMLs over
local JSONL, written exactly as its CLI writes ``--log_samples`` output) on three tiny Llamas; the
rest reads small fixture files in each format, every reader through one conformance class.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from evomerge.cli import main
from evomerge.errors import ConfigError, UserError
from evomerge.fitness.bank import check_items, load_bank, prompt_fingerprint
from evomerge.fitness.estimators import ESTIMATORS
from evomerge.fitness.readers import READERS, ReadOptions, read_matrix
from evomerge.fitness.readers.harness import content_id
from evomerge.fitness.search_fitness import source_matrix
from evomerge.items import doc_hash, load_items, prompt_hash
from tests.lm_tiny import tiny_llama
from tests.test_items_lm_eval import MC, TASK, mc_docs, write_jsonl

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

GEN_TASK = """output_type: generate_until
doc_to_text: prompt
doc_to_target: target
generation_kwargs:
  until: ["."]
  max_gen_toks: 3
  do_sample: false
filter_list:
  - name: first
    filter:
      - function: regex
        regex_pattern: "[a-z]"
      - function: take_first
  - name: strict
    filter:
      - function: regex
        regex_pattern: "[a-c]"
      - function: take_first
metric_list:
  - metric: exact_match
"""


def run_lm_eval(model_dir: Path, tasks: object, out: Path) -> None:
    """What ``lm_eval --model hf --include_path TASKS --log_samples --output_path OUT`` does, in process
    (``tasks``: a TaskManager over the local YAMLs, shared by the runs)."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(out))
    results = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=["rl_mc", "rl_gen"],
                              task_manager=tasks, log_samples=True, evaluation_tracker=tracker, device="cpu",
                              batch_size=16)
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """lm-eval logs of three tiny Llamas (seeds 1-3) on 40 multiple-choice and 8 generation items."""
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    tmp = tmp_path_factory.mktemp("harness")
    rng = random.Random(3)
    write_jsonl(tmp / "mc.jsonl", mc_docs(rng, 40))
    write_jsonl(tmp / "gen.jsonl", [{"prompt": f"w{i} {rng.choice('abc')}", "target": rng.choice("abc")} for i in range(8)])
    tasks = tmp / "tasks"
    tasks.mkdir()
    (tasks / "mc.yaml").write_text(TASK.format(name="rl_mc", data=tmp / "mc.jsonl") + "output_type: multiple_choice\n"
                                   "doc_to_text: question\ndoc_to_choice: options\ndoc_to_target: answer\n"
                                   "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (tasks / "gen.yaml").write_text(TASK.format(name="rl_gen", data=tmp / "gen.jsonl") + GEN_TASK)
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_CACHE": str(tmp / "hf")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        manager = TaskManager(include_path=str(tasks), include_defaults=False)
        for seed in (1, 2, 3):
            tiny_llama(tmp / f"llama{seed}", seed=seed)
            run_lm_eval(tmp / f"llama{seed}", manager, tmp / "out")
    return tmp


@pytest.mark.slow
def test_calibrate_from_lm_eval_logs_and_score_a_third_model(harness, tmp_path):
    out = sorted((harness / "out").iterdir())
    assert [p.name[-6:] for p in out] == ["llama1", "llama2", "llama3"]  # lm-eval's folder: the sanitized path
    bank_path = tmp_path / "bank.json"
    assert main(["calibrate", "--from", "lm-eval", str(out[0]), str(out[1]), "--task", "rl_mc", "--out", str(bank_path),
                 "--holdout", "0"]) == 0
    bank = load_bank(bank_path)
    items = load_items(harness / "mc.jsonl", MC)
    assert bank.item_ids == list(items.ids) == [doc_hash(json.loads(line)) for line in (harness / "mc.jsonl").open()]
    assert bank.task == "rl_mc" and [s.reader for s in bank.sources] == ["lm-eval"] * 2
    assert bank.origin == {"reader": "lm-eval", "binarisation": "1 if score >= 0.5 else 0", "filter": "none",
                           "metric": "acc", "n_shot": 0, "task_version": "Yaml", "harness_version": "0.4.13"}
    assert bank.fingerprint == prompt_fingerprint(items.ids, [prompt_hash(i) for i in items])  # evomerge's hash is lm-eval's
    check_items(bank, bank_path, {i.id: prompt_hash(i) for i in items})

    third = read_matrix("lm-eval", [out[2]], ReadOptions(task="rl_mc"))
    assert third.item_ids == bank.item_ids and third.candidates == [str(harness / "llama3")]
    answers = third.values[0]
    sample = np.random.default_rng(0).choice(len(answers), 15, replace=False)
    estimate = ESTIMATORS.get("pirt")(bank.params, sample, answers[sample])
    assert 0.0 <= estimate.value <= 1.0 and abs(estimate.value - answers.mean()) < 0.3

    with pytest.raises(ConfigError, match=r"1 items whose prompt differs .*first '" + items.ids[4]):
        check_items(bank, bank_path, {i.id: prompt_hash(i) if k != 4 else "0" * 64 for k, i in enumerate(items)})
    with pytest.raises(ConfigError, match=r"1 bank items not among the items .*; 1 items not in the bank"):
        check_items(bank, bank_path, {("x" if k == 0 else i.id): None for k, i in enumerate(items)})


@pytest.mark.slow
def test_real_log_with_several_filters(harness, capsys):
    with pytest.raises(UserError, match=r"several filters \(first, strict\); choose one with --filter"):
        read_matrix("lm-eval", [harness / "out"], ReadOptions(task="rl_gen"))
    matrix = read_matrix("lm-eval", [harness / "out"], ReadOptions(task="rl_gen", filter="strict"))
    assert matrix.values.shape == (3, 8) and matrix.info["filter"] == "strict" and matrix.info["metric"] == "exact_match"
    items = load_items(harness / "gen.jsonl", {"type": "generation", "prompt": "prompt", "target": "target"})
    assert matrix.item_ids == list(items.ids) and [i.prompt_hash for i in matrix.item_info] == list(map(prompt_hash, items))
    assert main(["calibrate", "--from", "lm-eval", str(harness / "out"), "--task", "rl_gen", "--out", "x.json"]) == 2
    assert "choose one with --filter" in capsys.readouterr().err


# ---- fixture files: one truth, written in each format --------------------------------------------------------------

MODELS = ["m1", "m2", "m3"]
TRUTH = np.array([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 0, 1]], dtype=float)
DOCS = [{"question": f"What is {k}?", "choices": ["a", "b"], "gold": k % 2} for k in range(4)]
PROMPTS = [f"What is {k}?" for k in range(4)]


def sha(text: str) -> str:
    return content_id(text)


def lm_eval_line(k: int, value: float, flt: str = "none") -> dict:
    doc = DOCS[k]
    return {"doc_id": k, "doc": doc, "target": str(doc["gold"]),
            "arguments": {"gen_args_0": {"arg_0": PROMPTS[k], "arg_1": " a"}, "gen_args_1": {"arg_0": PROMPTS[k], "arg_1": " b"}},
            "resps": [[["-1.5", "False"]], [["-2.5", "False"]]], "filtered_resps": [["-1.5", "False"], ["-2.5", "False"]],
            "filter": flt, "metrics": ["acc", "acc_norm"], "doc_hash": doc_hash(doc), "prompt_hash": sha(PROMPTS[k]),
            "target_hash": sha(str(doc["gold"])), "acc": value, "acc_norm": 1.0 - value}


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


DATE = "2026-12-04T10-00-00.000001"


def write_lm_eval(tmp: Path, filters: tuple[str, ...] = ("none",)) -> list[Path]:
    for model, row in zip(MODELS, TRUTH):
        folder = tmp / "out" / model
        write_lines(folder / f"samples_t_{DATE}.jsonl", [lm_eval_line(k, v, f) for f in filters for k, v in enumerate(row)])
        (folder / f"results_{DATE}.json").write_text(json.dumps({
            "configs": {"t": {"metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}}, "n-shot": {"t": 0},
            "versions": {"t": 1.0}, "higher_is_better": {"t": {"acc": True, "acc_norm": True}}, "lm_eval_version": "0.4.13",
            "model_name": f"org/{model}"}))
    return [tmp / "out"]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


class ReaderConformance:
    """What every reader must do; a subclass per reader writes the truth in its format."""

    name: str
    options = ReadOptions(task="t")
    model_prefix = ""  # how the reader names model m1: <prefix>m1

    def write(self, tmp: Path) -> list[Path]:
        raise NotImplementedError

    def ids(self) -> list[str]:
        return [f"q{k}" for k in range(4)]

    def models(self) -> list[str]:
        return [self.model_prefix + m for m in MODELS]

    def malformed(self, tmp: Path) -> tuple[list[Path], str]:
        """Files with a malformed line, and the ``file:line`` the error must name."""
        raise NotImplementedError

    def test_registered(self):
        assert self.name in READERS

    def test_reads_the_truth(self, tmp_path):
        matrix = read_matrix(self.name, self.write(tmp_path), self.options)
        rows = [matrix.candidates.index(m) for m in self.models()]
        cols = [matrix.item_ids.index(i) for i in self.ids()]
        np.testing.assert_array_equal(matrix.values[np.ix_(rows, cols)], TRUTH)
        assert matrix.task == "t" and sorted(matrix.item_ids) == sorted(self.ids())
        assert matrix.info["reader"] == self.name and all(s.reader == self.name for s in matrix.sources)

    def test_ids_stable_across_reads_and_path_order(self, tmp_path):
        paths = self.write(tmp_path)
        first = read_matrix(self.name, paths, self.options)
        again = read_matrix(self.name, paths[::-1], self.options)
        assert sorted(first.item_ids) == sorted(again.item_ids)

    def test_calibrates_through_the_cli(self, tmp_path):
        bank = tmp_path / "bank.json"
        argv = ["calibrate", "--from", self.name, *map(str, self.write(tmp_path)), "--task", "t", "--out", str(bank),
                "--holdout", "0"]
        assert main(argv + self.extra_args()) == 0
        assert sorted(load_bank(bank).item_ids) == sorted(self.ids())

    def extra_args(self) -> list[str]:
        return []

    def test_malformed_line_exits_2_naming_file_and_line(self, tmp_path, capsys):
        paths, where = self.malformed(tmp_path)
        assert main(["calibrate", "--from", self.name, *map(str, paths), "--task", "t", "--out", str(tmp_path / "b.json"),
                     *self.extra_args()]) == 2
        err = capsys.readouterr().err
        assert f"{where}:" in err and "Traceback" not in err


class TestLmEval(ReaderConformance):
    name = "lm-eval"
    model_prefix = "org/"  # results' model_name

    def write(self, tmp):
        return write_lm_eval(tmp)

    def ids(self):
        return [doc_hash(d) for d in DOCS]

    def malformed(self, tmp):
        paths = write_lm_eval(tmp)
        bad = next((tmp / "out" / "m2").glob("samples_*.jsonl"))
        lines = bad.read_text().splitlines()
        bad.write_text("\n".join(lines[:2] + ['{"doc_id": 2, "doc": {'] + lines[3:]) + "\n")
        return paths, f"{bad}:3"

    def test_item_info_and_metric_choice(self, tmp_path):
        paths = write_lm_eval(tmp_path)
        matrix = read_matrix(self.name, paths, self.options)
        assert [i.prompt_hash for i in matrix.item_info] == [sha(p) for p in PROMPTS]
        assert [i.doc_id for i in matrix.item_info] == [0, 1, 2, 3]
        assert matrix.info == {"reader": "lm-eval", "binarisation": "1 if score >= 0.5 else 0", "filter": "none",
                               "metric": "acc", "n_shot": 0, "task_version": 1.0, "harness_version": "0.4.13"}
        norm = read_matrix(self.name, paths, ReadOptions(task="t", metric="acc_norm"))
        np.testing.assert_array_equal(norm.values, 1 - matrix.values)

    def test_several_filters_need_a_choice(self, tmp_path):
        paths = write_lm_eval(tmp_path, ("strict-match", "flexible-extract"))
        with pytest.raises(UserError, match=r"several filters \(strict-match, flexible-extract\); choose one with --filter"):
            read_matrix(self.name, paths, self.options)
        picked = read_matrix(self.name, paths, ReadOptions(task="t", filter="flexible-extract"))
        assert picked.values.shape == (3, 4) and picked.info["filter"] == "flexible-extract"
        with pytest.raises(ConfigError, match=r"field 'filter': expected one of the log's filters \(strict-match, "
                                              r"flexible-extract\), got 'none'"):
            read_matrix(self.name, paths, ReadOptions(task="t", filter="none"))
        with_none = write_lm_eval(tmp_path / "b", ("strict-match", "none"))
        assert read_matrix(self.name, with_none, self.options).info["filter"] == "none"

    def test_missing_field_and_prompt_conflict_are_named(self, tmp_path):
        paths = write_lm_eval(tmp_path)
        log = next((tmp_path / "out" / "m3").glob("samples_*.jsonl"))
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        write_lines(log, rows[:1] + [{k: v for k, v in rows[1].items() if k != "doc_hash"}] + rows[2:])
        with pytest.raises(ConfigError, match=rf"{log}:2: field 'doc_hash': expected lm-eval's SHA-256 of the document"):
            read_matrix(self.name, paths, self.options)
        rows[1]["prompt_hash"] = "f" * 64  # a 1-shot log beside 0-shot ones
        write_lines(log, rows)
        with pytest.raises(ConfigError, match=rf"{log}:2: field 'prompt_hash': expected the prompt of item"):
            read_matrix(self.name, paths, self.options)

    def test_lower_is_better_metric_is_refused(self, tmp_path):
        paths = write_lm_eval(tmp_path)
        for results in (tmp_path / "out").rglob("results_*.json"):
            raw = json.loads(results.read_text())
            raw["higher_is_better"]["t"]["acc"] = False
            results.write_text(json.dumps(raw))
        with pytest.raises(UserError, match="lower-is-better"):
            read_matrix(self.name, paths, self.options)


V2_COLUMNS = ("doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "doc_hash", "prompt_hash", "target_hash",
              "acc", "acc_norm", "metrics")


class TestDetailsV2(ReaderConformance):
    """Leaderboard v2 details: lm-eval's columns, no ``filter`` column."""

    name = "details"
    options = ReadOptions(task="t", metric="acc")
    model_prefix = "org__"  # the folder details_org__m1

    def write(self, tmp):
        return [write_parquet(tmp / f"details_org__{m}" / "2024-06-26T18-52-22" / f"samples_leaderboard_t_{m}.parquet",
                              [{k: v for k, v in lm_eval_line(k, v).items() if k in V2_COLUMNS}
                               for k, v in enumerate(row)]) for m, row in zip(MODELS, TRUTH)]

    def ids(self):
        return [doc_hash(d) for d in DOCS]

    def extra_args(self):
        return ["--metric", "acc"]

    def malformed(self, tmp):
        paths = self.write(tmp)
        rows = pq.read_table(paths[1]).to_pylist()
        rows[2]["acc"] = 7.0
        write_parquet(paths[1], rows)
        return paths, f"{paths[1]}:row 3"


V1_LAYOUTS = [("acc",), ("em", "qem", "pem", "pqem"), ("acc", "acc_norm", "acc_stderr")]


def v1_rows(row: np.ndarray, layout: tuple[str, ...], order: list[int]) -> list[dict]:
    """Lighteval-style rows in ``order`` (row positions differ between models), the score in the layout's first field."""
    return [{"example": DOCS[k]["question"], "full_prompt": f"Question: {DOCS[k]['question']}\nAnswer:",
             "predictions": [[-1.0, 0]], "num_effective_few_shots": 0,
             "metrics": {m: (float(row[k]) if m == layout[0] else 0.25) for m in layout}} for k in order]


class TestDetailsV1(ReaderConformance):
    """Leaderboard v1 details, one ``metrics`` layout per model, rows in a different order per model."""

    name = "details"
    options = ReadOptions(task="t", join_on="example")
    model_prefix = "org__"

    def write(self, tmp):
        orders = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]]
        return [write_parquet(tmp / f"details_org__{m}" / "2023-10-12T01-02-03" / f"details_harness|t|5_{m}.parquet",
                              v1_rows(row, layout, order))
                for m, row, layout, order in zip(MODELS, TRUTH, V1_LAYOUTS, orders)]

    def ids(self):
        return [content_id(d["question"]) for d in DOCS]

    def extra_args(self):
        return ["--join-on", "example"]

    def malformed(self, tmp):
        paths = self.write(tmp)
        rows = v1_rows(TRUTH[0], V1_LAYOUTS[0], [0, 1, 2, 3])
        del rows[1]["example"]
        write_parquet(paths[0], rows)
        return paths, f"{paths[0]}:row 2"

    def test_v1_needs_a_join_and_a_metric_of_the_struct(self, tmp_path):
        paths = self.write(tmp_path)
        with pytest.raises(UserError, match=r"v1 details identify rows only by position; .*--join-on .*example, full_prompt"):
            read_matrix(self.name, paths, ReadOptions(task="t"))
        with pytest.raises(ConfigError, match=r"row 1: field 'metrics.qem': expected one of the struct's fields \(acc\)"):
            read_matrix(self.name, paths, ReadOptions(task="t", join_on="example", metric="qem"))
        by_prompt = read_matrix(self.name, paths, ReadOptions(task="t", join_on="full_prompt"))
        np.testing.assert_array_equal(by_prompt.values, read_matrix(self.name, paths, self.options).values)


class TestLong(ReaderConformance):
    """A long CSV (continuous scores, cut at 0.5) beside a long parquet, with rows of another task."""

    name = "long"

    def write(self, tmp):
        rows = [{"model": m, "task": "t", "item_id": f"q{k}", "score": 0.8 if v else 0.1}
                for m, row in zip(MODELS, TRUTH) for k, v in enumerate(row)]
        other = [{"model": "m1", "task": "other", "item_id": "z", "score": 1.0}]
        pd.DataFrame(rows[:8] + other).to_csv(tmp / "a.csv", index=False)
        return [tmp / "a.csv", write_parquet(tmp / "b.parquet", rows[8:])]

    def malformed(self, tmp):
        paths = self.write(tmp)
        lines = paths[0].read_text().splitlines()
        lines[4] = "m2,t,q0"
        paths[0].write_text("\n".join(lines) + "\n")
        return paths, f"{paths[0]}:5"

    def test_probabilities_kept_or_cut(self, tmp_path):
        paths = self.write(tmp_path)
        soft = read_matrix(self.name, paths, ReadOptions(task="t", keep_probabilities=True))
        assert set(np.unique(soft.values)) == {0.1, 0.8} and soft.info["binarisation"] == "kept as probabilities"
        assert set(np.unique(read_matrix(self.name, paths, ReadOptions(task="t", threshold=0.9)).values)) == {0.0}
        with pytest.raises(UserError, match=r"no rows of task 'x'; the tables hold other, t"):
            read_matrix(self.name, paths, ReadOptions(task="x"))
        bank = tmp_path / "soft.json"
        assert main(["calibrate", "--from", "long", *map(str, paths), "--task", "t", "--out", str(bank),
                     "--keep-probabilities", "--holdout", "0.34"]) == 0
        assert load_bank(bank).origin["binarisation"] == "kept as probabilities"


class TestWide(ReaderConformance):
    name = "wide"

    def write(self, tmp):
        frame = pd.DataFrame({"item_id": [f"q{k}" for k in range(4)], **{m: row for m, row in zip(MODELS, TRUTH)}})
        frame.to_csv(tmp / "wide.csv", index=False)
        return [tmp / "wide.csv"]

    def malformed(self, tmp):
        path = self.write(tmp)[0]
        path.write_text(path.read_text().replace("q2,1.0,1.0,0.0", "q2,1.0,maybe,0.0"))
        return [path], f"{path}:4"


class TestPyirt(ReaderConformance):
    name = "pyirt"

    def write(self, tmp):
        return [write_lines(tmp / "pyirt.jsonl", [{"subject_id": m, "responses": {f"q{k}": int(v) for k, v in enumerate(row)}}
                                                 for m, row in zip(MODELS, TRUTH)])]

    def malformed(self, tmp):
        path = self.write(tmp)[0]
        path.write_text(path.read_text() + '{"subject_id": "m4", "responses": [1, 0]}\n')
        return [path], f"{path}:4"


def test_every_reader_has_a_conformance_class():
    assert {cls.name for cls in ReaderConformance.__subclasses__()} == set(READERS.names())


def test_options_belong_to_from_and_log_banks_are_not_run_banks(tmp_path, capsys):
    assert main(["calibrate", "runs/x", "--task", "a/b", "--out", str(tmp_path / "b.json"), "--filter", "none"]) == 2
    assert "--filter: only with --from" in capsys.readouterr().err
    assert main(["calibrate", "--from", "csv", "x", "--task", "t", "--out", "b.json"]) == 2
    assert "unknown run-log reader 'csv'; valid: details, lm-eval, long, pyirt, wide" in capsys.readouterr().err
    paths = TestPyirt().write(tmp_path)
    bank = tmp_path / "bank.json"
    assert main(["calibrate", "--from", "pyirt", *map(str, paths), "--task", "t", "--out", str(bank), "--holdout", "0"]) == 0
    with pytest.raises(ConfigError, match=r"expected a bank fitted on run folders \(a bank read from logs is not refitted\)"):
        source_matrix(load_bank(bank), str(bank))
    raw = json.loads(bank.read_text())
    raw["sources"][0]["reader"] = "run"
    bank.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"items.0.id: expected a run's item id"):
        load_bank(bank)
