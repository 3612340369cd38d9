"""The AdaMLLM method (SPEC.md) as plain functions, for use from your own pipelines.

These are the very functions the Ray pipeline, the served routes and the tests call (re-exported
here, not copies), so a result obtained through this module is the one a synthesis job, the
service or an evaluation run would give. No Ray, no engine: you bring the model outputs.

One image-caption pair through synthesis and filtering::

    from adamllm_ray import method

    prompt = method.synthesis_prompt("llava_next_llama3", caption)   # send with the image, greedy
    pairs = method.parse_output(synthesizer_text, "llava_next_llama3")
    triplet = method.pair_triplet(pairs, "llava_next_llama3")        # None: caption task only
    template = method.load_judge_prompt()                            # or the authors' template file
    judge_text = method.judge_prompt(triplet, template)              # send to a text-only LLM
    task = method.compose_task(triplet, record_id) if method.judge_keeps(judge_output) else None
    example = method.training_example(row, task)                     # ShareGPT, images kept

and an evaluation prompt: ``method.evaluation_prompt("qwen2_vl", "slake", example)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adamllm_ray.families import CAPTION_HINT, HINTS, Family, get_family
from adamllm_ray.synthesis.compose import INDICATORS, build_example, caption_task, compose_task, response_rule
from adamllm_ray.synthesis.filter import (
    PLACEHOLDERS,
    JudgePromptError,
    check_judge_template,
    judge_keeps,
    judge_prompt,
    load_judge_prompt,
    pair_triplet,
    parse_verdict,
)
from adamllm_ray.synthesis.parse import format_strings, parse_output

__all__ = [
    "CAPTION_HINT",
    "HINTS",
    "INDICATORS",
    "PLACEHOLDERS",
    "Family",
    "JudgePromptError",
    "caption_task",
    "check_judge_template",
    "compose_task",
    "evaluation_prompt",
    "format_strings",
    "get_family",
    "judge_keeps",
    "judge_prompt",
    "load_judge_prompt",
    "pair_triplet",
    "parse_output",
    "parse_verdict",
    "response_rule",
    "synthesis_prompt",
    "training_example",
]


def synthesis_prompt(family: Family | str, caption: str) -> str:
    """The synthesizer's raw prompt for one caption (SPEC §1): no chat template is applied on top;
    the image goes with it as the engine's multimodal input."""
    return get_family(family).synthesis_prompt(caption)


def training_example(
    row: Mapping[str, Any], task: tuple[str, str] | None, mode: str = "single_stage"
) -> dict[str, Any] | None:
    """The ShareGPT training example of one image (SPEC §3): the caption task (row's `caption`,
    `caption_prompt`) plus the composed task if one was kept, ordered by `random.Random(row["id"])`,
    with `images: [row["image_path"]]`. None when `mode` is synthetic_only and no task was kept."""
    return build_example(dict(row), task, mode)


def evaluation_prompt(family: Family | str, task: str, example: Mapping[str, Any]) -> str:
    """The raw prompt an evaluated model of `family` gets for one benchmark example (SPEC §4): the
    example's `input` verbatim when it has one, else the task's prompt from question/options, in
    the family's chat format. The path batch evaluation and the served evaluator take."""
    from adamllm_ray.evaluation.prompts import evaluation_prompt as prompt_of

    return prompt_of(family, task, example)
