"""An evaluation output folder: scores beside the paper's, and each example with every model's
answer. Predictions files hold no image or prompt, so a page reads those from the benchmark folder
named in metrics.json (only the rows it shows). Per task an index (cached parquet) holds each model's
per-example score, guessed flag and the byte offset of its prediction record."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from adamllm_ray import storage
from adamllm_ray.evaluation.tasks import PAPER_SCORES, TASKS
from adamllm_ray.inspect.runs import InspectError, cache_dir, read_json

INDEX_VERSION = "3"  # 2: multiple-choice guesses seeded by the example index; 3: scored by the task's scorer


def example_score(task: str, record: dict, position: int) -> tuple[float, bool]:
    """(score x100, guessed) of one prediction record: the task's own scorer (the one `adamllm score`
    and the evaluate job use) on that record alone, its multiple-choice guess seeded by its position."""
    result = TASKS[task].score([{"index": position, **record}])
    score = next(v for v in result["scores"].values() if v is not None)
    return round(score, 2), bool(result["counts"].get("guessed"))


def _read_lines(uri: str) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    for line in storage.read_bytes(uri).split(b"\n"):
        if line.strip():
            out.append((pos, line))
        pos += len(line) + 1
    return out


class EvaluationRun:
    kind = "evaluation"

    def __init__(self, uri: str):
        self.uri = uri
        self.metrics = read_json(storage.join(uri, "metrics.json"), "metrics.json")
        try:
            self.models = list(self.metrics["results"])
            self.tasks = [t for t in self.metrics["tasks"] if t in TASKS]
            self.task_cfg = {t["name"]: t for t in self.metrics["config"]["tasks"]}
        except (KeyError, TypeError):
            raise InspectError(422, f"metrics.json in {uri} lacks results, tasks or config") from None
        self.cache = cache_dir(uri, [storage.join(uri, "metrics.json")])
        self._index: dict[str, pa.Table] = {}
        self._plans: dict[str, Any] = {}
        self._vocab: dict[str, list] = {}

    def scores(self) -> list[dict]:
        """Per task score: each model's number and, where the paper has one, the paper's beside it."""
        rows = []
        paper = self.metrics.get("paper") or {}
        for task in self.tasks:
            for key in TASKS[task].score_keys:
                cells = []
                for model in self.models:
                    ours = self.metrics["results"][model][task]["scores"].get(key)
                    theirs = PAPER_SCORES.get(paper.get(model) or "", {}).get(task, {}).get(key)
                    cells.append({"model": model, "score": ours, "paper": theirs, "paper_model": paper.get(model)})
                rows.append({"task": task, "title": TASKS[task].title, "key": key, "cells": cells})
        return rows

    def _file(self, model: str, task: str, folder: str, suffix: str) -> str:
        return storage.join(self.uri, folder, model, f"{task}{suffix}")

    def index(self, task: str) -> pa.Table:
        """One row per example: for each model the offset/length of its prediction record (-1 for an
        error row), its score x100 and guessed flag, or its error message."""
        if task not in self.tasks:
            raise InspectError(404, f"no task {task!r} in this run (it has {', '.join(self.tasks) or 'none'})")
        if task in self._index:
            return self._index[task]
        path = os.path.join(self.cache, f"eval-{task}-v{INDEX_VERSION}.parquet")
        if not os.path.exists(path):
            self._build(task, path)
        self._index[task] = pq.read_table(path)
        return self._index[task]

    def _build(self, task: str, path: str) -> None:
        n = self.metrics["results"][self.models[0]][task]["examples"]
        cols: dict[str, list] = {"index": list(range(n))}
        for model in self.models:
            pred_uri = self._file(model, task, "predictions", ".jsonl")
            err_uri = self._file(model, task, "errors", ".jsonl")
            for uri in (pred_uri, err_uri):
                if not storage.exists(uri):
                    raise InspectError(422, f"the run is missing {uri}")
            errors = {e["index"]: e for e in map(json.loads, (line for _, line in _read_lines(err_uri)))}
            off, length, score, guessed = [-1] * n, [0] * n, [None] * n, [False] * n
            error = [f"{errors[i]['stage']}: {errors[i]['message']}" if i in errors else None for i in range(n)]
            lines = _read_lines(pred_uri)
            indexes = [i for i in range(n) if i not in errors]
            if len(indexes) != len(lines):
                raise InspectError(422, f"{pred_uri} holds {len(lines)} predictions for {len(indexes)} examples")
            for i, (pos, line) in zip(indexes, lines):
                record = self._resolve(json.loads(line), model, task)
                s, g = example_score(task, record, i)
                off[i], length[i], score[i], guessed[i] = pos, len(line), s, g
            cols.update({f"{model}.off": off, f"{model}.len": length, f"{model}.score": score,
                         f"{model}.guessed": guessed, f"{model}.error": error})
        tmp = f"{path}.tmp-{os.getpid()}"
        pq.write_table(pa.table(cols), tmp)
        os.replace(tmp, path)

    def _resolve(self, record: dict, model: str, task: str) -> dict:
        ref = record.get("vocabulary")
        if isinstance(ref, str):
            key = f"{model}/{ref}"
            if key not in self._vocab:
                self._vocab[key] = json.loads(storage.read_bytes(storage.join(self.uri, "predictions", model, ref)))
            record["vocabulary"] = self._vocab[key]
        return record

    def filter(self, task: str, wrong: str = "") -> np.ndarray:
        """Example positions; with `wrong` (a model name, or "any") only the examples that model (or
        any model) did not answer with full marks, error rows included."""
        idx = self.index(task)
        if not wrong:
            return np.arange(idx.num_rows)
        models = self.models if wrong == "any" else [wrong]
        if wrong != "any" and wrong not in self.models:
            raise InspectError(400, f"no model {wrong!r} in this run (it has {', '.join(self.models)})")
        mask = np.zeros(idx.num_rows, dtype=bool)
        for model in models:
            s = idx.column(f"{model}.score").to_numpy(zero_copy_only=False)
            mask |= ~(np.nan_to_num(s.astype(float), nan=-1.0) >= 100.0)
        return np.flatnonzero(mask)

    def examples(self, task: str, positions) -> list[dict]:
        """The rows of a page: prompt and image link from the benchmark, each model's answer."""
        idx = self.index(task).take(pa.array(np.asarray(positions, dtype=np.int64))).to_pylist()
        bench = self.bench_rows(task, [r["index"] for r in idx])
        out = []
        for r in idx:
            ex = bench.get(r["index"], {})
            err = ex.get("error")
            item = {"index": r["index"], "prompt": ex.get("prompt_text"), "models": [],
                    "label": json.loads(ex["record"]).get("label") if ex.get("record") else None,
                    "bench_error": json.loads(err)["message"] if err and err.startswith("{") else err}
            for model in self.models:
                answer = {"model": model, "prediction": None, "score": r[f"{model}.score"],
                          "guessed": r[f"{model}.guessed"], "error": r[f"{model}.error"]}
                if r[f"{model}.off"] >= 0:
                    record = self._record(model, task, r[f"{model}.off"], r[f"{model}.len"])
                    answer["prediction"] = record["prediction"]
                    item["label"] = record["label"]
                answer["wrong"] = answer["score"] is None or answer["score"] < 100
                item["models"].append(answer)
            out.append(item)
        return out

    def _record(self, model: str, task: str, off: int, length: int) -> dict:
        fs, path = storage.filesystem(self._file(model, task, "predictions", ".jsonl"))
        with fs.open_input_file(path) as f:
            f.seek(off)
            return json.loads(f.read(length))

    # ------------------------------------------------------------ the benchmark's side

    def plan(self, task: str):
        from adamllm_ray.config import validate
        from adamllm_ray.evaluation.config import EvalTaskConfig
        from adamllm_ray.evaluation import benchmark

        if task not in self._plans:
            try:
                self._plans[task] = benchmark.plan_task(validate(EvalTaskConfig, self.task_cfg[task], task))
            except Exception as err:  # noqa: BLE001 - a moved or unreadable benchmark: say so on the page
                self._plans[task] = str(err).splitlines()[0]
        return self._plans[task]

    def bench_rows(self, task: str, indexes: list[int]) -> dict[int, dict]:
        """Example rows (prompt text, image bytes or error) of the given indexes, reading only the
        parquet row groups (or arrow batches) that hold them."""
        from adamllm_ray.config import ImageLimits
        from adamllm_ray.evaluation import benchmark

        plan = self.plan(task)
        if isinstance(plan, str):
            return {i: {"error": f"benchmark folder unavailable: {plan}"} for i in indexes}
        wanted = {c for v in plan.columns.values() for c in ((v,) if isinstance(v, str) else v)}
        out: dict[int, dict] = {}
        for f in plan.files:
            mine = sorted(i for i in indexes if f.offset <= i < f.offset + f.rows)
            if not mine:
                continue
            fs, path = storage.filesystem(f.uri)
            if f.uri.endswith(".parquet"):
                pf = pq.ParquetFile(fs.open_input_file(path))
                cols = sorted(wanted & set(pf.schema_arrow.names))
                start = f.offset
                for rg in range(pf.num_row_groups):
                    size = pf.metadata.row_group(rg).num_rows
                    here = [i for i in mine if start <= i < start + size]
                    if here:
                        rows = pf.read_row_group(rg, columns=cols).take([i - start for i in here]).to_pylist()
                        out.update((i, (r, f.uri)) for i, r in zip(here, rows))
                    start += size
            else:
                start = f.offset
                for batch in benchmark._batches(benchmark._open_arrow(fs, path)):
                    here = [i for i in mine if start <= i < start + batch.num_rows]
                    if here:
                        rows = batch.take([i - start for i in here]).to_pylist()
                        out.update((i, (r, f.uri)) for i, r in zip(here, rows))
                    start += batch.num_rows
                    if start > mine[-1]:
                        break
        result = {}
        for i, (raw, uri) in out.items():
            values = {fld: [raw[c] for c in col] if isinstance(col, tuple) else raw[col]
                      for fld, col in plan.columns.items()}
            result[i] = benchmark.example_row(plan, values, i, uri, ImageLimits())
        return result

    def image(self, task: str, index: int) -> bytes:
        if task not in self.tasks:
            raise InspectError(404, f"no task {task!r} in this run")
        row = self.bench_rows(task, [index]).get(index)
        if row is None:
            raise InspectError(404, f"no example {index} in {task}")
        if row.get("image") is None:
            err = row.get("error") or "unavailable"
            raise InspectError(404, f"example {index} of {task} has no image: "
                                    f"{json.loads(err)['message'] if err.startswith('{') else err}")
        return row["image"]
