"""Readers for image-caption pairs: the authors' ShareGPT JSON with an image root, parquet with image
bytes, and webdataset tar shards; local or s3://. Each yields rows with the source columns of
records.py and a stable `id`; a bad image or a missing caption becomes an error row (stage "read")
and every other row still comes through.

The per-file readers are plain functions (unit-testable without Ray); `read_pairs` spreads them over
Ray Data tasks: one task per file (or per block of ShareGPT entries), so many small files spread over
many blocks instead of landing in one actor."""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from adamllm_ray import images, records, storage
from adamllm_ray.config import LIGHT_TASK_CPUS, ImageLimits, SourceConfig

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def make_row(id: str, image: bytes | None, image_path: str, caption: Any, caption_prompt: str | None,
             limits: ImageLimits, missing_image: str | None = None) -> dict:
    row = {records.ID: id, records.IMAGE: None, records.IMAGE_PATH: image_path,
           records.CAPTION: caption if isinstance(caption, str) else None,
           records.CAPTION_PROMPT: caption_prompt or records.DEFAULT_CAPTION_PROMPT, records.ERROR: None}
    if not isinstance(caption, str) or not caption.strip():
        row[records.ERROR] = records.error("read", "missing caption: the pair has no caption text"
                                           if caption is None else "empty caption")
        return row
    if image is None:
        row[records.ERROR] = records.error("read", missing_image or f"missing image: {image_path}")
        return row
    try:
        row[records.IMAGE] = images.validate(image, limits)
    except images.ImageError as err:
        row[records.ERROR] = records.error("read", f"bad image {image_path}: {err}")
    return row


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


def sharegpt_entries(uri: str, root: str) -> list[dict]:
    """Light entries (no image bytes) of one ShareGPT JSON file (a list) or JSONL file."""
    data = load_sharegpt(uri)
    rel = storage.relative(uri, root)
    out = []
    for i, e in enumerate(data):
        e = e if isinstance(e, dict) else {}
        prompt, caption = sharegpt_caption(e)
        imgs = e.get("images") or []
        out.append({"id": str(e["id"]) if e.get("id") is not None else f"{rel}:{i}",
                    "image_rel": imgs[0] if imgs else None, "caption": caption, "caption_prompt": prompt,
                    "json_dir": posixpath.dirname(uri)})
    return out


def sharegpt_rows(entries: list[dict], image_root: str | None, limits: ImageLimits) -> list[dict]:
    rows = []
    for e in entries:
        rel = e["image_rel"]
        if not rel:
            rows.append(make_row(e["id"], None, "", e["caption"], e["caption_prompt"], limits,
                                 missing_image="missing image: the entry has no 'images' field"))
            continue
        uri = storage.join(image_root or e["json_dir"], rel)
        try:
            data = storage.read_bytes(uri)
            missing = None
        except (FileNotFoundError, OSError) as err:
            data, missing = None, f"image file not found: {rel} ({type(err).__name__})"
        rows.append(make_row(e["id"], data, rel, e["caption"], e["caption_prompt"], limits, missing))
    return rows


# ---------------------------------------------------------------- parquet with image bytes


def _image_bytes(value: Any) -> bytes | None:
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    return value


def parquet_rows(uri: str, root: str, limits: ImageLimits) -> list[dict]:
    import pyarrow.parquet as pq

    rel = storage.relative(uri, root)
    fs, path = storage.filesystem(uri)
    try:
        table = pq.read_table(path, filesystem=fs)
    except Exception as err:  # an unreadable file is one error row, the other files go on
        return [make_row(rel, None, rel, "-", None, limits, missing_image=f"unreadable parquet file: {err}")]
    missing = [c for c in ("image", "caption") if c not in table.column_names]
    if missing:
        return [make_row(rel, None, rel, "-", None, limits,
                         missing_image=f"parquet file has no {missing} column (columns: {table.column_names})")]
    cols = {c: table.column(c).to_pylist() for c in ("id", "image", "caption", "caption_prompt", "image_path")
            if c in table.column_names}
    rows = []
    for i in range(table.num_rows):
        rid = cols["id"][i] if "id" in cols and cols["id"][i] is not None else f"{rel}:{i}"
        path_i = cols["image_path"][i] if "image_path" in cols else f"{rel}:{i}"
        rows.append(make_row(str(rid), _image_bytes(cols["image"][i]), path_i or f"{rel}:{i}", cols["caption"][i],
                             cols.get("caption_prompt", [None] * table.num_rows)[i], limits,
                             missing_image="missing image: the row's image bytes are null"))
    return rows


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


