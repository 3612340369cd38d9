"""`adamllm bench synthesis`: the synthesis job against bare vLLM, side by side in one run.

- efficiency: steady rows/s of the pipeline (judge off; first output row to last) over steady rows/s of
  bare `vllm.LLM.generate` (first finished request to last, by the engine's clock) of the same
  synthesizer on the same prompts and images (engine start excluded on both sides; every row generates
  exactly the same number of tokens). Target >= 0.8.
- the judge's added cost: wall time of the whole job (engine starts included) with the judge on over
  the same with it off (the judge's engine starts late, so its output rows come in bursts and a
  first-to-last rate would flatter it). Target <= 1.05.
- engine start: seconds from the pipeline's start to its first output row over the bare engine's start
  (import vLLM, build `LLM`). Target <= 1.3.
- CPU per row of each stage, from Ray Data's block stats; the side stages (all but the engine's) together.
- the method on one core (parse + pair + compose): `adamllm bench method`'s figures.
- streaming: peak memory of the whole synthesis job with the judge (`adamllm synthesize`: driver, its
  private Ray, engines, writes) at 10x the rows over the peak at 1x, each job with its own Ray; and when
  the first tasks file appears, as a share of that job's wall time. Memory is the
  summed PSS of the process tree, so pages shared by many processes (libraries, the object store
  every worker maps) count once; both jobs get the same object store (`STORE_GIB`). Target <= 1.1 (the
  first file within 10% of the wall time).
  `adamllm bench streaming` runs this part alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from adamllm_ray import ray_session, sources
from adamllm_ray.config import validate
from adamllm_ray.synthesis.config import SynthesisConfig
from adamllm_ray.embedded import sample_data, tiny

TOKENS = 32
# the jobs' object store (`ray.object_store_gib`), the same at 1x and 10x: a streaming job's resident memory
# grows until every page of the store has been used once, so with Ray's default (30% of the machine's
# memory) a longer run shows more of the store, not more of the job
STORE_GIB = 2


def pss(pid: int) -> tuple[int, int]:
    """(PSS, the part of it in shared memory: Ray's object store) of a process, in bytes."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Pss", "Pss_Shmem"):
                fields[key] = int(rest.split()[0]) * 1024
    return fields["Pss"], fields.get("Pss_Shmem", 0)


class PeakMemory:
    """Peak memory of this process and all its descendants, sampled every 0.5 s: the sum of their
    PSS (a page shared by n processes counts 1/n in each), so shared memory counts once. Summed RSS
    would count the object store once per worker that maps it, and grow with the rows it touches.
    `parts`: the peak's PSS by kind of process (`kind`), to show which part grows with the rows;
    `peak_own`: the peak without shared memory (the object store's pages, whose resident part grows
    over a run until the store has been used once, up to its configured size)."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self.peak_own, self.parts, self._stop = psutil.Process(), 0, 0, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            parts: dict[str, int] = {}
            shared = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    k = "driver" if p.pid == self.proc.pid else kind(" ".join(p.cmdline()[:3]))
                    total, shm = pss(p.pid)
                except (psutil.Error, OSError, KeyError):
                    continue
                parts[k] = parts.get(k, 0) + total
                shared += shm
            total = sum(parts.values())
            self.peak_own = max(self.peak_own, total - shared)
            if total > self.peak:
                self.peak, self.parts = total, parts
            time.sleep(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _config(tmp: Path, src: str, judge: bool, out: str = "unused") -> SynthesisConfig:
    engine = {"dtype": "float32", "batch_size": 64, "max_concurrent_batches": 8, "max_model_len": 1024,
              "sampling": {"max_tokens": TOKENS, "min_tokens": TOKENS}}
    return validate(SynthesisConfig, {
        "source": {"format": "parquet", "path": src}, "output": str(tmp / out), "family": "qwen2_vl",
        "ray": {"address": "local", "num_cpus": 4, "object_store_gib": STORE_GIB, "progress_bars": False},
        "synthesizer": {"model": str(tmp / "synthesizer"), **engine},
        "judge": {"model": str(tmp / "judge"), **engine, "sampling": {"max_tokens": 2, "min_tokens": 2}}
        if judge else None})


def kind(cmdline: str) -> str:
    """A process's kind for the memory breakdown: vLLM's engine processes, Ray Data's workers by
    stage, Ray's own daemons."""
    for name in ("EngineCore", "VLLM::Worker", "vLLMEngineStageUDF", "raylet", "gcs_server", "dashboard", "plasma",
                 "log_monitor"):
        if name in cmdline:
            return name
    if cmdline.startswith("ray::"):
        return "other ray workers"
    return "other"


def job_peak(cfg: SynthesisConfig) -> tuple[PeakMemory, float, float, dict[str, float]]:
    """(its PeakMemory, wall seconds, seconds to the first file in `tasks/`, the peak's GiB by kind of
    process) of the whole synthesis job, run as `adamllm synthesize` runs it (its own Ray)."""
    from adamllm_ray.synthesis import pipeline

    tasks, first, done = Path(cfg.output) / "tasks", [], threading.Event()
    start = time.perf_counter()

    def watch():
        while not done.is_set() and not first:
            if tasks.is_dir() and any(p.suffix == ".parquet" for p in tasks.iterdir()):
                first.append(time.perf_counter() - start)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with PeakMemory() as mem:
        pipeline.run(cfg)
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    parts = {k: round(v / 2**30, 2) for k, v in sorted(mem.parts.items(), key=lambda kv: -kv[1])}
    return mem, wall, first[0] if first else wall, parts


def stage_cpu_ms_per_row(ds, rows: int) -> dict[str, float]:
    """CPU milliseconds per input row of each operator of an executed dataset, from Ray Data's own
    block stats (each task's process CPU time). An engine stage's figure is its actor's own Python
    work: the vLLM engine core runs in a child process that these stats do not see."""
    stats = ds._get_stats_summary()
    out: dict[str, float] = {}

    def walk(summary):
        for parent in summary.parents:
            walk(parent)
        for op in summary.operators_stats:
            if op.cpu_time is not None and rows:
                out[op.operator_name] = round(out.get(op.operator_name, 0.0) + 1000 * op.cpu_time.sum / rows, 3)

    walk(stats)
    return out


def side_cpu_ms_per_row(stages: dict[str, float]) -> float:
    """All side stages together: every operator but the engine's own (`vLLMEngineStage...`)."""
    return round(sum(v for k, v in stages.items() if "vLLMEngineStage" not in k), 3)


def steady_rate(times: list[float]) -> float:
    """Rows/s from the first output row to the last."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def pipeline_rate(cfg: SynthesisConfig) -> tuple[float, float, dict[str, float], float]:
    """Steady rows/s of the synthesis stages (read, synthesize, parse, [judge,] compose), wall
    seconds of the whole run, CPU ms per row of each stage, and seconds to the first output row
    (engine start, then one batch)."""
    import ray

    from adamllm_ray.synthesis import pipeline

    ds = pipeline.method_stages(cfg, sources.read_pairs(cfg.source))
    times = []
    start = time.perf_counter()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        now = time.perf_counter()
        times.extend([now] * batch.num_rows)
    assert ray.is_initialized()
    return steady_rate(times), times[-1] - start, stage_cpu_ms_per_row(ds, len(times)), times[0] - start


# The bare engine timed as the pipeline is (`steady_rate`): from its first finished request to its last,
# by the engine's own clock (each request's last token), so that outputs `LLM.generate` collects late
# (it queues every request, processing their inputs, before it takes any output) are not counted as a
# burst. Needs the engine's per-request stats: `LLM(..., disable_log_stats=False)`, as Ray's stage has.
FINISH_TIMES = r'''
import time


def finish_times(llm, prompts, params):
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    done = sorted(out.metrics.last_token_ts for out in outs)
    return {"rows": len(outs), "seconds": seconds, "steady_s": done[-1] - done[0],
            "output_tokens_per_row": sum(len(out.outputs[0].token_ids) for out in outs) / len(outs)}
'''

BARE = FINISH_TIMES + r'''
import json, sys, time, io
from PIL import Image
import pyarrow.parquet as pq
t_import = time.perf_counter()
from vllm import LLM, SamplingParams
import_s = time.perf_counter() - t_import
from adamllm_ray.families import get_family
model, src, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = pq.read_table(src)
fam = get_family("qwen2_vl")
prompts = [{"prompt": fam.synthesis_prompt(c), "multi_modal_data": {"image": Image.open(io.BytesIO(b)).convert("RGB")}}
           for c, b in zip(t.column("caption").to_pylist(), t.column("image").to_pylist())]
t_load = time.perf_counter()
llm = LLM(model, dtype="float32", max_model_len=1024, enforce_eager=True, limit_mm_per_prompt={"image": 1},
          disable_log_stats=False)
load_s = import_s + time.perf_counter() - t_load  # what a user waits for: import vLLM, build the engine
params = SamplingParams(temperature=0, max_tokens=tokens, min_tokens=tokens, skip_special_tokens=False)
llm.generate(prompts[:64], params, use_tqdm=False)
print("BARE", json.dumps({**finish_times(llm, prompts, params), "load_s": load_s}))
'''


def run_bare(script: str, args: list[str], tmp: Path, details: dict | None = None) -> float:
    """Steady rows/s of a bare vLLM script run in its own process, first finished request to last (its
    last line: `BARE {"rows", "seconds", "steady_s"}`, from `FINISH_TIMES`); the line's other figures
    (the engine's load time, all rows over the whole generate call) go into `details`."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(tmp / "vllm")}
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=3600)
    line = next((x for x in r.stdout.splitlines() if x.startswith("BARE ")), None)
    if line is None:
        raise RuntimeError(f"bare vLLM run failed:\n{r.stderr[-3000:]}")
    bare = json.loads(line[5:])
    bare["rows_per_s_whole_call"] = round(bare["rows"] / bare["seconds"], 1)
    if details is not None:
        details.update(bare)
    return (bare["rows"] - 1) / bare["steady_s"]


def bench_synthesis(rows: int) -> dict:
    import ray

    from adamllm_ray.bench.method import bench_method

    rows = max(rows, 100)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        _write_inputs(tmp, rows)
        bare: dict = {}
        bare_rate = run_bare(BARE, [str(tmp / "synthesizer"), str(tmp / "one" / "part-00000.parquet"), str(TOKENS)], tmp, bare)
        os.environ.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CACHE_ROOT=str(tmp / "vllm"))
        streaming = streaming_figures(tmp)
        ray_session.start_local(num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            rate, wall, cpu, first = pipeline_rate(_config(tmp, str(tmp / "big"), judge=False))
            _, judge_wall, judge_cpu, _ = pipeline_rate(_config(tmp, str(tmp / "big"), judge=True))
        finally:
            ray.shutdown()
    method = bench_method(min(rows, 10000), repeats=3)
    return {
        "rows": rows, "output_tokens_per_row": TOKENS,
        "bare_vllm_rows_per_s": round(bare_rate, 1), "bare_vllm_rows_per_s_whole_call": bare["rows_per_s_whole_call"],
        "bare_vllm_output_tokens_per_row": round(bare["output_tokens_per_row"], 2),
        "pipeline_rows_per_s": round(rate, 1),
        "efficiency_pipeline_over_bare": round(rate / bare_rate, 3), "efficiency_target": 0.8,
        "job_wall_s_judge_off": round(wall, 1), "job_wall_s_judge_on": round(judge_wall, 1),
        "judge_cost_wall_on_over_off": round(judge_wall / wall, 3),
        "engine_load_s_bare": round(bare["load_s"], 1), "first_row_s_pipeline": round(first, 1),
        "first_row_over_bare_engine_load": round(first / bare["load_s"], 3),
        "stage_cpu_ms_per_row_judge_off": cpu, "side_stage_cpu_ms_per_row_judge_off": side_cpu_ms_per_row(cpu),
        "stage_cpu_ms_per_row_judge_on": judge_cpu, "side_stage_cpu_ms_per_row_judge_on": side_cpu_ms_per_row(judge_cpu),
        "method_rows_per_s_one_core": {f: method[f]["parse_pair_compose_rows_per_s"] for f in method if f != "target_rows_per_s"},
        "method_target_rows_per_s": method["target_rows_per_s"],
        **streaming,
    }


def streaming_figures(tmp: Path) -> dict:
    """Peak memory of the synthesis job with the judge at 10x the rows (`big`) over 1x (`small`), and
    when the 10x job writes its first tasks file."""
    small, _, _, small_parts = job_peak(_config(tmp, str(tmp / "small"), judge=True, out="out-1x"))
    big, job_wall, first_file, parts = job_peak(_config(tmp, str(tmp / "big"), judge=True, out="out-10x"))
    return {
        "peak_memory_gib_at_1x": round(small.peak / 2**30, 2), "peak_memory_gib_at_10x": round(big.peak / 2**30, 2),
        "memory_10x_over_1x": round(big.peak / small.peak, 3), "memory_target": 1.1,
        "object_store_gib": STORE_GIB,
        "peak_gib_without_object_store_at_1x": round(small.peak_own / 2**30, 2),
        "peak_gib_without_object_store_at_10x": round(big.peak_own / 2**30, 2),
        "memory_without_object_store_10x_over_1x": round(big.peak_own / small.peak_own, 3),
        "peak_gib_by_process_at_1x": small_parts, "peak_gib_by_process_at_10x": parts,
        "job_wall_s_10x": round(job_wall, 1), "first_tasks_file_s_10x": round(first_file, 1),
        "first_tasks_file_share_of_wall": round(first_file / job_wall, 3), "first_tasks_file_target": 0.1,
    }


def bench_streaming(rows: int) -> dict:
    """Only the streaming part of `bench synthesis` (memory at 10x over 1x, the first tasks file)."""
    rows = max(rows, 100)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        _write_inputs(tmp, rows)
        os.environ.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CACHE_ROOT=str(tmp / "vllm"))
        return {"rows": rows, **streaming_figures(tmp)}


def _write_inputs(tmp: Path, rows: int) -> None:
    tiny.build("qwen2_vl", tmp / "synthesizer")
    tiny.build("text", tmp / "judge")
    pairs = sample_data.make_pairs(rows, seed=2, broken=False)
    sample_data.write_parquet(pairs, tmp / "big", shards=50)
    sample_data.write_parquet(pairs[: rows // 10], tmp / "small", shards=5)
    sample_data.write_parquet(pairs, tmp / "one", shards=1)
