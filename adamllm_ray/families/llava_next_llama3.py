"""LLaVA-NeXT with a Llama-3 language model (open-llava-next), in the `llava_llama_3` conversation:
the format of the released synthesizer (AdaptLLM/visual-instruction-synthesizer), of the paper's
LLaVA models, and the one the project trains and evaluates this family in. Its prompts start with
`<|begin_of_text|>` although the tokenizer adds a BOS too: the models were trained that way
(SPEC.md, sections 1 and 4), so training renders both."""

from adamllm_ray.families import Family, chat_template

BOS = "<|begin_of_text|>"
STRINGS = dict(
    begin=BOS,
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
)
CHAT_TEMPLATE = chat_template(BOS + STRINGS["begin"], STRINGS["system_header"], STRINGS["system_message"],
                              "<|start_header_id|>ROLE<|end_header_id|>\n\n", STRINGS["turn_close"],
                              STRINGS["image_placeholder"], STRINGS["image_separator"])

FAMILY = Family(
    name="llava_next_llama3",
    bos=BOS,
    end_of_text="<|end_of_text|>",
    chat_template=CHAT_TEMPLATE,
    # CLIP tower; MLP projector and the anyres newline vector.
    vision_tower=r"(^|\.)vision_tower\.",
    projector=r"(^|\.)(multi_modal_projector\.|image_newline$)",
    **STRINGS,
)
