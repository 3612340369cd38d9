"""`adamllm evaluate`: batch inference of each model over each benchmark on a vLLM pool (Ray Data),
then the paper's scores, a report and a chart.

    plan (driver: files, columns, vocabularies, counts) -> per model: read -> vLLM pool -> driver writes each task

One engine pool per model serves all of its tasks in one stream (one engine start). The driver
writes a (model, task) pair as soon as its last example arrives:

    OUT/predictions/<model>/<task>.jsonl   prediction records, the format `adamllm score` reads
    OUT/predictions/<model>/<task>.vocabulary.json   (Nutrition5K, FoodSeg103: the records point to it)
    OUT/errors/<model>/<task>.jsonl        examples without a prediction (bad image, engine error, bad row)
    OUT/done/<model>/<task>.json           written last: the pair is complete (counts and what it ran on)

and at the end OUT/errors.jsonl, OUT/metrics.json, OUT/report.md and OUT/report.png from those files.
Every example ends in exactly one of the two files; metrics.json says how many of each. A re-run
skips the pairs whose done file matches the config (model, data, limit, budget), so an interrupted
job finishes without redoing finished pairs; `resume: false` redoes all.

Rows that failed before the engine (a bad image) pass through it as one-token no-op requests, so
the stream stays whole; their error is kept.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from adamllm_ray import engine, images, records, scaling, storage
from adamllm_ray.config import dump_config, validate
from adamllm_ray.evaluation.config import EvalModelConfig, EvaluateConfig
from adamllm_ray.evaluation import benchmark, report
from adamllm_ray.evaluation.benchmark import BenchmarkError, TaskPlan
from adamllm_ray.evaluation.prompts import engine_kwargs, evaluation_prompt
from adamllm_ray.families import get_family
from adamllm_ray.evaluation.score import read_predictions
from adamllm_ray.evaluation.tasks import TASKS, get_task
from adamllm_ray.ray_session import ray_session

# How examples are asked (evaluation/prompts.py); a pair done another way is redone. 2: as the authors
# asked (input verbatim, pixel bounds, special tokens skipped, guesses seeded by the index).
PROTOCOL = 2
CARRIED = ("task", "index", "record", records.ERROR)


# ---------------------------------------------------------------- where a pair's files go


def predictions_file(out: str, model: str, task: str) -> str:
    return storage.join(out, "predictions", model, f"{task}.jsonl")


def errors_file(out: str, model: str, task: str) -> str:
    return storage.join(out, "errors", model, f"{task}.jsonl")


def done_file(out: str, model: str, task: str) -> str:
    return storage.join(out, "done", model, f"{task}.json")


def pair_signature(model: EvalModelConfig, plan: TaskPlan) -> dict[str, Any]:
    """What a pair's results depend on; a done file with another signature is redone."""
    return {"protocol": PROTOCOL, "model": model.model, "family": model.family, "data": plan.folder,
            "examples": plan.examples,
            "vocabulary": plan.vocabulary_file, "max_new_tokens": plan.max_new_tokens,
            "temperature": model.sampling.temperature}


def read_done(out: str, model: str, task: str) -> dict | None:
    uri = done_file(out, model, task)
    if not storage.exists(uri):
        return None
    try:
        return json.loads(storage.read_bytes(uri))
    except ValueError:
        return None


