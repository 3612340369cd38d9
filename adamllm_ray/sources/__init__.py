"""Readers for image-caption pairs: the authors' ShareGPT JSON/JSONL with an image root, parquet with
image bytes, and webdataset tar shards; local or s3://. Each yields rows with the source columns of
records.py and a stable `id`; a bad entry, image or caption becomes an error row (stage "read") whose
message names the field and the user's own value, and every other row still comes through.

Reading is two passes, both Ray tasks (the driver never parses a file):
1. the index: per file, light rows (id, position, where it is; for ShareGPT the whole entry, checked),
   no image read. The driver streams its `id` column once: rows read are counted there, repeated
   ids found (the first occurrence wins) and rows done by an earlier run known.
2. the rows: images read and validated by a small actor pool that holds the done set and the repeated
   ids once (`Gate`), so a done row is skipped before its image is read, at a cost per row that does
   not grow with the number done. Blocks hold at most `source.rows_per_block` rows, so results are
   written steadily while the engines work.

One module per source format (sharegpt, parquet, webdataset) beside the row and error contract they
share (rows.py); this module holds the two passes."""

from __future__ import annotations

import posixpath
from typing import Iterable, Iterator

from adamllm_ray import records, storage
from adamllm_ray.config import LIGHT_TASK_CPUS, SourceConfig
from adamllm_ray.sources.parquet import parquet_rows
from adamllm_ray.sources.rows import INDEX_COLUMNS, SEQ_FILE, CaptionRules, check_caption, make_row
from adamllm_ray.sources.sharegpt import load_sharegpt, resolve_image, sharegpt_caption, sharegpt_index, sharegpt_row
from adamllm_ray.sources.webdataset import webdataset_rows

__all__ = ["CaptionRules", "Gate", "Scan", "check_caption", "iter_rows", "load_sharegpt", "make_row", "parquet_rows",
           "read_index", "read_pairs", "read_rows", "resolve_image", "scan_index", "scan_rows", "sharegpt_caption",
           "sharegpt_index", "sharegpt_row", "source_files", "webdataset_rows"]

DROP_ENV = "ADAMLLM_TEST_DROP_ROW"  # test-only: the read stage loses the row with this id (accounting tests)


# ---------------------------------------------------------------- the two passes


def source_files(cfg: SourceConfig) -> tuple[list[str], str]:
    suffix = {"sharegpt": (".json", ".jsonl"), "parquet": (".parquet",), "webdataset": (".tar",)}[cfg.format]
    files = storage.list_files(cfg.path, suffix)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(suffix)} files under {cfg.path}")
    root = cfg.path if storage.is_dir(cfg.path) else posixpath.dirname(cfg.path.rstrip("/"))
    return files, root


def index_file(cfg: SourceConfig, uri: str, root: str, file_index: int, rules: CaptionRules) -> list[dict]:
    if cfg.format == "sharegpt":
        return sharegpt_index(uri, root, file_index, cfg.image_root, rules)
    reader = parquet_rows if cfg.format == "parquet" else webdataset_rows
    return [{**r, "file": uri} for r in reader(uri, root, cfg.images, file_index, ids_only=True)]


class Gate:
    """Decides per row, in O(1): skip (done by an earlier run), a repeated id (an error row under
    its positional id naming the first occurrence), or go on."""

    def __init__(self, done: set[str], repeated: dict[str, tuple[int, str]], drop: str | None = None):
        self.done, self.repeated, self.drop = done, repeated, drop

    def __call__(self, rid: str, pos_id: str, seq: int):
        first = self.repeated.get(rid)
        if first is not None and first[0] != seq:
            if pos_id in self.done:
                return None
            return pos_id, (f"id {rid!r} repeats the id of {first[1]} (its first occurrence): ids must be unique "
                            f"within a run, so this entry is not used")
        if rid in self.done or rid == self.drop:
            return None
        return rid, None


