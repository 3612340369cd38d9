"""Decode and validate images: a bad image becomes a clear error message, never a crash.

Checks, in order: empty bytes, unrecognised format, decompression bomb (declared size over the
limit, checked before any pixel is decoded), truncated or corrupt data (full decode). Then the
image is converted to RGB and downscaled to the pixel cap. Images that are already RGB PNG/JPEG
within the cap keep their original bytes (no re-encoding on the hot path)."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from adamllm_ray.config import ImageLimits


class ImageError(ValueError):
    pass


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    if not data:
        raise ImageError("empty image file (0 bytes)")
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # our own limit below, with our own message
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(f"not an image: unrecognised format (first bytes {data[:8]!r}, {len(data)} bytes)") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    w, h = img.size
    if w * h > limits.max_decoded_pixels:
        raise ImageError(f"image too large: {w}x{h} = {w * h:,} pixels is over the decompression-bomb limit "
                         f"of {limits.max_decoded_pixels:,} (source.images.max_decoded_pixels)")
    if w == 0 or h == 0:
        raise ImageError(f"image has no pixels ({w}x{h})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"corrupt or truncated {img.format or 'image'} data: {err}") from None
    return img


def decode(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """The validated image as RGB, within the pixel cap."""
    img = _open(data, limits)
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    if w * h > limits.max_pixels:
        scale = (limits.max_pixels / (w * h)) ** 0.5
        img = img.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BICUBIC)
    return img


def validate(data: bytes, limits: ImageLimits = ImageLimits()) -> bytes:
    """Bytes of a valid RGB image within the cap: the original bytes when they already are one."""
    img = _open(data, limits)
    w, h = img.size
    if img.mode == "RGB" and img.format in ("PNG", "JPEG") and w * h <= limits.max_pixels:
        return data
    img = decode(data, limits)
    buf = io.BytesIO()
    img.save(buf, format=limits.reencode_format)
    return buf.getvalue()


def to_pil(data: bytes) -> Image.Image:
    """Decode bytes that `validate` already accepted."""
    img = Image.open(io.BytesIO(data))
    return img if img.mode == "RGB" else img.convert("RGB")
