"""Benchmark folders in the layout of the public evaluation sets, read into examples.

A task's folder (local or s3://) holds parquet files, or the arrow files of a Hugging Face
`save_to_disk` folder (`data-00000-of-00001.arrow`, read with pyarrow: no `datasets` needed); files
are read in sorted order, subfolders included. Columns per task:

| task | columns |
|---|---|
| slake, pathvqa, vqa_rad | `image`, `input` or `question`, `label`, `answer_type` (OPEN / CLOSED) |
| pmc_vqa | `image`, `input` or `question`, `A` `B` `C` `D` (option texts) or `options` (4 texts), `label` (a letter) |
| recipe1m | `image`, `input` or `question`, `label` (the recipe text) |
| any task | `input` (optional): the full prompt text, sent verbatim (the authors' sets carry it) |
| nutrition5k | `image`, `label` (ingredient names or ids); the vocabulary file |
| food101 | `image`, `options` (class names) or the vocabulary file, `label` (a class name or its id) |
| foodseg103 | `image`, `options` (category names) or the vocabulary file, `label` (category names or ids) |

`image` is encoded bytes or a Hugging Face Image struct {bytes, path} (a path alone is read relative
to the file's folder). Where a row has `input`, that is its prompt, unchanged (SPEC §4); only
otherwise is the prompt built from `question`/`options`. An `id` column is kept when present, else
the row's index is its id; every prediction record carries `index`, the row's 0-based position over
the task's files, which seeds the multiple-choice fallback (as in the original). The vocabulary file is
`vocabulary` in the task's config or `vocabulary.json` in the folder: a JSON list of the scored
phrases (an id is a position) or an object {"id": phrase} (FoodSeg103's 1..102: leave out
background and "other", which are not scored).

A folder that cannot be read, or lacks a column, stops the job before any model starts, with a
message naming the folder, the file and the column. A row that cannot be evaluated (bad image, a
label outside the options) becomes an error row; every other row goes on."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any, Iterator

from adamllm_ray import images, records, storage
from adamllm_ray.config import ImageLimits
from adamllm_ray.evaluation.config import EvalTaskConfig
from adamllm_ray.evaluation.benchmark_files import (FILE_SUFFIXES, VOCABULARY_FILE, BenchmarkError, _batches,
                                                    _open_arrow, file_rows, file_schema, load_vocabulary)
from adamllm_ray.evaluation.prompts import prompt_text
from adamllm_ray.evaluation.tasks import RecordError, Task, get_task

CHUNK_ROWS = 256

# field -> accepted column names, in order of preference
ALIASES = {"image": ("image",), "question": ("question",), "label": ("label",),
           "answer_type": ("answer_type",), "options": ("options",), "id": ("id",), "input": ("input",)}
OPTIONAL = ("id", "input")


@dataclass
class BenchmarkFile:
    uri: str
    offset: int  # index of its first row among the task's examples
    rows: int  # rows to read from it (the task's limit applied)


@dataclass
class TaskPlan:
    """What the driver learnt about one task's folder before any model starts."""

    task: str
    folder: str
    files: list[BenchmarkFile]
    columns: dict[str, str | tuple[str, ...]]  # field -> column (options of PMC-VQA: the A-D columns)
    vocabulary: list[str] | None = None  # from the vocabulary file
    vocabulary_ids: dict[int, int] | None = None  # label id -> position, for a {"id": phrase} file
    vocabulary_file: str | None = None
    max_new_tokens: int = 1024
    examples: int = field(init=False)

    def __post_init__(self):
        self.examples = sum(f.rows for f in self.files)

    @property
    def vocabulary_ref(self) -> str:
        """Where prediction records point for their vocabulary: a file beside the predictions file."""
        return f"{self.task}.vocabulary.json"


# ---------------------------------------------------------------- the driver's look at a folder


