"""Local paths and s3:// URIs behind one small API (pyarrow.fs: one S3 client per process, multipart
uploads for large objects).

The S3 endpoint, region and credentials come from the usual AWS environment variables
(AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), so S3-compatible
stores (MinIO, moto) work the same way as AWS.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import posixpath
import tempfile
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def _s3_filesystem() -> pafs.S3FileSystem:
    return _s3_cached(*(os.environ.get(k) for k in (
        "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")))


@functools.lru_cache(maxsize=4)
def _s3_cached(*env) -> pafs.S3FileSystem:
    """One client per process and settings (a new client per call costs a connection per image)."""
    kwargs = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URI."""
    uri = str(uri)
    if is_s3(uri):
        return _s3_filesystem(), uri[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    uri = str(uri)
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def relative(uri: str, root: str) -> str:
    """`uri` relative to `root` ("a/b.json"), the same string for a local and an S3 copy of a tree."""
    fs_path = filesystem(uri)[1]
    root_path = filesystem(root)[1]
    rel = posixpath.relpath(fs_path, root_path) if fs_path != root_path else posixpath.basename(fs_path)
    return rel.replace(os.sep, "/")


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def list_files(uri: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Files under a folder (recursively), or matching a glob in the last component, or the file
    itself; sorted, as URIs in the same scheme as `uri`."""
    uri = str(uri)
    fs, path = filesystem(uri)
    prefix = "s3://" if is_s3(uri) else ""
    base, pattern = path, None
    if any(c in posixpath.basename(path) for c in "*?["):
        base, pattern = posixpath.dirname(path), posixpath.basename(path)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File and pattern is None:
        return [prefix + base]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file or folder: {uri}")
    found = []
    for f in fs.get_file_info(pafs.FileSelector(base, recursive=pattern is None)):
        if f.type != pafs.FileType.File or posixpath.basename(f.path).startswith((".", "_")):
            continue
        if pattern and not fnmatch.fnmatch(posixpath.basename(f.path), pattern):
            continue
        if suffixes and not f.path.lower().endswith(suffixes):
            continue
        found.append(prefix + f.path)
    return sorted(found)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Readers see the old object or the whole new one, never a part (see `open_atomic`)."""
    with open_atomic(uri) as f:
        f.write(data)


def write_text_atomic(uri: str, text: str) -> None:
    write_bytes_atomic(uri, text.encode("utf-8"))


def delete_dir(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


@contextlib.contextmanager
def open_atomic(uri: str):
    """A binary stream for writing a large file piece by piece; readers see the old file or the whole
    new one: temp file + rename locally, a multipart upload completed on close on S3."""
    uri = str(uri)
    if is_s3(uri):
        fs, path = filesystem(uri)
        with fs.open_output_stream(path) as f:
            yield f
        return
    path = os.path.abspath(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def delete_file(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)
