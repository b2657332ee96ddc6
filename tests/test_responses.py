"""The run folder's response log: write, flush, merge, read back as a matrix; bad input fails clearly."""

import hashlib
import json

import numpy as np
import pytest

from evomerge.errors import UserError
from evomerge.fitness.responses import RESPONSES_FILE, ResponseLog, items_filename, read_responses

IDS = [f"mnist1d/all/val/{i}/{i:010x}" for i in range(5)]


def write_run(path, records, ids=IDS, task="mnist1d/all", split="val"):
    with ResponseLog(path) as log:
        log.register_items(task, split, ids)
        for cid, items, correct in records:
            log.append(cid, task, split, items, correct)
    return path


def test_round_trip_with_missing_and_merged_lines(tmp_path):
    run = write_run(tmp_path / "r1", [
        ("c0", [0, 1, 2], [True, False, True]),
        ("c1", [4], [True]),
        ("c0", [2, 3], [False, True]),  # a later extension: item 2 answered again
    ])
    m = read_responses([run], "mnist1d/all")
    assert m.candidates == ["r1/c0", "r1/c1"] and m.item_ids == IDS
    np.testing.assert_array_equal(m.values, [[1, 0, 0, 1, np.nan], [np.nan] * 4 + [1]])
    src = m.sources[0]
    assert src.n_records == 3
    assert src.responses_sha256 == hashlib.sha256((run / RESPONSES_FILE).read_bytes()).hexdigest()
    line = json.loads((run / RESPONSES_FILE).read_text().splitlines()[0])
    assert line == {"id": "c0", "task": "mnist1d/all", "split": "val", "items": [0, 1, 2], "correct": "101"}


def test_lines_are_flushed_before_close(tmp_path):
    log = ResponseLog(tmp_path)
    log.register_items("digits/noise", "test", IDS)
    log.append("x", "digits/noise", "test", [1], [False])
    assert (tmp_path / RESPONSES_FILE).read_text().count("\n") == 1
    log.close()
    assert (tmp_path / "items" / "digits__noise__test.json").exists()


def test_runs_combine_and_splits_stay_apart(tmp_path):
    a = write_run(tmp_path / "a", [("c", [0], [True])])
    b = write_run(tmp_path / "b", [("c", [1], [False])])
    write_run(tmp_path / "b", [("t", [0], [True])], ids=IDS, split="test")
    m = read_responses([a, b], "mnist1d/all")
    assert m.candidates == ["a/c", "b/c"] and len(m.sources) == 2
    assert read_responses([b], "mnist1d/all", "test").candidates == ["b/t"]


def test_mismatched_items_between_runs(tmp_path):
    a = write_run(tmp_path / "a", [("c", [0], [True])])
    b = write_run(tmp_path / "b", [("c", [0], [True])], ids=IDS[::-1])
    with pytest.raises(UserError, match="item ids differ"):
        read_responses([a, b], "mnist1d/all")


def test_torn_last_line_is_skipped_but_corrupt_lines_fail(tmp_path):
    run = write_run(tmp_path / "r", [("c0", [0], [True])])
    with (run / RESPONSES_FILE).open("a") as fh:
        fh.write('{"id": "c1", "task": "mnist1d/all", "spl')
    assert read_responses([run], "mnist1d/all").candidates == ["r/c0"]
    with (run / RESPONSES_FILE).open("a") as fh:
        fh.write('\n{"id": "c2", "task": "mnist1d/all", "split": "val", "items": [0, 1], "correct": "1"}\n')
    with pytest.raises(UserError, match=r"responses.jsonl:2"):
        read_responses([run], "mnist1d/all")


def test_bad_runs_and_tasks(tmp_path):
    with pytest.raises(UserError, match="run folder not found"):
        read_responses([tmp_path / "missing"], "mnist1d/all")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no responses.jsonl"):
        read_responses([tmp_path / "empty"], "mnist1d/all")
    run = write_run(tmp_path / "r", [("c", [0], [True])])
    with pytest.raises(UserError, match="no responses for task 'digits/all'"):
        read_responses([run], "digits/all")
    assert items_filename("mnist1d/all", "val") == "mnist1d__all__val.json"
    assert items_filename("my-task.v2", "test") == "my-task.v2__test.json"  # an item-file task's name
    for bad in ("a/b/c", "has space", ""):
        with pytest.raises(UserError, match="dataset/condition' or a task name"):
            items_filename(bad, "val")
    (run / "items" / items_filename("mnist1d/all", "val")).unlink()
    with pytest.raises(UserError, match="missing"):
        read_responses([run], "mnist1d/all")


def test_writer_guards(tmp_path):
    run = write_run(tmp_path / "r", [])
    with ResponseLog(run) as log:
        with pytest.raises(UserError, match="task data changed"):
            log.register_items("mnist1d/all", "val", IDS[:3])
        with pytest.raises(ValueError, match="register_items"):
            log.append("c", "digits/all", "val", [0], [True])
        log.register_items("mnist1d/all", "val", IDS)
        with pytest.raises(ValueError, match="out of range"):
            log.append("c", "mnist1d/all", "val", [5], [True])
