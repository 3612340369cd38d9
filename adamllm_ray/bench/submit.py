"""`adamllm bench submit`: a synthesis job run directly vs submitted to a local two-node cluster."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import yaml


def bench_submit(rows: int) -> dict:
    """`adamllm bench submit`: the same synthesis job run directly (`adamllm synthesize`, its own local
    Ray) and submitted to a running two-node cluster on this machine (`adamllm submit`, the cluster's
    start excluded): wall seconds of each, measured after one warm-up run, and the difference."""
    import subprocess
    import tempfile

    from adamllm_ray.embedded import sample_data, tiny
    from adamllm_ray.embedded.local_cluster import BIN, LocalCluster, cluster_env

    root = Path(__file__).resolve().parents[2]  # the checkout shipped as the job's working directory
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
