"""Autoscaling you can watch: the scaling timeline of a run (nodes and vLLM engines alive over time, from
Ray's own state), its chart, and engine pools that stay within their configured range."""

from __future__ import annotations

import json
import threading
import time

from adamllm_ray import scaling
from conftest import free_port

ENGINE = "MapWorker(MapBatches(vLLMEngineStageUDF))"


def test_engine_pools_count_only_ray_datas_vllm_engine_actors():
    names = [ENGINE, ENGINE, "MapWorker(Map(preprocess))", "_StatsActor", "MapWorker(MapBatches(Other))",
             "MapWorker(Map(pre)->MapBatches(vLLMEngineStageUDF))"]
    assert scaling.engine_pools(names) == {"Map(pre)->MapBatches(vLLMEngineStageUDF)": 1,
                                           "MapBatches(vLLMEngineStageUDF)": 2}
    assert scaling.engine_pools([]) == {}


def fake_cluster():
    """A probe whose engine count follows a script: 0, 1, 2, 2, 1, 0 and then 0."""
    script = iter([0, 1, 2, 2, 1, 0])
    lock = threading.Lock()

    def probe():
        with lock:
            n = next(script, 0)
        return 1 + (n > 1), [ENGINE] * n + ["_StatsActor"]
    return probe


def slow(probe, s=0.03):
    def slowed():
        time.sleep(s)
        return probe()
    return slowed


def test_sampler_covers_the_run_from_start_to_stop():
    sampler = scaling.ScalingSampler(every_s=0.05, probe=slow(fake_cluster())).start()
    time.sleep(0.5)
    tl = sampler.stop()
    assert all(s["engines_starting"] == {} for s in tl["samples"])
    ts = [s["t"] for s in tl["samples"]]
    assert ts[0] == 0 and ts == sorted(ts) and ts[-1] >= 0.45
    engines = [s["engines"].get("MapBatches(vLLMEngineStageUDF)", 0) for s in tl["samples"]]
    assert engines[:6] == [0, 1, 2, 2, 1, 0] and set(engines[6:]) == {0}
    assert tl["max_engines"] == {"MapBatches(vLLMEngineStageUDF)": 2} and tl["max_nodes"] == 2
    assert "error" not in tl
    assert not sampler._thread.is_alive()


def test_a_long_run_keeps_a_bounded_timeline():
    sampler = scaling.ScalingSampler(every_s=0.001, max_samples=16, probe=lambda: (1, [ENGINE]))
    sampler.start()
    time.sleep(0.5)
    tl = sampler.stop()
    assert 8 <= len(tl["samples"]) <= 17
    assert tl["every_s"] > 0.001  # sampling slowed down as samples were thinned
    assert tl["samples"][0]["t"] == 0 and tl["samples"][-1]["t"] >= 0.45


def test_a_probe_that_fails_ends_the_timeline_not_the_run():
    calls = []

    def probe():
        calls.append(1)
        if len(calls) > 2:
            raise ConnectionError("GCS went away")
        return 1, [ENGINE]
    sampler = scaling.ScalingSampler(every_s=0.01, probe=probe).start()
    time.sleep(0.2)
    tl = sampler.stop()
    assert len(tl["samples"]) == 2 and tl["error"] == "ConnectionError: GCS went away"
    assert len(calls) == 3


