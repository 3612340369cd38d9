"""`adamllm bench autoscale`: a synthesis job on Ray's fake autoscaling cluster, read from its scaling
timeline: how long rows wait for engine nodes, how long an idle node stays, rows/s with 1 engine vs 2."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import yaml

IDLE_TIMEOUT_S = 15


def rates_by_engines(samples: list[dict]) -> dict[int, float]:
    """Rows/s over the intervals whose start and end samples both had N engines alive, per N."""
    rows, secs = {}, {}
    for a, b in zip(samples, samples[1:]):
        n = sum(a["engines"].values())
        if n and n == sum(b["engines"].values()) and b["t"] > a["t"]:
            rows[n] = rows.get(n, 0) + sum(b["rows"].values()) - sum(a["rows"].values())
            secs[n] = secs.get(n, 0) + b["t"] - a["t"]
    return {n: round(rows[n] / secs[n], 1) for n in sorted(rows)}


def bench_autoscale(rows: int) -> dict:
    """A head with 1 CPU (no engine fits) and a worker node type with 3 CPUs (one 2-CPU engine and room
    for side stages, as a GPU node has CPUs beside its GPU), at most 2 nodes; `concurrency: [1, 2]`. With
    2-CPU nodes Ray Data's limits stayed 0.8 CPU under the cluster's, short of a second engine. The job's driver samples the timeline; this process times the node's
    removal after the job. On 2 shared cores two engines share the same cores: the ratio shows the
    pool's overhead here, not a cluster's speed-up."""
    from adamllm_ray.embedded import sample_data, tiny
    from adamllm_ray.embedded.local_cluster import AutoscalingLocalCluster

    root = Path(__file__).resolve().parents[2]
    rows = min(rows, 12000)  # enough for a second engine to load on its node while the first works
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        sample_data.write_parquet(sample_data.make_pairs(rows, seed=5, broken=False), tmp / "in", shards=16)
        job = {"ray": {"address": "auto", "progress_bars": False},
               "source": {"format": "parquet", "path": str(tmp / "in")}, "output": str(tmp / "out"),
               "family": "qwen2_vl", "resume": False,
               "synthesizer": {"model": tiny.build("qwen2_vl", tmp / "model"), "dtype": "float32",
                               "max_model_len": 1024, "concurrency": [1, 2], "cpus_per_engine": 2,
                               "batch_size": 16, "sampling": {"max_tokens": 32}}}
        (tmp / "job.yaml").write_text(yaml.safe_dump(job))
        with AutoscalingLocalCluster(head_cpus=1, idle_timeout_minutes=IDLE_TIMEOUT_S / 60,
                                     worker_types={"engine_node": {"resources": {"CPU": 3}, "max_workers": 2}}) as c:
            code = c.run_job(["synthesize", "--config", str(tmp / "job.yaml")], tmp / "log", str(root), 1800)
            if code != 0:
                raise RuntimeError(f"the synthesis job failed:\n{(tmp / 'log').read_text()[-3000:]}")
            ended = time.monotonic()
            while c.worker_nodes() and time.monotonic() - ended < IDLE_TIMEOUT_S + 300:
                time.sleep(1)
            removed_s = time.monotonic() - ended if not c.worker_nodes() else None
        summary = json.loads((tmp / "out" / "summary.json").read_text())
    samples = summary["scaling"]["samples"]
    engines = [sum(s["engines"].values()) for s in samples]
    first_wait = next((s["t"] for s in samples if sum(s["engines_starting"].values())), 0.0)
    second = next((s["t"] for s, n in zip(samples, engines) if n >= 2), None)
    last_row = next(s["t"] for s in samples if sum(s["rows"].values()) == sum(samples[-1]["rows"].values()))
    rates = rates_by_engines(samples)
    return {
        "rows": rows, "wall_s": summary["this_run"]["wall_s"], "max_nodes": summary["scaling"]["max_nodes"],
        "engines_over_time": engines,
        "engines_starting_over_time": [sum(s["engines_starting"].values()) for s in samples],
        "first_row_waiting_to_second_engine_s": round(second - first_wait, 1) if second is not None else None,
        # the stream drains at the last row; the driver then writes the outputs and ends
        "stream_drained_to_node_removed_s": round(removed_s + summary["this_run"]["wall_s"] - last_row, 1)
        if removed_s is not None else None,
        "idle_timeout_s": IDLE_TIMEOUT_S,
        "rows_per_s_by_engines": rates,
        "ratio_2_to_1": round(rates[2] / rates[1], 2) if rates.get(1) and rates.get(2) else None,
    }
