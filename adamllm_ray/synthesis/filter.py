"""Consistency filter (SPEC.md section 2): pair a precise and an informative answer to the same
question into a triplet, ask a text-only judge whether they agree, read its verdict."""

from __future__ import annotations

import string
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from adamllm_ray.config import ConfigError
from adamllm_ray.families import Family
from adamllm_ray.synthesis.parse import format_strings

KINDS = ("precise", "informative")
VERDICTS = ("yes", "no", "open")
DEFAULT_JUDGE_PROMPT = "judge_fewshot.txt"
PLACEHOLDERS = ("Q", "informative_A", "precise_A")


def pair_triplet(qa_pairs: Iterable[dict[str, Any]], family: Family | str) -> dict[str, str] | None:
    """Walk the pairs in order, remembering the latest answer of each kind to each question; the
    first question to have been seen with both kinds gives the triplet. A pair whose question or
    answer still holds a format string of the family is skipped, so no format token reaches the
    judge or a training text."""
    reserved = format_strings(family)
    seen: dict[str, dict[str, str]] = {}
    for i, pair in enumerate(qa_pairs):
        kind = pair["kind"]
        if kind not in KINDS:
            raise ValueError(f"qa pair {i}: kind must be 'precise' or 'informative', got {kind!r}")
        question, answer = pair["question"], pair["answer"]
        if any(s in question or s in answer for s in reserved):
            continue
        answers = seen.setdefault(question, {})
        answers[kind] = answer
        if len(answers) == 2:
            return {"question": question, "precise": answers["precise"], "informative": answers["informative"]}
    return None


class JudgePromptError(ConfigError):
    """A judge prompt file that cannot be used as the template SPEC.md section 2 describes: a
    config error, so the command reports it in one line before any engine starts."""


def check_judge_template(text: str, source: str = "the judge prompt") -> str:
    """The template itself, once it is known to hold exactly the three placeholders (each may
    appear more than once) and nothing else `str.format` would try to fill."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as err:
        raise JudgePromptError(
            f"judge prompt file {source} is not a valid template ({err}); write a literal brace as {{{{ or }}}}"
        ) from None
    missing = [p for p in PLACEHOLDERS if p not in fields]
    if missing:
        raise JudgePromptError(
            f"judge prompt file {source} lacks the placeholder(s) {', '.join('{' + p + '}' for p in missing)}: "
            "it must end with the block '## Question: {Q}', '## Informative Answer: {informative_A}', "
            "'## Precise Answer: {precise_A}', '## Consistent:'"
        )
    unknown = sorted(fields - set(PLACEHOLDERS))
    if unknown:
        raise JudgePromptError(
            f"judge prompt file {source} has unknown placeholder(s) {', '.join(repr('{' + f + '}') for f in unknown)}; "
            f"only {{Q}}, {{informative_A}} and {{precise_A}} are filled (write a literal brace as {{{{ or }}}})"
        )
    return text


def load_judge_prompt(path: str | Path | None = None) -> str:
    """The judge prompt template: the project's own file by default, or another file used as it
    is (for instance the authors' consistency_filter_prompt.txt). Refused, with the file and the
    missing placeholder named, when it is not a template with the three placeholders."""
    if path is None:
        text = resources.files("adamllm_ray").joinpath("prompts", DEFAULT_JUDGE_PROMPT).read_text("utf-8")
        source = f"adamllm_ray/prompts/{DEFAULT_JUDGE_PROMPT}"
    else:
        source = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except FileNotFoundError:
            raise JudgePromptError(f"judge prompt file not found: {path}") from None
        except UnicodeDecodeError as err:
            raise JudgePromptError(f"judge prompt file {path} is not UTF-8 text: {err}") from None
    if not text.strip():
        raise JudgePromptError(f"judge prompt file {source} is empty")
    return check_judge_template(text, source)


@lru_cache(maxsize=8)
def _checked(template: str) -> str:
    return check_judge_template(template)


def judge_prompt(triplet: dict[str, str], prompt_text: str) -> str:
    """The template filled exactly as `str.format(Q=..., informative_A=..., precise_A=...)` fills
    it: braces inside the triplet's text are inserted as they are."""
    return _checked(prompt_text).format(
        Q=triplet["question"], informative_A=triplet["informative"], precise_A=triplet["precise"]
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
