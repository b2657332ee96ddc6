"""Item bank files: round trip through a run folder and the CLI; corrupted banks name the reason."""

import json
import subprocess
import sys

import numpy as np
import pytest

from evomerge.cli import main
from evomerge.errors import ConfigError
from evomerge.fitness.bank import bank_from_calibration, load_bank, save_bank
from evomerge.fitness.calibrate import calibrate
from evomerge.fitness.irt.simulate import simulate_2pl
from evomerge.fitness.responses import ResponseLog, read_responses

N_ITEMS = 60
IDS = [f"mnist1d/all/val/{i}/{(i * 7919):010x}" for i in range(N_ITEMS)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with 150 simulated candidates, some answering only part of the items."""
    y, _, _ = simulate_2pl(150, N_ITEMS, seed=21, missing=0.2)
    path = tmp_path_factory.mktemp("runs") / "sim"
    with ResponseLog(path) as log:
        log.register_items("mnist1d/all", "val", IDS)
        for j, row in enumerate(y):
            items = np.flatnonzero(~np.isnan(row))
            log.append(f"cand{j}", "mnist1d/all", "val", items, row[items] == 1)
    return path


@pytest.fixture(scope="module")
def bank_file(run_dir, tmp_path_factory):
    matrix = read_responses([run_dir], "mnist1d/all")
    bank = bank_from_calibration(calibrate(matrix.values, holdout=0.2, seed=0), matrix)
    return save_bank(bank, tmp_path_factory.mktemp("banks") / "sim.json")


def test_round_trip(run_dir, bank_file):
    matrix = read_responses([run_dir], "mnist1d/all")
    cal = calibrate(matrix.values, holdout=0.2, seed=0)
    bank = load_bank(bank_file, task_item_ids=IDS)
    np.testing.assert_allclose(bank.params.a, cal.fit.params.a)
    np.testing.assert_allclose(bank.params.b, cal.fit.params.b)
    assert bank.item_ids == IDS and bank.task == "mnist1d/all" and bank.backend == "mml"
    assert bank.sources[0].responses_sha256 == matrix.sources[0].responses_sha256
    assert bank.diagnostics["n_heldout"] == 30 and 0.5 < bank.diagnostics["heldout_auc"] <= 1
    assert json.loads(bank_file.read_text())["format_version"] == 3


def test_multidimensional_bank_round_trips_and_old_banks_load(run_dir, bank_file, tmp_path):
    matrix = read_responses([run_dir], "mnist1d/all")
    cal = calibrate(matrix.values, backend="mirt", holdout=0.2, seed=0)
    assert cal.diagnostics["dim"] in (2, 3) and "heldout_loglik_dim3" in cal.diagnostics
    path = save_bank(bank_from_calibration(cal, matrix), tmp_path / "mirt.json")
    bank = load_bank(path, task_item_ids=IDS)
    assert bank.model == "mirt" and bank.dim == cal.diagnostics["dim"] == bank.params.dim
    np.testing.assert_allclose(bank.params.a, cal.fit.params.a)
    np.testing.assert_allclose(bank.params.b, cal.fit.params.b)
    version_1 = corrupt(bank_file, tmp_path, lambda r: (r.update(format_version=1), r.pop("dim")))
    np.testing.assert_allclose(load_bank(version_1).params.a, load_bank(bank_file).params.a)
    with pytest.raises(ConfigError, match=r"items.5.a: expected a list of dim loadings"):
        load_bank(corrupt(path, tmp_path, lambda r: r["items"][5].update(a=1.0)))
    with pytest.raises(ConfigError, match=r"model 'mirt' needs format_version >= 2"):
        load_bank(corrupt(path, tmp_path, lambda r: r.update(format_version=1)))
    with pytest.raises(ConfigError, match=r"items.2.a: expected a discrimination > 0"):
        load_bank(corrupt(bank_file, tmp_path, lambda r: r["items"][2].update(a=-0.5)))


def corrupt(bank_file, tmp_path, edit):
    raw = json.loads(bank_file.read_text())
    edit(raw)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))  # json writes NaN as a bare token, as a careless tool would
    return path


def test_non_finite_parameter(bank_file, tmp_path):
    path = corrupt(bank_file, tmp_path, lambda r: r["items"][3].update(a=float("nan")))
    with pytest.raises(ConfigError, match=r"bad.json: field 'items.3.a': expected .*finite"):
        load_bank(path)


def test_wrong_item_ids(bank_file, tmp_path):
    with pytest.raises(ConfigError, match=r"field 'items'.*first difference at position 0"):
        load_bank(bank_file, task_item_ids=IDS[::-1])
    with pytest.raises(ConfigError, match=r"60 item ids in order.*59 items"):
        load_bank(corrupt(bank_file, tmp_path, lambda r: r["items"].pop()), task_item_ids=IDS)
    with pytest.raises(ConfigError, match=r"items.0.id"):
        load_bank(corrupt(bank_file, tmp_path, lambda r: r["items"][0].update(id="not-an-id")))
    with pytest.raises(ConfigError, match=r"appears twice"):
        load_bank(corrupt(bank_file, tmp_path, lambda r: r["items"][1].update(id=r["items"][0]["id"])))


def test_bad_json_version_and_missing_file(bank_file, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text(bank_file.read_text()[:-20])
    with pytest.raises(ConfigError, match="broken.json: field '\\(file\\)': expected valid JSON"):
        load_bank(broken)
    with pytest.raises(ConfigError, match="format_version"):
        load_bank(corrupt(bank_file, tmp_path, lambda r: r.update(format_version=99)))
    with pytest.raises(ConfigError, match="no such file"):
        load_bank(tmp_path / "absent.json")


def test_cli_calibrate_writes_a_loadable_bank(run_dir, tmp_path, capsys):
    out = tmp_path / "banks" / "cli.json"
    assert main(["calibrate", str(run_dir), "--task", "mnist1d/all", "--out", str(out), "--seed", "1"]) == 0
    err = capsys.readouterr().err  # each fit announced as it starts (plain lines off a terminal)
    assert "calibrate mml [1/2] D=1: fit on 120 candidates, predict 30 held out" in err
    assert "calibrate mml [2/2] D=1: final fit on all 150 candidates" in err
    bank = load_bank(out, task_item_ids=IDS)
    assert bank.diagnostics["n_candidates"] == 150
    assert main(["calibrate", str(run_dir), "--task", "mnist1d/all", "--out", str(out), "--backend", "x"]) == 2
    assert "unknown IRT backend 'x'" in capsys.readouterr().err


def test_cli_calibrate_bad_input_exits_2(tmp_path, run_dir):
    proc = subprocess.run([sys.executable, "-m", "evomerge.cli", "calibrate", str(tmp_path / "nope"),
                           "--task", "mnist1d/all", "--out", str(tmp_path / "b.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "run folder not found" in proc.stderr and "Traceback" not in proc.stderr
    assert main(["calibrate", str(run_dir), "--task", "digits/all", "--out", str(tmp_path / "b.json")]) == 2
