"""What the Ray Data stage and the workers read from local or s3:// storage: the model folder (an
s3:// prefix copied once per node with pyarrow.fs), the processor (once per process) and the images."""

from __future__ import annotations

from typing import Any

from adamllm_ray import images, storage
from adamllm_ray.config import ImageLimits
from adamllm_ray.training.masks import SkipExample

_PROCESSORS: dict[str, Any] = {}


def copy_tree(src: str, dest: str) -> None:
    """Every file under `src` to `dest` (each local or s3://), folders made as needed (pyarrow.fs)."""
    import pyarrow.fs as pafs

    (src_fs, src_path), (dest_fs, dest_path) = storage.filesystem(src), storage.filesystem(dest)
    pafs.copy_files(src_path, dest_path, source_filesystem=src_fs, destination_filesystem=dest_fs)


def local_model(model: str) -> str:
    """A folder or hub id transformers can load: an s3:// prefix is downloaded once per node into
    a cache folder (each process that needs it calls this; the first finished copy wins)."""
    if not storage.is_s3(model):
        return model
    import os
    import shutil
    import tempfile
    from pathlib import Path

    dest = Path(tempfile.gettempdir(), "adamllm-models", model[len("s3://"):].strip("/").replace("/", "_"))
    if (dest / "config.json").exists():
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".download-"))
    copy_tree(model, str(tmp))
    try:
        os.replace(tmp, dest)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


def load_processor(model: str):
    """The model's processor, once per process (Ray Data reuses its worker processes)."""
    if model not in _PROCESSORS:
        from transformers import AutoProcessor

        _PROCESSORS[model] = AutoProcessor.from_pretrained(local_model(model))
    return _PROCESSORS[model]


def load_images(example: dict, limits: ImageLimits) -> list:
    from PIL import Image

    out = []
    for rel in example["images"]:
        uri = rel if storage.is_s3(rel) or rel.startswith("/") else storage.join(example["image_dir"], rel)
        try:
            data = storage.read_bytes(uri)
        except (FileNotFoundError, OSError) as err:
            raise SkipExample("missing_image", f"image not found: {rel} ({type(err).__name__})") from None
        try:
            img = images.decode(data, limits)
        except images.ImageError as err:
            raise SkipExample("bad_image", f"bad image {rel}: {err}") from None
        out.append(Image.new("RGB", img.size, (255, 255, 255)) if example["blank"] else img)
    return out
