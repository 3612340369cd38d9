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
