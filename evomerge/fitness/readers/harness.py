"""lm-evaluation-harness ``--log_samples`` output and the Open LLM Leaderboard's details parquet files.

``lm-eval``: PATHs are ``--output_path`` folders, model folders below them or sample files. lm-eval
0.4 writes ``<out>/<model>/samples_<task>_<date>.jsonl`` (one line per document and filter:
``doc_id``, ``doc``, ``target``, ``arguments``, ``resps``, ``filtered_resps`` (stored as strings),
``filter``, ``metrics`` (the names), ``doc_hash``, ``prompt_hash``, ``target_hash`` and one field
per metric) beside ``results_<date>.json`` (``configs``, ``n-shot``, ``versions``,
``higher_is_better``, ``model_name``, ``lm_eval_version``). Of several dates in one folder the
latest is read (as lm-eval's own ``get_latest_filename``). Items are keyed by ``doc_hash`` (the
SHA-256 of the document, which is evomerge's item id for the same document, see
:mod:`evomerge.items.records`); ``doc_id`` is kept only as a hint. The model is the results'
``model_name``, else the folder's name.

Filter: ``options.filter``, else ``none`` when the log has it, else the log's only filter; a log
with several filters and none named ``none`` is an error listing them. Metric: ``options.metric``,
else the task's first metric in the results' ``configs[task].metric_list``, else the first of the
line's ``metrics``; a metric whose ``higher_is_better`` is false is refused.

``details``: the leaderboard's per-model parquet files (PATHs are files, or folders searched for
``*.parquet`` whose name contains the task). The model is the first folder above the file whose
name is not a date, less a ``details_`` prefix. v2 files have lm-eval's columns (read as above; no
``filter`` column means one filter). v1 files keep scores in a ``metrics`` struct (``{"acc"}``,
``{"em", "qem", "pem", "pqem"}``, ``{"acc", "acc_norm", ...}``; metric default: its first field)
and identify rows only by position, which differs between models, so ``options.join_on`` must
name a content field (``example``, ``full_prompt``) whose SHA-256 becomes the item id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError, UserError, read_json
from evomerge.fitness.readers.base import MatrixBuilder, ReadOptions, RunReader, field_of, files_under, register, score
from evomerge.fitness.responses import ItemInfo, ResponseMatrix
from evomerge.items.readers import READERS as ITEM_FILES
from evomerge.items.records import hash_string

SAMPLES = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9.-]+)\.jsonl$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_HASH = re.compile(r"^[0-9a-f]{64}$")
Rows = list[tuple[str, dict[str, Any]]]


def choose_filter(rows: Rows, given: str | None, file: Path, required: bool = True) -> str:
    """The filter to read (module docstring); ``required=False`` reads a log without ``filter`` as one filter."""
    found = list(dict.fromkeys(str(field_of(r, "filter", w) if required else r.get("filter", "none")) for w, r in rows))
    if given is not None:
        if given not in found:
            raise ConfigError(str(file), "filter", f"one of the log's filters ({', '.join(found)})", given)
        return given
    if "none" in found or len(found) == 1:
        return "none" if "none" in found else found[0]
    raise UserError(f"{file}: the log has several filters ({', '.join(found)}); choose one with --filter")


def lm_eval_rows(builder: MatrixBuilder, rows: Rows, model: str, file: Path, metric: str, flt: str,
                 required: bool = True) -> int:
    """Add the rows of one filter of an lm-eval log (keyed by ``doc_hash``); returns how many."""
    row = builder.model(model, str(file))
    n = 0
    for where, rec in rows:
        if (field_of(rec, "filter", where) if required else rec.get("filter", "none")) != flt:
            continue
        item = str(field_of(rec, "doc_hash", where, "lm-eval's SHA-256 of the document"))
        if not _HASH.match(item):
            raise ConfigError(where, "doc_hash", "a SHA-256 in hex", item)
        if metric not in rec:
            raise ConfigError(where, metric, f"the metric's value (the line has {', '.join(map(str, rec.get('metrics') or []))})")
        doc_id = rec.get("doc_id")
        builder.add(row, item, score(rec[metric], where, metric, builder.options), where,
                    ItemInfo(int(doc_id) if isinstance(doc_id, int) else None, rec.get("prompt_hash"), rec.get("target_hash")))
        n += 1
    return n


def _note(builder: MatrixBuilder, key: str, value: Any) -> None:
    """Record a per-log fact in the matrix info; values that differ between logs are joined."""
    if value is None:
        return
    seen = builder.info.get(key)
    builder.info[key] = value if seen in (None, value) else ", ".join(dict.fromkeys([*str(seen).split(", "), str(value)]))


@register("lm-eval")
class LmEvalReader(RunReader):
    """lm-eval ``--log_samples`` output (module docstring)."""

    def read(self, paths: Sequence[Path], options: ReadOptions) -> ResponseMatrix:
        latest: dict[Path, tuple[str, Path]] = {}
        for path in files_under(paths, "samples_*.jsonl", "an lm-eval --output_path folder or samples file"):
            match = SAMPLES.match(path.name)
            if match is None:
                raise UserError(f"{path}: not an lm-eval sample file (samples_<task>_<date>.jsonl)")
            if match["task"] == options.task and match["date"] > latest.get(path.parent, ("", path))[0]:
                latest[path.parent] = (match["date"], path)
        builder = MatrixBuilder(self.name, options)
        for date, samples in latest.values():
            results_file = samples.with_name(f"results_{date}.json")
            results = read_json(results_file, "lm-eval results") if results_file.is_file() else {}
            rows = list(ITEM_FILES.get("jsonl").records(samples))
            flt = choose_filter(rows, options.filter, samples)
            metric = options.metric or _first_metric(results, options.task) or \
                next((m for _, r in rows for m in (r.get("metrics") or [])), None)
            if metric is None:
                raise ConfigError(str(samples), "metrics", "the names of the task's metrics (or name one with --metric)")
            if (results.get("higher_is_better", {}).get(options.task) or {}).get(metric) is False:
                raise UserError(f"{results_file}: metric '{metric}' of {options.task} is lower-is-better; "
                                "choose a share-correct metric with --metric")
            model = results.get("model_name") or samples.parent.name
            n = lm_eval_rows(builder, rows, model, samples, metric, flt)
            builder.source(samples, n, results_file if results else None)
            for key, value in (("filter", flt), ("metric", metric), ("n_shot", results.get("n-shot", {}).get(options.task)),
                               ("task_version", results.get("versions", {}).get(options.task)),
                               ("harness_version", results.get("lm_eval_version"))):
                _note(builder, key, value)
        return builder.matrix()


def _first_metric(results: dict[str, Any], task: str) -> str | None:
    metrics = (results.get("configs", {}).get(task) or {}).get("metric_list") or []
    return metrics[0].get("metric") if metrics and isinstance(metrics[0], dict) else None


def content_id(value: Any) -> str:
    """SHA-256 of a row's content (a text as is, anything else as sorted JSON): a v1 row's item id."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hash_string(text)


