"""Decode and validate images: a bad image becomes a clear error message, never a crash.

Checks, in order: empty bytes, unrecognised format, decompression bomb (declared size over the
limit, checked before any pixel is decoded), aspect ratio (Qwen2-VL's processor refuses over 200,
and vLLM then reports an empty error), truncated or corrupt data (full decode). Then the image is
turned upright (EXIF orientation), brought to 8-bit RGB by scaling (a 16-bit scan clipped by
`convert("RGB")` comes out white), and downscaled to the pixel cap. Upright PNG/JPEG images within the
cap whose plain RGB conversion is already right (RGB, grayscale, palette without transparency, CMYK)
keep their source bytes: no re-encoding on the hot path, and images/ holds the bytes the corpus had."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from adamllm_ray.config import ImageLimits

MAX_ASPECT_RATIO = 200  # Qwen2-VL's image processor refuses more
ORIENTATION = 0x0112  # EXIF tag


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
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # cut short inside its header
        kind = "JPEG" if data[:3] == b"\xff\xd8\xff" else "PNG" if data[:4] == b"\x89PNG" else "image"
        raise ImageError(f"corrupt or truncated {kind} data: {err}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    w, h = img.size
    if w * h > limits.max_decoded_pixels:
        raise ImageError(f"image too large: {w}x{h} = {w * h:,} pixels is over the decompression-bomb limit "
                         f"of {limits.max_decoded_pixels:,} (source.images.max_decoded_pixels)")
    if w == 0 or h == 0:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise ImageError(f"aspect ratio {w}:{h} ({max(w, h) / min(w, h):.0f} to 1) is over {MAX_ASPECT_RATIO} "
                         f"to 1, which the model's image processor refuses")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"corrupt or truncated {img.format or 'image'} data: {err}") from None
    return img


def _rotated(img: Image.Image) -> bool:
    try:
        return img.getexif().get(ORIENTATION, 1) not in (1, None)
    except Exception:
        return False


def to_rgb8(img: Image.Image) -> Image.Image:
    """8-bit RGB with the full range scaled, not clipped: 16-bit (I;16*, or I holding 0..65535)
    divided by 257, other int or float images stretched from their own min..max; transparency
    composited on white."""
    import numpy as np

    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        if img.mode.startswith("I;16") or (img.mode == "I" and lo >= 0 and hi <= 65535 and hi > 255):
            a = a / 257.0
        elif img.mode == "F" and lo >= 0 and hi <= 1:
            a = a * 255.0
        elif lo < 0 or hi > 255:
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else a * 0
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img if img.mode == "RGB" else img.convert("RGB")


def decode(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """The validated image, upright, as 8-bit RGB, within the pixel cap."""
    return _normalised(_open(data, limits), limits)


def _normalised(img: Image.Image, limits: ImageLimits) -> Image.Image:
    if _rotated(img):
        img = ImageOps.exif_transpose(img)
    img = to_rgb8(img)
    w, h = img.size
    if w * h > limits.max_pixels:
        scale = (limits.max_pixels / (w * h)) ** 0.5
        img = img.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BICUBIC)
    return img


# Modes whose plain `convert("RGB")` (what `to_pil` does) gives exactly what `to_rgb8` gives: no
# 16-bit or float range to scale, no transparency to put on white.
KEPT_MODES = ("RGB", "L", "1", "CMYK", "YCbCr")


def keeps_source(img: Image.Image, limits: ImageLimits) -> bool:
    """Whether the source bytes themselves can go to images/ and the engine: a PNG or JPEG (the
    extensions train.json names), upright, within the cap, in a mode `to_pil` turns into the same
    RGB pixels `decode` would (a palette without transparency included)."""
    w, h = img.size
    plain = img.mode in KEPT_MODES or (img.mode == "P" and "transparency" not in img.info)
    return plain and img.format in ("PNG", "JPEG") and w * h <= limits.max_pixels and not _rotated(img)


def validate(data: bytes, limits: ImageLimits = ImageLimits()) -> bytes:
    """Bytes of a valid upright image within the cap that `to_pil` decodes to 8-bit RGB: the source
    bytes whenever the format allows, else a re-encoding of the decoded image (one decode either way)."""
    img = _open(data, limits)
    if keeps_source(img, limits):
        return data
    img = _normalised(img, limits)
    buf = io.BytesIO()
    img.save(buf, format=limits.reencode_format)
    return buf.getvalue()


def to_pil(data: bytes) -> Image.Image:
    """Decode bytes that `validate` already accepted, once, into the RGB image vLLM takes."""
    img = Image.open(io.BytesIO(data))
    return img if img.mode == "RGB" else img.convert("RGB")


class ForEngine:
    """An image on its way from a preprocess task to an engine actor. Ray pickles the rows between
    them (Arrow has no type for an image); this pickles as the validated source bytes and unpickles as
    `to_pil`'s RGB image, the form vLLM takes. So the object store holds the encoded bytes, not the
    pixels (a JPEG is a tenth of them or less): a read that runs ahead of the engines buffers ten times
    fewer bytes, and the image is still decoded once, in the engine's actor."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self):
        return to_pil, (self.data,)
