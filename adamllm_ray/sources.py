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
   written steadily while the engines work."""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from adamllm_ray import images, records, storage
from adamllm_ray.config import LIGHT_TASK_CPUS, ImageLimits, SourceConfig

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DROP_ENV = "ADAMLLM_TEST_DROP_ROW"  # test-only: the read stage loses the row with this id (accounting tests)
INDEX_COLUMNS = ("id", "pos_id", "seq", "loc", "pair_key")
SEQ_FILE = 1 << 32  # seq = file index * SEQ_FILE + position in the file: the source order


def check_caption(caption: Any, limits: "CaptionRules") -> str | None:
    """Why a caption cannot be synthesized from, in the user's words, or None."""
    if caption is None:
        return "missing caption: the pair has no caption text"
    if not isinstance(caption, str):
        return f"caption must be text, got {type(caption).__name__} {str(caption)[:40]!r}"
    if not caption.strip():
        return "empty caption"
    if len(caption) > limits.max_chars:
        return (f"caption is {len(caption):,} characters long, over source.max_caption_chars "
                f"({limits.max_chars:,}): it would not fit the synthesizer's prompt")
    found = sorted((t for t in limits.reserved if t in caption), key=caption.index)
    if found:
        return (f"caption contains the format string(s) {', '.join(map(repr, found))} of the synthesizer's chat "
                f"format: they would be read as real turn markers or image tokens; remove them from the caption")
    return None


class CaptionRules:
    def __init__(self, max_chars: int = 16384, reserved: tuple[str, ...] = ()):
        self.max_chars, self.reserved = max_chars, tuple(reserved)


def make_row(id: str, image: bytes | None, image_path: str, caption: Any, caption_prompt: str | None,
             limits: ImageLimits, missing_image: str | None = None, rules: CaptionRules | None = None) -> dict:
    row = {records.ID: id, records.IMAGE: None, records.IMAGE_PATH: image_path,
           records.CAPTION: caption if isinstance(caption, str) else None,
           records.CAPTION_PROMPT: caption_prompt if isinstance(caption_prompt, str) and caption_prompt
           else records.DEFAULT_CAPTION_PROMPT, records.ERROR: None}
    problem = check_caption(caption, rules or CaptionRules())
    if problem:
        row[records.ERROR] = records.error("read", problem)
        return row
    if image is None:
        row[records.ERROR] = records.error("read", missing_image or f"missing image: {image_path}")
        return row
    try:
        row[records.IMAGE] = images.validate(image, limits)
    except images.ImageError as err:
        row[records.ERROR] = records.error("read", f"bad image {image_path}: {err}")
    return row


def _pair_key(image: str, caption: Any) -> str:
    return hashlib.blake2b(f"{image}\0{caption}".encode("utf-8", "replace"), digest_size=8).hexdigest()


# ---------------------------------------------------------------- ShareGPT JSON + image root


def sharegpt_caption(entry: dict) -> tuple[str | None, str | None]:
    """(caption prompt, caption): the first user turn and the first assistant turn."""
    prompt = caption = None
    for m in entry.get("messages") or []:
        if not isinstance(m, dict):
            continue
        if m.get("role") == "user" and prompt is None:
            prompt = m.get("content")
        elif m.get("role") == "assistant" and caption is None:
            caption = m.get("content")
    return prompt, caption


def load_sharegpt(uri: str) -> list:
    """The entries of one ShareGPT file: a JSON list (.json) or one entry per line (.jsonl)."""
    text = storage.read_bytes(uri).decode("utf-8")
    try:
        if uri.endswith(".jsonl"):
            return [json.loads(line) for line in text.split("\n") if line.strip()]  # not splitlines(): U+2028
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{uri}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise ValueError(f"{uri}: a ShareGPT file must hold a JSON list of entries")
    return data


def _raw_entries(uri: str, rel: str) -> Iterator[tuple[str, Any, str | None]]:
    """(where, entry, problem) per entry of one file: a malformed JSONL line or file is one problem
    naming the file and line, and the other lines go on."""
    try:
        text = storage.read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError as err:
        yield rel, None, f"{rel}: not UTF-8 text ({err})"
        return
    except OSError as err:
        yield rel, None, f"{rel}: unreadable ({type(err).__name__}: {err})"
        return
    if uri.endswith(".jsonl"):
        for n, line in enumerate(text.split("\n"), 1):  # "\n" only: U+2028/U+0085 may sit inside a string
            if not line.strip():
                continue
            try:
                yield f"{rel} line {n}", json.loads(line), None
            except json.JSONDecodeError as err:
                yield f"{rel} line {n}", None, f"{rel} line {n}: not valid JSON ({err.msg} at column {err.colno})"
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        yield rel, None, f"{rel}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        return
    if not isinstance(data, list):
        yield rel, None, f"{rel}: a ShareGPT .json file must hold a JSON list of entries, got {type(data).__name__}"
        return
    for i, e in enumerate(data):
        yield f"{rel} entry {i}", e, None


