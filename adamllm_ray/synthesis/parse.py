"""Synthesizer output -> hinted question/answer pairs (SPEC.md section 1, parsing rules 1-4).

The output starts right after the prompt, which ends with the user turn separator, so the first
chunk is already a question. The rules are the authors' exactly, edge cases included: a question
keeps any stray end-of-turn token (it then takes no part in pairing, see filter.py), its text after
the hint line is not stripped, and an answer must end with the family's end-of-turn token. If the
engine left the end-of-text stop string in the text, it is removed first.
"""

from __future__ import annotations

from adamllm_ray.families import HINTS, Family, get_family

_HINT_LINES = tuple((kind, hint + "\n") for kind, hint in HINTS.items())


def format_strings(family: Family | str) -> tuple[str, ...]:
    """The strings of a family's chat format that must never reach the judge or a training text:
    its end-of-turn token, its turn headers and its end-of-text token."""
    fam = get_family(family)
    headers = (getattr(fam, "system_header", ""), fam.user_header, fam.assistant_header)
    return tuple(s for s in (fam.end_of_turn, *headers, fam.end_of_text) if s)


def _answer(part: str, end_of_turn: str) -> str | None:
    """Rule 3: trailing whitespace off, then the end-of-turn token must close the answer."""
    part = part.rstrip()
    if not part.endswith(end_of_turn):
        return None
    return part[: -len(end_of_turn)].strip()


def _hinted(question: str) -> tuple[str, str] | None:
    """Rule 4: (kind, text after the hint's newline, unchanged), or None without a hint line."""
    for kind, line in _HINT_LINES:
        if question.startswith(line):
            return kind, question[len(line) :]
    return None


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
        question, answer = parts[0].strip(), _answer(parts[1], fam.end_of_turn)
        if not question or not answer:
            continue
        hinted = _hinted(question)
        if hinted is None:
            continue
        kind, text_after_hint = hinted
        if text_after_hint:
            pairs.append({"question": text_after_hint, "answer": answer, "kind": kind})
    return pairs
