"""Parquet files with image bytes (`image`, `caption`, optional `id`, `caption_prompt`, `image_path`)."""

from __future__ import annotations

from typing import Any

from adamllm_ray import storage
from adamllm_ray.config import ImageLimits
from adamllm_ray.sources.rows import SEQ_FILE, CaptionRules, Decide, admit, decided_row, file_problem, keep_all


def _image_bytes(value: Any) -> bytes | None:
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    return value


def parquet_rows(uri: str, root: str, limits: ImageLimits, file_index: int = 0, decide: Decide = keep_all,
                 rules: CaptionRules | None = None, ids_only: bool = False) -> list[dict]:
    """Source rows of one parquet file; rows `decide` skips (done) are left out before their image
    is looked at. With ids_only, the index rows (id column only read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rel = storage.relative(uri, root)
    fs, path = storage.filesystem(uri)
    try:
        schema = pq.read_schema(path, filesystem=fs)
        missing = [c for c in ("image", "caption") if c not in schema.names]
        if ids_only and "id" not in schema.names:
            table = pa.table({"n": [None] * pq.read_metadata(path, filesystem=fs).num_rows})
        elif ids_only:
            table = pq.read_table(path, filesystem=fs, columns=["id"])
        elif not missing:
            table = pq.read_table(path, filesystem=fs, columns=[
                c for c in ("id", "image", "caption", "caption_prompt", "image_path") if c in schema.names])
    except Exception as err:  # an unreadable file is one error row, the other files go on
        return file_problem(rel, file_index, f"unreadable parquet file {rel}: {err}", limits, decide, ids_only)
    if missing and not ids_only:
        problem = f"parquet file {rel} has no {missing} column (columns: {schema.names})"
        return file_problem(rel, file_index, problem, limits, decide, ids_only)
    cols = {c: table.column(c).to_pylist() for c in table.column_names}
    rows = []
    for i in range(table.num_rows):
        pos_id = f"{rel}:{i}"
        rid = str(cols["id"][i]) if "id" in cols and cols["id"][i] is not None else pos_id
        decision = admit(rows, rid, pos_id, file_index * SEQ_FILE + i, f"{rel} row {i}", decide, ids_only)
        if decision is None:
            continue
        path_i = (cols["image_path"][i] if "image_path" in cols else None) or pos_id
        rows.append(decided_row(decision, _image_bytes(cols["image"][i]), path_i, cols["caption"][i],
                                cols.get("caption_prompt", [None] * table.num_rows)[i], limits, rules,
                                "missing image: the row's image bytes are null"))
    return rows
