"""Stopping a synthesis run the polite ways (Ctrl-C's SIGINT; SIGTERM from `kill`, `ray job stop` or a
scheduler) ends it with one line, no traceback, and leaves no process behind: no Ray worker, no vLLM
engine. (A SIGKILL of the process group is covered by the resume test in test_synthesis_pipeline.)"""

import os
import signal
import subprocess
import time

import pytest

from test_synthesis_pipeline import _marked, slow_job


@pytest.mark.parametrize("sig, code, message", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "stopped (SIGTERM)")], ids=["SIGINT", "SIGTERM"])
def test_stopped_run_says_so_and_leaves_no_engine(tmp_path, tiny_qwen2_vl, sig, code, message):
    _, cmd, env = slow_job(tmp_path, tiny_qwen2_vl)
    marker = f"ADAMLLM_STOP_TEST_{time.time_ns()}"
    log = open(tmp_path / "run.log", "w")  # a file, not a pipe: a full pipe would stall the driver
    # SIGINT as a terminal delivers it: a shell's background job (`make test &`, a CI runner's) starts with
    # SIGINT ignored, which the run would inherit and Python then keeps (no KeyboardInterrupt at all)
    proc = subprocess.Popen(cmd, env={**env, marker: "1"}, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    tasks = tmp_path / "out" / "tasks"
    deadline = time.monotonic() + 300
    # the engine is working once its first tasks file is written
    while not (tasks.exists() and any(tasks.glob("*.parquet"))):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-3000:]
        time.sleep(0.2)
    assert any("EngineCore" in line or "vLLMEngineStageUDF" in line for line in _marked(marker).values())
    proc.send_signal(sig)  # the driver only, as `kill PID` does
    try:
        proc.wait(timeout=120)
    finally:
        proc.kill()
        log.close()
    out = (tmp_path / "run.log").read_text()
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