def webdataset_rows(uri: str, root: str, limits: ImageLimits) -> list[dict]:
    rel = storage.relative(uri, root)
    rows = []
    try:
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(uri))) as tar:
            for key, group in _samples(tar):
                meta = {}
                if "json" in group:
                    try:
                        meta = json.loads(group["json"])
                    except ValueError:
                        meta = {}
                caption = group["txt"].decode("utf-8", "replace") if "txt" in group else meta.get("caption")
                img_ext = next((e for e in group if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTS), None)
                rid = str(meta["id"]) if meta.get("id") is not None else f"{rel}:{key}"
                rows.append(make_row(rid, group.get(img_ext) if img_ext else None, f"{rel}:{key}", caption,
                                     meta.get("caption_prompt"), limits,
                                     missing_image=f"missing image: sample {key} has no image member"))
    except (tarfile.TarError, OSError) as err:
        rows.append(make_row(rel, None, rel, "-", None, limits, missing_image=f"unreadable tar shard: {err}"))
    return rows


# ---------------------------------------------------------------- Ray Data


def source_files(cfg: SourceConfig) -> tuple[list[str], str]:
    suffix = {"sharegpt": (".json", ".jsonl"), "parquet": (".parquet",), "webdataset": (".tar",)}[cfg.format]
    files = storage.list_files(cfg.path, suffix)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(suffix)} files under {cfg.path}")
    root = cfg.path if storage.is_dir(cfg.path) else posixpath.dirname(cfg.path.rstrip("/"))
    return files, root


def iter_rows(cfg: SourceConfig) -> Iterable[dict]:
    """All rows in one process, no Ray (tests, small inputs, the benchmark's baseline)."""
    files, root = source_files(cfg)
    n = 0
    for f in files:
        if cfg.format == "sharegpt":
            rows = sharegpt_rows(sharegpt_entries(f, root), cfg.image_root, cfg.images)
        else:
            rows = (parquet_rows if cfg.format == "parquet" else webdataset_rows)(f, root, cfg.images)
        for r in rows:
            if cfg.limit is not None and n >= cfg.limit:
                return
            n += 1
            yield r


def read_pairs(cfg: SourceConfig):
    """The pairs as a Ray Dataset of source rows (records.source_schema)."""
    import ray

    files, root = source_files(cfg)
    limits = cfg.images
    if cfg.format == "sharegpt":
        entries = [e for f in files for e in sharegpt_entries(f, root)]
        if cfg.limit is not None:
            entries = entries[: cfg.limit]
        image_root = cfg.image_root
        ds = ray.data.from_items(entries, override_num_blocks=max(1, min(len(entries) // 64, 256)))
        return ds.map_batches(
            lambda b: records.to_table(sharegpt_rows(b.to_pylist(), image_root, limits)),
            batch_format="pyarrow", batch_size=64, num_cpus=LIGHT_TASK_CPUS)
    reader = parquet_rows if cfg.format == "parquet" else webdataset_rows

    def read_files(batch):
        return records.to_table([r for f in batch.column("file").to_pylist() for r in reader(f, root, limits)])

    ds = ray.data.from_items([{"file": f} for f in files], override_num_blocks=len(files))
    ds = ds.map_batches(read_files, batch_format="pyarrow", batch_size=cfg.files_per_block,
                        num_cpus=LIGHT_TASK_CPUS)
    return ds.limit(cfg.limit) if cfg.limit is not None else ds


def bench_read(rows: int) -> dict:
    """Rows/s from parquet (generated sample pairs) into validated rows: one process vs Ray Data."""
    import tempfile

    import ray

    from adamllm_ray import sample_data

    with tempfile.TemporaryDirectory() as tmp:
        pairs = sample_data.make_pairs(rows, seed=1, broken=False)
        sample_data.write_parquet(pairs, Path(tmp) / "parquet", shards=16)
        cfg = SourceConfig(format="parquet", path=f"{tmp}/parquet")
        t = time.perf_counter()
        n_local = sum(1 for _ in iter_rows(cfg))
        local_s = time.perf_counter() - t
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            read_pairs(cfg).count()  # warm the workers
            t = time.perf_counter()
            n_ray = sum(len(b["id"]) for b in read_pairs(cfg).iter_batches(batch_size=1024, batch_format="pyarrow"))
            ray_s = time.perf_counter() - t
        finally:
            ray.shutdown()
    return {"rows": rows, "one_process_rows_per_s": round(n_local / local_s), "ray_data_rows_per_s": round(n_ray / ray_s),
            "target_rows_per_s": 2000, "ray_data_over_target": round(n_ray / ray_s / 2000, 2)}
