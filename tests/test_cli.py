"""The CLI: user errors exit 2 with a message naming the bad value, and no traceback."""

import json
import subprocess
import sys

from evomerge.zoo.specs import default_specs


def run_cli(*args: str, env_cache: str) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, EVOMERGE_CACHE=env_cache)
    return subprocess.run([sys.executable, "-m", "evomerge.cli", *args], capture_output=True, text=True, timeout=600, env=env)


def test_bad_dataset_name_exits_2_naming_it(tmp_path):
    proc = run_cli("zoo", "list", "--dataset", "cifar10", env_cache=str(tmp_path))
    assert proc.returncode == 2
    assert "unknown dataset 'cifar10'" in proc.stderr and "digits, mnist1d" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_usage_error_is_argparse_exit_2(tmp_path):
    proc = run_cli("zoo", "frobnicate", env_cache=str(tmp_path))
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_zoo_list_json_for_one_dataset(tmp_path):
    """Builds only the digits models (fast) and lists them as JSON with the contract's fields."""
    proc = run_cli("zoo", "list", "--json", "--dataset", "digits", env_cache=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["id"] for r in rows} == {s.id for s in default_specs() if s.dataset == "digits"}
    for r in rows:
        assert set(r) >= {"id", "architecture", "dataset", "condition", "params", "val_accuracy", "test_accuracy"}
        assert r["test_accuracy"] > 0.85
