"""Model families: everything the project knows about a model family, as data, in one place.

Each family module (qwen2_vl, llava_next_llama3, mllama) defines one `Family`: the literal strings
around each chat turn, from which the synthesis prompt, the parser's separators, the evaluation
prompt and the training chat template are all derived (so a prompt can never disagree with its
parser or with the format a model was trained in); the stop strings; the vLLM processor settings;
and what training needs (label mask header, end-of-text, vision tower / projector parameter names,
how image tensors are batched). Synthesis, training, evaluation, serving and the tiny models all
take a family from `get_family`.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

CAPTION_HINT = "Describe the image."
PRECISE_HINT = "Answer with a precise response."
INFORMATIVE_HINT = "Answer with an informative response."
HINTS = {"precise": PRECISE_HINT, "informative": INFORMATIVE_HINT}

FAMILIES = {
    "llava_next_llama3": "adamllm_ray.families.llava_next_llama3",
    "mllama": "adamllm_ray.families.mllama",
    "qwen2_vl": "adamllm_ray.families.qwen2_vl",
}
FAMILY_NAMES = tuple(sorted(FAMILIES))

# Processor outputs that run along the token sequence (truncated and padded with it in training).
PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids", "cross_attention_mask")


@dataclass(frozen=True)
class Family:
    """A chat format, written as the literal strings around each turn, plus the family's settings.

    A turn is `header + content + turn_close`; `turn_close` is `end_of_turn` plus whatever the
    format puts after it (Qwen: a newline). The synthesis prompt is the system turn (if the family
    has one), the user turn asking for a description (with the image), the assistant turn holding
    the caption, and an open user header: the model continues with hinted question/answer turns.
    """

    name: str
    bos: str  # the BOS the tokenizer puts in front of every prompt itself ("" when it adds none)
    begin: str  # text before the first turn that the tokenizer does not add itself (a second BOS)
    system_header: str  # "" = the family's prompts have no system turn
    system_message: str
    user_header: str
    assistant_header: str
    end_of_turn: str
    turn_close: str
    image_placeholder: str
    image_separator: str  # between the image placeholder and the text of the first user turn
    end_of_text: str
    chat_template: str = ""  # Jinja, rendered by the processor for training (and saved with tiny models)
    # vLLM `mm_processor_kwargs` (the Hugging Face image processor's settings) for evaluation;
    # also for synthesis and serving when `processor_kwargs_in_synthesis`.
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    processor_kwargs_in_synthesis: bool = False
    vision_tower: str = r"$^"  # regex over parameter names
    projector: str = r"$^"  # regex over parameter names
    concat_keys: tuple[str, ...] = ()  # image tensors without a batch dimension: concatenated along dim 0

    # ------------------------------------------------------------ synthesis

    @property
    def turn_separator(self) -> str:
        return self.user_header

    @property
    def qa_separator(self) -> str:
        return self.turn_close + self.assistant_header

    @property
    def stop(self) -> list[str]:
        """Synthesis decoding stops only at the end of text (the conversation goes on over turns)."""
        return [self.end_of_text]

    @property
    def system_turn(self) -> str:
        return self.system_header + self.system_message + self.turn_close if self.system_header else ""

    @property
    def prompt_head(self) -> str:
        """The synthesis prompt up to the caption."""
        return (self.begin + self.system_turn + self.user_header + self.image_placeholder + self.image_separator
                + CAPTION_HINT + self.turn_close + self.assistant_header)

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

    # ------------------------------------------------------------ evaluation

    def evaluation_prompt(self, text: str) -> str:
        """The raw prompt for one image and one task text: one user turn (image, then the text) and
        the open assistant header, as the family's chat template renders it (SPEC §4)."""
        return (self.begin + self.system_turn + self.user_header + self.image_placeholder + self.image_separator
                + text + self.turn_close + self.assistant_header)

    @property
    def evaluation_stop(self) -> list[str]:
        """An evaluated answer ends with the assistant turn (or the end of text); the stop string
        itself is not part of the prediction."""
        return [self.end_of_turn, self.end_of_text]

    def evaluation_sampling(self, max_tokens: int) -> dict[str, Any]:
        """vLLM sampling params of an evaluated answer: greedy, special tokens skipped."""
        return {"temperature": 0.0, "max_tokens": max_tokens, "stop": self.evaluation_stop,
                "skip_special_tokens": True, "detokenize": True}

    def engine_kwargs(self, synthesis: bool = False) -> dict[str, Any]:
        """The family's vLLM engine settings (Qwen2-VL's pixel bounds) to merge into an engine's kwargs."""
        if self.processor_kwargs and (not synthesis or self.processor_kwargs_in_synthesis):
            return {"mm_processor_kwargs": dict(self.processor_kwargs)}
        return {}

    # ------------------------------------------------------------ training

    def part_of(self, param_name: str) -> str:
        """vision_tower, projector or language_model (everything else, lm_head included)."""
        if re.search(self.projector, param_name):
            return "projector"
        if re.search(self.vision_tower, param_name):
            return "vision_tower"
        return "language_model"


def chat_template(begin: str, system_header: str, system_message: str, role_header: str, turn_close: str,
                  image: str, image_separator: str) -> str:
    """A Jinja chat template for a family's strings (`role_header` holds `ROLE` where the role goes;
    `begin` is all the text before the first turn, BOS included: training tokenizes the rendering as
    it is). Image parts render as the family's placeholder, text parts as they are; a conversation without a
    system message gets the family's default one (if the family has a system turn). No newline
    follows a block tag, so Hugging Face's `trim_blocks` changes nothing."""
    system = ""
    if system_header:
        system = ("{% if messages[0]['role'] != 'system' %}" + system_header + system_message + turn_close
                  + "{% endif %}")
    return (
        begin + system
        + "{% for message in messages %}" + role_header.replace("ROLE", "{{ message['role'] }}")
        + "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}" + image + image_separator
        + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}" + turn_close
        + "{% endfor %}"
        "{% if add_generation_prompt %}" + role_header.replace("ROLE", "assistant") + "{% endif %}"
    )


def get_family(name: str | Family) -> Family:
    """The family registered under `name` (a Family passes through)."""
    if isinstance(name, Family):
        return name
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known families: {', '.join(FAMILY_NAMES)}")
    return importlib.import_module(FAMILIES[name]).FAMILY
