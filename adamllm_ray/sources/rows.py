"""The row and error contract every source reader keeps: a source row (records.py columns) or an
error row of stage "read" whose message names the field and the user's own value; index rows (pass 1)
and the decision a reader asks for each row before its image is looked at (pass 2)."""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from adamllm_ray import images, records
from adamllm_ray.config import ImageLimits

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


def pair_key(image: str, caption: Any) -> str:
    return hashlib.blake2b(f"{image}\0{caption}".encode("utf-8", "replace"), digest_size=8).hexdigest()


Decide = Callable[[str, str, int], "tuple[str, str | None] | None"]


def keep_all(rid: str, pos_id: str, seq: int):
    return rid, None


def index_row(rid: str, pos_id: str, seq: int, loc: str, **kw) -> dict:
    return {"id": rid, "pos_id": pos_id, "seq": seq, "loc": loc, "pair_key": None, **kw}


def file_problem(rel, file_index, problem, limits, decide, ids_only) -> list[dict]:
    if ids_only:
        return [index_row(rel, rel, file_index * SEQ_FILE, rel)]
    decision = decide(rel, rel, file_index * SEQ_FILE)
    if decision is None:
        return []
    return [{**make_row(decision[0], None, rel, "-", None, limits), records.ERROR: records.error("read", problem)}]


def admit(rows: list[dict], rid: str, pos_id: str, seq: int, loc: str, decide: Decide, ids_only: bool):
    """The head every per-row reader shares: with `ids_only` the index row is appended to `rows` and
    None returned; else `decide`'s (id, problem), None for a row to skip."""
    if ids_only:
        rows.append(index_row(rid, pos_id, seq, loc))
        return None
    return decide(rid, pos_id, seq)


def decided_row(decision: tuple[str, str | None], image: bytes | None, image_path: str, caption: Any,
                caption_prompt: Any, limits: ImageLimits, rules: CaptionRules | None, missing_image: str) -> dict:
    """The source row of an admitted row; a problem the decision carries (a repeated id) is its error."""
    rid, problem = decision
    row = make_row(rid, None if problem else image, image_path, caption, caption_prompt, limits,
                   missing_image=problem or missing_image, rules=rules)
    if problem:
        row[records.ERROR] = records.error("read", problem)
    return row