def _resolve_columns(task: Task, names: list[str], has_vocabulary: bool) -> tuple[dict, list[str]]:
    """(field -> column, missing fields described)."""
    columns, missing = {}, []
    for need in task.columns + OPTIONAL:
        if need == "options" and task.option_columns:
            if "options" in names:
                columns["options"] = "options"
            elif all(c in names for c in task.option_columns):
                columns["options"] = task.option_columns
            else:
                missing.append(", ".join(f"'{c}'" for c in task.option_columns) + " (or 'options')")
            continue
        found = next((c for c in ALIASES[need] if c in names), None)
        if found:
            columns[need] = found
        elif need == "options" and has_vocabulary:
            continue  # the names come from the vocabulary file
        elif need == "question" and "input" in names:
            continue  # the prompt is the input column
        elif need not in OPTIONAL:
            missing.append(" or ".join(f"'{c}'" for c in ALIASES[need]))
    return columns, missing


def _needs_text(task: Task) -> str:
    parts = []
    for need in task.columns:
        if need == "options" and task.option_columns:
            parts.append(f"{task.option_columns[0]}-{task.option_columns[-1]} (or options)")
        else:
            parts.append(" or ".join(ALIASES[need]) + (" (or the vocabulary file)" if need == "options" else "")
                         + (" (or input)" if need == "question" else ""))
    return ", ".join(parts)


def plan_task(cfg: EvalTaskConfig) -> TaskPlan:
    """Check a task's folder (files, columns, vocabulary) and count its examples; raise BenchmarkError."""
    task, folder = cfg.name, cfg.data
    spec = get_task(task)
    try:
        files = storage.list_files(folder, FILE_SUFFIXES)
    except FileNotFoundError:
        raise BenchmarkError(f"{task}: benchmark folder {folder} does not exist") from None
    except OSError as err:
        raise BenchmarkError(f"{task}: cannot list benchmark folder {folder}: {err}") from None
    if not files:
        raise BenchmarkError(f"{task}: no parquet or arrow files under benchmark folder {folder}")

    vocab_uri = cfg.vocabulary
    if vocab_uri is None and spec.vocabulary_file != "none" and storage.exists(storage.join(folder, VOCABULARY_FILE)):
        vocab_uri = storage.join(folder, VOCABULARY_FILE)
    vocabulary, vocabulary_ids = load_vocabulary(vocab_uri) if vocab_uri else (None, None)
    if spec.vocabulary_file == "required" and vocabulary is None:
        raise BenchmarkError(f"{task}: no vocabulary: set the task's `vocabulary` (a JSON list of the "
                             f"scored phrases) or put {VOCABULARY_FILE} in {folder}")

    columns: dict | None = None
    for uri in files:
        rel = storage.relative(uri, folder)
        try:
            names = file_schema(uri).names
        except Exception as err:  # noqa: BLE001 - any reader failure is reported with the file's name
            raise BenchmarkError(f"{task}: cannot read {rel} in benchmark folder {folder}: {err}") from None
        found, missing = _resolve_columns(spec, names, vocabulary is not None)
        if missing:
            raise BenchmarkError(
                f"{task}: benchmark folder {folder}: {rel} has no {missing[0]} column "
                f"({task} needs {_needs_text(spec)}; {rel} has {', '.join(names)})")
        if columns is None:
            columns = found
        elif found != columns:
            raise BenchmarkError(f"{task}: benchmark folder {folder}: {rel} names its columns differently from "
                                 f"{storage.relative(files[0], folder)} ({found} vs {columns})")

    planned, offset = [], 0
    for uri in files:
        left = None if cfg.limit is None else cfg.limit - offset
        if left is not None and left <= 0:
            break
        try:
            n = file_rows(uri, left)
        except Exception as err:  # noqa: BLE001
            raise BenchmarkError(f"{task}: cannot read {storage.relative(uri, folder)} in benchmark folder "
                                 f"{folder}: {err}") from None
        take = n if left is None else min(n, left)
        planned.append(BenchmarkFile(uri, offset, take))
        offset += n
    return TaskPlan(task, folder, planned, columns, vocabulary, vocabulary_ids, vocab_uri,
                    cfg.max_new_tokens or spec.max_new_tokens)


# ---------------------------------------------------------------- rows into examples

EXAMPLE_COLUMNS = ("task", "index", "record", "prompt_text", "image", records.ERROR)


def example_schema():
    """Arrow schema of example rows: nested values are JSON text (Ray Data's concat trouble, records.pack)."""
    import pyarrow as pa

    return pa.schema([("task", pa.string()), ("index", pa.int64()), ("record", pa.string()),
                      ("prompt_text", pa.string()), ("image", pa.binary()), (records.ERROR, pa.string())])


