"""Small training sets in the synthesis run's output format, from generated sample images: for
tests, the benchmark and the demo when no synthesis output is at hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

from adamllm_ray.embedded import sample_data
from adamllm_ray.families import CAPTION_HINT, HINTS


def write_training_set(out: str | Path, n: int, seed: int = 0, synthesizer: bool = False) -> str:
    """Write OUT/train.json and OUT/images/ with n examples; returns the JSON path.

    Single-stage examples: the caption task plus one question/answer task, the caption first or
    last (drawn from the id). Synthesizer examples: "Describe the image." -> caption, then the
    hinted precise and informative turns."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for pair in sample_data.make_pairs(n, seed=seed, broken=False):
        rel = f"images/{pair['id']}.{pair['ext']}"
        (out / rel).write_bytes(pair["image"])
        qa = sample_data.scene_qa(pair["scene"])
        if synthesizer:
            messages = [{"role": "user", "content": f"<image>{CAPTION_HINT}"},
                        {"role": "assistant", "content": pair["caption"]}]
            for q in qa:
                messages += [{"role": "user", "content": f"{HINTS[q['kind']]}\n{q['question']}"},
                             {"role": "assistant", "content": q["answer"]}]
        else:
            caption = [{"role": "user", "content": CAPTION_HINT}, {"role": "assistant", "content": pair["caption"]}]
            task = [{"role": "user", "content": qa[0]["question"]}, {"role": "assistant", "content": qa[0]["answer"]}]
            messages = caption + task if random.Random(pair["id"]).random() < 0.5 else task + caption
            messages[0] = {"role": "user", "content": "<image>\n" + messages[0]["content"]}
        entries.append({"id": pair["id"], "images": [rel], "messages": messages})
    path = out / "train.json"
    path.write_text(json.dumps(entries, indent=1))
    return str(path)
