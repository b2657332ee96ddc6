"""Cluster submission: ``ray job submit`` of a short search to a Ray head this test starts on
127.0.0.1 (and stops, by its own process handle); the run folder must come back complete."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_for_dashboard(url: str, head: subprocess.Popen, within_s: float = 90) -> None:
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:  # answering (e.g. asking for the token): it is up
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no Ray dashboard at {url} after {within_s}s")


@pytest.fixture
def ray_head(tmp_path):
    """A one-node Ray head on loopback with 2 CPUs (every port chosen free, temp dir short) and token
    auth with a token of its own (a fresh machine has no ~/.ray/auth_token); yields (dashboard url,
    GCS port, environment). Stopped through its own process group."""
    temp_dir = tempfile.mkdtemp(prefix="rayj", dir="/tmp")
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_TMPDIR": temp_dir,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "OMP_WAIT_POLICY": "PASSIVE", "RAY_USAGE_STATS_ENABLED": "0"}
    gcs, dashboard, client, agent_http, agent_grpc, runtime_env, metrics, node_mgr, obj_mgr = free_ports(9)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
         f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
         "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_dashboard(url, head)
        yield url, gcs, env
    finally:
        head.terminate()  # --block: the head shuts its Ray processes down on SIGTERM
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # anything of this head's process group left over
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
def test_search_submitted_as_a_ray_job_writes_a_complete_run_folder(ray_head, tmp_path):
    url, gcs, env = ray_head
    from evomerge.search.space import load_space
    from evomerge.zoo.catalog import Zoo

    space = load_space(ROOT / "search_spaces" / "cross_arch.yaml")
    Zoo(seed=space.zoo.seed).build(workers=1, ids=list(space.models))  # as `make zoo` would, before submitting
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    shutil.copy(ROOT / "search_spaces" / "cross_arch.yaml", job_dir / "space.yaml")
    run = tmp_path / "run"

    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(job_dir), "--",
         "evomerge", "search", "--space", "space.yaml", "--workers", "2", "--budget", "4",
         "--run-dir", str(run), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=400)
    log = submit.stdout + submit.stderr
    assert submit.returncode == 0 and "succeeded" in log, log[-3000:]
    # the job's actors ran on this head, not on a Ray of its own
    assert f"joined the Ray cluster at 127.0.0.1:{gcs} for 2 workers" in " ".join(log.split())

    records = [json.loads(x) for x in (run / "evaluations.jsonl").read_text().splitlines()]
    assert len(records) == len({r["id"] for r in records}) == 4
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and summary["evaluations"] == 4
    assert (run / "space.yaml").exists() and (run / "responses.jsonl").exists()
    assert 0 < summary["best"]["full_test_accuracy"] <= 1  # re-evaluated on test by the driver
