"""Evaluation prompts: one user turn (the image, then the task text) and the open assistant header, in
the evaluated model's own chat format, as its chat template renders it with `add_generation_prompt`.

- qwen2_vl: the template's default system turn ("You are a helpful assistant.") comes first.
- llava_next_llama3: the format of the project's LLaVA-NeXT-Llama3 family (system turn, `<|begin_of_text|>`
  written out as that family's models were trained with it).
- mllama (Llama-3.2-Vision-Instruct): no system turn, since its template refuses one beside an image; the
  tokenizer adds `<|begin_of_text|>` itself (vLLM encodes raw prompts with special tokens), so it is left out.

Prompts are raw strings for the engine (no chat-template stage): vLLM puts the image where the
placeholder is."""

from __future__ import annotations

from adamllm_ray.families import Family, get_family

MLLAMA = Family(
    name="mllama",
    begin="",
    system_header="",  # no system turn
    system_message="",
    user_header="<|start_header_id|>user<|end_header_id|>\n\n",
    assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
    end_of_turn="<|eot_id|>",
    turn_close="<|eot_id|>",
    image_placeholder="<|image|>",
    image_separator="",
    end_of_text="<|end_of_text|>",
)

EVAL_FAMILIES = ("qwen2_vl", "llava_next_llama3", "mllama")


def eval_family(name: str) -> Family:
    if name == "mllama":
        return MLLAMA
    return get_family(name)


def evaluation_prompt(family: str | Family, text: str) -> str:
    """The raw prompt for one image and one task text (tasks.build_prompt_text)."""
    f = family if isinstance(family, Family) else eval_family(family)
    system = f.system_header + f.system_message + f.turn_close if f.system_header else ""
    return (f.begin + system + f.user_header + f.image_placeholder + f.image_separator + text + f.turn_close
            + f.assistant_header)


def stop_strings(family: str | Family) -> list[str]:
    """Decoding stops at the end of the assistant turn (or the end of text)."""
    f = family if isinstance(family, Family) else eval_family(family)
    return [f.end_of_turn, f.end_of_text]