def resolve_image(value: Any, root: str, root_name: str) -> tuple[str | None, str | None]:
    """(URI inside root, None) or (None, why not): the `images` field of an entry, checked so that
    nothing outside the root can be read (no absolute path, no `..` out, no symlink out)."""
    if value is None:
        return None, "missing image: the entry has no 'images' field"
    if isinstance(value, str):
        return None, f"'images' must be a list of image paths, got the string {value!r} (write [{json.dumps(value)}])"
    if not isinstance(value, list):
        return None, f"'images' must be a list of image paths, got {type(value).__name__} {str(value)[:60]!r}"
    if not value:
        return None, "'images' is an empty list: the entry names no image"
    rel = value[0]
    if not isinstance(rel, str) or not rel.strip():
        return None, f"'images'[0] must be a path, got {rel!r}"
    if rel.startswith("/") or "://" in rel or (len(rel) > 1 and rel[1] == ":") or rel.startswith("\\"):
        return None, f"'images'[0] {rel!r} is an absolute path: image paths must be relative to {root_name}"
    norm = posixpath.normpath(rel.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        return None, f"'images'[0] {rel!r} leads outside {root_name}: '..' may not climb out of it"
    uri = storage.join(root, norm)
    if not storage.is_s3(uri):
        real_root = os.path.realpath(storage.filesystem(root)[1])
        if os.path.commonpath([os.path.realpath(uri), real_root]) != real_root:
            return None, f"'images'[0] {rel!r} leads outside {root_name} through a symbolic link"
    return uri, None


def sharegpt_index(uri: str, root: str, file_index: int, image_root: str | None, rules: CaptionRules) -> list[dict]:
    """Index rows of one ShareGPT file: the checked entry (image URI or the reason there is none,
    caption, prompt) with its position; no image is read."""
    rel = storage.relative(uri, root)
    base = image_root or posixpath.dirname(uri)
    root_name = f"image_root ({image_root})" if image_root else f"the JSON file's folder ({posixpath.dirname(rel) or '.'})"
    out = []
    for i, (where, e, problem) in enumerate(_raw_entries(uri, rel)):
        pos_id = f"{rel}:{i}"
        row = {"id": pos_id, "pos_id": pos_id, "seq": file_index * SEQ_FILE + i, "loc": where, "pair_key": None,
               "image_uri": None, "image_rel": None, "caption": None, "caption_prompt": None, "problem": problem}
        if problem is None and not isinstance(e, dict):
            row["problem"] = f"{where}: an entry must be a JSON object, got {type(e).__name__}"
        if row["problem"] is None:
            if e.get("id") is not None:
                row["id"] = str(e["id"])
            prompt, caption = sharegpt_caption(e)
            row["caption"] = caption if isinstance(caption, str) else None
            row["caption_prompt"] = prompt if isinstance(prompt, str) else None
            imgs = e.get("images")
            row["image_rel"] = imgs[0] if isinstance(imgs, list) and imgs and isinstance(imgs[0], str) else None
            row["problem"] = check_caption(caption, rules)
            if row["problem"] is None:
                row["image_uri"], row["problem"] = resolve_image(imgs, base, root_name)
            if row["problem"] is None:
                row["pair_key"] = _pair_key(row["image_uri"], caption)
        out.append(row)
    return out


def sharegpt_row(entry: dict, limits: ImageLimits) -> dict:
    """The source row of one index row that passed the gate: its image read and validated."""
    rel = entry["image_rel"] or ""
    checked = CaptionRules(max_chars=1 << 62)  # the caption was checked in the index
    row = make_row(entry["id"], None, rel, entry["caption"], entry["caption_prompt"], limits, rules=checked)
    if entry["problem"]:
        row[records.ERROR] = records.error("read", entry["problem"])
        return row
    try:
        data = storage.read_bytes(entry["image_uri"])
    except (FileNotFoundError, OSError) as err:
        row[records.ERROR] = records.error("read", f"image file not found: {rel} ({type(err).__name__})")
        return row
    return make_row(entry["id"], data, rel, entry["caption"], entry["caption_prompt"], limits, rules=checked)


# ---------------------------------------------------------------- parquet with image bytes


def _image_bytes(value: Any) -> bytes | None:
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    return value


Decide = Callable[[str, str, int], "tuple[str, str | None] | None"]


def _keep_all(rid: str, pos_id: str, seq: int):
    return rid, None


def parquet_rows(uri: str, root: str, limits: ImageLimits, file_index: int = 0, decide: Decide = _keep_all,
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
        return _file_problem(rel, file_index, f"unreadable parquet file {rel}: {err}", limits, decide, ids_only)
    if missing and not ids_only:
        problem = f"parquet file {rel} has no {missing} column (columns: {schema.names})"
        return _file_problem(rel, file_index, problem, limits, decide, ids_only)
    cols = {c: table.column(c).to_pylist() for c in table.column_names}
    rows = []
    for i in range(table.num_rows):
        pos_id = f"{rel}:{i}"
        rid = str(cols["id"][i]) if "id" in cols and cols["id"][i] is not None else pos_id
        if ids_only:
            rows.append(_index_row(rid, pos_id, file_index * SEQ_FILE + i, f"{rel} row {i}"))
            continue
        decision = decide(rid, pos_id, file_index * SEQ_FILE + i)
        if decision is None:
            continue
        rid, problem = decision
        path_i = (cols["image_path"][i] if "image_path" in cols else None) or pos_id
        row = make_row(rid, None if problem else _image_bytes(cols["image"][i]), path_i, cols["caption"][i],
                       cols.get("caption_prompt", [None] * table.num_rows)[i], limits,
                       missing_image=problem or "missing image: the row's image bytes are null", rules=rules)
        if problem:
            row[records.ERROR] = records.error("read", problem)
        rows.append(row)
    return rows


def _index_row(rid: str, pos_id: str, seq: int, loc: str, **kw) -> dict:
    return {"id": rid, "pos_id": pos_id, "seq": seq, "loc": loc, "pair_key": None, **kw}


def _file_problem(rel, file_index, problem, limits, decide, ids_only) -> list[dict]:
    if ids_only:
        return [_index_row(rel, rel, file_index * SEQ_FILE, rel)]
    decision = decide(rel, rel, file_index * SEQ_FILE)
    if decision is None:
        return []
    return [{**make_row(decision[0], None, rel, "-", None, limits), records.ERROR: records.error("read", problem)}]


# ---------------------------------------------------------------- webdataset tars


def _samples(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample; members of one sample are consecutive (webdataset)."""
    key, group = None, {}
    for m in tar:
        if not m.isfile():
            continue
        base = posixpath.basename(m.name)
        if "." not in base:
            continue
        k = posixpath.join(posixpath.dirname(m.name), base.split(".", 1)[0])
        ext = base.split(".", 1)[1].lower()
        if k != key and key is not None:
            yield key, group
            group = {}
        key = k
        group[ext] = tar.extractfile(m).read()
    if key is not None:
        yield key, group


def webdataset_rows(uri: str, root: str, limits: ImageLimits, file_index: int = 0, decide: Decide = _keep_all,
                    rules: CaptionRules | None = None, ids_only: bool = False) -> list[dict]:
    rel = storage.relative(uri, root)
    rows = []
    try:
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(uri))) as tar:
            for i, (key, group) in enumerate(_samples(tar)):
                meta = {}
                if "json" in group:
                    try:
                        meta = json.loads(group["json"])
                    except ValueError:
                        meta = {}
                meta = meta if isinstance(meta, dict) else {}
                pos_id = f"{rel}:{key}"
                rid = str(meta["id"]) if meta.get("id") is not None else pos_id
                if ids_only:
                    rows.append(_index_row(rid, pos_id, file_index * SEQ_FILE + i, f"{rel} sample {key}"))
                    continue
                decision = decide(rid, pos_id, file_index * SEQ_FILE + i)
                if decision is None:
                    continue
                rid, problem = decision
                caption = group["txt"].decode("utf-8", "replace") if "txt" in group else meta.get("caption")
                img_ext = next((e for e in group if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTS), None)
                row = make_row(rid, None if problem else group.get(img_ext) if img_ext else None, pos_id, caption,
                               meta.get("caption_prompt"), limits, rules=rules,
                               missing_image=problem or f"missing image: sample {key} has no image member")
                if problem:
                    row[records.ERROR] = records.error("read", problem)
                rows.append(row)
    except (tarfile.TarError, OSError) as err:
        return rows + _file_problem(rel, file_index, f"unreadable tar shard {rel}: {err}", limits, decide, ids_only)
    return rows


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
    ds = light_repartition(index, cfg.rows_per_block) if cfg.format == "sharegpt" else index
    ds = ds.map_batches(_ReadStage, fn_constructor_args=(cfg, [ray.put(gate)], rules), batch_format="pyarrow",
                        batch_size=None if cfg.format != "sharegpt" else cfg.rows_per_block,
                        num_cpus=LIGHT_TASK_CPUS, compute=ray.data.ActorPoolStrategy(size=concurrency))
    return light_repartition(ds, cfg.rows_per_block)


def light_repartition(ds, rows: int):
    """`ds.repartition(target_num_rows_per_block=rows)` whose tasks ask for a light CPU share like the
    other side stages. Ray's streaming repartition takes no remote args and asks 1 CPU per task: on a
    node whose CPUs the engines hold, it waited for ever (seen on the two-node test cluster); the
    planner reads the logical operator's `ray_remote_args`, so they are set there."""
    ds = ds.repartition(target_num_rows_per_block=rows)
    ds._logical_plan.dag.ray_remote_args["num_cpus"] = LIGHT_TASK_CPUS
    return ds


def read_pairs(cfg: SourceConfig, rules: CaptionRules | None = None):
    """The pairs as a Ray Dataset of source rows (both passes, nothing done yet)."""
    index = read_index(cfg, rules)
    return read_rows(cfg, index, scan_index(index).gate(set()), rules)
