"""Model families: the chat format a synthesizer speaks, as data.

Each family module defines one `Family`. The synthesis prompt, the separators the parser splits on
and the seed conversations a synthesizer is tuned on are all derived from the same few strings, so
the parser (synthesis/parse.py) is shared by every family and a prompt can never disagree with its
parser.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Iterable

CAPTION_HINT = "Describe the image."
PRECISE_HINT = "Answer with a precise response."
INFORMATIVE_HINT = "Answer with an informative response."
HINTS = {"precise": PRECISE_HINT, "informative": INFORMATIVE_HINT}

FAMILIES = {
    "llava_next_llama3": "adamllm_ray.families.llava_next_llama3",
    "qwen2_vl": "adamllm_ray.families.qwen2_vl",
}


@dataclass(frozen=True)
class Family:
    """A chat format, written as the literal strings around each turn.

    A turn is `header + content + turn_close`; `turn_close` is `end_of_turn` plus whatever the
    format puts after it (Qwen: a newline). The synthesis prompt is the system turn, the user turn
    asking for a description (with the image), the assistant turn holding the caption, and an open
    user header: the model continues with hinted question/answer turns.
    """

    name: str
    begin: str  # text before the system turn (a BOS the tokenizer does not add itself)
    system_header: str
    system_message: str
    user_header: str
    assistant_header: str
    end_of_turn: str
    turn_close: str
    image_placeholder: str
    image_separator: str  # between the image placeholder and the text of the first user turn
    end_of_text: str

    @property
    def turn_separator(self) -> str:
        return self.user_header

    @property
    def qa_separator(self) -> str:
        return self.turn_close + self.assistant_header

    @property
    def stop(self) -> list[str]:
        return [self.end_of_text]

    @property
    def prompt_head(self) -> str:
        """The synthesis prompt up to the caption."""
        return (
            self.begin
            + self.system_header
            + self.system_message
            + self.turn_close
            + self.user_header
            + self.image_placeholder
            + self.image_separator
            + CAPTION_HINT
            + self.turn_close
            + self.assistant_header
        )

    def synthesis_prompt(self, caption: str) -> str:
        """The raw prompt (no chat template applied) for one caption."""
        return self.prompt_head + caption + self.turn_close + self.user_header

    def format_turns(self, qa_pairs: Iterable[dict[str, Any]]) -> str:
        """The hinted question/answer turns as the synthesizer writes them after the prompt
        (without the end-of-text token, which decoding stops on)."""
        turns = []
        for i, pair in enumerate(qa_pairs):
            question, answer, kind = self._checked_pair(i, pair)
            turns.append(f"{HINTS[kind]}\n{question}{self.qa_separator}{answer}{self.turn_close}")
        if not turns:
            raise ValueError("a conversation needs at least one question/answer pair")
        return self.user_header.join(turns)

    def format_seed_conversation(self, caption: str, qa_pairs: Iterable[dict[str, Any]]) -> str:
        """The full text a synthesizer is tuned on: prompt, hinted turns, end-of-text token."""
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError("seed conversation: the caption is empty")
        for token in self._reserved():
            if token in caption:
                raise ValueError(f"seed conversation: the caption contains the format string {token!r}")
        return self.synthesis_prompt(caption.strip()) + self.format_turns(qa_pairs) + self.end_of_text

    def _reserved(self) -> tuple[str, ...]:
        return (self.end_of_turn, self.user_header, self.assistant_header, self.end_of_text)

    def _checked_pair(self, i: int, pair: dict[str, Any]) -> tuple[str, str, str]:
        try:
            question, answer, kind = pair["question"], pair["answer"], pair["kind"]
        except (KeyError, TypeError):
            raise ValueError(f"qa pair {i}: expected a dict with question, answer and kind, got {pair!r}") from None
        if kind not in HINTS:
            raise ValueError(f"qa pair {i}: kind must be 'precise' or 'informative', got {kind!r}")
        for side, text in (("question", question), ("answer", answer)):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"qa pair {i}: the {side} is empty")
            for token in self._reserved():
                if token in text:
                    raise ValueError(f"qa pair {i}: the {side} contains the format string {token!r}")
        return question.strip(), answer.strip(), kind


def get_family(name: str | Family) -> Family:
    """The family registered under `name` (a Family passes through)."""
    if isinstance(name, Family):
        return name
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known families: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[name]).FAMILY
