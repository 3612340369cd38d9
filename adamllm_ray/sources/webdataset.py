"""Webdataset tar shards: per sample an image member, a `.txt` caption or a `.json` with `caption`
(and optionally `id`, `caption_prompt`).

Not `ray.data.read_webdataset`: it decodes members in the read task, so one undecodable member fails the
task where it must be that sample's error row, and the image's source bytes are not kept."""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from typing import Iterator

from adamllm_ray import storage
from adamllm_ray.config import ImageLimits
from adamllm_ray.sources.rows import SEQ_FILE, CaptionRules, Decide, admit, decided_row, file_problem, keep_all

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


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


def webdataset_rows(uri: str, root: str, limits: ImageLimits, file_index: int = 0, decide: Decide = keep_all,
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
                decision = admit(rows, rid, pos_id, file_index * SEQ_FILE + i, f"{rel} sample {key}", decide,
                                 ids_only)
                if decision is None:
                    continue
                caption = group["txt"].decode("utf-8", "replace") if "txt" in group else meta.get("caption")
                img_ext = next((e for e in group if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTS), None)
                rows.append(decided_row(decision, group.get(img_ext) if img_ext else None, pos_id, caption,
                                        meta.get("caption_prompt"), limits, rules,
                                        f"missing image: sample {key} has no image member"))
    except (tarfile.TarError, OSError) as err:
        return rows + file_problem(rel, file_index, f"unreadable tar shard {rel}: {err}", limits, decide, ids_only)
    return rows
