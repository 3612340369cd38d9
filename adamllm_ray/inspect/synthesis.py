"""A synthesis output folder, page by page. The index (one small parquet file in the cache folder,
built once per run) holds per row only where it lives (file, row group, row), what the filters look
at (verdict, status, error stage, triplet, composition branch), where its example starts in the
training file, and a lower-cased search text. A page then reads just its rows' row groups, with
only the columns it shows."""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from adamllm_ray import records, storage
from adamllm_ray.inspect.runs import InspectError, cache_dir, read_image, read_json
from adamllm_ray.synthesis.compose import response_rule

INDEX_VERSION = "3"
BRANCHES = {"a": "informative answer alone", "b": "informative + precise", "c": "chain of thought"}
STATUSES = ("kept", "caption_only", "error", "left_out")
TABLE_COLUMNS = [records.ID, records.IMAGE_PATH, records.CAPTION, records.ERROR]
INDEX_SCHEMA = pa.schema([
    ("id", pa.string()), ("file", pa.int32()), ("rg", pa.int32()), ("row", pa.int32()), ("verdict", pa.string()),
    ("status", pa.string()), ("stage", pa.string()), ("triplet", pa.bool_()), ("branch", pa.string()),
    ("train_off", pa.int64()), ("train_len", pa.int64())])
TEXT_SCHEMA = pa.schema([("text", pa.string())])  # lower-cased caption and questions, in index order


def _lines(uri: str, chunk: int = 1 << 20):
    """(offset, line without newline) over a local or S3 file, without holding it in memory."""
    fs, path = storage.filesystem(uri)
    with fs.open_input_stream(path) as f:
        pos, rest = 0, b""
        while True:
            data = f.read(chunk)
            if not data:
                break
            parts = (rest + data).split(b"\n")
            rest = parts.pop()
            for line in parts:
                yield pos, line
                pos += len(line) + 1
        if rest:
            yield pos, rest


_ID_FIRST = re.compile(rb'^\{"id": ("(?:[^"\\]|\\.)*")')


def train_offsets(uri: str) -> dict[str, tuple[int, int]]:
    """id -> (byte offset, length) of each example in train.json as `finalize` writes it (one example
    a line, `{"id": ...` first, a comma between; or, from earlier versions, indented blocks ` {` ...
    ` }` with the id on their first line), or in train.jsonl (one a line)."""
    found: dict[str, tuple[int, int]] = {}
    start, first = None, False
    for off, line in _lines(uri):
        if line.startswith(b"{"):
            body = line[:-1] if line.endswith(b",") else line
            m = _ID_FIRST.match(body)
            current = json.loads(m.group(1)) if m else str(json.loads(body)["id"])
            found[current] = (off, len(body))
        elif line == b" {":
            start, first = off, True
        elif first:
            first = False
            key, _, value = line.strip().rstrip(b",").partition(b":")
            if key != b'"id"':
                raise InspectError(422, f"{uri} is not laid out as adamllm synthesize writes it (no id first)")
            current = str(json.loads(value))
        elif start is not None and line in (b" }", b" },"):
            found[current] = (start, off + 2 - start)
            start = None
    return found


