"""`adamllm bench WHAT`: throughput and memory targets, measured side by side in one run and
printed as ratios (never asserted by timed tests). Each benchmark lives beside the code it measures
and is listed here by name."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

BENCHMARKS = {
    "read": "adamllm_ray.sources:bench_read",
    "method": "adamllm_ray.synthesis.bench:bench_method",
    "synthesis": "adamllm_ray.synthesis.bench_pipeline:bench_synthesis",
    "score": "adamllm_ray.evaluation.bench:bench_score",
    "serve": "adamllm_ray.serving.bench:bench_serve",
    "evaluate": "adamllm_ray.evaluation.bench_run:bench_evaluate",
    "train": "adamllm_ray.training.bench:bench_train",
    "submit": "adamllm_ray.submit:bench_submit",
    "inspect": "adamllm_ray.inspect.bench:bench_inspect",
    "resume": "adamllm_ray.synthesis.bench_resume:bench_resume",
}


def run(what: str, rows: int, out: str | None) -> dict:
    module, func = BENCHMARKS[what].split(":")
    result = getattr(importlib.import_module(module), func)(rows)
    print(json.dumps(result, indent=2))
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
    return result
