"""`adamllm bench evaluate`: the evaluation stream against bare vLLM, side by side in one run.

- reading: examples/s of the benchmark reader in one process (files -> checked examples with
  validated images and prompt texts), over all eight tasks' layouts. Target >= 1,000/s.
- efficiency: steady rows/s of the evaluate stream (read -> vLLM pool -> predictions, first output row
  to last) over steady rows/s of bare `vllm.LLM.generate` (first finished request to last, by the
  engine's clock) of the same tiny model on the same prompts and images (engine start excluded on both
  sides; every row generates exactly the same number of tokens: both sides' counts are printed).
  Target >= 0.8.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from adamllm_ray import ray_session
from adamllm_ray.bench.synthesis import FINISH_TIMES, run_bare, side_cpu_ms_per_row, stage_cpu_ms_per_row, steady_rate
from adamllm_ray.config import validate
from adamllm_ray.evaluation.config import EvaluateConfig
from adamllm_ray.embedded import tiny
from adamllm_ray.embedded.make_benchmark import TASK_NAMES, write_benchmark
from adamllm_ray.evaluation import benchmark, run

TOKENS = 32
READ_TARGET = 1000
EFFICIENCY_TARGET = 0.8

BARE = FINISH_TIMES + r'''
import json, sys
from vllm import LLM, SamplingParams
from adamllm_ray import images
from adamllm_ray.config import validate
from adamllm_ray.evaluation.config import EvaluateConfig
from adamllm_ray.evaluation import benchmark
from adamllm_ray.evaluation.prompts import engine_kwargs, evaluation_prompt, sampling_params
cfg = validate(EvaluateConfig, json.loads(sys.argv[1]))
tokens = int(sys.argv[2])
prompts = []
for t in cfg.tasks:
    for r in benchmark.iter_examples(benchmark.plan_task(t)):
        prompts.append({"prompt": evaluation_prompt("qwen2_vl", r["prompt_text"]),
                        "multi_modal_data": {"image": images.to_pil(r["image"])}})
m = cfg.models[0]
llm = LLM(m.model, dtype="float32", max_model_len=m.max_model_len, enforce_eager=True, limit_mm_per_prompt={"image": 1},
          disable_log_stats=False, **engine_kwargs("qwen2_vl", {}))
params = SamplingParams(**sampling_params("qwen2_vl", tokens, min_tokens=tokens))
llm.generate(prompts[:64], params, use_tqdm=False)
print("BARE", json.dumps(finish_times(llm, prompts, params)))
'''


def _config(tmp: Path) -> dict:
    return {"output": str(tmp / "out"),
            "models": [{"name": "tiny", "model": str(tmp / "model"), "dtype": "float32", "batch_size": 64,
                        "max_concurrent_batches": 8, "max_model_len": 1024,
                        "sampling": {"min_tokens": TOKENS}}],
            "tasks": [{"name": t, "data": str(tmp / "bench" / t), "max_new_tokens": TOKENS} for t in TASK_NAMES]}


def stream_rate(cfg: EvaluateConfig) -> tuple[float, int, dict[str, float], float]:
    """Steady rows/s of the evaluate stream of the first model over every task, rows seen, CPU ms
    per row of each stage, and output tokens per row."""
    plans = [benchmark.plan_task(t) for t in cfg.tasks]
    model = cfg.models[0]
    ds = run.inference_stage(model, plans)(run.read_stage(plans, cfg.images))
    times, tokens = [], 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        times.extend([time.perf_counter()] * batch.num_rows)
        tokens += sum(batch.column("output_tokens").to_pylist())
    return steady_rate(times), len(times), stage_cpu_ms_per_row(ds, len(times)), tokens / len(times)


def bench_evaluate(rows: int) -> dict:
    import ray

    per_task = max(rows // len(TASK_NAMES), 16)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        tiny.build("qwen2_vl", tmp / "model")
        write_benchmark(str(tmp / "bench"), n=per_task, seed=3)
        data = _config(tmp)
        cfg = validate(EvaluateConfig, data)

        t0 = time.perf_counter()
        read = sum(1 for t in cfg.tasks for _ in benchmark.iter_examples(benchmark.plan_task(t)))
        read_rate = read / (time.perf_counter() - t0)

        bare: dict = {}
        bare_rate = run_bare(BARE, [json.dumps(data), str(TOKENS)], tmp, bare)

        os.environ.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CACHE_ROOT=str(tmp / "vllm"))
        ray_session.start_local(num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            rate, seen, cpu, stream_tokens = stream_rate(cfg)
        finally:
            ray.shutdown()
    return {
        "examples": read, "tasks": len(TASK_NAMES), "output_tokens_per_row": TOKENS,
        "read_examples_per_s_one_process": round(read_rate, 1), "read_target_per_s": READ_TARGET,
        "read_over_target": round(read_rate / READ_TARGET, 2),
        "bare_vllm_rows_per_s": round(bare_rate, 1), "bare_vllm_rows_per_s_whole_call": bare["rows_per_s_whole_call"],
        "evaluate_stream_rows_per_s": round(rate, 1),
        "output_tokens_per_row_bare": round(bare["output_tokens_per_row"], 2),
        "output_tokens_per_row_stream": round(stream_tokens, 2),
        "stream_rows": seen, "efficiency_stream_over_bare": round(rate / bare_rate, 3),
        "efficiency_target": EFFICIENCY_TARGET,
        "stage_cpu_ms_per_row": cpu, "side_stage_cpu_ms_per_row": side_cpu_ms_per_row(cpu),
    }
