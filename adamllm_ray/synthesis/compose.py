"""A kept triplet -> one (question, response) task, and a row -> its training example
(SPEC.md sections 2 and 3).

Every random choice comes from `random.Random(record_id)`, so an example is reproducible from its
record id alone, whatever order or batch the row arrives in. The draws are taken in a fixed order:
the first picks the template, the second the place of the caption task; two independent draws
keep the template from being tied to the caption position.
"""

from __future__ import annotations

import json
import random
import string
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from adamllm_ray.families import CAPTION_HINT
from adamllm_ray.records import CAPTION, CAPTION_PROMPT, DEFAULT_CAPTION_PROMPT, ID, IMAGE_PATH, RESPONSE, TRIPLET

INDICATORS = ("could be ", "so ", "thus ", "therefore ", "final ", "answer ", "result ")
MODES = ("single_stage", "synthetic_only", "caption_only")
IMAGE_TOKEN = "<image>"

# pool name -> (file, placeholders of the question template, placeholders of the response template)
POOLS = {
    "qa": ("templates_qa.json", {"question"}, {"answer"}),
    "cot": ("templates_cot.json", {"question"}, {"informative", "precise"}),
}


def load_templates(pool: str, path: str | Path | None = None) -> list[dict[str, str]]:
    """A template pool, checked: each template is {question, response} and uses exactly the
    placeholders its pool fills in."""
    file, want_question, want_response = POOLS[pool]
    if path is None:
        source = f"adamllm_ray/prompts/{file}"
        text = resources.files("adamllm_ray").joinpath("prompts", file).read_text("utf-8")
    else:
        source = str(path)
        text = Path(path).read_text("utf-8")
    try:
        templates = json.loads(text)["templates"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{source}: expected a JSON object with a 'templates' list ({err})") from None
    if not isinstance(templates, list) or not templates:
        raise ValueError(f"{source}: 'templates' must be a non-empty list")
    for i, t in enumerate(templates):
        if not isinstance(t, dict) or set(t) != {"question", "response"}:
            raise ValueError(f"{source}: template {i} must have exactly the keys 'question' and 'response'")
        for side, want in (("question", want_question), ("response", want_response)):
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(t[side]) if f is not None}
            except ValueError as err:
                raise ValueError(f"{source}: template {i} {side}: {err}") from None
            if fields != want:
                raise ValueError(
                    f"{source}: template {i} {side} uses placeholders {sorted(fields)}, expected {sorted(want)}"
                )
    return templates


@lru_cache(maxsize=1)
def default_templates() -> dict[str, list[dict[str, str]]]:
    return {pool: load_templates(pool) for pool in POOLS}


def _draws(record_id: Any) -> tuple[float, float]:
    """(template draw, caption-position draw) for a record."""
    if record_id is None or isinstance(record_id, bool) or not isinstance(record_id, (str, int)):
        raise ValueError(f"record id must be a string or an int, got {record_id!r}")
    rng = random.Random(record_id)
    return rng.random(), rng.random()


def _has_indicator(text: str) -> bool:
    return any(word in text for word in INDICATORS)


def response_rule(triplet: dict[str, str]) -> str:
    """"a": the informative answer already concludes (indicator word in its last sentence);
    "b": the precise answer reads as a conclusion; "c": chain of thought. Indicator words are
    matched as substrings of the lower-cased text, as the method states ("also " contains "so ")."""
    if _has_indicator(triplet["informative"].lower().split(". ")[-1]):
        return "a"
    if _has_indicator(triplet["precise"].lower()):
        return "b"
    return "c"


def compose_task(triplet: dict[str, str], record_id: Any, templates: dict | None = None) -> tuple[str, str]:
    """The (question, response) of a kept triplet, worded by a template drawn with the record id."""
    pools = templates or default_templates()
    rule = response_rule(triplet)
    draw = _draws(record_id)[0]
    if rule == "c":
        pool = pools["cot"]
        values = {"informative": triplet["informative"], "precise": triplet["precise"]}
    else:
        pool = pools["qa"]
        answer = triplet["informative"] if rule == "a" else f"{triplet['informative']} {triplet['precise']}"
        values = {"answer": answer}
    template = pool[int(draw * len(pool))]
    return template["question"].format(question=triplet["question"]), template["response"].format(**values)


def caption_task(row: dict[str, Any]) -> tuple[str, str]:
    """The pair's own user prompt without `<image>` (the plain caption request if nothing else is
    left), answered by the caption."""
    caption = row.get(CAPTION)
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"row {row.get(ID)!r}: the caption is missing or empty")
    prompt = row.get(CAPTION_PROMPT) or DEFAULT_CAPTION_PROMPT
    if not isinstance(prompt, str):
        raise ValueError(f"row {row.get(ID)!r}: caption_prompt must be a string, got {type(prompt).__name__}")
    return prompt.replace(IMAGE_TOKEN, "").strip() or CAPTION_HINT, caption.strip()


def build_example(row: dict[str, Any], task: tuple[str, str] | None, mode: str) -> dict[str, Any] | None:
    """The ShareGPT example of a row given its composed task (None: no kept task)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    image_path = row.get(IMAGE_PATH)
    if not isinstance(image_path, str) or not image_path:
        raise ValueError(f"row {row.get(ID)!r}: image_path is missing")
    if mode == "synthetic_only":
        if task is None:
            return None
        tasks = [task]
    elif mode == "caption_only" or task is None:
        tasks = [caption_task(row)]
    else:
        caption_first = _draws(row.get(ID))[1] < 0.5
        tasks = [caption_task(row), task] if caption_first else [task, caption_task(row)]
    messages = []
    for question, response in tasks:
        # a stray <image> would give the trainer more image tokens than images
        messages.append({"role": "user", "content": question.replace(IMAGE_TOKEN, "").strip()})
        messages.append({"role": "assistant", "content": response.replace(IMAGE_TOKEN, "").strip()})
    messages[0]["content"] = f"{IMAGE_TOKEN}\n{messages[0]['content']}"
    return {"images": [image_path], "messages": messages}


def training_example(row: dict[str, Any], mode: str = "single_stage") -> dict[str, Any] | None:
    """The ShareGPT example of one row: the caption task plus the kept synthetic task (a row
    carries a kept task when its `response` is set). None when the mode leaves the row out
    (synthetic_only and no kept task)."""
    task = None
    if row.get(RESPONSE) is not None:
        if row.get(TRIPLET) is None:
            raise ValueError(f"row {row.get(ID)!r}: has a response but no triplet")
        task = compose_task(row[TRIPLET], row.get(ID))
    return build_example(row, task, mode)
