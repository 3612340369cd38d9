"""Benchmark files as pyarrow reads them (parquet, and the arrow IPC files or streams of a Hugging
Face `save_to_disk` folder, without `datasets`), and the vocabulary file."""

from __future__ import annotations

import json
from typing import Iterator

from adamllm_ray import storage

FILE_SUFFIXES = (".parquet", ".arrow")
VOCABULARY_FILE = "vocabulary.json"


class BenchmarkError(ValueError):
    """A benchmark folder the job cannot use at all (missing, unreadable, a column missing)."""


def _open_arrow(fs, path: str):
    """A reader over an arrow IPC file or stream (Hugging Face writes streams)."""
    import pyarrow as pa

    with fs.open_input_stream(path) as f:
        magic = f.read(6)
    if magic == b"ARROW1":
        return pa.ipc.open_file(fs.open_input_file(path))
    return pa.ipc.open_stream(fs.open_input_stream(path))


def _batches(reader) -> Iterator:
    import pyarrow as pa

    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
    else:
        yield from reader


def file_schema(uri: str):
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri)
    if uri.endswith(".parquet"):
        return pq.ParquetFile(fs.open_input_file(path)).schema_arrow
    return _open_arrow(fs, path).schema


def file_rows(uri: str, at_most: int | None = None) -> int:
    """Rows in a file: parquet from its footer; arrow by reading batches (stops at `at_most`)."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri)
    if uri.endswith(".parquet"):
        return pq.ParquetFile(fs.open_input_file(path)).metadata.num_rows
    n = 0
    for batch in _batches(_open_arrow(fs, path)):
        n += batch.num_rows
        if at_most is not None and n >= at_most:
            break
    return n


def load_vocabulary(uri: str) -> tuple[list[str], dict[int, int] | None]:
    """(phrases, label id -> position or None): a JSON list, or an object {"id": phrase}."""
    try:
        data = json.loads(storage.read_bytes(uri))
    except (OSError, FileNotFoundError) as err:
        raise BenchmarkError(f"cannot read vocabulary file {uri}: {err}") from None
    except ValueError as err:
        raise BenchmarkError(f"vocabulary file {uri} is not valid JSON: {err}") from None
    if isinstance(data, list) and data and all(isinstance(p, str) for p in data):
        return data, None
    if isinstance(data, dict) and data and all(isinstance(p, str) for p in data.values()):
        try:
            keyed = sorted((int(k), p) for k, p in data.items())
        except ValueError:
            raise BenchmarkError(f"vocabulary file {uri}: the keys of an object must be integer ids") from None
        return [p for _, p in keyed], {k: i for i, (k, _) in enumerate(keyed)}
    raise BenchmarkError(f"vocabulary file {uri} must hold a non-empty JSON list of strings or an object "
                         "{\"id\": \"phrase\"}")