class SynthesisRun:
    kind = "synthesis"

    def __init__(self, uri: str):
        self.uri = uri
        self.summary = read_json(storage.join(uri, "summary.json"), "summary.json")
        tasks = storage.join(uri, "tasks")
        self.files = storage.list_files(tasks, (".parquet",)) if storage.is_dir(tasks) else []
        if not self.files:
            raise InspectError(422, f"the run is missing its task files ({tasks}/*.parquet)")
        self.train_uri = next((storage.join(uri, n) for n in ("train.json", "train.jsonl")
                               if storage.exists(storage.join(uri, n))), None)
        if self.train_uri is None:
            raise InspectError(422, f"the run is missing train.json ({storage.join(uri, 'train.json')})")
        self.cache = cache_dir(uri, [*self.files, self.train_uri])
        self.index_path = os.path.join(self.cache, f"index-v{INDEX_VERSION}.parquet")
        self.text_path = os.path.join(self.cache, f"text-v{INDEX_VERSION}.arrow")
        self._parquet: dict[int, pq.ParquetFile] = {}
        if not (os.path.exists(self.index_path) and os.path.exists(self.text_path)):
            self.build_index()
        self.index = pq.read_table(self.index_path)
        self.where = np.stack([self.index.column(c).to_numpy() for c in ("file", "rg", "row")], axis=1)
        self.n = self.index.num_rows
        self._filtered: OrderedDict = OrderedDict()
        self.stages = sorted(s for s in pc.unique(self.index.column("stage")).to_pylist() if s)

    # ------------------------------------------------------------ index

    def build_index(self) -> None:
        offsets = train_offsets(self.train_uri)
        tmp = self.index_path + f".tmp-{os.getpid()}"
        tmp_text = self.text_path + f".tmp-{os.getpid()}"
        cols = [records.ID, records.CAPTION, records.QA_PAIRS, records.TRIPLET, records.VERDICT, records.RESPONSE,
                records.ERROR]
        # the search text is an uncompressed arrow file: a search memory-maps it instead of decoding it
        with pq.ParquetWriter(tmp, INDEX_SCHEMA) as writer, pa.ipc.new_file(tmp_text, TEXT_SCHEMA) as text_writer:
            for fi, uri in enumerate(self.files):
                pf = self._open(fi, uri)
                for rg in range(pf.num_row_groups):
                    out = {name: [] for name in INDEX_SCHEMA.names}
                    text = []
                    for i, r in enumerate(pf.read_row_group(rg, columns=cols).to_pylist()):
                        off, length = offsets.get(r[records.ID], (-1, 0))
                        if r[records.ERROR]:
                            status = "error"
                        elif r[records.RESPONSE] is not None:
                            status = "kept"
                        else:
                            status = "caption_only" if off >= 0 else "left_out"
                        triplet = r[records.TRIPLET]
                        questions = " ".join(dict.fromkeys(p["question"] for p in r[records.QA_PAIRS] or []))
                        values = (r[records.ID], fi, rg, i, r[records.VERDICT], status,
                                  (r[records.ERROR] or {}).get("stage"), triplet is not None,
                                  response_rule(triplet) if status == "kept" else None, off, length)
                        for name, v in zip(INDEX_SCHEMA.names, values):
                            out[name].append(v)
                        text.append(f"{r[records.CAPTION] or ''}\n{questions}".lower())
                    writer.write_table(pa.table(out, schema=INDEX_SCHEMA))
                    text_writer.write_table(pa.table({"text": text}, schema=TEXT_SCHEMA))
        os.replace(tmp_text, self.text_path)
        os.replace(tmp, self.index_path)

    def _open(self, fi: int, uri: str | None = None) -> pq.ParquetFile:
        if fi not in self._parquet:
            fs, path = storage.filesystem(uri or self.files[fi])
            self._parquet[fi] = pq.ParquetFile(fs.open_input_file(path))
        return self._parquet[fi]

    # ------------------------------------------------------------ queries

    def filter(self, verdict: str = "", status: str = "", stage: str = "", triplet: str = "", q: str = "") -> np.ndarray:
        """Positions (index order) of the rows that match every given filter; the last few results
        are kept so paging through one filter does not recompute it."""
        key = (verdict, status, stage, triplet, q.strip().lower())
        if key in self._filtered:
            self._filtered.move_to_end(key)
            return self._filtered[key]
        mask = None

        def both(m):
            return m if mask is None else pc.and_(mask, m)

        if verdict:
            col = self.index.column("verdict")
            mask = both(pc.is_null(col) if verdict == "none" else pc.fill_null(pc.equal(col, verdict), False))
        if status:
            mask = both(pc.equal(self.index.column("status"), status))
        if stage:
            mask = both(pc.fill_null(pc.equal(self.index.column("stage"), stage), False))
        if triplet:
            col = self.index.column("triplet")
            mask = both(col if triplet == "yes" else pc.invert(col))
        if key[4]:
            with pa.memory_map(self.text_path) as source:
                text = pa.ipc.open_file(source).read_all().column("text")
                found = pc.match_substring(text, key[4])
            mask = both(found)
        positions = np.arange(self.n) if mask is None else np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        self._filtered[key] = positions
        while len(self._filtered) > 16:
            self._filtered.popitem(last=False)
        return positions

    def read_rows(self, positions, columns: list[str]) -> list[dict]:
        """The given rows, reading only their row groups and the named columns."""
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for k, pos in enumerate(positions):
            fi, rg, row = self.where[pos]
            groups.setdefault((int(fi), int(rg)), []).append((k, int(row)))
        out: list[dict | None] = [None] * len(positions)
        for (fi, rg), wanted in groups.items():
            table = self._open(fi).read_row_group(rg, columns=columns)
            for (k, _), r in zip(wanted, table.take([row for _, row in wanted]).to_pylist()):
                out[k] = r
        return out

    def table_rows(self, positions) -> list[dict]:
        rows = self.read_rows(positions, TABLE_COLUMNS)
        meta = self.index.take(pa.array(np.asarray(positions, dtype=np.int64))).to_pylist()
        for r, m in zip(rows, meta):
            r.update(verdict=m["verdict"], status=m["status"], stage=m["stage"], has_triplet=m["triplet"],
                     branch=BRANCHES.get(m["branch"]) if m["branch"] else None)
        return rows

    def position(self, row_id: str) -> int:
        pos = pc.index(self.index.column("id"), row_id).as_py()
        if pos < 0:
            raise InspectError(404, f"no row with id {row_id!r} in this run")
        return pos

    def row(self, row_id: str) -> dict:
        """Everything the row page shows: the task row itself and its example, exactly as in the
        training file."""
        pos = self.position(row_id)
        row = self.read_rows([pos], list(records.task_schema().names))[0]
        meta = self.index.slice(pos, 1).to_pylist()[0]
        row.update(status=meta["status"], branch=BRANCHES.get(meta["branch"]) if meta["branch"] else None)
        row["example_text"] = None
        if meta["train_off"] >= 0:
            fs, path = storage.filesystem(self.train_uri)
            with fs.open_input_file(path) as f:
                f.seek(meta["train_off"])
                text = f.read(meta["train_len"]).decode("utf-8")
            row["example_text"] = text if self.train_uri.endswith(".jsonl") else _dedent(text)
        return row

    def image(self, row_id: str) -> tuple[str, bytes]:
        rel = self.read_rows([self.position(row_id)], [records.IMAGE_PATH])[0][records.IMAGE_PATH]
        if not rel:
            raise InspectError(404, f"row {row_id!r} has no image")
        return rel, read_image(self.uri, rel)


def _dedent(text: str) -> str:
    """An example block of train.json without the one space of list indentation on each line."""
    return "\n".join(line[1:] if line.startswith(" ") else line for line in text.split("\n"))
