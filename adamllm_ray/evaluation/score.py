"""`adamllm score --task TASK --predictions FILE.jsonl`: score saved predictions with the paper's
metrics, print a table beside the paper's numbers, write the scores as JSON.

Each JSONL line is one prediction record (see evaluation/tasks.py for the fields per task; `index`,
the example's 0-based position in its benchmark split, seeds a multiple-choice guess as in
`adamllm evaluate`, and a record without it takes its position among the file's records). For
nutrition5k and foodseg103 `vocabulary` may be the phrase list itself or the path of a JSON file
holding it (a relative path is taken from the predictions file's folder). Every line is checked
before anything is scored; the first bad one is reported with its line number."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from adamllm_ray import storage
from adamllm_ray.evaluation.benchmark_files import BenchmarkError, load_vocabulary
from adamllm_ray.evaluation.tasks import PAPER_SCORES, RecordError, Task, get_task


class ScoreInputError(Exception):
    """Bad command-line input: reported as one message, exit code 2."""


def _load_vocabulary(value, folder: str, cache: dict) -> list:
    """Resolve a vocabulary path to its phrases once (the benchmark's one vocabulary loader); an
    inline list is returned as is."""
    if not isinstance(value, str):
        return value
    uri = value if storage.is_s3(value) or os.path.isabs(value) else storage.join(folder, value)
    if uri not in cache:
        try:
            cache[uri] = load_vocabulary(uri)[0]
        except BenchmarkError as err:
            raise RecordError(str(err)) from None
    return cache[uri]


def read_predictions(task: Task, path: str | Path, allow_empty: bool = False) -> list[dict]:
    """Read and check every record of a JSONL file (local or s3://), vocabulary paths resolved from
    its folder; raise ScoreInputError naming the file and line of the first bad one."""
    uri = str(path)
    try:
        text = storage.read_bytes(uri).decode("utf-8-sig")  # a BOM is not part of line 1
    except OSError as err:
        raise ScoreInputError(f"cannot read predictions file {uri!r}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ScoreInputError(f"predictions file {uri!r} is not UTF-8 text: {err}") from None
    folder = uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri else "."
    records, vocabularies = [], {}
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may sit in a string
        if not line.strip():
            continue
        where = f"{uri}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ScoreInputError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise ScoreInputError(f"{where}: a prediction record must be a JSON object, got {type(record).__name__}")
        try:
            if "vocabulary" in task.record_fields and "vocabulary" in record:
                record["vocabulary"] = _load_vocabulary(record["vocabulary"], folder, vocabularies)
            task.check_record(record)
        except RecordError as err:
            raise ScoreInputError(f"{where}: {err}") from None
        records.append(record)
    if not records and not allow_empty:
        raise ScoreInputError(f"{uri}: no prediction records")
    return records


def format_table(result: dict) -> str:
    """The scores beside the paper's numbers for the same task."""
    models = [m for m, by_task in PAPER_SCORES.items() if result["task"] in by_task]
    header = f"{'score':<10}{'ours':>10}{'n':>8}" + "".join(f"{m:>18}" for m in models)
    lines = [f"task {result['task']}: {result['n']} predictions (right: the paper's numbers, v4)", header]
    for key, value in result["scores"].items():
        ours = "-" if value is None else f"{value:.2f}"
        paper = "".join(f"{PAPER_SCORES[m][result['task']][key]:>18.1f}" for m in models)
        lines.append(f"{key:<10}{ours:>10}{result['counts'][key]:>8}{paper}")
    if "guessed" in result["counts"]:
        lines.append(f"no choice found (seeded guess): {result['counts']['guessed']}")
    return "\n".join(lines)


def _write_json(path: Path, data: dict) -> None:
    storage.write_text_atomic(str(path), json.dumps(data, indent=2) + "\n")


def default_output(predictions: str | Path) -> Path:
    path = Path(predictions)
    return path.with_name(path.name.removesuffix(".jsonl") + ".metrics.json")


def score_file(task_name: str, predictions: str | Path, output: str | Path | None = None) -> dict:
    try:
        task = get_task(task_name)
    except RecordError as err:
        raise ScoreInputError(str(err)) from None
    result = task.score(read_predictions(task, predictions))
    _write_json(Path(output) if output else default_output(predictions), result)
    return result


def main(args) -> int:
    try:
        result = score_file(args.task, args.predictions, args.output)
    except ScoreInputError as err:
        print(f"adamllm score: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"wrote {args.output or default_output(args.predictions)}")
    return 0
