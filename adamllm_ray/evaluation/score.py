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
import tempfile
from pathlib import Path

from adamllm_ray.evaluation.tasks import PAPER_SCORES, RecordError, Task, get_task


class ScoreInputError(Exception):
    """Bad command-line input: reported as one message, exit code 2."""


def _load_vocabulary(value, folder: Path, cache: dict) -> list:
    """Resolve a vocabulary path to its list once; an inline list is returned as is."""
    if not isinstance(value, str):
        return value
    path = Path(value) if os.path.isabs(value) else folder / value
    if path not in cache:
        try:
            phrases = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise RecordError(f"cannot read vocabulary file {str(path)!r}: {err.strerror or err}") from None
        except json.JSONDecodeError as err:
            raise RecordError(f"vocabulary file {str(path)!r} is not valid JSON: {err}") from None
        if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
            raise RecordError(f"vocabulary file {str(path)!r} must hold a JSON list of strings")
        cache[path] = phrases
    return cache[path]


def read_predictions(task: Task, path: str | Path) -> list[dict]:
    """Read and check every record; raise ScoreInputError naming the file and line of the first bad one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM is not part of line 1
    except OSError as err:
        raise ScoreInputError(f"cannot read predictions file {str(path)!r}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ScoreInputError(f"predictions file {str(path)!r} is not UTF-8 text: {err}") from None
    records, vocabularies = [], {}
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may sit in a string
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ScoreInputError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise ScoreInputError(f"{where}: a prediction record must be a JSON object, got {type(record).__name__}")
        try:
            if "vocabulary" in task.record_fields and "vocabulary" in record:
                record["vocabulary"] = _load_vocabulary(record["vocabulary"], path.parent, vocabularies)
            task.check_record(record)
        except RecordError as err:
            raise ScoreInputError(f"{where}: {err}") from None
        records.append(record)
    if not records:
        raise ScoreInputError(f"{path}: no prediction records")
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
    """Write next to the target and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(f.name, path)


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
