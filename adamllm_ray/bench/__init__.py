"""`adamllm bench WHAT`: throughput and memory targets, measured side by side in one run and
printed as ratios (never asserted by timed tests). Each benchmark is one module of
this package, listed here by name."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

BENCHMARKS = {
    "read": "adamllm_ray.bench.read:bench_read",
    "method": "adamllm_ray.bench.method:bench_method",
    "synthesis": "adamllm_ray.bench.synthesis:bench_synthesis",
    "streaming": "adamllm_ray.bench.synthesis:bench_streaming",
    "score": "adamllm_ray.bench.score:bench_score",
    "serve": "adamllm_ray.bench.serve:bench_serve",
    "evaluate": "adamllm_ray.bench.evaluate:bench_evaluate",
    "train": "adamllm_ray.bench.train:bench_train",
    "submit": "adamllm_ray.bench.submit:bench_submit",
    "inspect": "adamllm_ray.bench.inspect:bench_inspect",
    "resume": "adamllm_ray.bench.resume:bench_resume",
    "autoscale": "adamllm_ray.bench.autoscale:bench_autoscale",
}


def run(what: str, rows: int, out: str | None) -> dict:
    module, func = BENCHMARKS[what].split(":")
    result = getattr(importlib.import_module(module), func)(rows)
    print(json.dumps(result, indent=2))
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
    return result
