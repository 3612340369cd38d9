"""`adamllm submit --address http://HEAD:8265 -- adamllm <command> --config FILE`: the same job as on a
laptop, run as a Ray job on a cluster. Ships the working directory with jobs/runtime_env.yaml, follows
the job's logs, and returns its exit status (0 only when the job succeeded)."""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from pathlib import Path

import yaml


def runtime_env(working_dir: str, env_file: str | None) -> dict:
    env = yaml.safe_load(Path(env_file).read_text()) if env_file else {}
    return {**(env or {}), "working_dir": working_dir}


def submit(address: str, entrypoint: list[str], working_dir: str = ".", env_file: str | None = "jobs/runtime_env.yaml",
           follow: bool = True, timeout_s: float | None = None) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    if not entrypoint:
        raise ValueError("nothing to run: give the command after --, e.g. -- adamllm synthesize --config FILE")
    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime_env(working_dir, env_file))
    print(f"submitted {job_id} to {address}: {shlex.join(entrypoint)}", flush=True)
    if follow:
        async def tail():
            async for lines in client.tail_job_logs(job_id):
                sys.stdout.write(lines)
                sys.stdout.flush()
        asyncio.run(tail())
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if deadline is not None and time.monotonic() > deadline:
            client.stop_job(job_id)
            print(f"job {job_id}: no end after {timeout_s}s; stopped", file=sys.stderr)
            return 124
        time.sleep(0.5)
    info = client.get_job_info(job_id)
    print(f"job {job_id}: {status.value}" + (f": {info.message}" if status != JobStatus.SUCCEEDED and info.message else ""),
          file=sys.stderr if status != JobStatus.SUCCEEDED else sys.stdout)
    return 0 if status == JobStatus.SUCCEEDED else 1


def bench_submit(rows: int) -> dict:
    """`adamllm bench submit`: the same synthesis job run directly (`adamllm synthesize`, its own local
    Ray) and submitted to a running two-node cluster on this machine (`adamllm submit`, the cluster's
    start excluded): wall seconds of each, measured after one warm-up run, and the difference."""
    import subprocess
    import tempfile

    from adamllm_ray import sample_data, tiny
    from adamllm_ray.local_cluster import BIN, LocalCluster, cluster_env

    root = Path(__file__).resolve().parents[1]  # the checkout shipped as the job's working directory
    rows = min(rows, 200)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        sample_data.write_parquet(sample_data.make_pairs(rows, seed=5, broken=False), tmp / "in", shards=4)
        job = {"ray": {"address": "local", "num_cpus": 4, "progress_bars": False},
               "source": {"format": "parquet", "path": str(tmp / "in")}, "output": str(tmp / "out"),
               "family": "qwen2_vl", "resume": False,
               "synthesizer": {"model": tiny.build("qwen2_vl", tmp / "model"), "dtype": "float32",
                               "max_model_len": 1024, "sampling": {"max_tokens": 32}}}
        (tmp / "job.yaml").write_text(yaml.safe_dump(job))
        command = ["synthesize", "--config", str(tmp / "job.yaml")]

        def timed(start) -> float:
            t0 = time.perf_counter()
            proc = start()
            if proc.wait() != 0:
                raise RuntimeError(f"{shlex.join(proc.args)} failed:\n{(tmp / 'log').read_text()[-3000:]}")
            return time.perf_counter() - t0

        def direct_run():
            with open(tmp / "log", "w") as log:
                return subprocess.Popen([str(BIN / "adamllm"), *command], stdout=log, stderr=subprocess.STDOUT,
                                        env=cluster_env(), cwd=root)

        timed(direct_run)  # warm-up: file caches of the libraries and the model
        direct = timed(direct_run)
        with LocalCluster(cpus_per_node=2) as cluster:
            cluster.add_node("second_node")
            submitted = timed(lambda: cluster.submit(command, str(root), tmp / "log"))
    return {"rows": rows, "direct_s": round(direct, 1), "submitted_s": round(submitted, 1),
            "submit_overhead_s": round(submitted - direct, 1), "target_overhead_s": 15}
