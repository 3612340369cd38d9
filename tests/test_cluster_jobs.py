"""A real two-node Ray cluster on this machine (two `ray start` process groups on 127.0.0.1, each with
its own custom resource): jobs go through the job API with `adamllm submit`, work lands on both
nodes, a failed job reports failure, and synthesis survives losing the second node."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import ROOT, free_port

BIN = Path(sys.executable).parent
ENGINE_ACTOR = "MapWorker(MapBatches(vLLMEngineStageUDF))"


def clean_env():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
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


def test_failed_job_reports_failure_with_message(cluster, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {format: parquet, path: x}\noutput: y\nsynthesizer: {model: m}\nsynthesiser_typo: 1\n")
    r = submit(cluster, ["synthesize", "--config", str(bad)])
    assert r.returncode == 1
    assert "unknown key 'synthesiser_typo'" in r.stdout + r.stderr
    assert "FAILED" in r.stderr


def test_training_spreads_over_both_nodes(cluster, tmp_path, tiny_qwen2_vl):
    from adamllm_ray.training.sample import write_training_set

    train_json = write_training_set(tmp_path / "set", n=8, seed=5)
    job = {"model": tiny_qwen2_vl, "family": "qwen2_vl", "data": {"path": train_json, "max_length": 512,
                                                                  "map_num_cpus": 0.1},
           "output": str(tmp_path / "runs"), "name": "two-nodes", "precision": "fp32", "max_steps": 2,
           "global_batch_size": 2, "micro_batch_size": 1, "export": False,
           "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
           "checkpoint": {"every_steps": 2, "num_to_keep": 1}, "optim": {"lr": 0.001}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(job))
    r = submit(cluster, ["train", "--config", str(tmp_path / "train.yaml")])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "two-nodes" / "summary.json").read_text())
    assert summary["steps"] == 2
    from ray.util.state import list_actors

    workers = [a for a in list_actors(address=cluster["dashboard"], limit=1000, raise_on_missing_output=False)
               if a.class_name == "RayTrainWorker"]
    assert len({a.node_id for a in workers}) == 2, "one training worker per node"


def test_synthesis_on_two_nodes_survives_losing_one(cluster, tmp_path, tiny_qwen2_vl):
    from adamllm_ray import sample_data
    from ray.util.state import list_actors

    rows = sample_data.make_pairs(160, seed=9, broken=True)
    sample_data.write_parquet(rows, tmp_path / "in", shards=40)
    job = {"source": {"format": "parquet", "path": str(tmp_path / "in")}, "output": str(tmp_path / "out"),
           "family": "qwen2_vl", "ray": {"progress_bars": False},
           "synthesizer": {"model": tiny_qwen2_vl, "dtype": "float32", "concurrency": 2, "cpus_per_engine": 0.8,
                           "batch_size": 2, "max_concurrent_batches": 1, "max_model_len": 1024,
                           "sampling": {"max_tokens": 48}}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    cmd = [str(BIN / "adamllm"), "submit", "--no-follow", "--address", cluster["dashboard"], "--working-dir",
           str(ROOT), "--runtime-env", str(ROOT / "jobs" / "runtime_env.yaml"), "--",
           "adamllm", "synthesize", "--config", str(tmp_path / "job.yaml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=ROOT)
    tasks = tmp_path / "out" / "tasks"
    deadline = time.time() + 600
    engine_nodes = set()
    while time.time() < deadline and proc.poll() is None:
        engines = [a for a in list_actors(address=cluster["dashboard"], limit=1000, raise_on_missing_output=False)
                   if a.class_name == ENGINE_ACTOR and a.state == "ALIVE"]
        engine_nodes |= {a.node_id for a in engines}
        if len(engine_nodes) == 2 and tasks.exists() and any(tasks.iterdir()):
            break
        time.sleep(0.5)
    assert len(engine_nodes) == 2, "an engine on each node (one engine's CPU fits per node)"
    assert proc.poll() is None, "the job must still be running when the second node is lost"
    stop_node(cluster["second"])  # the second node's raylet and everything on it, mid-synthesis
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    train = json.loads((tmp_path / "out" / "train.json").read_text())
    errors = pq.read_table(tmp_path / "out" / "errors" / "errors.parquet").column("id").to_pylist()
    assert sorted([e["id"] for e in train] + errors) == sorted(r["id"] for r in rows), "every row once"