def _jsonl(items: list[dict]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def _read_jsonl(uri: str) -> list[dict]:
    # "\n" only: a prediction may hold U+2028 or U+0085, which splitlines() would also split on
    return [json.loads(line) for line in storage.read_bytes(uri).decode("utf-8").split("\n") if line.strip()]


# ---------------------------------------------------------------- the Ray stream of one model


def read_stage(plans: list[TaskPlan], limits, tasks: int = 2):
    """A dataset of example rows (benchmark.example_schema): one read task per benchmark file, `tasks`
    at once (engine.side_tasks: unbounded, they would keep a second engine's CPUs from the pool)."""
    import ray

    by_task = {p.task: p for p in plans}
    items = [{"task": p.task, "file": i} for p in plans for i in range(len(p.files))]

    def read(batch):
        for task, i in zip(batch["task"], batch["file"]):
            plan = by_task[task]
            for rows in benchmark.read_file(plan, plan.files[int(i)], limits):
                yield benchmark.to_table(rows)

    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.map_batches(read, batch_size=1, batch_format="numpy", num_cpus=0.5, concurrency=tasks)


def inference_stage(model: EvalModelConfig, plans: list[TaskPlan]):
    family = get_family(model.family)
    # The answer ends with the assistant turn, whether or not the model's generation config lists its
    # end-of-turn token as an end of sequence; the stop string itself is not part of the prediction,
    # and special tokens are skipped in it (SPEC §4).
    stop = list(model.sampling.stop or family.evaluation_stop)
    params = {p.task: engine.sampling_params(model, max_tokens=p.max_new_tokens, stop=stop, skip_special_tokens=True)
              for p in plans}
    model = model.model_copy(update={"engine_kwargs": engine_kwargs(family, model.engine_kwargs)})

    def pre(row: dict) -> dict:
        carried = {**{k: row.get(k) for k in CARRIED}, "image": None}  # the bytes go once, as the engine's image
        if row[records.ERROR] is not None:  # no request: the row goes around the engine
            return {**carried, **engine.skip(params[row["task"]])}
        return {**carried, **engine.ask(evaluation_prompt(family, row["prompt_text"]), params[row["task"]]),
                "multimodal_data": {"image": images.ForEngine(row["image"])}}

    def post(row: dict) -> dict:
        out = {k: row.get(k) for k in CARRIED}
        out.update(prediction=None, output_tokens=0)
        if out[records.ERROR] is None:
            message = engine.engine_error(row)
            if message:
                out[records.ERROR] = json.dumps(records.error("generate", message))
            else:
                out.update(prediction=row["generated_text"], output_tokens=int(row.get("num_generated_tokens") or 0))
        return out

    return engine.build_processor(model, pre, post, multimodal=True)


def write_pair(out: str, model: EvalModelConfig, plan: TaskPlan, rows: list[dict], wall_s: float) -> dict:
    """The pair's predictions and errors, then its done file (atomic writes, in that order)."""
    rows = sorted(rows, key=lambda r: r["index"])
    indexes = [r["index"] for r in rows]
    if indexes != list(range(plan.examples)):
        missing = sorted(set(range(plan.examples)) - set(indexes))
        raise RuntimeError(f"{model.name}/{plan.task}: examples lost or doubled in the stream "
                           f"(missing indexes {missing[:10]}, {len(rows)} rows for {plan.examples} examples)")
    predictions, errors = [], []
    for r in rows:
        record = json.loads(r["record"])
        if r[records.ERROR] is None:
            predictions.append({**record, "prediction": r["prediction"]})
        else:
            err = json.loads(r[records.ERROR])
            errors.append({"model": model.name, "task": plan.task, "id": record["id"], "index": r["index"],
                           "stage": err["stage"], "message": err["message"]})
    if plan.vocabulary is not None and "vocabulary" in get_task(plan.task).record_fields:  # records point to it
        storage.write_text_atomic(storage.join(out, "predictions", model.name, plan.vocabulary_ref),
                                  json.dumps(plan.vocabulary, ensure_ascii=False, indent=1))
    storage.write_text_atomic(errors_file(out, model.name, plan.task), _jsonl(errors))
    storage.write_text_atomic(predictions_file(out, model.name, plan.task), _jsonl(predictions))
    done = {"signature": pair_signature(model, plan), "examples": plan.examples, "predictions": len(predictions),
            "errors": len(errors), "output_tokens": sum(r["output_tokens"] or 0 for r in rows),
            "wall_s": round(wall_s, 2)}
    storage.write_text_atomic(done_file(out, model.name, plan.task), json.dumps(done, indent=1))
    print(f"  {model.name}/{plan.task}: {len(predictions)} predictions, {len(errors)} errors")
    return done


def infer(cfg: EvaluateConfig, model: EvalModelConfig, plans: list[TaskPlan]) -> int:
    """Run one model over its pending tasks in one stream; write each pair as it completes. Returns rows."""
    t0 = time.perf_counter()
    expected = {p.task: p.examples for p in plans}
    by_task = {p.task: p for p in plans}
    got: dict[str, list[dict]] = {p.task: [] for p in plans}
    for task in [t for t, n in expected.items() if n == 0]:
        write_pair(cfg.output, model, by_task[task], got.pop(task), 0.0)
    ds = inference_stage(model, plans)(read_stage(plans, cfg.images, engine.side_tasks(model)))
    n = 0
    for row in ds.iter_rows():
        task = row["task"]
        got[task].append({k: row[k] for k in (*CARRIED, "prediction", "output_tokens")})
        n += 1
        if len(got[task]) == expected[task]:
            write_pair(cfg.output, model, by_task[task], got.pop(task), time.perf_counter() - t0)
    if got:
        raise RuntimeError(f"{model.name}: the stream ended before these tasks were complete: "
                           + ", ".join(f"{t} ({len(r)} of {expected[t]})" for t, r in got.items()))
    return n


# ---------------------------------------------------------------- scores and report


def finalize(cfg: EvaluateConfig, plans: dict[str, TaskPlan], this_run: dict) -> dict:
    """metrics.json, errors.jsonl, report.md and report.png from every pair's files."""
    out = cfg.output
    results: dict[str, dict] = {}
    all_errors: list[dict] = []
    for model in cfg.models:
        results[model.name] = {}
        for task in plans:
            done = read_done(out, model.name, task)
            if done is None:
                raise RuntimeError(f"{model.name}/{task} did not complete (no {done_file(out, model.name, task)})")
            scored = TASKS[task].score(read_predictions(TASKS[task], predictions_file(out, model.name, task), True))
            errors = _read_jsonl(errors_file(out, model.name, task))
            all_errors += errors
            results[model.name][task] = {**scored, "examples": done["examples"], "errors": len(errors)}
    entries = [r for by_task in results.values() for r in by_task.values()]
    counts = {"models": len(cfg.models), "tasks": len(plans), "examples": sum(r["examples"] for r in entries),
              "predictions": sum(r["n"] for r in entries), "errors": sum(r["errors"] for r in entries),
              "errors_by_stage": {}}
    for e in all_errors:
        counts["errors_by_stage"][e["stage"]] = counts["errors_by_stage"].get(e["stage"], 0) + 1
    metrics = {
        "tasks": list(plans),
        "results": results,
        "paper": {m.name: m.paper for m in cfg.models},
        "counts": counts,
        "checks": {"every example has a prediction or an error":
                   all(r["n"] + r["errors"] == r["examples"] for r in entries)},
        "this_run": this_run,
        "outputs": {k: storage.join(out, v) for k, v in (("predictions", "predictions"), ("errors", "errors.jsonl"),
                                                         ("report", "report.md"), ("chart", "report.png"))},
        "config": dump_config(cfg),
    }
    storage.write_text_atomic(storage.join(out, "errors.jsonl"), _jsonl(all_errors))
    storage.write_text_atomic(storage.join(out, "metrics.json"), json.dumps(metrics, indent=2))
    storage.write_text_atomic(storage.join(out, "report.md"), report.markdown(metrics))
    storage.write_bytes_atomic(storage.join(out, "report.png"), report.chart_png(metrics))
    return metrics


def pending_pairs(cfg: EvaluateConfig, plans: dict[str, TaskPlan]) -> dict[str, list[TaskPlan]]:
    """Per model, the tasks to run: all without resume, else those without a matching done file."""
    pending = {}
    for model in cfg.models:
        pending[model.name] = []
        for plan in plans.values():
            done = read_done(cfg.output, model.name, plan.task) if cfg.resume else None
            if done is None or done.get("signature") != pair_signature(model, plan):
                pending[model.name].append(plan)
    return pending


def run(cfg: EvaluateConfig) -> dict:
    """Plan every benchmark (fails fast on a bad folder), infer the pending pairs, score, report."""
    cfg.s3.apply_to_environment()
    plans = {t.name: benchmark.plan_task(t) for t in cfg.tasks}
    pending = pending_pairs(cfg, plans)
    t0 = time.perf_counter()
    rows, timeline = 0, None
    if any(pending.values()):
        with ray_session(cfg.ray):
            sampler = scaling.start()  # nodes and engines alive over the run: metrics.json "scaling", scaling.png
            for model in cfg.models:
                if pending[model.name]:
                    print(f"{model.name}: {', '.join(p.task for p in pending[model.name])} "
                          f"({sum(p.examples for p in pending[model.name])} examples)")
                    rows += infer(cfg, model, pending[model.name])
            timeline = sampler.stop()
    wall = time.perf_counter() - t0
    this_run = {"pairs": sum(len(v) for v in pending.values()), "rows": rows, "wall_s": round(wall, 2),
                "rows_per_s": round(rows / wall, 2) if rows and wall else None,
                "resumed_pairs": len(cfg.models) * len(plans) - sum(len(v) for v in pending.values())}
    metrics = finalize(cfg, plans, this_run)
    if timeline is not None:
        scaling.record(cfg.output, "metrics.json", metrics, timeline)
    print("\n" + report.markdown(metrics))
    print(f"wrote {metrics['outputs']['report']} and {metrics['outputs']['chart']}")
    return metrics


def main(cfg: EvaluateConfig) -> int:
    try:
        run(cfg)
    except BenchmarkError as err:
        print(f"adamllm evaluate: {err}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------- for the demo


def evaluate_models(models: dict[str, str], bench_dir: str, out_dir: str, family: str = "qwen2_vl",
                    max_new_tokens: int = 32, limit: int | None = None, engine_overrides: dict | None = None) -> str:
    """Evaluate local model folders ({name: folder}) on CPU over every task folder found in `bench_dir`
    (as `adamllm make-benchmark` writes it); returns the path of report.md. Uses an initialised Ray
    if there is one, else starts a private local one."""
    tasks = [t for t in TASKS if storage.is_dir(storage.join(bench_dir, t))]
    if not tasks:
        raise BenchmarkError(f"no task folders ({', '.join(TASKS)}) under {bench_dir}")
    engine_cfg = {"accelerator": "cpu", "dtype": "float32", "concurrency": 1, "batch_size": 16,
                  "max_model_len": 2048, **(engine_overrides or {})}
    cfg = validate(EvaluateConfig, {
        "ray": {"address": "local", "num_cpus": 4},
        "output": out_dir,
        "models": [{"name": name, "model": path, "family": family, **engine_cfg} for name, path in models.items()],
        "tasks": [{"name": t, "data": storage.join(bench_dir, t), "limit": limit, "max_new_tokens": max_new_tokens}
                  for t in tasks],
    }, "evaluate_models")
    run(cfg)
    return storage.join(out_dir, "report.md")
