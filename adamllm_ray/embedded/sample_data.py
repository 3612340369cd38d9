"""Generated image-caption pairs for the demo and the tests: coloured shapes drawn with PIL, with
captions that describe them, written in the three source formats (ShareGPT JSON + image folder,
parquet with image bytes, webdataset tars), plus a few deliberately broken rows."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
          "purple": (140, 60, 180), "orange": (240, 140, 30), "black": (20, 20, 20)}
BACKGROUNDS = {"white": (250, 250, 250), "gray": (150, 150, 150), "beige": (235, 225, 200)}
SHAPES = ("circle", "square", "triangle")
CAPTION_PROMPT = "<image>Describe the image."
BROKEN_REASONS = {
    "corrupt_image": "truncated PNG bytes",
    "not_an_image": "text bytes where the image should be",
    "empty_caption": "caption is empty",
    "missing_image": "the image file does not exist",
}


def scene(rng: random.Random) -> dict:
    k = rng.randint(1, 3)
    shapes = [(rng.choice(SHAPES), rng.choice(list(COLORS))) for _ in range(k)]
    return {"background": rng.choice(list(BACKGROUNDS)), "shapes": shapes, "size": rng.choice((64, 96, 128))}


def caption(sc: dict) -> str:
    parts = [f"a {color} {shape}" for shape, color in sc["shapes"]]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    n = len(parts)
    return (f"{listed[0].upper()}{listed[1:]} on a {sc['background']} background. "
            f"There {'is one shape' if n == 1 else f'are {n} shapes'} in the picture.")


def draw(sc: dict, rng: random.Random):
    from PIL import Image, ImageDraw

    s = sc["size"]
    img = Image.new("RGB", (s, s), BACKGROUNDS[sc["background"]])
    d = ImageDraw.Draw(img)
    n = len(sc["shapes"])
    for i, (shape, color) in enumerate(sc["shapes"]):
        w = s // n
        x0, y0 = i * w + 2, rng.randint(2, s // 3)
        box = (x0, y0, x0 + w - 4, y0 + min(w - 4, s - y0 - 2))
        if shape == "circle":
            d.ellipse(box, fill=COLORS[color])
        elif shape == "square":
            d.rectangle(box, fill=COLORS[color])
        else:
            d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=COLORS[color])
    return img


def encode(img, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def scene_qa(sc: dict) -> list[dict]:
    """Precise and informative answers to the same questions about a scene: the conversations a
    synthesizer is tuned on (SPEC §3, synthesizer fine-tuning) so that it learns the hinted format.

    The informative answers are written so that each composition branch of SPEC §2 occurs: the
    colour answer ends on an indicator word (informative alone), the background's precise answer
    holds one (informative + precise), the count has none (chain of thought). The description
    question is open-ended: a judge should call it Open. Questions come in an order drawn from the
    scene (so triplets of every kind occur), each asked for a precise, then an informative answer."""
    shape, color = sc["shapes"][0]
    n, bg = len(sc["shapes"]), sc["background"]
    questions = [
        [{"question": f"What color is the {shape}?", "kind": "precise", "answer": color + "."},
         {"question": f"What color is the {shape}?", "kind": "informative",
          "answer": f"The {shape} in the image is filled with {color}, so the answer is {color}."}],
        [{"question": "How many shapes are in the picture?", "kind": "precise", "answer": str(n) + "."},
         {"question": "How many shapes are in the picture?", "kind": "informative",
          "answer": f"Counting the shapes on the {bg} background one by one gives {n}."}],
        [{"question": "What color is the background?", "kind": "precise", "answer": f"The final answer is {bg}."},
         {"question": "What color is the background?", "kind": "informative",
          "answer": f"Behind the shapes the whole picture is {bg}."}],
        [{"question": "Describe the image briefly.", "kind": "precise", "answer": caption(sc).split(". ")[0] + "."},
         {"question": "Describe the image briefly.", "kind": "informative", "answer": caption(sc)}],
    ]
    random.Random(caption(sc) + str(sc["size"])).shuffle(questions)
    return [qa for pair in questions for qa in pair]


def vocabulary_sentences():
    """Every word the generated captions and QA pairs use, for training tiny tokenizers."""
    rng = random.Random(0)
    for _ in range(400):
        sc = scene(rng)
        yield caption(sc)
        for qa in scene_qa(sc):
            yield qa["question"] + " " + qa["answer"]


def make_pairs(n: int, seed: int = 0, broken: bool = True) -> list[dict]:
    """n pairs as rows {id, image (bytes or None), caption, scene, broken (reason or None)}."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sc = scene(rng)
        img = draw(sc, rng)
        fmt = "JPEG" if i % 5 == 4 else "PNG"
        rows.append({"id": f"sample-{i:05d}", "image": encode(img, fmt), "ext": fmt.lower().replace("jpeg", "jpg"),
                     "caption": caption(sc), "scene": sc, "broken": None})
    if broken and n >= 8:
        for reason, i in zip(BROKEN_REASONS, (1, 3, 5, 7)):
            row = rows[i]
            row["broken"] = reason
            if reason == "corrupt_image":
                row["image"], row["ext"] = row["image"][: len(row["image"]) // 2], "png"
            elif reason == "not_an_image":
                row["image"], row["ext"] = b"this is not an image", "png"
            elif reason == "empty_caption":
                row["caption"] = ""
            else:
                row["image"] = None
    return rows


def write_sharegpt(rows: list[dict], out: Path) -> Path:
    (out / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for r in rows:
        rel = f"images/{r['id']}.{r['ext']}"
        if r["image"] is not None:
            (out / rel).write_bytes(r["image"])
        entries.append({"id": r["id"], "images": [rel], "messages": [
            {"role": "user", "content": CAPTION_PROMPT}, {"role": "assistant", "content": r["caption"]}]})
    (out / "pairs.json").write_text(json.dumps(entries, indent=1))
    return out / "pairs.json"


def write_parquet(rows: list[dict], out: Path, shards: int = 4) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    per = max(1, -(-len(rows) // shards))
    for k in range(0, len(rows), per):
        part = rows[k:k + per]
        table = pa.table({
            "id": [r["id"] for r in part],
            "image": pa.array([r["image"] for r in part], type=pa.binary()),
            "caption": [r["caption"] for r in part],
            "caption_prompt": [CAPTION_PROMPT] * len(part),
        })
        pq.write_table(table, out / f"part-{k // per:05d}.parquet")
    return out


def write_webdataset(rows: list[dict], out: Path, shards: int = 2) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    per = max(1, -(-len(rows) // shards))
    for k in range(0, len(rows), per):
        with tarfile.open(out / f"shard-{k // per:05d}.tar", "w") as tar:
            for r in rows[k:k + per]:
                members = {f"{r['id']}.json": json.dumps({"id": r["id"], "caption": r["caption"]}).encode()}
                if r["image"] is not None:
                    members[f"{r['id']}.{r['ext']}"] = r["image"]
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return out


def write_sample_data(out: str, n: int = 32, seed: int = 0, broken: bool = True) -> dict:
    """Write the three formats under `out`; return a manifest of what was written."""
    root = Path(out)
    rows = make_pairs(n, seed, broken)
    manifest = {
        "n": n,
        "sharegpt": str(write_sharegpt(rows, root / "sharegpt")),
        "image_root": str(root / "sharegpt"),
        "parquet": str(write_parquet(rows, root / "parquet")),
        "webdataset": str(write_webdataset(rows, root / "webdataset")),
        "broken": {r["id"]: r["broken"] for r in rows if r["broken"]},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