def test_record_puts_the_timeline_in_the_summary_and_draws_the_chart(tmp_path):
    sampler = scaling.ScalingSampler(every_s=0.02, probe=fake_cluster()).start()
    time.sleep(0.2)
    tl = sampler.stop()
    summary = {"counts": {"read": 3}}
    scaling.record(str(tmp_path), "summary.json", summary, tl)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["counts"] == {"read": 3} and written["scaling"]["samples"] == tl["samples"]
    png = (tmp_path / "scaling.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000


def test_rows_per_s_follow_the_rows_the_engines_did_since_the_first_sample():
    done = iter([100, 100, 130, 190, 190])  # 100 rows done by an earlier run in this process
    sampler = scaling.ScalingSampler(every_s=60, probe=lambda: (1, [ENGINE]), rows=lambda: {"P": next(done)})
    sampler.start()
    for _ in range(3):
        time.sleep(0.05)
        sampler.sample()
    tl = sampler.stop()
    samples = tl["samples"]
    assert [s["rows"]["P"] for s in samples] == [0, 0, 30, 90, 90] and tl["rows"] == {"P": 90}
    assert samples[0]["rows_per_s"] == {"P": 0.0}
    for a, b in zip(samples, samples[1:]):
        dt = b["t"] - a["t"]  # the last sample may come within the 0.01 s the times are rounded to
        assert b["rows_per_s"]["P"] == (round((b["rows"]["P"] - a["rows"]["P"]) / dt, 2) if dt > 0 else 0.0)
    assert samples[2]["rows_per_s"]["P"] > 0 and samples[4]["rows_per_s"]["P"] == 0


def test_engine_rows_read_ray_datas_engine_operators_while_they_run_and_after():
    from types import SimpleNamespace as NS

    class Op:  # a Ray Data operator as the executor's topology holds it (a dict key)
        def __init__(self, name, rows):
            self.name, self.metrics = name, NS(rows_task_outputs_generated=rows)
    engine, other = Op("MapBatches(vLLMEngineStageUDF)", 5), Op("Map(preprocess)", 50)
    executor = NS(_topology={other: None, engine: None})
    before = scaling.engine_rows().get(engine.name, 0)
    callback = scaling.EngineRows()
    callback.before_execution_starts(executor)
    assert scaling.engine_rows()[engine.name] == before + 5
    engine.metrics.rows_task_outputs_generated = 12
    assert scaling.engine_rows()[engine.name] == before + 12 and "Map(preprocess)" not in scaling.engine_rows()
    callback.after_execution_succeeds(executor)  # the count stays once the execution has ended
    engine.metrics.rows_task_outputs_generated = 99
    assert scaling.engine_rows()[engine.name] == before + 12


def test_bench_rates_count_only_intervals_with_the_same_engines_at_both_ends():
    from adamllm_ray.bench.autoscale import rates_by_engines

    pool = "MapBatches(vLLMEngineStageUDF)"
    samples = [{"t": t, "engines": {pool: n} if n else {}, "rows": {pool: r}}
               for t, n, r in [(0, 0, 0), (2, 1, 0), (4, 1, 40), (6, 2, 80), (8, 2, 140), (10, 2, 200), (12, 0, 200)]]
    assert rates_by_engines(samples) == {1: 20.0, 2: 30.0}


# ---------------------------------------------------------------- training that waits for its nodes


def test_missing_for_names_the_resource_the_nodes_lack():
    from adamllm_ray.training.trainer import missing_for

    gpu_node = {"CPU": 48, "GPU": 4}
    assert missing_for([gpu_node, gpu_node], {"CPU": 8, "GPU": 1}, 8) is None
    assert missing_for([{"CPU": 4}], {"CPU": 1, "GPU": 1}, 2) == "GPU (cluster total 0, 2 x 1 needed)"
    # enough CPU in total, but no single node holds a worker's 3 CPUs
    assert missing_for([{"CPU": 2}, {"CPU": 2}], {"CPU": 3}, 1) == \
        "1 nodes with {'CPU': 3} each (0 worker(s) fit the nodes there are)"


def scaling_only(**kw):
    from types import SimpleNamespace

    from adamllm_ray.training.config import TrainScalingConfig

    return SimpleNamespace(scaling=TrainScalingConfig(**kw))


def test_training_waits_a_bounded_time_and_names_the_missing_resource(ray_local):
    """HEAVY (Ray). A local Ray has no autoscaler and no GPU: the wait ends at its timeout, naming GPU."""
    import pytest

    from adamllm_ray.training.trainer import TrainError, wait_for_workers

    wait_for_workers(scaling_only(num_workers=2, cpus_per_worker=1, wait_for_resources=True))  # fits: no wait
    t0 = time.monotonic()
    with pytest.raises(TrainError) as err:
        wait_for_workers(scaling_only(num_workers=2, use_gpu=True, wait_for_resources=True, wait_timeout_s=3),
                         poll_s=0.5)
    assert 3 <= time.monotonic() - t0 < 15
    assert "waited 3 s for 2 training worker(s)" in str(err.value) and "GPU (cluster total 0, 2 x 1 needed)" in str(err.value)


# ---------------------------------------------------------------- the timeline of a real run


def test_synthesis_run_records_a_timeline_that_covers_it(tmp_path, ray_local, tiny_qwen2_vl):
    """HEAVY (Ray, vLLM). A pool of [1, 2] engines: the timeline starts with the run and ends with it, saw
    an engine, and never more engines than the pool's max."""
    from adamllm_ray.config import validate
    from adamllm_ray.synthesis.config import SynthesisConfig
    from adamllm_ray.embedded import sample_data
    from adamllm_ray.synthesis import pipeline

    sample_data.write_parquet(sample_data.make_pairs(24, seed=5), tmp_path / "in", shards=4)
    cfg = validate(SynthesisConfig, {
        "source": {"format": "parquet", "path": str(tmp_path / "in")}, "output": str(tmp_path / "out"),
        "family": "qwen2_vl", "synthesizer": {
            "model": tiny_qwen2_vl, "dtype": "float32", "batch_size": 4, "max_model_len": 1024,
            "concurrency": [1, 2], "sampling": {"max_tokens": 16}}})
    pipeline.run(cfg)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    tl = summary["scaling"]
    samples = tl["samples"]
    assert "error" not in tl, tl.get("error")
    assert samples[0]["t"] == 0 and samples[-1]["t"] >= summary["this_run"]["wall_s"] - 1.0
    assert all(b["t"] - a["t"] <= 3 * tl["every_s"] + 2 for a, b in zip(samples, samples[1:])), "a gap in the timeline"
    # an engine loads for most of a run this small and serves its rows between two samples: count it alive
    # or starting; the pool never holds more than its max of both together
    engines = [sum(s["engines"].values()) + sum(s["engines_starting"].values()) for s in samples]
    assert 1 <= max(engines) <= 2, engines
    assert all(s["nodes"] == 1 for s in samples)
    # rows out of the engine pool: counted from 0, never down, every row to be synthesized by the end
    rows = [sum(s["rows"].values()) for s in samples]
    assert rows[0] == 0 and rows == sorted(rows), rows
    # a row the read found bad passes the engine untouched, and counts there too
    assert rows[-1] == sum(tl["rows"].values()) == summary["counts"]["read"], rows
    assert max(sum(s["rows_per_s"].values()) for s in samples) > 0
    assert (tmp_path / "out" / "scaling.png").read_bytes().startswith(b"\x89PNG")


def test_every_stage_but_the_engines_runs_a_bounded_number_of_tasks(tmp_path, ray_local, tiny_qwen2_vl, tiny_text):
    """Ray Data keeps a share of the cluster for each stage whose tasks are unbounded, and grows an engine
    pool only within what is left: every side stage of a synthesis plan (read, repartition, image
    writes, pre/postprocess, compose) has at most `engine.side_tasks` tasks, so the pools get the rest."""
    import ray

    from adamllm_ray import engine, sources
    from adamllm_ray.config import validate
    from adamllm_ray.embedded import sample_data
    from adamllm_ray.synthesis import pipeline
    from adamllm_ray.synthesis.config import SynthesisConfig

    sample_data.write_parquet(sample_data.make_pairs(8, seed=5), tmp_path / "in", shards=2)
    cfg = validate(SynthesisConfig, {
        "source": {"format": "parquet", "path": str(tmp_path / "in")}, "output": str(tmp_path / "out"),
        "family": "qwen2_vl",
        "synthesizer": {"model": tiny_qwen2_vl, "dtype": "float32", "max_model_len": 1024, "concurrency": [1, 3]},
        "judge": {"model": tiny_text, "dtype": "float32", "max_model_len": 1024, "concurrency": 2}})
    tasks = pipeline.side_tasks(cfg)
    assert tasks == 3 == engine.side_tasks(cfg.synthesizer, cfg.judge)
    index = sources.read_index(cfg.source)
    ds = sources.read_rows(cfg.source, index, sources.scan_index(index).gate(set()), concurrency=tasks)
    ds = pipeline.method_stages(cfg, ds.map_batches(pipeline.write_images(cfg.output), **engine.side_stage(tasks)))

    seen, engines = [], []

    def walk(op):
        for dep in op.input_dependencies:
            walk(dep)
        compute = getattr(op, "compute", None)
        if compute is None:
            return
        size = compute.max_size if isinstance(compute, ray.data.ActorPoolStrategy) else compute.size
        (engines if "vLLMEngineStage" in op.name else seen).append((op.name, size))
    walk(ds._logical_plan.dag)
    assert len(engines) == 2 and len(seen) >= 7, (engines, seen)
    assert all(size is not None and size <= tasks for _, size in seen), seen
    assert sorted(size for _, size in engines) == [2, 3], engines


# ---------------------------------------------------------------- a served model that follows its load


def test_a_served_model_adds_a_replica_under_a_burst_and_drops_it_after(ray_local, tiny_qwen2_vl):
    """HEAVY (Ray Serve, vLLM). The synthesizer served with replicas [1, 2], one ongoing request per replica
    as Serve's target and its delays cut to seconds, on the local Ray (4 logical CPUs: room for a second
    engine, no node to add): 8 clients keep requests going until a second replica runs and has had a few
    seconds of them, then stop; the count falls back to 1. Every request gets 200, or 503 with Retry-After."""
    import asyncio

    import httpx
    from ray import serve

    from adamllm_ray.config import validate
    from adamllm_ray.serving import app
    from adamllm_ray.serving.config import ServeConfig
    from adamllm_ray.serving.lifecycle import APP_NAME

    cfg = validate(ServeConfig, {
        "ray": {"address": "local", "num_cpus": 4}, "family": "qwen2_vl",
        "ingress": {"host": "127.0.0.1", "api_key_env": None},
        "synthesizer": {"model": tiny_qwen2_vl, "dtype": "float32", "max_model_len": 1024, "concurrency": [1, 2],
                        "target_ongoing_requests": 1, "upscale_delay_s": 1, "downscale_delay_s": 3,
                        "look_back_period_s": 2}})
    timeline: list[tuple[float, int]] = []  # (seconds, synthesizer replicas running)

    def running() -> int:
        deployments = serve.status().applications[APP_NAME].deployments
        return sum(d.replica_states.get("RUNNING", 0) for name, d in deployments.items() if "synthesizer" in name)

    async def watch_and_burst(url: str) -> list[httpx.Response]:
        t0, answers, burst_over = time.monotonic(), [], asyncio.Event()
        body = {"model": "synthesizer", "prompt": "a red square", "max_tokens": 32, "ignore_eos": True}

        async def watch():
            while True:
                timeline.append((round(time.monotonic() - t0, 1), await asyncio.to_thread(running)))
                if burst_over.is_set() and timeline[-1][1] == 1 or time.monotonic() - t0 > 400:
                    return
                await asyncio.sleep(0.5)

        async def client(http):
            while not burst_over.is_set():
                answers.append(await http.post(url + "/v1/completions", json=body))

        async def stop_burst():  # once a second replica has run for 5 s of the burst (at most 240 s)
            while time.monotonic() - t0 < 240:
                up = [t for t, n in timeline if n == 2]
                if up and timeline[-1][0] - up[0] >= 5:
                    break
                await asyncio.sleep(0.5)
            burst_over.set()

        async with httpx.AsyncClient(timeout=120) as http:
            await asyncio.gather(watch(), stop_burst(), *(client(http) for _ in range(8)))
        return answers

    try:
        url = app.start(cfg, port=free_port())
        answers = asyncio.run(watch_and_burst(url))
    finally:
        app.shutdown()
    counts = [n for _, n in timeline]
    print(f"synthesizer replicas running over time: {timeline}; {len(answers)} requests")
    assert counts[0] == 1, timeline
    rose = counts.index(2) if 2 in counts else None
    assert rose is not None, f"no second replica under the burst: {timeline}"
    assert max(counts) == 2 and counts[-1] == 1 and 1 in counts[rose:], f"the replica count did not fall back: {timeline}"
    statuses = {r.status_code for r in answers}
    assert statuses <= {200, 503}, statuses
    assert all(r.headers.get("retry-after") for r in answers if r.status_code == 503)
    assert sum(r.status_code == 200 for r in answers) >= 8


# ---------------------------------------------------------------- a cluster that follows the pools


def test_autoscaler_launches_engine_nodes_for_a_synthesis_job_and_removes_them_when_idle(tmp_path, tiny_qwen2_vl):
    """HEAVY (a Ray cluster with Ray's fake multi-node autoscaler, vLLM). The head has 1 CPU and an engine
    asks for 2: no engine fits the head, so the job's rows wait until the autoscaler launches a worker node
    of the one type with room (2 CPUs); every row comes out once; after the idle timeout the worker nodes
    are gone. The driver is `adamllm synthesize` in its own process, attached to the cluster."""
    import yaml

    from adamllm_ray.embedded import sample_data
    from adamllm_ray.embedded.local_cluster import AutoscalingLocalCluster
    from conftest import ROOT

    rows = sample_data.make_pairs(12, seed=7)
    sample_data.write_parquet(rows, tmp_path / "in", shards=3)
    config = {
        "ray": {"address": "auto", "progress_bars": False},
        "source": {"format": "parquet", "path": str(tmp_path / "in")}, "output": str(tmp_path / "out"),
        "family": "qwen2_vl",
        "synthesizer": {"model": tiny_qwen2_vl, "dtype": "float32", "batch_size": 4, "max_model_len": 1024,
                        "concurrency": [1, 2], "cpus_per_engine": 2, "sampling": {"max_tokens": 16}}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    idle_s = 15
    with AutoscalingLocalCluster(head_cpus=1, idle_timeout_minutes=idle_s / 60,
                                 worker_types={"engine_node": {"resources": {"CPU": 2}, "max_workers": 2}}) as cluster:
        assert cluster.worker_nodes() == []
        code = cluster.run_job(["synthesize", "--config", str(tmp_path / "job.yaml")], tmp_path / "job.log",
                               str(ROOT), timeout_s=600)
        assert code == 0, (tmp_path / "job.log").read_text()[-4000:]
        ended = time.monotonic()
        deadline = ended + idle_s + 120
        while cluster.worker_nodes() and time.monotonic() < deadline:
            time.sleep(2)
        removed_after = time.monotonic() - ended
        assert cluster.worker_nodes() == [], f"worker nodes still alive {removed_after:.0f} s after the job"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert all(summary["checks"].values()) and summary["counts"]["read"] == len(rows)
    train = json.loads((tmp_path / "out" / "train.json").read_text())
    import pyarrow.parquet as pq

    errors = pq.read_table(tmp_path / "out" / "errors" / "errors.parquet").to_pylist()
    assert sorted([e["id"] for e in train] + [e["id"] for e in errors]) == sorted(r["id"] for r in rows)
    samples = summary["scaling"]["samples"]
    nodes = [s["nodes"] for s in samples]
    engines = [sum(s["engines"].values()) for s in samples]
    assert nodes[0] == 1, "the run started on the head alone"
    grew = next((i for i, n in enumerate(nodes) if n >= 2), None)
    assert grew is not None, f"no worker node joined while rows waited: {nodes}"
    starting = [sum(s["engines_starting"].values()) for s in samples]
    assert any(starting[:grew]), f"no engine waited for a node before one came: {starting}"
    assert max(nodes) >= 2, f"no worker node joined while rows waited: {nodes}"
    assert 1 <= max(e + s for e, s in zip(engines, starting)) <= 2, (engines, starting)
    assert all(e == 0 for e in engines[:grew]), "an engine ran before a node with room for it existed"
    print(f"worker node up {samples[grew]['t']:.0f} s into the run; nodes {nodes}; engines {engines}; starting {starting}; "
          f"worker nodes removed {removed_after:.0f} s after the job (idle timeout {idle_s} s)")
