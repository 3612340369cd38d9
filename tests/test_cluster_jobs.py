"""A real two-node Ray cluster on this machine (two `ray start` process groups on 127.0.0.1, each with
its own custom resource): jobs go through the job API with `adamllm submit`, which returns the job's
exit status and, for a failed job, its message."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port

BIN = Path(sys.executable).parent


def clean_env():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "disabled"  # a loopback-only test cluster: no token for the job API
    return env


def start_node(args: list[str]) -> subprocess.Popen:
    """`ray start --block` in its own process group: the node and every process it starts end with it."""
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=clean_env())


def stop_node(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def alive_nodes(dashboard: str) -> list[dict]:
    from ray.util.state import list_nodes

    return [n for n in list_nodes(address=dashboard, raise_on_missing_output=False) if n.state == "ALIVE"]


@pytest.fixture(scope="module")
def cluster():
    os.environ["RAY_AUTH_MODE"] = "disabled"  # this process queries the cluster's state API too
    gcs, dash = free_port(), free_port()
    dashboard = f"http://127.0.0.1:{dash}"
    head = start_node(["--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                       f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=1",
                       '--resources={"head_node": 1}'])
    second = None
    try:
        deadline = time.time() + 120
        while True:
            try:
                if len(alive_nodes(dashboard)) == 1:
                    break
            except Exception:
                pass
            assert time.time() < deadline, "head node did not come up"
            time.sleep(1)
        second = start_node([f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                             '--resources={"second_node": 1}'])
        while len(alive_nodes(dashboard)) < 2:
            assert time.time() < deadline, "second node did not join"
            time.sleep(1)
        yield {"dashboard": dashboard, "second": second}
    finally:
        for node in (second, head):
            if node is not None:
                stop_node(node)


def submit(cluster, args: list[str], **kw) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [str(BIN / "adamllm"), "submit", "--address", cluster["dashboard"], "--working-dir", str(ROOT),
           "--runtime-env", str(ROOT / "jobs" / "runtime_env.yaml"), "--", "adamllm", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=900, cwd=ROOT, **kw)


def test_job_succeeds_and_its_exit_code_reaches_the_submitter(cluster, tmp_path):
    r = submit(cluster, ["make-sample-data", "--out", str(tmp_path / "data"), "--n", "8"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "SUCCEEDED" in r.stdout
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["n"] == 8 and len(list((tmp_path / "data" / "parquet").glob("*.parquet"))) == 4


def test_failed_job_reports_failure_with_message(cluster, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {format: parquet, path: x}\noutput: y\nsynthesizer: {model: m}\nsynthesiser_typo: 1\n")
    r = submit(cluster, ["synthesize", "--config", str(bad)])
    assert r.returncode == 1
    assert "unknown key 'synthesiser_typo'" in r.stdout + r.stderr
    assert "FAILED" in r.stderr
