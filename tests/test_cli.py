"""The CLI: user errors exit 2 with a message naming the bad value, and no traceback."""

import io
import json
import subprocess
import sys

from rich.console import Console

from evomerge.console import Steps
from evomerge.core.similarity import CKA_MEASURES
from evomerge.search.engines import ENGINES
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


def test_zoo_list_shows_missing_models_and_builds_them_on_request(tmp_path):
    """Listing trains nothing: missing models have null figures; --build trains the digits models (fast), with progress."""
    digits = {s.id for s in default_specs() if s.dataset == "digits"}
    proc = run_cli("zoo", "list", "--json", "--dataset", "digits", env_cache=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["id"] for r in rows} == digits and not (tmp_path / "zoo").exists()
    for r in rows:
        assert r["built"] is False and r["val_accuracy"] is None and r["test_accuracy"] is None and r["params"] > 0
    table = run_cli("zoo", "list", "--dataset", "digits", env_cache=str(tmp_path))
    assert table.returncode == 0 and table.stdout.count("not built") == 2 * len(digits)
    assert f"{len(digits)} of {len(digits)} models not built" in table.stderr

    proc = run_cli("zoo", "list", "--json", "--dataset", "digits", "--build", env_cache=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert f"zoo [1/{len(digits)}] training " in proc.stderr  # plain progress lines off a terminal
    assert f"zoo [{len(digits)}/{len(digits)}] trained " in proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["id"] for r in rows} == digits
    for r in rows:
        assert set(r) >= {"id", "architecture", "dataset", "condition", "params", "val_accuracy", "test_accuracy"}
        assert r["built"] is True and r["test_accuracy"] > 0.85


def test_a_reader_that_closes_the_pipe_early_gets_no_traceback(tmp_path):
    """``evomerge zoo list --json | head -c1``: the closed pipe ends the command quietly."""
    import os

    proc = subprocess.Popen([sys.executable, "-m", "evomerge.cli", "zoo", "list", "--json", "--dataset", "digits"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, EVOMERGE_CACHE=str(tmp_path)))
    proc.stdout.close()  # before the interpreter has started, so its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1 and "Traceback" not in err and "BrokenPipe" not in err, err


HEAVY = ("torch", "numpy", "ray", "optuna", "deap", "matplotlib", "sklearn", "scipy", "pydantic")


def test_help_is_complete_and_imports_no_heavy_library():
    """Parsing (and every subcommand's help) loads only argparse and the command modules."""
    script = (
        "import sys, json\n"
        "from evomerge.cli import build_parser\n"
        "sub = next(a for a in build_parser()._actions if a.dest == 'command')\n"
        "helps = {name: p.format_help() for name, p in sub.choices.items()}\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "print(json.dumps({'helps': helps, 'heavy': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["heavy"] == []
    assert {"search", "report", "export", "evaluate", "zoo", "probe", "calibrate"} <= set(out["helps"])
    assert all(name in out["helps"]["search"] for name in ENGINES.names())
    assert all(name in out["helps"]["probe"] for name in CKA_MEASURES.names())
    proc = subprocess.run([sys.executable, "-m", "evomerge.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("evomerge ")


def test_static_name_lists_match_their_registries():
    from evomerge.commands import probe, search

    assert sorted(search.ENGINE_NAMES) == ENGINES.names()
    assert sorted(probe.MEASURES) == CKA_MEASURES.names()


def test_steps_plain_lines_and_terminal_bar():
    out = io.StringIO()
    with Steps("zoo", 2, console=Console(file=out, width=20)) as steps:
        steps.begin("training a, b")
        steps.advance("trained a")
        steps.advance("trained b with a long note that a narrow console does not wrap")
    assert [line[11:] for line in out.getvalue().splitlines()] == [
        "zoo [1/2] training a, b", "zoo [1/2] trained a",
        "zoo [2/2] trained b with a long note that a narrow console does not wrap"]
    term = io.StringIO()
    with Steps("zoo", 2, console=Console(file=term, force_terminal=True, width=120)) as steps:
        steps.begin("training a, b")
        steps.advance("trained a")
    assert "1/2" in term.getvalue() and "trained a" in term.getvalue()
    quiet = io.StringIO()
    with Steps("zoo", 2, quiet=True, console=Console(file=quiet)) as steps:
        steps.begin("x")
        steps.advance("y")
    assert quiet.getvalue() == ""