def to_example(plan: TaskPlan, values: dict[str, Any], index: int) -> tuple[dict, str]:
    """(prediction record without `prediction`, prompt text) of one row; RecordError for a bad row."""
    task = get_task(plan.task)
    example_id = values.get("id")
    if example_id is None:
        example_id = index
    elif isinstance(example_id, bool) or not isinstance(example_id, int | str):
        example_id = str(example_id)
    fields, example, shared_vocabulary = task.read_example(values, (plan.vocabulary, plan.vocabulary_ids))
    record: dict[str, Any] = {"id": example_id, "index": index, **fields}
    task.check_record({**record, "prediction": ""})
    text = prompt_text(plan.task, {"input": values.get("input"), **example})
    if shared_vocabulary:
        record["vocabulary"] = plan.vocabulary_ref
    return record, text


def _image_bytes(value: Any, file_uri: str) -> tuple[bytes | None, str | None]:
    """(bytes, None) or (None, why there is no image)."""
    if isinstance(value, dict):  # Hugging Face Image: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return value["bytes"], None
        path = value.get("path")
        if not path:
            return None, "missing image: the row's image has neither bytes nor a path"
        uri = path if storage.is_s3(path) or posixpath.isabs(path) else storage.join(posixpath.dirname(file_uri), path)
        try:
            return storage.read_bytes(uri), None
        except (FileNotFoundError, OSError) as err:
            return None, f"missing image: cannot read {path} ({type(err).__name__})"
    if isinstance(value, bytes | bytearray) and value:
        return bytes(value), None
    return None, "missing image: the row's image is null or empty"


def example_row(plan: TaskPlan, values: dict[str, Any], index: int, file_uri: str, limits: ImageLimits) -> dict:
    row = {"task": plan.task, "index": index, "record": json.dumps({"id": index, "index": index}), "prompt_text": None,
           "image": None, records.ERROR: None}
    try:
        record, row["prompt_text"] = to_example(plan, values, index)
        row["record"] = json.dumps(record)
    except (RecordError, KeyError, TypeError) as err:
        row["record"] = json.dumps({"id": values.get("id") if isinstance(values.get("id"), int | str) else index,
                                    "index": index})
        row[records.ERROR] = json.dumps(records.error("read", f"{plan.task} row {index}: {err}"))
        return row
    data, missing = _image_bytes(values.get("image"), file_uri)
    if data is None:
        row[records.ERROR] = json.dumps(records.error("read", f"{plan.task} row {index}: {missing}"))
        return row
    try:
        row["image"] = images.validate(data, limits)
    except images.ImageError as err:
        row[records.ERROR] = json.dumps(records.error("read", f"{plan.task} row {index}: bad image: {err}"))
    return row


def read_file(plan: TaskPlan, f: BenchmarkFile, limits: ImageLimits, chunk: int = CHUNK_ROWS) -> Iterator[list[dict]]:
    """Example rows of one file, `chunk` at a time (a benchmark file can hold thousands of images)."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(f.uri)
    wanted = {c for v in plan.columns.values() for c in ((v,) if isinstance(v, str) else v)}
    if f.uri.endswith(".parquet"):
        pf = pq.ParquetFile(fs.open_input_file(path))
        batches = pf.iter_batches(batch_size=chunk, columns=sorted(wanted & set(pf.schema_arrow.names)))
    else:
        batches = _batches(_open_arrow(fs, path))
    index, end = f.offset, f.offset + f.rows
    for batch in batches:
        if index >= end:
            break
        rows = batch.slice(0, end - index).to_pylist()
        out = []
        for r in rows:
            values = {}
            for fld, col in plan.columns.items():
                values[fld] = [r[c] for c in col] if isinstance(col, tuple) else r[col]
            out.append(example_row(plan, values, index, f.uri, limits))
            index += 1
        yield out


def iter_examples(plan: TaskPlan, limits: ImageLimits = ImageLimits()) -> Iterator[dict]:
    """Every example row of a task in one process (tests, small runs)."""
    for f in plan.files:
        for rows in read_file(plan, f, limits):
            yield from rows


def to_table(rows: list[dict]):
    import pyarrow as pa

    return pa.Table.from_pylist([{k: r.get(k) for k in EXAMPLE_COLUMNS} for r in rows], schema=example_schema())
