"""Synthesizer output -> hinted question/answer pairs (SPEC.md section 1, parsing rules 1-4).

The output starts right after the prompt, which ends with the user turn separator, so the first
chunk is already a question. One format detail is family-driven: a turn counts as finished when
the text ends with the family's end-of-turn token or with its full turn close (Qwen writes a
newline after `<|im_end|>`). If the engine left the end-of-text stop string in the text, it is
removed first.
"""

from __future__ import annotations

from adamllm_ray.families import HINTS, Family, get_family

_HINTS = tuple(HINTS.items())


def _clean(text: str, end_of_turn: str) -> str:
    text = text.strip()
    if text.endswith(end_of_turn):
        text = text[: -len(end_of_turn)].strip()
    return text


def parse_output(raw: str, family: Family | str) -> list[dict[str, str]]:
    """Every complete, hinted pair in the output, in order, as {question, answer, kind}."""
    fam = get_family(family)
    if not isinstance(raw, str):
        raise TypeError(f"synthesizer output must be a string, got {type(raw).__name__}")
    text = raw[: -len(fam.end_of_text)] if raw.endswith(fam.end_of_text) else raw
    chunks = text.split(fam.turn_separator)  # rule 1
    if not (text.endswith(fam.end_of_turn) or text.endswith(fam.turn_close)):
        chunks.pop()  # rule 2: the last chunk was cut off by the token limit
    pairs = []
    for chunk in chunks:
        parts = chunk.split(fam.qa_separator)  # rule 3
        if len(parts) != 2:
            continue
        question, answer = _clean(parts[0], fam.end_of_turn), _clean(parts[1], fam.end_of_turn)
        if not question or not answer:
            continue
        for kind, hint in _HINTS:  # rule 4
            if question.startswith(hint):
                question = question[len(hint) :].strip()
                break
        else:
            continue  # no hint: neither precise nor informative
        if question:  # a hint line with no question after it is empty too
            pairs.append({"question": question, "answer": answer, "kind": kind})
    return pairs
