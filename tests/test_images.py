"""Images reach the model upright and as 8-bit RGB with their full range kept: 16-bit and float
images are scaled (not clipped to white), EXIF orientation is applied, transparency lands on white,
and shapes the model's processor refuses are refused here with a message that says why."""

import io

import numpy as np
import pytest
from PIL import Image

from adamllm_ray import images


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_16_bit_grayscale_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]] * 4, dtype=np.uint16)
    data = png(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = images.to_pil(images.validate(data))
    assert out.mode == "RGB"
    assert [out.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255)]


def test_32_bit_int_and_float_images():
    ints = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32), "I")
    assert [images.to_rgb8(ints).getpixel((x, 0))[0] for x in range(3)] == [0, 4, 255]
    tiff = io.BytesIO()
    ints.save(tiff, format="TIFF")
    assert images.to_pil(images.validate(tiff.getvalue())).getpixel((1, 0)) == (4, 4, 4)
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    out = images.to_rgb8(floats)
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = images.to_pil(images.validate(png(rgba)))
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((3, 3)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    out = images.to_pil(images.validate(buf.getvalue()))
    assert out.size == (20, 40)
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60, top  # the left (red) side is now on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_aspect_ratio_over_200_is_refused_with_the_ratio():
    with pytest.raises(images.ImageError, match=r"aspect ratio 3000:8 \(375 to 1\) is over 200 to 1"):
        images.validate(png(Image.new("RGB", (3000, 8))))
    assert images.validate(png(Image.new("RGB", (1600, 8))))  # 200 to 1 is accepted


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_source_bytes_kept_where_the_format_allows_and_decode_to_the_same_pixels():
    rng = np.random.default_rng(0)
    gray = Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8), "L")
    palette = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), "RGB").quantize(16)
    kept = {"RGB PNG": png(gray.convert("RGB")), "grayscale PNG": png(gray), "palette PNG": png(palette),
            "grayscale JPEG": _jpeg(gray), "CMYK JPEG": _jpeg(gray.convert("CMYK")), "RGB JPEG": _jpeg(gray.convert("RGB"))}
    for name, data in kept.items():
        assert images.validate(data) == data, f"{name}: the source bytes, not a re-encoding"
        assert np.array_equal(np.asarray(images.to_pil(data)), np.asarray(images.decode(data))), name
    see_through = palette.copy()
    see_through.info["transparency"] = 0
    for name, img in {"RGBA": gray.convert("RGBA"), "palette with transparency": see_through,
                      "16-bit": Image.fromarray(np.full((4, 4), 600, dtype=np.uint16))}.items():
        data = png(img)
        out = images.validate(data)
        assert out != data, f"{name}: plain RGB conversion would be wrong, so it is re-encoded"
        assert np.array_equal(np.asarray(images.to_pil(out)), np.asarray(images.decode(data))), name


def test_validate_decodes_each_image_once(monkeypatch):
    opened = []
    real = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **kw: opened.append(1) or real(fp, *a, **kw))
    images.validate(png(Image.new("LA", (8, 8))))  # re-encoded: still opened and decoded once
    assert len(opened) == 1, opened


def test_an_image_for_the_engine_crosses_as_its_bytes_and_arrives_as_pixels():
    import cloudpickle

    rng = np.random.default_rng(1)
    data = _jpeg(Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), "RGB"))
    pickled = cloudpickle.dumps(images.ForEngine(data))
    assert len(pickled) < len(data) + 200, "the encoded bytes cross, not the 150,528 bytes of pixels"
    arrived = cloudpickle.loads(pickled)
    assert isinstance(arrived, Image.Image) and arrived.mode == "RGB" and arrived.size == (224, 224)
    assert np.array_equal(np.asarray(arrived), np.asarray(images.to_pil(data)))
