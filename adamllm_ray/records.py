"""The columns that flow between stages (DESIGN.md, "Rows between stages"), in one place.

A row is a plain dict. Every stage adds its columns and never drops the row: a row that fails
gets `error = {"stage": ..., "message": ...}` and is carried to the error output.
"""

from typing import Any

ID = "id"  # stable, unique per input pair (string)
IMAGE = "image"  # encoded image bytes (PNG/JPEG), validated and RGB-decodable
IMAGE_PATH = "image_path"  # where the image came from (or relative path in a training set)
CAPTION = "caption"
CAPTION_PROMPT = "caption_prompt"  # the pair's own user turn, kept for the caption task
RAW_OUTPUT = "raw_output"  # synthesizer output text, special tokens kept
QA_PAIRS = "qa_pairs"  # list of {question, answer, kind}; kind is "precise" or "informative"
TRIPLET = "triplet"  # {question, precise, informative} or None
VERDICT = "verdict"  # "yes" | "no" | "open" | None (judge output normalised)
RESPONSE = "response"  # composed training response for the kept triplet, or None
MESSAGES = "messages"  # ShareGPT messages of the final training example
ERROR = "error"  # None or {"stage": str, "message": str}

SOURCE_COLUMNS = (ID, IMAGE, IMAGE_PATH, CAPTION, CAPTION_PROMPT, ERROR)

DEFAULT_CAPTION_PROMPT = "<image>Describe the image."


def error(stage: str, message: str) -> dict[str, str]:
    return {"stage": stage, "message": message}


def failed(row: dict[str, Any]) -> bool:
    return row.get(ERROR) is not None


def source_schema():
    """Arrow schema of the rows the readers produce (explicit, so blocks with and without errors agree)."""
    import pyarrow as pa

    return pa.schema([
        (ID, pa.string()), (IMAGE, pa.binary()), (IMAGE_PATH, pa.string()), (CAPTION, pa.string()),
        (CAPTION_PROMPT, pa.string()), (ERROR, pa.struct([("stage", pa.string()), ("message", pa.string())])),
    ])


def to_table(rows: list[dict[str, Any]], schema=None):
    import pyarrow as pa

    schema = schema or source_schema()
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)


def task_schema():
    """Arrow schema of the rows a synthesis run writes to OUT/tasks/ (every row, intermediate
    columns included, image bytes left out: the image itself is in OUT/images/)."""
    import pyarrow as pa

    pair = pa.struct([("question", pa.string()), ("answer", pa.string()), ("kind", pa.string())])
    return pa.schema([
        (ID, pa.string()), (IMAGE_PATH, pa.string()), (CAPTION, pa.string()), (CAPTION_PROMPT, pa.string()),
        (RAW_OUTPUT, pa.string()), ("output_tokens", pa.int64()), (QA_PAIRS, pa.list_(pair)),
        (TRIPLET, pa.struct([("question", pa.string()), ("precise", pa.string()), ("informative", pa.string())])),
        ("judge_output", pa.string()), (VERDICT, pa.string()), (RESPONSE, pa.string()),
        (MESSAGES, pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        (ERROR, pa.struct([("stage", pa.string()), ("message", pa.string())])),
    ])


NESTED = (ERROR, QA_PAIRS, TRIPLET, MESSAGES)


def pack(row: dict[str, Any]) -> dict[str, Any]:
    """Nested columns as JSON text between Ray Data's row-wise stages: blocks built from rows where
    some values are None and others structs do not concatenate (Ray 2.60), JSON strings always do."""
    import json

    return {k: json.dumps(v) if k in NESTED else v for k, v in row.items()}


def unpack(row: dict[str, Any]) -> dict[str, Any]:
    import json

    return {k: json.loads(v) if k in NESTED and isinstance(v, str) else v for k, v in row.items()}
