"""Consistency filter (SPEC.md section 2): pair a precise and an informative answer to the same
question into a triplet, ask a text-only judge whether they agree, read its verdict."""

from __future__ import annotations

import string
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

KINDS = ("precise", "informative")
VERDICTS = ("yes", "no", "open")
DEFAULT_JUDGE_PROMPT = "judge_fewshot.txt"


def pair_triplet(qa_pairs: Iterable[dict[str, Any]]) -> dict[str, str] | None:
    """Walk the pairs in order; the first question to have been seen with both a precise and an
    informative answer gives the triplet, with the first answer of each kind to that question."""
    seen: dict[str, dict[str, str]] = {}
    for i, pair in enumerate(qa_pairs):
        kind = pair["kind"]
        if kind not in KINDS:
            raise ValueError(f"qa pair {i}: kind must be 'precise' or 'informative', got {kind!r}")
        answers = seen.setdefault(pair["question"], {})
        answers.setdefault(kind, pair["answer"])
        if len(answers) == 2:
            return {"question": pair["question"], "precise": answers["precise"], "informative": answers["informative"]}
    return None


def load_judge_prompt(path: str | Path | None = None) -> str:
    """The few-shot prefix of the judge prompt: the project's own file by default, or another
    file in the same format (for instance the authors' prompt)."""
    if path is None:
        text = resources.files("adamllm_ray").joinpath("prompts", DEFAULT_JUDGE_PROMPT).read_text("utf-8")
        source = f"adamllm_ray/prompts/{DEFAULT_JUDGE_PROMPT}"
    else:
        source = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"judge prompt file not found: {path}") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"judge prompt file {path} is not UTF-8 text: {err}") from None
    if not text.strip():
        raise ValueError(f"judge prompt file {source} is empty")
    return text


def judge_prompt(triplet: dict[str, str], prompt_text: str) -> str:
    """Few-shot prefix, a blank line, then the triplet block the judge completes."""
    return (
        f"{prompt_text.rstrip()}\n\n"
        f"## Question: {triplet['question']}\n"
        f"## Informative Answer: {triplet['informative']}\n"
        f"## Precise Answer: {triplet['precise']}\n"
        f"## Consistent:"
    )


def judge_keeps(output: str | None) -> bool:
    """SPEC's rule, exactly: keep the triplet only if the stripped, lower-cased output is `yes`."""
    return output is not None and output.strip().lower() == "yes"


def parse_verdict(output: str | None) -> str | None:
    """The verdict recorded for reporting: the first word of the output, lower-cased, with
    punctuation stripped, if it is yes/no/open; else None. Looser than `judge_keeps` on purpose:
    `Yes.` is recorded as "yes" but does not keep the triplet."""
    if output is None:
        return None
    words = output.strip().lower().split(maxsplit=1)
    if not words:
        return None
    word = words[0].strip(string.punctuation)
    return word if word in VERDICTS else None
