"""`adamllm bench score`: how fast the eight task metrics score predictions on one core.

Synthetic prediction records of realistic length (seeded, so runs compare) are scored task by task
in this one process. Targets: 5,000 predictions/s for the VQA and multiple-choice metrics, 1,000/s
for vocabulary matching; Recipe1M's ROUGE-L is the `rouge` package's own and has no target."""

from __future__ import annotations

import random
import time

from adamllm_ray.evaluation.metrics import PMC_VQA_CHOICES
from adamllm_ray.evaluation.tasks import TASKS

TARGETS = {
    "slake": 5000, "pathvqa": 5000, "vqa_rad": 5000, "pmc_vqa": 5000, "food101": 5000,
    "nutrition5k": 1000, "foodseg103": 1000, "recipe1m": None,
}
RECIPE1M_MAX_ROWS = 1000  # the paper's whole Recipe1M test set; its ROUGE-L is slow pure Python

_SYLLABLES = ["ka", "lo", "mi", "ne", "sur", "tal", "ven", "o", "ri", "bas", "ch", "ul", "pe", "ra", "to", "gin"]
_FILLER = ("the image shows a of with and in on there is this appears to be some which are near left "
           "right lower upper region small large visible likely typical dish plate served").split()


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))


def _phrase(rng: random.Random, low: int, high: int) -> str:
    return " ".join(_word(rng) for _ in range(rng.randint(low, high)))


def _sentence(rng: random.Random, low: int, high: int, words: list[str] = ()) -> str:
    tokens = [rng.choice(_FILLER) for _ in range(rng.randint(low, high))]
    for word in words:
        tokens.insert(rng.randint(0, len(tokens)), word)
    text = " ".join(tokens)
    return text[:1].upper() + text[1:] + rng.choice([".", ".", ",", "!", "?", ""])


def synthetic_records(task: str, rows: int, seed: int = 0) -> list[dict]:
    """`rows` prediction records shaped like a model's answers for `task`."""
    rng = random.Random(f"{task}-{seed}")
    records = []
    if task in ("slake", "pathvqa", "vqa_rad"):
        for i in range(rows):
            if rng.random() < 0.5:
                label = _phrase(rng, 1, 3)
                said = label.split() if rng.random() < 0.6 else []
                prediction = _sentence(rng, 2, 30, said)
                records.append({"id": i, "prediction": prediction, "label": label, "answer_type": "OPEN"})
            else:
                label = rng.choice(["yes", "no"])
                prediction = rng.choice(["Yes", "No", "No, it is not"]) + ". " + _sentence(rng, 0, 20)
                records.append({"id": i, "prediction": prediction, "label": label, "answer_type": "CLOSED"})
    elif task == "pmc_vqa":
        for i in range(rows):
            options = [_phrase(rng, 1, 5) for _ in range(4)]
            letter = rng.choice(PMC_VQA_CHOICES)
            text = options[PMC_VQA_CHOICES.index(letter)]
            prediction = rng.choice([f"({letter})", f"{letter}: {text}", f"The answer is {letter}.",
                                     _sentence(rng, 10, 60, [text]), "I cannot tell from the image."])
            label = letter if rng.random() < 0.5 else rng.choice(PMC_VQA_CHOICES)
            records.append({"id": i, "prediction": prediction, "label": label, "options": options})
    elif task == "food101":
        names = [_phrase(rng, 1, 3).replace(" ", "_") for _ in range(101)]
        for i in range(rows):
            name = rng.choice(names)
            text = name.replace("_", " ")
            prediction = rng.choice([text, f"The food shown in this image is {text}.",
                                     _sentence(rng, 10, 40, [text]), _sentence(rng, 5, 20)])
            label = name if rng.random() < 0.7 else rng.choice(names)
            records.append({"id": i, "prediction": prediction, "label": label, "options": names})
    elif task == "recipe1m":
        for i in range(min(rows, RECIPE1M_MAX_ROWS)):
            label = ". ".join(_sentence(rng, 5, 20, [_word(rng)]) for _ in range(rng.randint(4, 10)))
            prediction = ". ".join(_sentence(rng, 5, 20, [_word(rng)]) for _ in range(rng.randint(4, 10)))
            records.append({"id": i, "prediction": prediction, "label": label})
    elif task in ("nutrition5k", "foodseg103"):
        size = 555 if task == "nutrition5k" else 102
        vocabulary = list(dict.fromkeys(_phrase(rng, 1, 3) for _ in range(size * 2)))[:size]
        for i in range(rows):
            label = rng.sample(vocabulary, rng.randint(1, 8))
            named = rng.sample(vocabulary, rng.randint(0, 4)) + label[: rng.randint(0, len(label))]
            if task == "foodseg103":
                prediction = "[" + ", ".join(named) + "]"
            else:
                prediction = "The dish is made with " + ", ".join(named) + ". " + _sentence(rng, 5, 30)
            records.append({"id": i, "prediction": prediction, "label": label, "vocabulary": vocabulary})
    else:
        raise ValueError(f"unknown task {task!r}")
    return records


def bench_score(rows: int) -> dict:
    """Predictions per second per task on one core, and the ratio to each target."""
    result = {"rows_per_task": rows, "tasks": {}}
    for name, task in TASKS.items():
        records = synthetic_records(name, rows)
        for record in records:
            task.check_record(record)
        start = time.perf_counter()
        scored = task.score(records)
        seconds = time.perf_counter() - start
        rate = len(records) / seconds
        target = TARGETS[name]
        result["tasks"][name] = {
            "rows": len(records),
            "seconds": round(seconds, 4),
            "predictions_per_s": round(rate, 1),
            "target_per_s": target,
            "ratio": round(rate / target, 2) if target else None,
            "scores": scored["scores"],
        }
    ratios = [t["ratio"] for t in result["tasks"].values() if t["ratio"] is not None]
    result["min_ratio"] = min(ratios)
    return result
