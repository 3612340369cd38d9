"""LLaVA-NeXT with a Llama-3 language model: the format of the released synthesizer
(AdaptLLM/visual-instruction-synthesizer). Its prompt starts with `<|begin_of_text|>` although the
tokenizer adds a BOS too: the synthesizer was trained that way (SPEC.md, section 1)."""

from adamllm_ray.families import Family

FAMILY = Family(
    name="llava_next_llama3",
    begin="<|begin_of_text|>",
    system_header="<|start_header_id|>system<|end_header_id|>\n\n",
    system_message=(
        "You are a helpful language and vision assistant. You are able to understand the visual "
        "content that the user provides, and assist the user with a variety of tasks using natural language."
    ),
    user_header="<|start_header_id|>user<|end_header_id|>\n\n",
    assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
    end_of_turn="<|eot_id|>",
    turn_close="<|eot_id|>",
    image_placeholder="<|reserved_special_token_4|>",
    image_separator="\n",
    end_of_text="<|end_of_text|>",
)
