"""How each kind of task reads one benchmark row and writes its options into the prompt: the
per-task part of `Task` (tasks.py wires one reader and one option format to each task).

A reader takes the row's values by field (`label`, `answer_type`, `options`, ...) and the task's
vocabulary file, if any (phrases, and label id -> position for a {"id": phrase} file), and returns
(the prediction record's task fields, the example's prompt fields, whether the record's vocabulary
is the shared file). A value it cannot use raises RecordError naming the field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from adamllm_ray.evaluation import metrics


class RecordError(ValueError):
    """A prediction record (or an example) lacks a field or holds a value the task cannot score."""


Vocabulary = tuple[list[str] | None, dict[int, int] | None]


def text(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise RecordError(f"'{name}' must be text, got {value!r}")


def names(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise RecordError(f"'{name}' must be a list, got {value!r}") from None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise RecordError(f"'{name}' must be a list of strings, got {value!r}")
    return list(value)


def _position(label_id: int, size: int, ids: dict[int, int] | None) -> int | None:
    """Where a label id points: a position, or the id of a {"id": phrase} vocabulary."""
    return ids.get(label_id) if ids is not None else (label_id if 0 <= label_id < size else None)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def phrase_labels(value: Any, phrases: list[str], ids: dict[int, int] | None) -> list[str]:
    """Label names, or label ids, as names."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = [value]
    if _is_id(value):
        value = [value]
    if not isinstance(value, list | tuple):
        raise RecordError(f"'label' must be a list of names or ids, got {value!r}")
    out = []
    for v in value:
        if _is_id(v):
            pos = _position(v, len(phrases), ids)
            if pos is None:
                raise RecordError(f"label id {v} is not in the vocabulary ({len(phrases)} phrases)")
            out.append(phrases[pos])
        elif isinstance(v, str):
            out.append(v)
        else:
            raise RecordError(f"'label' must be a list of names or ids, got {value!r}")
    return out


# ---------------------------------------------------------------- readers, one per kind of task


def read_vqa(values: Mapping, vocabulary: Vocabulary) -> tuple[dict, dict, bool]:
    answer_type = values["answer_type"]
    return {"label": text(values["label"], "label"),
            "answer_type": answer_type.strip().upper() if isinstance(answer_type, str) else answer_type}, {}, False


def read_lettered_choice(values: Mapping, vocabulary: Vocabulary) -> tuple[dict, dict, bool]:
    options = values["options"]
    if isinstance(options, list | tuple):
        options = [text(o, "options") for o in options]
    return {"label": text(values["label"], "label").strip(), "options": options}, {"options": options}, False


def read_reference_text(values: Mapping, vocabulary: Vocabulary) -> tuple[dict, dict, bool]:
    return {"label": text(values["label"], "label")}, {}, False


def read_class_choice(values: Mapping, vocabulary: Vocabulary) -> tuple[dict, dict, bool]:
    """Options from the row, else the vocabulary file; a label id is a class's position (or id)."""
    options, ids = (names(values["options"], "options"), None) if values.get("options") is not None else vocabulary
    label = values["label"]
    if _is_id(label):
        pos = _position(label, len(options), ids)
        if pos is None:
            raise RecordError(f"label id {label} is not one of the {len(options)} classes")
        label = options[pos]
    return {"label": text(label, "label"), "options": options}, {"options": options}, False


def read_phrases(values: Mapping, vocabulary: Vocabulary) -> tuple[dict, dict, bool]:
    """The phrases from the row's options, else the shared vocabulary file; labels as names."""
    shared = values.get("options") is None
    phrases, ids = vocabulary if shared else (names(values["options"], "options"), None)
    return ({"label": phrase_labels(values["label"], phrases, ids), "vocabulary": phrases},
            {"vocabulary": phrases}, shared)


# ---------------------------------------------------------------- option formats in the prompt


def lettered_options(example: Mapping) -> str:
    options = example["options"]
    if len(options) != len(metrics.PMC_VQA_CHOICES):
        raise RecordError(f"PMC-VQA needs 4 options (A-D), got {len(options)}")
    return ", ".join(f"{letter}. {t}" for letter, t in zip(metrics.PMC_VQA_CHOICES, options))


def class_options(example: Mapping) -> str:
    return ", ".join(name.replace("_", " ") for name in example["options"])


def vocabulary_options(example: Mapping) -> str:
    return ", ".join(example["vocabulary"])
