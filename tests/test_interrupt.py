"""Stopping a synthesis run the polite ways (Ctrl-C's SIGINT; SIGTERM from `kill`, `ray job stop` or a
scheduler) ends it with one line, no traceback, and leaves no process behind: no Ray worker, no vLLM
engine. (A SIGKILL of the process group is covered by the resume test in test_synthesis_pipeline.)"""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from test_synthesis_pipeline import _marked, engine, make_input


@pytest.mark.parametrize("sig, code, message", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "stopped (SIGTERM)")], ids=["SIGINT", "SIGTERM"])
def test_stopped_run_says_so_and_leaves_no_engine(tmp_path, tiny_qwen2_vl, sig, code, message):
    make_input(tmp_path / "in", 96, shards=24, long_caption=False)
    job = {"ray": {"address": "local", "num_cpus": 2, "progress_bars": False},
           "source": {"format": "parquet", "path": str(tmp_path / "in")}, "output": str(tmp_path / "out"),
           "family": "qwen2_vl",
           "synthesizer": engine(tiny_qwen2_vl, batch_size=2, max_concurrent_batches=1, cpus_per_engine=0.5,
                                 sampling={"max_tokens": 48})}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    marker = f"ADAMLLM_STOP_TEST_{time.time_ns()}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "adamllm_ray.cli", "synthesize", "--config", str(tmp_path / "job.yaml")],
                            env={**env, marker: "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tasks = tmp_path / "out" / "tasks"
    deadline = time.monotonic() + 300
    # the engine is working once its first tasks file is written
    while not (tasks.exists() and any(tasks.glob("*.parquet"))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    assert any("EngineCore" in cmd or "vLLMEngineStageUDF" in cmd for cmd in _marked(marker).values())
    proc.send_signal(sig)  # the driver only, as `kill PID` does
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    deadline = time.monotonic() + 60
    while _marked(marker) and time.monotonic() < deadline:
        time.sleep(1)
    left = _marked(marker)
    for pid in left:  # processes this test started: end them before failing
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == code, out[-3000:]
    assert out.rstrip().splitlines()[-1] == f"adamllm synthesize: {message}"
    assert "Traceback" not in out
    assert not left, f"processes left 60 s after the driver stopped: {left}"