class Scan:
    """What the driver learns from the index's id column, streamed once: rows read (counted where
    they are read, independently of any output), the first occurrence of every id, repeated ids,
    repeated image+caption pairs, and which rows are still to do."""

    def __init__(self):
        self.read = 0
        self.first: dict[str, int] = {}
        self.repeated: dict[str, tuple[int, str]] = {}
        self.repeat_pos_ids: list[str] = []
        self.pairs: set[str] = set()
        self.duplicate_pairs = 0

    def add(self, batch: dict[str, list]) -> None:
        for rid, seq, key in zip(batch["id"], batch["seq"], batch["pair_key"]):
            self.read += 1
            if rid in self.first:
                self.repeated[rid] = (min(seq, self.first[rid]), "")
                self.first[rid] = min(seq, self.first[rid])
            else:
                self.first[rid] = seq
            if key is not None:
                self.duplicate_pairs += key in self.pairs
                self.pairs.add(key)

    def locate(self, batch: dict[str, list]) -> None:
        """Second look, only when ids repeat: where each first occurrence is, and the ids given to the repeats."""
        for rid, pos_id, seq, loc in zip(batch["id"], batch["pos_id"], batch["seq"], batch["loc"]):
            if rid in self.repeated:
                if seq == self.repeated[rid][0]:
                    self.repeated[rid] = (seq, loc)
                else:
                    self.repeat_pos_ids.append(pos_id)

    def expected_ids(self) -> Iterator[str]:
        yield from self.first
        yield from self.repeat_pos_ids

    def gate(self, done: set[str], drop: str | None = None) -> Gate:
        return Gate(done, self.repeated, drop)

    def to_do(self, done: set[str]) -> int:
        return sum(1 for i in self.expected_ids() if i not in done)


def scan_rows(rows: Iterable[dict]) -> Scan:
    rows = list(rows)
    s = Scan()
    s.add({k: [r[k] for r in rows] for k in INDEX_COLUMNS})
    if s.repeated:
        s.locate({k: [r[k] for r in rows] for k in INDEX_COLUMNS})
    return s


def _rows_of(cfg: SourceConfig, index_rows: list[dict], gate: Gate, rules: CaptionRules) -> list[dict]:
    """Source rows for index rows of one or more files (pass 2)."""
    if cfg.format == "sharegpt":
        out = []
        for e in index_rows:
            decision = gate(e["id"], e["pos_id"], e["seq"])
            if decision is not None:
                rid, problem = decision
                out.append(sharegpt_row({**e, "id": rid, "problem": e["problem"] or problem}, cfg.images))
        return out
    reader = parquet_rows if cfg.format == "parquet" else webdataset_rows
    files: dict[str, int] = {}
    for e in index_rows:
        files.setdefault(e["file"], e["seq"] // SEQ_FILE)
    seqs = {e["seq"] for e in index_rows}  # a file split over batches: each batch reads only its own rows

    def decide(rid, pos_id, seq):
        return gate(rid, pos_id, seq) if seq in seqs else None

    root = cfg.path if storage.is_dir(cfg.path) else posixpath.dirname(cfg.path.rstrip("/"))
    return [r for f, fi in files.items() for r in reader(f, root, cfg.images, fi, decide, rules)]


def iter_rows(cfg: SourceConfig, rules: CaptionRules | None = None) -> Iterable[dict]:
    """All rows in one process, no Ray (tests, small inputs, the benchmark's baseline)."""
    rules = rules or CaptionRules(cfg.max_caption_chars)
    files, root = source_files(cfg)
    index = [r for i, f in enumerate(files) for r in index_file(cfg, f, root, i, rules)]
    if cfg.limit is not None:
        index = index[: cfg.limit]
    gate = scan_rows(index).gate(set())
    by_file: dict[int, list[dict]] = {}
    for r in index:
        by_file.setdefault(r["seq"] // SEQ_FILE, []).append(r)
    for rows in by_file.values():
        yield from _rows_of(cfg, rows, gate, rules)


def index_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("pos_id", pa.string()), ("seq", pa.int64()), ("loc", pa.string()),
                      ("pair_key", pa.string()), ("file", pa.string()), ("image_uri", pa.string()),
                      ("image_rel", pa.string()), ("caption", pa.string()), ("caption_prompt", pa.string()),
                      ("problem", pa.string())])