def _details_model(path: Path) -> str:
    folder = next((p.name for p in path.parents if p.name and not _DATE.match(p.name)), path.stem)
    return folder.removeprefix("details_")


@register("details")
class DetailsReader(RunReader):
    """Open LLM Leaderboard details parquet, v1 and v2 (module docstring)."""

    def read(self, paths: Sequence[Path], options: ReadOptions) -> ResponseMatrix:
        builder = MatrixBuilder(self.name, options)
        files = [p for p in files_under(paths, "*.parquet", "leaderboard details parquet files or folders")
                 if Path(p) in map(Path, paths) or options.task in p.name]
        for path in files:
            rows = list(ITEM_FILES.get("parquet").records(path))
            if not rows:
                raise ConfigError(str(path), "<file>", "at least one row")
            model = _details_model(path)
            if isinstance(rows[0][1].get("metrics"), dict):
                n, metric = self._v1(builder, rows, model, path)
                _note(builder, "details_version", 1)
            else:
                flt = choose_filter(rows, options.filter, path, required=False)
                metric = options.metric or next((m for m in (rows[0][1].get("metrics") or [])), None)
                if metric is None:
                    raise ConfigError(str(path), "metrics", "the names of the task's metrics (or name one with --metric)")
                n = lm_eval_rows(builder, rows, model, path, metric, flt, required=False)
                _note(builder, "filter", flt)
                _note(builder, "details_version", 2)
            builder.source(path, n)
            _note(builder, "metric", metric)
        return builder.matrix()

    @staticmethod
    def _v1(builder: MatrixBuilder, rows: Rows, model: str, path: Path) -> tuple[int, str]:
        opts = builder.options
        if opts.join_on is None:
            raise UserError(f"{path}: v1 details identify rows only by position; name the content field to join "
                            f"models on with --join-on (fields: {', '.join(rows[0][1])})")
        metric = opts.metric or next(iter(rows[0][1]["metrics"]), None)
        row = builder.model(model, str(path))
        for where, rec in rows:
            metrics = field_of(rec, "metrics", where, "a struct of metric values")
            if metric not in metrics:
                raise ConfigError(where, f"metrics.{metric}", f"one of the struct's fields ({', '.join(metrics)})")
            value = field_of(metrics, metric, where, "a score")
            item = content_id(field_of(rec, opts.join_on, where, "the content to join on (--join-on)"))
            builder.add(row, item, score(value, where, f"metrics.{metric}", opts), where)
        _note(builder, "join_on", opts.join_on)
        return len(rows), str(metric)
