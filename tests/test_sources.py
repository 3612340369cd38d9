"""Reading image-caption pairs: three formats, local and S3, bad rows as error rows."""

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from adamllm_ray import images, sample_data
from adamllm_ray.config import ImageLimits, SourceConfig
from adamllm_ray.sources import iter_rows, read_pairs
from conftest import upload_tree

FORMATS = {"sharegpt": "sharegpt/pairs.json", "parquet": "parquet", "webdataset": "webdataset"}


def pixels(data: bytes) -> bytes:
    return images.to_pil(data).tobytes()


def by_id(rows):
    out = {r["id"]: r for r in rows}
    assert len(out) == len(rows), "ids must be unique"
    return out


def summary(rows):
    """id -> (caption, pixels or error stage) — what must agree between formats and storages."""
    return {r["id"]: (r["caption"], r["error"]["stage"] if r["error"] else pixels(r["image"])) for r in rows}


def test_three_formats_give_the_same_rows(sample):
    root = Path(sample["image_root"]).parent
    results = {fmt: list(iter_rows(SourceConfig(format=fmt, path=str(root / p)))) for fmt, p in FORMATS.items()}
    reference = summary(results["sharegpt"])
    assert len(reference) == sample["n"]
    for fmt, rows in results.items():
        assert summary(rows) == reference, fmt
        errors = {r["id"] for r in rows if r["error"]}
        assert errors == set(sample["broken"]), fmt
        assert all(r["error"]["stage"] == "read" for r in rows if r["error"])


def test_broken_rows_have_specific_messages(sample):
    rows = by_id(list(iter_rows(SourceConfig(format="sharegpt", path=sample["sharegpt"]))))
    expected = {"corrupt_image": "truncated", "not_an_image": "not an image", "empty_caption": "empty caption",
                "missing_image": "image file not found"}
    for rid, reason in sample["broken"].items():
        assert expected[reason] in rows[rid]["error"]["message"], (reason, rows[rid]["error"])
    good = [r for r in rows.values() if not r["error"]]
    assert len(good) == sample["n"] - len(sample["broken"])
    assert all(r["image"] and r["caption"] for r in good)


def huge_png(w: int, h: int) -> bytes:
    """A tiny file that declares w x h pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\x00" + b"\x00" * ((w + 7) // 8)
    idat = zlib.compress(row * 16)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_image_validation_cases(tmp_path):
    rgb = Image.new("RGB", (40, 30), (10, 200, 30))
    cmyk = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(cmyk, format="JPEG")
    good = sample_data.encode(rgb)
    cases = {
        "good": (good, "ok"),
        "cmyk": (cmyk.getvalue(), "ok"),
        "truncated": (good[: len(good) // 2], "truncated"),
        "text": (b"<html>not an image</html>", "not an image"),
        "empty": (b"", "empty image file"),
        "bomb": (huge_png(20000, 20000), "decompression-bomb limit"),
    }
    entries = []
    (tmp_path / "img").mkdir()
    for name, (data, _) in cases.items():
        (tmp_path / "img" / f"{name}.bin").write_bytes(data)
        entries.append({"id": name, "images": [f"img/{name}.bin"],
                        "messages": [{"role": "user", "content": "<image>Describe."},
                                     {"role": "assistant", "content": f"caption of {name}"}]})
    entries.append({"id": "no-file", "images": ["img/absent.png"], "messages": [{"role": "assistant", "content": "x"}]})
    entries.append({"id": "no-caption", "images": ["img/good.bin"], "messages": [{"role": "user", "content": "hi"}]})
    (tmp_path / "pairs.json").write_text(json.dumps(entries))
    rows = by_id(list(iter_rows(SourceConfig(format="sharegpt", path=str(tmp_path / "pairs.json")))))
    assert len(rows) == len(entries)
    for name, (_, expect) in cases.items():
        if expect == "ok":
            assert rows[name]["error"] is None
            assert images.to_pil(rows[name]["image"]).mode == "RGB"
        else:
            assert expect in rows[name]["error"]["message"], (name, rows[name]["error"])
    assert "image file not found: img/absent.png" in rows["no-file"]["error"]["message"]
    assert rows["no-caption"]["error"] == {"stage": "read", "message": "missing caption: the pair has no caption text"}
    # the CMYK JPEG is converted to RGB with its colour kept (no cyan, full magenta + yellow = red)
    r, g, b = images.to_pil(rows["cmyk"]["image"]).getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60


def test_pixel_cap_downscales_and_keeps_aspect():
    big = sample_data.encode(Image.new("RGB", (400, 200), (1, 2, 3)))
    out = images.to_pil(images.validate(big, ImageLimits(max_pixels=100 * 50)))
    assert out.size == (100, 50)
    assert images.validate(big) is big  # already RGB PNG within the cap: original bytes, no re-encode


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_s3_and_ray_give_the_same_rows_as_local(sample, s3_prefix, ray_local, fmt):
    root = Path(sample["image_root"]).parent
    upload_tree(root, s3_prefix + "/data")
    local = summary(iter_rows(SourceConfig(format=fmt, path=str(root / FORMATS[fmt]))))
    remote_cfg = SourceConfig(format=fmt, path=f"{s3_prefix}/data/{FORMATS[fmt]}")
    assert summary(iter_rows(remote_cfg)) == local
    ds = read_pairs(remote_cfg).materialize()
    assert summary(ds.take_all()) == local
    if fmt != "sharegpt":  # one task per file: many small files spread over many blocks
        assert ds.num_blocks() >= 2
