"""ShareGPT JSON/JSONL with an image root (the authors' format): entries checked in the index pass,
images read (inside the root only) in the rows pass.

Not `ray.data.read_json`: its readers (pyarrow's, then pandas') fail a whole file on its first malformed
line, where that line must be one error row naming its file and line, and a `.json` file is one array."""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any, Iterator

from adamllm_ray import records, storage
from adamllm_ray.config import ImageLimits
from adamllm_ray.sources.rows import SEQ_FILE, CaptionRules, check_caption, make_row, pair_key


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
                row["pair_key"] = pair_key(row["image_uri"], caption)
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
