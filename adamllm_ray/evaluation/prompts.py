"""Evaluation prompts as the authors asked (SPEC §4), the one path batch evaluation and the served
evaluator (/v1/evaluate) both take:

- the text: a benchmark example's `input` (the authors' sets carry the full prompt there) verbatim;
  only an example without it gets its text built from question/options by the task's table;
- the chat: the evaluated model's family (families/) puts that text after the image in one user turn,
  in its own format, with the open assistant header. Prompts are raw strings for the engine (no
  chat-template stage): vLLM puts the image where the placeholder is.

Decoding: greedy, the task's budget, stop at the family's end of turn or end of text, special tokens
skipped; engines get the family's processor settings (Qwen2-VL's pixel bounds)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adamllm_ray.evaluation.tasks import RecordError, build_prompt_text
from adamllm_ray.families import FAMILY_NAMES, Family, get_family

EVAL_FAMILIES = FAMILY_NAMES


def prompt_text(task: str, example: Mapping) -> str:
    """The user text of one example: its `input` unchanged when it has one, else the task's table."""
    value = example.get("input")
    if value is None:
        return build_prompt_text(task, example)
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"'input' must be the prompt text, got {value!r}")
    return value


def evaluation_prompt(family: str | Family, task_or_text: str, example: Mapping | None = None) -> str:
    """The raw prompt the evaluated model gets for one example: `evaluation_prompt(family, task,
    example)`, or `evaluation_prompt(family, text)` for a prompt text already built."""
    text = task_or_text if example is None else prompt_text(task_or_text, example)
    return get_family(family).evaluation_prompt(text)


def stop_strings(family: str | Family) -> list[str]:
    return get_family(family).evaluation_stop


def sampling_params(family: str | Family, max_tokens: int, **override: Any) -> dict[str, Any]:
    return {**get_family(family).evaluation_sampling(max_tokens), **override}


def engine_kwargs(family: str | Family, configured: Mapping[str, Any]) -> dict[str, Any]:
    """The family's engine settings under the configured ones (a config may still override them)."""
    return {**get_family(family).engine_kwargs(), **configured}
