"""A synthesis output folder written without any engine: rows made by the method's own functions
(family turn format, parse, pair, judge verdict, compose) and finished by the pipeline's own
`finalize`, so the folder has exactly the layout and columns of a real run. For the inspector's
tests and its benchmark (a 200,000-row run in seconds instead of GPU-hours)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from adamllm_ray import records
from adamllm_ray.embedded import sample_data
from adamllm_ray.families import get_family
from adamllm_ray.records import ERROR, ID, IMAGE_PATH, error
from adamllm_ray.synthesis.stages import finish_row, parse_row

ERROR_STAGES = ("read", "synthesize", "judge")


def _row(i: int, rng: random.Random, family, image_path: str, sc: dict) -> tuple[dict, dict]:
    row = {ID: f"gen-{i:07d}", IMAGE_PATH: image_path, records.CAPTION: sample_data.caption(sc),
           records.CAPTION_PROMPT: sample_data.CAPTION_PROMPT, ERROR: None, "raw_output": None, "output_tokens": 0}
    roll = rng.random()
    if roll < 0.03:  # bad input: the image stays where the source had it
        row.update({IMAGE_PATH: f"source/{row[ID]}.png", ERROR: error("read", "bad image: truncated PNG bytes")})
        return {**row, **finish_row(parse_row(row, family))}, sc
    if roll < 0.04:
        row[ERROR] = error("synthesize", "prompt is longer than the maximum model length")
        return {**row, **finish_row(parse_row(row, family))}, sc
    pairs = sample_data.scene_qa(sc)
    keep = rng.choice((len(pairs), len(pairs), 3, 1))  # some outputs give no triplet
    raw = family.format_turns(pairs[:keep])
    if rng.random() < 0.1:  # cut off by the token budget
        raw += family.user_header + "Answer with a precise response.\nWhat"
    row.update(raw_output=raw, output_tokens=len(raw) // 4)
    row = parse_row(row, family)
    if row[records.TRIPLET] is None:
        return {**row, **finish_row(row), "judge_output": None}, sc
    if rng.random() < 0.01:
        row[ERROR] = error("judge", "engine error: request failed")
        return {**finish_row(row), "judge_output": None}, sc
    judge_output = rng.choice((" Yes", " Yes", " No", " Open"))
    return {**finish_row(row, "single_stage", judge_output), "judge_output": judge_output}, sc


def write_run(out: str | Path, n: int, seed: int = 0, rows_per_file: int = 10_000, row_group: int = 1_000,
              distinct_images: bool = True) -> Path:
    """Write tasks/*.parquet, images/, then train.json, errors/ and summary.json via the pipeline's
    finalize. With `distinct_images=False` rows share a pool of 64 image files (fast at 200K rows)."""
    import pyarrow.parquet as pq

    from adamllm_ray.config import validate
    from adamllm_ray.synthesis.config import SynthesisConfig
    from adamllm_ray.synthesis import pipeline

    out = Path(out)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    family = get_family("qwen2_vl")
    rng = random.Random(seed)
    schema = records.task_schema()
    pool: list[str] = []
    batch: list[dict] = []
    writer = None
    for i in range(n):
        if i % rows_per_file == 0:
            if writer:
                writer.close()
            writer = pq.ParquetWriter(out / "tasks" / f"gen_{i // rows_per_file:06d}.parquet", schema)
        sc = sample_data.scene(rng)
        if distinct_images or len(pool) < 64:
            data = sample_data.encode(sample_data.draw(sc, random.Random(i)))
            rel = pipeline.image_name(f"gen-{i:07d}", data)
            (out / rel).write_bytes(data)
            pool.append(rel)
            image_path = rel
        else:
            image_path = pool[i % len(pool)]
        row, _ = _row(i, rng, family, image_path, sc)
        batch.append(row)
        if len(batch) == row_group or (i + 1) % rows_per_file == 0 or i == n - 1:
            writer.write_table(records.to_table(batch, schema))
            batch = []
    if writer:
        writer.close()
    cfg = validate(SynthesisConfig, {
        "source": {"format": "parquet", "path": str(out / "generated-source" / "*.parquet")}, "output": str(out),
        "family": "qwen2_vl", "synthesizer": {"model": "generated/synthesizer"}, "judge": {"model": "generated/judge"}},
        "sample_run")
    pipeline.finalize(cfg, 1.0, set())
    return out


def _answer(task: str, record: dict, right: bool) -> str:
    if not right:
        return "Unsure."  # no choice letter, no yes/no, no label word: wrong under every metric
    label = record["label"]
    if task == "pmc_vqa":
        return f"The answer is ({label})."
    if isinstance(label, list):
        return ", ".join(label)
    return label.replace("_", " ")


def write_eval_run(out: str | Path, bench_dir: str | Path, n: int = 12, models: tuple[str, ...] = ("before", "after"),
                   seed: int = 0) -> Path:
    """An evaluation output folder for every task of a generated benchmark (`write_benchmark`, one
    broken image per task): each model answers a seeded share of the examples right, and the
    evaluation's own writers (`write_pair`, `finalize`) write predictions, errors, metrics and report."""
    from adamllm_ray.config import validate
    from adamllm_ray.evaluation.config import EvaluateConfig
    from adamllm_ray.embedded.make_benchmark import write_benchmark
    from adamllm_ray.evaluation import benchmark, run
    from adamllm_ray.evaluation.tasks import TASKS

    write_benchmark(str(bench_dir), n=n, seed=seed, broken=True)
    cfg = validate(EvaluateConfig, {
        "output": str(out),
        "models": [{"name": name, "model": f"generated/{name}", "paper": "Qwen2-VL-2B" if k == 0 else None}
                   for k, name in enumerate(models)],
        "tasks": [{"name": t, "data": str(Path(bench_dir) / t)} for t in TASKS]}, "sample_eval_run")
    plans = {t.name: benchmark.plan_task(t) for t in cfg.tasks}
    for k, model in enumerate(cfg.models):
        rng = random.Random(seed * 31 + k)
        for plan in plans.values():
            rows = []
            for ex in benchmark.iter_examples(plan):
                record = json.loads(ex["record"])
                if ex[ERROR] is None and plan.vocabulary is not None and isinstance(record.get("vocabulary"), str):
                    record["vocabulary"] = plan.vocabulary
                prediction = _answer(plan.task, record, rng.random() < 0.3 + 0.4 * k) if ex[ERROR] is None else None
                rows.append({"index": ex["index"], "record": ex["record"], ERROR: ex[ERROR],
                             "prediction": prediction, "output_tokens": 4})
            run.write_pair(str(out), model, plan, rows, 0.0)
    run.finalize(cfg, plans, {"pairs": 0, "rows": 0})
    return Path(out)
