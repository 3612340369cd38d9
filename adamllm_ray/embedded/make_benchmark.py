"""`adamllm make-benchmark`: a small benchmark of each of the eight tasks, in the public sets' layout
(evaluation/benchmark.py), from the drawn scenes of sample_data: questions about the shapes' colours
and counts, answers known exactly. For the demo and the tests.

The layouts vary on purpose, as the real sets do: SLAKE is a Hugging Face `save_to_disk` arrow
file; PathVQA spans two parquet files with a `question` column; VQA-RAD has string ids; PMC-VQA has
option columns A-D; Food101 gives each row its class list and an integer label; Nutrition5K and
FoodSeg103 name their phrases in `vocabulary.json` (a list, and an {"id": name} object)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from adamllm_ray.embedded import sample_data
from adamllm_ray.embedded.sample_data import COLORS, SHAPES

TASK_NAMES = ("slake", "pathvqa", "vqa_rad", "pmc_vqa", "recipe1m", "nutrition5k", "food101", "foodseg103")
BROKEN_ROW = 1  # with broken=True, this row of every task holds a truncated PNG


def _scene_image(rng: random.Random) -> tuple[dict, bytes]:
    sc = sample_data.scene(rng)
    return sc, sample_data.encode(sample_data.draw(sc, rng))


def _vqa_question(sc: dict, rng: random.Random) -> tuple[str, str, str]:
    """(question, answer, answer_type)."""
    shape, color = sc["shapes"][0]
    present = {s for s, _ in sc["shapes"]}
    kind = rng.randrange(4)
    if kind == 0:
        return f"What color is the {shape}?", color, "OPEN"
    if kind == 1:
        return "How many shapes are in the picture?", str(len(sc["shapes"])), "OPEN"
    if kind == 2:
        asked = rng.choice(SHAPES)
        return f"Is there a {asked} in the image?", "yes" if asked in present else "no", "CLOSED"
    asked = rng.choice(list(sample_data.BACKGROUNDS))
    return f"Is the background {asked}?", "yes" if asked == sc["background"] else "no", "CLOSED"


def _recipe(sc: dict) -> str:
    steps = [f"Take a {sc['background']} sheet."]
    steps += [f"Draw {'an' if color[0] in 'aeiou' else 'a'} {color} {shape}." for shape, color in sc["shapes"]]
    return " ".join(steps)


def _hf_image(data: bytes, i: int) -> dict:
    return {"bytes": data, "path": f"{i:05d}.png"}


def _write_parquet(rows: list[dict], path: Path, schema) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _write_arrow_stream(rows: list[dict], path: Path, schema) -> None:
    """As Hugging Face `save_to_disk` writes a split: an arrow IPC stream."""
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=3)  # several record batches, as real files have


def write_benchmark(out: str, n: int = 8, seed: int = 0, broken: bool = False) -> dict:
    """n examples of each task under OUT/<task>/; returns a manifest (also written to OUT/manifest.json)."""
    import pyarrow as pa

    root = Path(out)
    rng = random.Random(seed)
    hf_image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    scenes = {t: [_scene_image(rng) for _ in range(n)] for t in TASK_NAMES}
    if broken and n > BROKEN_ROW:
        for t in TASK_NAMES:
            sc, data = scenes[t][BROKEN_ROW]
            scenes[t][BROKEN_ROW] = (sc, data[: len(data) // 2])

    for t in ("slake", "pathvqa", "vqa_rad"):
        rows = []
        for i, (sc, data) in enumerate(scenes[t]):
            q, a, kind = _vqa_question(sc, rng)
            rows.append({"image": data, "question": q, "input": q, "label": a, "answer_type": kind,
                         "id": f"{t}-{i:04d}"})
        if t == "slake":
            schema = pa.schema([("image", hf_image), ("input", pa.string()), ("label", pa.string()),
                                ("answer_type", pa.string())])
            _write_arrow_stream([{**r, "image": _hf_image(r["image"], i)} for i, r in enumerate(rows)],
                                root / t / "data-00000-of-00001.arrow", schema)
        elif t == "pathvqa":
            schema = pa.schema([("image", pa.binary()), ("question", pa.string()), ("label", pa.string()),
                                ("answer_type", pa.string())])
            half = (len(rows) + 1) // 2
            _write_parquet(rows[:half], root / t / "test-00000.parquet", schema)
            _write_parquet(rows[half:], root / t / "test-00001.parquet", schema)
        else:
            schema = pa.schema([("id", pa.string()), ("image", pa.binary()), ("input", pa.string()),
                                ("label", pa.string()), ("answer_type", pa.string())])
            _write_parquet(rows, root / t / "test.parquet", schema)

    colors = list(COLORS)
    rows = []
    for i, (sc, data) in enumerate(scenes["pmc_vqa"]):
        shape, color = sc["shapes"][0]
        options = [color] + rng.sample([c for c in colors if c != color], 3)
        rng.shuffle(options)
        rows.append({"image": _hf_image(data, i), "question": f"What color is the {shape}?",
                     **dict(zip("ABCD", options)), "label": "ABCD"[options.index(color)]})
    _write_parquet(rows, root / "pmc_vqa" / "test.parquet", pa.schema(
        [("image", hf_image), ("question", pa.string())] + [(c, pa.string()) for c in "ABCD"]
        + [("label", pa.string())]))

    rows = [{"image": data, "input": "Write the recipe of the dish in the image.", "label": _recipe(sc)}
            for sc, data in scenes["recipe1m"]]
    _write_parquet(rows, root / "recipe1m" / "test.parquet", pa.schema(
        [("image", pa.binary()), ("input", pa.string()), ("label", pa.string())]))

    ingredients = [f"{c} {s}" for c in colors for s in SHAPES]
    rows = [{"image": data, "label": sorted({f"{c} {s}" for s, c in sc["shapes"]})}
            for sc, data in scenes["nutrition5k"]]
    _write_parquet(rows, root / "nutrition5k" / "test.parquet", pa.schema(
        [("image", pa.binary()), ("label", pa.list_(pa.string()))]))
    (root / "nutrition5k" / "vocabulary.json").write_text(json.dumps(ingredients, indent=1))

    classes = [f"{c}_{s}" for c in colors for s in SHAPES]
    rows = [{"image": _hf_image(data, i), "options": classes,
             "label": classes.index(f"{sc['shapes'][0][1]}_{sc['shapes'][0][0]}")}
            for i, (sc, data) in enumerate(scenes["food101"])]
    _write_parquet(rows, root / "food101" / "test.parquet", pa.schema(
        [("image", hf_image), ("options", pa.list_(pa.string())), ("label", pa.int64())]))

    categories = {str(k + 1): c for k, c in enumerate(colors)}  # ids from 1, as FoodSeg103's
    rows = [{"image": data, "label": sorted({colors.index(c) + 1 for _, c in sc["shapes"]})}
            for sc, data in scenes["foodseg103"]]
    _write_parquet(rows, root / "foodseg103" / "test.parquet", pa.schema(
        [("image", pa.binary()), ("label", pa.list_(pa.int64()))]))
    (root / "foodseg103" / "vocabulary.json").write_text(json.dumps(categories, indent=1))

    manifest = {"n": n, "seed": seed, "tasks": {t: str(root / t) for t in TASK_NAMES},
                "broken": {t: [BROKEN_ROW] for t in TASK_NAMES} if broken and n > BROKEN_ROW else {}}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