def read_index(cfg: SourceConfig, rules: CaptionRules | None = None):
    """Pass 1 as a materialized Ray Dataset: one task per file, no image read."""
    import ray

    rules = rules or CaptionRules(cfg.max_caption_chars)
    files, root = source_files(cfg)
    schema = index_schema()

    def index_files(batch):
        rows = [r for b in batch.to_pylist() for r in index_file(cfg, b["file"], root, b["file_index"], rules)]
        return records.to_table(rows, schema)

    ds = ray.data.from_items([{"file": f, "file_index": i} for i, f in enumerate(files)],
                             override_num_blocks=max(1, min(len(files), 4096)))
    # at most one task per CPU: a light request lets every file start its own Python worker at once,
    # and on a small node those start-ups cost more than the parsing
    tasks = max(1, min(len(files), int(ray.cluster_resources().get("CPU", 1))))
    ds = ds.map_batches(index_files, batch_format="pyarrow", batch_size=1, num_cpus=LIGHT_TASK_CPUS,
                        compute=ray.data.TaskPoolStrategy(size=tasks))
    if cfg.limit is not None:
        ds = ds.limit(cfg.limit)
    return ds.materialize()


def scan_index(index) -> Scan:
    def batches():
        for b in index.select_columns(list(INDEX_COLUMNS)).iter_batches(batch_size=8192, batch_format="pyarrow"):
            yield b.to_pydict()

    s = Scan()
    for b in batches():
        s.add(b)
    if s.repeated:
        for b in batches():
            s.locate(b)
    return s


class _ReadStage:
    """Pass 2 in an actor: the gate (done set, repeated ids) is fetched once per actor, not per row."""

    def __init__(self, cfg: SourceConfig, gate_ref: list, rules: CaptionRules):
        import ray

        self.cfg, self.rules = cfg, rules
        self.gate = ray.get(gate_ref[0])

    def __call__(self, batch):
        return records.to_table(_rows_of(self.cfg, batch.to_pylist(), self.gate, self.rules))


def read_rows(cfg: SourceConfig, index, gate: Gate, rules: CaptionRules | None = None, concurrency: int = 2):
    """Pass 2 as a Ray Dataset of source rows (records.source_schema), blocks of at most
    `cfg.rows_per_block` rows."""
    import ray

    rules = rules or CaptionRules(cfg.max_caption_chars)
    # ShareGPT: blocks of bounded rows before the images are read; other formats: one block per file
    ds = light_repartition(index, cfg.rows_per_block, concurrency) if cfg.format == "sharegpt" else index
    ds = ds.map_batches(_ReadStage, fn_constructor_args=(cfg, [ray.put(gate)], rules), batch_format="pyarrow",
                        batch_size=None if cfg.format != "sharegpt" else cfg.rows_per_block,
                        num_cpus=LIGHT_TASK_CPUS, compute=ray.data.ActorPoolStrategy(size=concurrency))
    return light_repartition(ds, cfg.rows_per_block, concurrency)


def light_repartition(ds, rows: int, tasks: int):
    """`ds.repartition(target_num_rows_per_block=rows)` whose tasks ask for a light CPU share like the
    other side stages, `tasks` at once. Ray's streaming repartition takes no remote args and asks 1 CPU
    per task, unbounded: on a node whose CPUs the engines hold, it waited for ever (seen on the two-node
    test cluster); the planner reads the logical operator's `ray_remote_args` and `compute`, so they
    are set there."""
    import ray

    ds = ds.repartition(target_num_rows_per_block=rows)
    op = ds._logical_plan.dag
    op.ray_remote_args["num_cpus"] = LIGHT_TASK_CPUS
    object.__setattr__(op, "compute", ray.data.TaskPoolStrategy(size=tasks))  # a frozen dataclass
    return ds


def read_pairs(cfg: SourceConfig, rules: CaptionRules | None = None):
    """The pairs as a Ray Dataset of source rows (both passes, nothing done yet)."""
    index = read_index(cfg, rules)
    return read_rows(cfg, index, scan_index(index).gate(set()), rules)
