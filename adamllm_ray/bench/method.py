"""`adamllm bench method`: rows/s of the pure method (parse, pair, compose) on one core, over
generated synthesizer outputs shaped like real ones (a few hundred tokens, 3-8 hinted turns, a
repeated question in most rows, a fifth cut off by the token limit). Target: 20,000 rows/s."""

from __future__ import annotations

import random
import time

from adamllm_ray.families import FAMILIES, get_family
from adamllm_ray.synthesis.compose import build_example, compose_task
from adamllm_ray.synthesis.filter import pair_triplet
from adamllm_ray.synthesis.parse import parse_output
from adamllm_ray.synthesis.stages import finish_row, parse_row

TARGET_ROWS_PER_S = 20_000

_WORDS = (
    "the image shows a cross section of tissue with scattered cells stained pink and purple nuclei "
    "dish plate sauce rice chicken fresh green herbs lesion margin left right upper lower lobe "
    "bright dark region arrow indicates mass of about two centimeters near vessel bowl soup bread "
    "slice tomato cheese onion visible background texture pattern consistent with inflammation"
).split()


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = rng.choices(_WORDS, k=rng.randint(lo, hi))
    return " ".join(words).capitalize() + "."


def _text(rng: random.Random, sentences: int, lo: int = 6, hi: int = 18) -> str:
    return " ".join(_sentence(rng, lo, hi) for _ in range(sentences))


def sample_rows(n: int, family: str, seed: int = 0) -> list[dict]:
    """Rows as they leave the synthesizer: id, image path, caption, caption prompt, raw output."""
    fam = get_family(family)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pairs = []
        for _ in range(rng.randint(3, 8)):
            question = _sentence(rng, 5, 14)[:-1] + "?"
            if rng.random() < 0.3:  # the synthesizer often asks a question both ways
                pairs.append({"question": question, "answer": _sentence(rng, 1, 5), "kind": "precise"})
                informative = _text(rng, rng.randint(1, 4))
                if rng.random() < 0.3:
                    informative += " Therefore it is " + rng.choice(_WORDS) + "."
                pairs.append({"question": question, "answer": informative, "kind": "informative"})
            else:
                kind = rng.choice(("precise", "informative"))
                answer = _sentence(rng, 1, 5) if kind == "precise" else _text(rng, rng.randint(1, 4))
                pairs.append({"question": question, "answer": answer, "kind": kind})
        raw = fam.format_turns(pairs)
        if rng.random() < 0.2:  # cut off by the token limit
            raw = raw[: int(len(raw) * rng.uniform(0.7, 0.99))]
        rows.append(
            {
                "id": f"bench-{i:08d}",
                "image_path": f"images/{i:08d}.jpg",
                "caption": _text(rng, rng.randint(2, 6)),
                "caption_prompt": "<image>Describe the image.",
                "raw_output": raw,
            }
        )
    return rows


def _best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _measure(rows: list[dict], family: str, repeats: int) -> dict:
    fam = get_family(family)
    raws = [r["raw_output"] for r in rows]
    parsed = [parse_output(raw, fam) for raw in raws]
    triplets = [pair_triplet(p, fam) for p in parsed]
    n = len(rows)

    def compose_all():
        for row, triplet in zip(rows, triplets):
            task = compose_task(triplet, row["id"]) if triplet is not None else None
            build_example(row, task, "single_stage")

    def row_functions():
        for row in rows:
            parsed_row = parse_row(row, fam)
            finish_row(parsed_row, judge_output=" Yes" if parsed_row["triplet"] else None)

    t_parse = _best_of(repeats, lambda: [parse_output(raw, fam) for raw in raws])
    t_pair = _best_of(repeats, lambda: [pair_triplet(p, fam) for p in parsed])
    t_compose = _best_of(repeats, compose_all)
    t_rows = _best_of(repeats, row_functions)
    total = t_parse + t_pair + t_compose
    return {
        "rows": n,
        "mean_output_chars": round(sum(map(len, raws)) / n),
        "rows_with_triplet": sum(t is not None for t in triplets),
        "parse_rows_per_s": round(n / t_parse),
        "pair_rows_per_s": round(n / t_pair),
        "compose_rows_per_s": round(n / t_compose),
        "parse_pair_compose_rows_per_s": round(n / total),
        "row_functions_rows_per_s": round(n / t_rows),
        "ratio_to_target": round(n / total / TARGET_ROWS_PER_S, 2),
        "row_functions_ratio_to_target": round(n / t_rows / TARGET_ROWS_PER_S, 2),
    }


def bench_method(rows: int, repeats: int = 3) -> dict:
    """Per family: rows/s of each step, of the three together, and of the row functions the
    pipeline maps (which also copy rows and judge); ratios to the 20,000 rows/s target."""
    result = {"target_rows_per_s": TARGET_ROWS_PER_S}
    for family in FAMILIES:
        result[family] = _measure(sample_rows(rows, family), family, repeats)
    return result
