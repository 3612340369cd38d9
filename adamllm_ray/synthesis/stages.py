"""The method as two pure row functions, on each side of the judge, for the pipeline to map over
batches. A row that already failed passes through with the new columns empty; a row with bad
input comes back with `error` set and every other column kept."""

from __future__ import annotations

from typing import Any

from adamllm_ray.families import Family, get_family
from adamllm_ray.records import (
    ERROR,
    ID,
    MESSAGES,
    QA_PAIRS,
    RAW_OUTPUT,
    RESPONSE,
    TRIPLET,
    VERDICT,
    error,
    failed,
)
from adamllm_ray.synthesis.compose import MODES, build_example, compose_task
from adamllm_ray.synthesis.filter import judge_keeps, judge_prompt, pair_triplet, parse_verdict
from adamllm_ray.synthesis.parse import parse_output


def parse_row(row: dict[str, Any], family: Family | str) -> dict[str, Any]:
    """Adds `qa_pairs` and `triplet` (None when no question has both kinds of answer)."""
    out = {**row, QA_PAIRS: None, TRIPLET: None}
    if failed(row):
        return out
    raw = row.get(RAW_OUTPUT)
    if not isinstance(raw, str):
        out[ERROR] = error("parse", f"raw_output must be the synthesizer's text, got {type(raw).__name__}")
        return out
    out[QA_PAIRS] = pairs = parse_output(raw, get_family(family))
    out[TRIPLET] = pair_triplet(pairs, family)
    return out


def judge_prompt_of(row: dict[str, Any], prompt_text: str) -> str | None:
    """The judge prompt of a row, or None when there is nothing to judge."""
    if failed(row) or row.get(TRIPLET) is None:
        return None
    return judge_prompt(row[TRIPLET], prompt_text)


def finish_row(
    row: dict[str, Any], mode: str = "single_stage", judge_output: str | None = None, judged: bool = True
) -> dict[str, Any]:
    """Adds `verdict`, `response` (set only for a kept triplet) and `messages` (None when the
    mode leaves the row out). With `judged=False` (no judge configured) every triplet is kept."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    out = {**row, VERDICT: None, RESPONSE: None, MESSAGES: None}
    if failed(row):
        return out
    triplet = row.get(TRIPLET)
    kept = False
    if triplet is not None:
        if not judged:
            kept = True
        elif judge_output is not None and not isinstance(judge_output, str):
            out[ERROR] = error("judge", f"judge output must be text, got {type(judge_output).__name__}")
            return out
        else:
            out[VERDICT] = parse_verdict(judge_output)
            kept = judge_keeps(judge_output)
    try:
        task = compose_task(triplet, row.get(ID)) if kept else None
        example = build_example(row, task, mode)
    except ValueError as err:
        out[ERROR] = error("compose", str(err))
        return out
    out[RESPONSE] = task[1] if task else None
    out[MESSAGES] = example["messages"] if example else None
    return out
