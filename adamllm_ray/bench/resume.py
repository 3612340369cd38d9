"""`adamllm bench resume`: what resuming costs. A re-run of an output folder where 200,000 rows are
already done and `rows` are still to do, against a fresh run of the same `rows` alone (each job with
its own Ray, engine start included on both sides). Target: at most 1.3 (the done rows are skipped
by an id lookup before their image is read, so their cost is the index and the final outputs)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from adamllm_ray import records
from adamllm_ray.config import validate
from adamllm_ray.synthesis.config import SynthesisConfig
from adamllm_ray.embedded import sample_data, tiny

DONE = 200_000
TARGET = 1.3


def _config(tmp: Path, src: Path, out: str) -> SynthesisConfig:
    return validate(SynthesisConfig, {
        "source": {"format": "parquet", "path": str(src)}, "output": str(tmp / out), "family": "qwen2_vl",
        "ray": {"address": "local", "num_cpus": 4, "progress_bars": False},
        "synthesizer": {"model": str(tmp / "synthesizer"), "dtype": "float32", "batch_size": 64,
                        "max_model_len": 1024, "sampling": {"max_tokens": 32, "min_tokens": 32}}})


def _done_rows(tmp: Path, src: Path, out: Path, n: int, shards: int = 20) -> None:
    """n input rows and their finished task rows (caption-only examples) in `out/tasks`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = sample_data.encode(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (32, 32), (9, 9, 9)))
    (out / "tasks").mkdir(parents=True)
    per = n // shards
    for k in range(shards):
        ids = [f"done-{i:07d}" for i in range(k * per, (k + 1) * per)]
        caption = [f"A dark square, number {i}." for i in range(len(ids))]
        pq.write_table(pa.table({"id": ids, "image": pa.array([image] * len(ids), pa.binary()), "caption": caption}),
                       src / f"done-{k:03d}.parquet")
        messages = [[{"role": "user", "content": "<image>\nDescribe the image."}, {"role": "assistant", "content": c}]
                    for c in caption]
        rows = [{"id": i, "image_path": "images/done.png", "caption": c, "caption_prompt": "<image>Describe the image.",
                 "raw_output": "", "output_tokens": 32, "messages": m} for i, c, m in zip(ids, caption, messages)]
        pq.write_table(records.to_table(rows, records.task_schema()), out / "tasks" / f"done-{k:03d}.parquet")


def bench_resume(rows: int) -> dict:
    from adamllm_ray.synthesis import pipeline

    rows = max(rows, 100)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        tiny.build("qwen2_vl", tmp / "synthesizer")
        os.environ.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CACHE_ROOT=str(tmp / "vllm"))
        pairs = sample_data.make_pairs(rows, seed=4, broken=False)
        sample_data.write_parquet(pairs, tmp / "fresh", shards=8)
        sample_data.write_parquet(pairs, tmp / "both", shards=8)
        resume_cfg = _config(tmp, tmp / "both", "resumed")
        _done_rows(tmp, tmp / "both", tmp / "resumed", DONE)
        (tmp / "resumed" / "signature.json").write_text(json.dumps(pipeline.signature(resume_cfg)))
        pipeline.run(_config(tmp, tmp / "fresh", "warm"))  # page cache and compiled kernels warm for both
        t = time.perf_counter()
        pipeline.run(_config(tmp, tmp / "fresh", "fresh"))
        fresh = time.perf_counter() - t
        t = time.perf_counter()
        summary = pipeline.run(resume_cfg)
        resumed = time.perf_counter() - t
    assert summary["this_run"]["rows"] == rows and summary["this_run"]["resumed_rows"] == DONE
    return {"rows_to_do": rows, "rows_done": DONE, "fresh_run_s": round(fresh, 1), "resumed_run_s": round(resumed, 1),
            "resumed_over_fresh": round(resumed / fresh, 3), "target": TARGET}
