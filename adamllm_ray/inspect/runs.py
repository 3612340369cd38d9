"""What the inspector can open, where it caches, and how a path from a run's files is kept inside
the run folder. Every problem a user can cause is an `InspectError` with an HTTP status and one
clear sentence, shown on the page instead of a traceback."""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import tempfile

from adamllm_ray import storage

THUMB_PX = 96


class InspectError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def cache_root() -> str:
    return os.environ.get("ADAMLLM_INSPECT_CACHE") or os.path.join(tempfile.gettempdir(), "adamllm-inspect")


def fingerprint(uris: list[str]) -> str:
    """Changes when any of the files changes (name, size, mtime), so a re-run gets a fresh index."""
    h = hashlib.sha256()
    for uri in uris:
        fs, path = storage.filesystem(uri)
        info = fs.get_file_info(path)
        h.update(f"{uri}|{info.size}|{info.mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cache_dir(run: str, files: list[str]) -> str:
    key = hashlib.sha256(run.encode()).hexdigest()[:12]
    path = os.path.join(cache_root(), f"{key}-{fingerprint(files)}")
    os.makedirs(path, exist_ok=True)
    return path


def inside(run: str, rel: str) -> str:
    """The URI of `rel` under the run folder; refuses absolute paths and any `..` that leaves it."""
    if not rel or rel.startswith(("/", "\\")) or "\\" in rel or storage.is_s3(rel) or ":" in rel.split("/")[0]:
        raise InspectError(404, f"{rel!r} is not a path inside the run folder")
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise InspectError(404, f"{rel!r} is not a path inside the run folder")
    uri = storage.join(run, norm)
    if not storage.is_s3(run):
        real, root = os.path.realpath(uri), os.path.realpath(run)
        if os.path.commonpath([real, root]) != root:
            raise InspectError(404, f"{rel!r} is not a path inside the run folder")
    return uri


def read_json(uri: str, what: str):
    try:
        return json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        raise InspectError(422, f"the run is missing {what} ({uri})") from None
    except ValueError as err:
        raise InspectError(422, f"{what} is not valid JSON ({uri}: {err})") from None


def read_image(run: str, rel: str) -> bytes:
    uri = inside(run, rel)
    try:
        return storage.read_bytes(uri)
    except (FileNotFoundError, OSError):
        raise InspectError(404, f"image {rel} is missing from the run folder") from None


def thumbnail(cache: str, key: str, data: bytes) -> bytes:
    """A small PNG made on first request and kept in the run's cache folder."""
    from PIL import Image

    path = os.path.join(cache, "thumbs", hashlib.sha256(key.encode()).hexdigest()[:24] + ".png")
    if os.path.exists(path):
        with open(path, "rb") as f:
            return f.read()
    try:
        img = Image.open(io.BytesIO(data))
        img.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG")
    except Exception as err:  # noqa: BLE001 - any decoder failure is the same answer to the user
        raise InspectError(422, f"the image cannot be decoded ({type(err).__name__})") from None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    storage.write_bytes_atomic(path, buf.getvalue())
    return buf.getvalue()


def image_type(data: bytes) -> str:
    return "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"


def kind_of(run: str) -> str:
    """"synthesis", "evaluation", or InspectError saying why the folder is not a run."""
    if not storage.is_dir(run):
        raise InspectError(404, f"{run} is not a folder")
    if storage.exists(storage.join(run, "metrics.json")) or storage.is_dir(storage.join(run, "predictions")):
        return "evaluation"
    if any(storage.exists(storage.join(run, f)) for f in ("summary.json", "tasks", "train.json")):
        return "synthesis"
    raise InspectError(422, f"{run} is not a run folder: it has neither a synthesis run's summary.json and "
                            "tasks/ nor an evaluation run's metrics.json and predictions/")
