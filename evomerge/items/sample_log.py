"""Per-item results written as lm-evaluation-harness ``--log_samples`` output, so other tools (and
``evomerge calibrate --from lm-eval``) read evomerge's evaluations as they read lm-eval's.

The layout and fields are lm-eval 0.4's (``lm_eval/evaluator.py``, ``loggers/evaluation_tracker.py``):
``<out>/<model, sanitized>/samples_<task>_<date>.jsonl``, one line per item with ``doc_id``, ``doc``,
``target`` (as a string), ``arguments`` (``{"gen_args_i": {"arg_j": ...}}``, one per request),
``resps`` and ``filtered_resps`` (values as strings), ``filter``, ``metrics``, ``doc_hash``
(SHA-256 of the document), ``prompt_hash`` (of the first request's context), ``target_hash`` and one
field per metric (1.0 / 0.0); beside it ``results_<date>.json`` with ``results``, ``configs``,
``versions``, ``n-shot``, ``higher_is_better``, ``n-samples`` and ``model_name``.

Multiple choice and generation lines are what lm-eval writes for the same items and model (tested
field by field). Classification has no lm-eval output type: its lines carry the predicted class as the
response and no requests. The filter is ``none``, or ``regex`` for a generation format's regex filter
(lm-eval names filters in the task's YAML). ``versions`` says ``evomerge <version>``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from evomerge.items.records import Item, ItemSet, doc_hash, hash_string, prompt_hash
from evomerge.items.scorers.base import ScoreResult


def sanitize_model_name(name: str) -> str:
    """The model's folder name, as ``lm_eval.utils.sanitize_model_name`` makes it."""
    return re.sub(r"[\"<>:/|\\?*\[\]]+", "__", name)


def _filter_name(items: ItemSet) -> str:
    return "regex" if getattr(items.format, "filter", None) is not None else "none"


def _requests(items: ItemSet, item: Item) -> list[tuple[Any, ...]]:
    fmt, fields = items.format, item.fields
    if fmt.type == "multiple_choice":
        return [(fields["context"], f"{fmt.target_delimiter}{c}") for c in fields["choices"]]
    if fmt.type == "generation":
        return [(fields["prompt"], {"until": list(fmt.until), "max_gen_toks": fmt.max_gen_toks, "do_sample": False})]
    return []


def _responses(kind: str, output: Any) -> tuple[list[Any], list[Any]]:
    """``resps`` (per request, its responses) and ``filtered_resps`` (per request), as strings."""
    if kind == "multiple_choice":
        pairs = [[str(ll), str(g)] for ll, g in zip(output.loglikelihoods, output.greedy)]
        return [[p] for p in pairs], pairs
    if kind == "generation":
        return [[output.text]], [output.filtered]
    return [[str(output)]], [str(output)]


def _target(items: ItemSet, item: Item) -> str:
    """``str(doc_to_target(doc))``: the file's gold or target field as it was given."""
    fmt = items.format
    name = {"multiple_choice": "gold", "generation": "target", "classification": "label"}[fmt.type]
    doc = item.doc
    if doc is not None and getattr(fmt, name) in doc:
        return str(doc[getattr(fmt, name)])
    return str(item.fields.get(name, item.fields.get("targets", "")))


def sample_lines(items: ItemSet, result: ScoreResult) -> list[dict[str, Any]]:
    """One lm-eval sample record per item, in the items' order (``doc_id`` is the position)."""
    if result.ids != items.ids:
        raise ValueError("the result is not of these items (ids differ)")
    kind = items.format.type
    filter_name = _filter_name(items)
    lines = []
    for doc_id, (item, output) in enumerate(zip(items, result.outputs)):
        doc = dict(item.doc) if item.doc is not None else {"id": item.id, "label": item.fields.get("label")}
        requests = _requests(items, item)
        resps, filtered = _responses(kind, output)
        target = _target(items, item)
        line = {
            "doc_id": doc_id,
            "doc": doc,
            "target": target,
            "arguments": {f"gen_args_{i}": {f"arg_{j}": a for j, a in enumerate(req)} for i, req in enumerate(requests)},
            "resps": resps,
            "filtered_resps": filtered,
            "filter": filter_name,
            "metrics": list(result.correct),
            "doc_hash": doc_hash(doc),
            "prompt_hash": prompt_hash(item),
            "target_hash": hash_string(target),
        }
        line.update({m: float(values[doc_id]) for m, values in result.correct.items()})
        lines.append(line)
    return lines


def write_sample_log(out: str | Path, model_name: str, task: str, items: ItemSet, result: ScoreResult,
                     version: str) -> tuple[Path, Path]:
    """Write ``samples_<task>_<date>.jsonl`` and ``results_<date>.json`` under ``out/<model>/``."""
    folder = Path(out) / sanitize_model_name(model_name)
    folder.mkdir(parents=True, exist_ok=True)
    date = datetime.now().isoformat().replace(":", "-")
    samples = folder / f"samples_{task}_{date}.jsonl"
    with open(samples, "w", encoding="utf-8") as fh:
        for line in sample_lines(items, result):
            fh.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
    fmt = items.format
    config: dict[str, Any] = {"task": task, "output_type": fmt.type, "num_fewshot": 0,
                              "metric_list": [{"metric": m} for m in result.correct]}
    if fmt.type == "multiple_choice":
        config["target_delimiter"] = fmt.target_delimiter
    results = {
        "results": {task: {"alias": task, "sample_len": len(items),
                           **{f"{m},{_filter_name(items)}": result.accuracy(m) for m in result.correct}}},
        "configs": {task: config},
        "versions": {task: f"evomerge {version}"},
        "n-shot": {task: 0},
        "higher_is_better": {task: {m: True for m in result.correct}},
        "n-samples": {task: {"original": len(items), "effective": len(items)}},
        "model_name": model_name,
        "model_name_sanitized": sanitize_model_name(model_name),
        "date": date,
    }
    path = folder / f"results_{date}.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return samples, path
