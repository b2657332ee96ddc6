"""Item sets and scorers: readers, ids, splits, bad input, and a conformance suite every scorer runs."""

from __future__ import annotations

import csv
import json
import numpy as np
import pytest
import torch

from evomerge.errors import ConfigError, UserError
from evomerge.items import READERS, SCORERS, builtin_items, doc_hash, load_items, make_scorer
from evomerge.items.records import parse_format
from evomerge.items.scorers.generation import exact_match, regex_filter
from evomerge.items.records import Normalize, RegexFilter
from tests.lm_tiny import tiny_bert_classifier, tiny_llama

MC = {"type": "multiple_choice", "context": "question", "choices": "options", "gold": "answer"}
GEN = {"type": "generation", "until": ["."], "max_gen_toks": 6}


def mc_docs(n: int = 12) -> list[dict]:
    return [{"question": f"Q{i}: what comes after {i}?", "options": ["yes", "no way", f"{i + 1}", "maybe not"][: 2 + i % 3],
             "answer": i % 2} for i in range(n)]


def write_jsonl(path, docs) -> None:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))


# ---------------------------------------------------------------- readers, ids, splits


def test_jsonl_csv_parquet_read_the_same_items(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = mc_docs()
    write_jsonl(tmp_path / "mc.jsonl", docs)
    with (tmp_path / "mc.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "options", "answer", "id"])
        for i, d in enumerate(docs):
            w.writerow([d["question"], json.dumps(d["options"]), d["answer"], f"q{i}"])
    pq.write_table(pa.Table.from_pylist(docs), tmp_path / "mc.parquet")
    sets = {s: load_items(tmp_path / f"mc.{s}", MC) for s in ("jsonl", "csv", "parquet")}
    assert set(READERS.names()) == {"jsonl", "csv", "parquet"}
    for s in sets.values():
        assert s.kind == "multiple_choice" and len(s) == len(docs)
        assert [i.fields for i in s] == [{"context": d["question"], "choices": tuple(d["options"]), "gold": d["answer"]} for d in docs]
    # ids: the file's id field, else lm-eval's doc_hash of the record
    assert sets["csv"].ids == tuple(f"q{i}" for i in range(len(docs)))
    assert sets["jsonl"].ids == sets["parquet"].ids == tuple(doc_hash(d) for d in docs)
    assert sets["jsonl"][3].where == f"{tmp_path / 'mc.jsonl'}:4"


def test_doc_hash_is_lm_evals():
    lm_utils = pytest.importorskip("lm_eval.utils")
    doc = {"q": "naïve — «x»", "choices": ["a", "b"], "n": np.int64(3), "f": np.float32(0.5)}
    expected = lm_utils.hash_string(json.dumps(doc, indent=2, default=lm_utils.handle_non_serializable, ensure_ascii=False))
    assert doc_hash(doc) == expected


def test_ids_and_splits_are_stable_and_seeded(tmp_path):
    docs = mc_docs(40)
    write_jsonl(tmp_path / "a.jsonl", docs)
    write_jsonl(tmp_path / "b.jsonl", docs[::-1])
    a, b = load_items(tmp_path / "a.jsonl", MC, seed=3), load_items(tmp_path / "b.jsonl", MC, seed=3)
    assert set(a.ids) == set(b.ids)
    assert {i.id: i.split for i in a} == {i.id: i.split for i in b}  # independent of file order
    assert len(a.split("val")) == 20 and len(a.split("test")) == 20
    assert load_items(tmp_path / "a.jsonl", MC, seed=3).split("val").ids == a.split("val").ids
    assert set(load_items(tmp_path / "a.jsonl", MC, seed=4).split("val").ids) != set(a.split("val").ids)
    assert len(load_items(tmp_path / "a.jsonl", MC, val_fraction=0.25).split("val")) == 10


def test_the_files_split_field_wins(tmp_path):
    docs = [dict(d, split=["train", "validation", "test", None][i % 4]) for i, d in enumerate(mc_docs(8))]
    write_jsonl(tmp_path / "s.jsonl", docs)
    items = load_items(tmp_path / "s.jsonl", MC)
    assert [i.split for i in items][:3] == ["train", "val", "test"] and items[4].split == "train"
    assert items[3].split in ("val", "test")


def test_builtin_dataset_is_an_item_set():
    from evomerge.data.tasks import load_task
    from evomerge.evaluate import responses
    from evomerge.zoo.models import build_model

    items = builtin_items("digits", "all", "val", seed=0)
    task = load_task("digits", "all", "val", 0)
    assert items.kind == "classification" and items.ids == task.item_ids
    net = build_model("mlp", "digits", 10, seed=0).eval()
    result = make_scorer(items).score(net, items, batch_size=50)
    assert np.array_equal(result.answers(), responses(net, task).numpy())


# ---------------------------------------------------------------- bad input: file and line


@pytest.mark.parametrize(
    "lines, match",
    [
        (['{"question": "a", "options": ["x", "y"], "answer": 0}', '{"question": "b", "options": ["x", "y"], "answer": 1'],
         r"bad\.jsonl:2: field '<line>': expected one JSON object"),
        (['{"question": "a", "options": ["x", "y"], "answer": 0}', '[1, 2]'], r"bad\.jsonl:2: field '<line>'"),
        (['', '{"question": "a", "options": ["x", "y"]}'], r"bad\.jsonl:2: field 'answer': expected a value"),
        (['{"question": "a", "options": ["x", "y"], "answer": 2}'], r"bad\.jsonl:1: field 'answer': expected an index below 2"),
        (['{"question": "a", "options": ["x"], "answer": 0}'], r"bad\.jsonl:1: field 'options': expected a list of two or more"),
        (['{"question": 5, "options": ["x", "y"], "answer": 0}'], r"bad\.jsonl:1: field 'question': expected a text"),
        (['{"question": "a", "options": ["x", "y"], "answer": 0, "split": "dev2"}'], r"bad\.jsonl:1: field 'split'"),
        (['{"question": "a", "options": ["x", "y"], "answer": 0}'] * 2, r"bad\.jsonl:2: field 'id': expected ids unique .*bad\.jsonl:1"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, lines, match):
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=match):
        load_items(tmp_path / "bad.jsonl", MC)


def test_bad_csv_row_and_format_blocks(tmp_path):
    (tmp_path / "bad.csv").write_text('question,options,answer\n"a","[""x"", ""y""]",0\n"b","[""x""]"\n')
    with pytest.raises(ConfigError, match=r"bad\.csv:3: field '<row>': expected 3 cells"):
        load_items(tmp_path / "bad.csv", MC)
    write_jsonl(tmp_path / "ok.jsonl", mc_docs(2))
    with pytest.raises(ConfigError, match=r"ok\.jsonl: field 'format.type': expected one of classification, multiple_choice, generation, got 'mcq'"):
        load_items(tmp_path / "ok.jsonl", {"type": "mcq"})
    with pytest.raises(ConfigError, match=r"field 'format.choices_field': expected no such field"):
        load_items(tmp_path / "ok.jsonl", {**MC, "choices_field": "x"})
    with pytest.raises(ConfigError, match=r"field 'format.filter.regex': expected a valid regular expression"):
        parse_format({**GEN, "filter": {"regex": "(["}}, "f.yaml")
    with pytest.raises(ConfigError, match=r"field 'format.until': expected non-empty stop strings"):
        parse_format({**GEN, "until": ["\n", ""]}, "f.yaml")
    with pytest.raises(ConfigError, match=r"field 'format.max_gen_toks'"):
        parse_format({**GEN, "max_gen_toks": 0}, "f.yaml")
    (tmp_path / "x.txt").write_text("{}\n")
    with pytest.raises(UserError, match=r"unknown item-file type '\.txt'"):
        load_items(tmp_path / "x.txt", MC)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """``evomerge items ARGS`` in-process: (exit status, stdout, stderr)."""
    from evomerge.cli import main

    code = main(["items", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_checks_an_item_file_and_exits_2_on_a_malformed_line(tmp_path, capsys):
    docs = mc_docs(6)
    write_jsonl(tmp_path / "mc.jsonl", docs)
    (tmp_path / "fmt.yaml").write_text("format:\n  type: multiple_choice\n  context: question\n  choices: options\n  gold: answer\n")
    code, out, err = _cli(capsys, str(tmp_path / "mc.jsonl"), "--format", str(tmp_path / "fmt.yaml"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["kind"] == "multiple_choice" and summary["items"] == 6 and sum(summary["splits"].values()) == 6
    (tmp_path / "mc.jsonl").write_text((tmp_path / "mc.jsonl").read_text() + '{"question": "q", oops}\n')
    code, out, err = _cli(capsys, str(tmp_path / "mc.jsonl"), "--format", str(tmp_path / "fmt.yaml"))
    assert code == 2 and f"{tmp_path / 'mc.jsonl'}:7" in err and "JSON object" in err and out == ""
    code, _, err = _cli(capsys, str(tmp_path / "mc.jsonl"), "--format", "{type: ranking}")
    assert code == 2 and "format.type" in err and "ranking" in err


# ---------------------------------------------------------------- filters and exact match vs lm-eval

RESPONSES = ["The answer is 42.", "  #### -3,5 ", "no number", "ABC!", "abc", "x 12 y 7", "", "Résumé, 3"]


@pytest.mark.parametrize("spec", [RegexFilter(regex=r"#### (\-?[0-9\.\,]+)"), RegexFilter(regex=r"(\d+)|([a-z]+)", group_select=-1),
                                  RegexFilter(regex=r"[A-Za-z]+", group_select=1, fallback="none")])
def test_regex_filter_is_lm_evals(spec):
    extraction = pytest.importorskip("lm_eval.filters.extraction")
    ref = extraction.RegexFilter(regex_pattern=spec.regex, group_select=spec.group_select, fallback=spec.fallback)
    for response in RESPONSES:
        try:
            expected = ref.apply([[response]], [{}])[0][0]
        except IndexError:  # lm-eval fails when group_select is past the matches; evomerge falls back
            expected = spec.fallback
        assert regex_filter(response, spec) == expected, response


@pytest.mark.parametrize("norm", [Normalize(), Normalize(ignore_case=True), Normalize(ignore_punctuation=True, ignore_case=True),
                                  Normalize(ignore_numbers=True), Normalize(regexes_to_ignore=(",", r"\$", r"(?s).*#### "))])
def test_exact_match_is_lm_evals(norm):
    metrics = pytest.importorskip("lm_eval.api.metrics")
    refs = ["abc", "ABC", "The answer is 42", "42.", "3,5", "Résumé 3", "", "abc "]
    for pred in RESPONSES + refs:
        for ref in refs:
            expected = metrics.exact_match_hf_evaluate(predictions=[pred], references=[ref], **norm.model_dump(exclude_defaults=True))["exact_match"]
            assert exact_match(pred, (ref,), norm) == bool(expected), (pred, ref, norm)


# ---------------------------------------------------------------- scorer conformance


def _classification_case(tmp_path):
    model, tok = tiny_bert_classifier(num_labels=3)
    texts = ["short", "a much longer sentence here", "mid length", "x", "another one", "tiny LM test input", "q"]
    write_jsonl(tmp_path / "c.jsonl", [{"text": t, "label": i % 3} for i, t in enumerate(texts)])
    return model, tok, load_items(tmp_path / "c.jsonl", {"type": "classification", "input": "text"})


def _multiple_choice_case(tmp_path):
    model, tok = tiny_llama()
    write_jsonl(tmp_path / "m.jsonl", mc_docs(9))
    return model, tok, load_items(tmp_path / "m.jsonl", MC)


def _generation_case(tmp_path):
    model, tok = tiny_llama()
    write_jsonl(tmp_path / "g.jsonl", [{"prompt": "say " + "ab" * i, "target": "x"} for i in range(1, 8)])
    return model, tok, load_items(tmp_path / "g.jsonl", GEN)


CASES = {"classification": _classification_case, "multiple_choice": _multiple_choice_case, "generation": _generation_case}


@pytest.fixture(params=SCORERS.names())
def case(request, tmp_path):
    assert request.param in CASES, f"scorer '{request.param}' has no conformance case"
    return request.param, *CASES[request.param](tmp_path)


class TestScorerConformance:
    """Every registered scorer: aligned per-item answers, batch-size and order invariance, empty input."""

    def test_registry_holds_the_yaml_names(self):
        assert set(SCORERS.names()) == {"classification", "multiple_choice", "generation"}

    def test_one_answer_per_item_per_metric(self, case):
        name, model, tok, items = case
        scorer = make_scorer(items)
        assert scorer.name == name
        result = scorer.score(model, items, tokenizer=tok, device="cpu", batch_size=4)
        assert result.ids == items.ids and len(result.outputs) == len(items)
        assert tuple(result.correct) == scorer.metrics
        for values in (*result.correct.values(), *result.scores.values()):
            assert values.shape == (len(items),)
        assert all(v.dtype == bool for v in result.correct.values())
        assert 0.0 <= result.accuracy() <= 1.0

    def test_batch_size_and_order_do_not_change_answers(self, case):
        _, model, tok, items = case
        scorer = make_scorer(items)
        one = scorer.score(model, items, tokenizer=tok, batch_size=1)
        many = scorer.score(model, items, tokenizer=tok, batch_size=len(items))
        perm = items.subset(list(items.ids[::-1]))
        rev = scorer.score(model, perm, tokenizer=tok, batch_size=3)
        for m in one.correct:
            assert np.array_equal(one.correct[m], many.correct[m])
            assert np.array_equal(one.correct[m], rev.correct[m][::-1])
        for m in one.scores:
            np.testing.assert_allclose(one.scores[m], many.scores[m], rtol=0, atol=1e-5)

    def test_no_items_no_answers(self, case):
        _, model, tok, items = case
        result = make_scorer(items).score(model, [], tokenizer=tok)
        assert len(result) == 0 and all(len(v) == 0 for v in result.correct.values())

    def test_bad_batch_size(self, case):
        _, model, tok, items = case
        with pytest.raises(UserError, match="batch size"):
            make_scorer(items).score(model, items, tokenizer=tok, batch_size=0)


def test_text_classification_equals_one_by_one(tmp_path):
    model, tok, items = _classification_case(tmp_path)
    result = make_scorer(items).score(model, items, tokenizer=tok, batch_size=3)
    with torch.no_grad():
        preds = [int(model(**tok(i.fields["input"], return_tensors="pt")).logits.argmax()) for i in items]
    assert list(result.outputs) == preds
    assert list(result.answers()) == [p == i.fields["label"] for p, i in zip(preds, items)]


def test_multiple_choice_loglikelihoods_equal_unbatched_sums(tmp_path):
    model, tok, items = _multiple_choice_case(tmp_path)
    result = make_scorer(items).score(model, items, tokenizer=tok, batch_size=5)
    for item, out in zip(items, result.outputs):
        lls = out.loglikelihoods
        ctx = tok.encode(item.fields["context"])
        for choice, ll in zip(item.fields["choices"], lls):
            whole = tok.encode(item.fields["context"] + " " + choice)
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0], -1)
            expected = sum(float(logp[p - 1, whole[p]]) for p in range(len(ctx), len(whole)))
            assert ll == pytest.approx(expected, abs=1e-4)
        lengths = np.array([len(c) for c in item.fields["choices"]], dtype=float)
        assert result.correct["acc_norm"][items.ids.index(item.id)] == (int(np.argmax(np.array(lls) / lengths)) == item.fields["gold"])


def test_language_scorers_need_the_tokenizer(tmp_path):
    model, _, items = _multiple_choice_case(tmp_path)
    with pytest.raises(UserError, match="needs the model's tokenizer"):
        make_scorer(items).score(model, items)


# ---------------------------------------------------------------- reader conformance


def _write_jsonl(path, docs):
    write_jsonl(path, docs)


def _write_csv(path, docs):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        header = list(docs[0])
        w.writerow(header)
        for d in docs:
            w.writerow([json.dumps(d[k]) if isinstance(d[k], list) else d[k] for k in header])


def _write_parquet(path, docs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(docs), path)


WRITERS = {"jsonl": (".jsonl", _write_jsonl), "csv": (".csv", _write_csv), "parquet": (".parquet", _write_parquet)}


@pytest.fixture(params=READERS.names())
def reader(request):
    assert request.param in WRITERS, f"reader '{request.param}' has no conformance writer"
    return request.param, *WRITERS[request.param]


class TestReaderConformance:
    """Every registered reader: the same items from the same records, located problems, empty files refused."""

    def test_same_items_and_where(self, reader, tmp_path):
        name, suffix, write = reader
        docs = [dict(d, id=f"item{i}", split=["val", "test"][i % 2]) for i, d in enumerate(mc_docs(5))]
        write(tmp_path / f"f{suffix}", docs)
        items = load_items(tmp_path / f"f{suffix}", MC, reader=name)
        assert items.ids == tuple(f"item{i}" for i in range(5))
        assert [i.split for i in items] == ["val", "test"] * 2 + ["val"]
        assert [i.fields["choices"] for i in items] == [tuple(d["options"]) for d in docs]
        assert all(str(tmp_path / f"f{suffix}") in i.where for i in items) and len({i.where for i in items}) == 5

    def test_missing_field_names_the_record(self, reader, tmp_path):
        name, suffix, write = reader
        docs = [{"question": "q", "options": ["a", "b"], "answer": 0}, {"question": "r", "options": ["a", "b"], "wrong": 1}]
        write(tmp_path / f"f{suffix}", [{**d, "answer": d.get("answer"), "wrong": d.get("wrong")} for d in docs])
        where = {"jsonl": ":2", "csv": ":3", "parquet": ":row 2"}[name]  # the second record (CSV: after the header)
        with pytest.raises(ConfigError, match=rf"f\{suffix}{where}: field 'answer': expected a value"):
            load_items(tmp_path / f"f{suffix}", MC, reader=name)


def test_long_inline_format_block():
    """An inline --format longer than a file name may be is parsed as YAML, not stat-ed as a path."""
    from evomerge.items.readers import format_block

    spec = "{type: generation, prompt: prompt, target: target, " + ", ".join(f"x{i}: {i}" for i in range(60)) + "}"
    block, source = format_block(spec)
    assert (block["type"], block["x59"], source) == ("generation", 59, "--format")
