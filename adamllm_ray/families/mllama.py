"""Llama-3.2-Vision (Instruct): its chat template with one user turn holding the image then the
text and no system turn (its template puts none beside an image). The tokenizer adds
`<|begin_of_text|>` itself (vLLM encodes raw prompts with special tokens), so prompts leave it out;
training renders it, since it tokenizes the rendering as it is."""

from adamllm_ray.families import Family, chat_template

BOS = "<|begin_of_text|>"
STRINGS = dict(
    begin="",
    system_header="",  # no system turn
    system_message="",
    user_header="<|start_header_id|>user<|end_header_id|>\n\n",
    assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
    end_of_turn="<|eot_id|>",
    turn_close="<|eot_id|>",
    image_placeholder="<|image|>",
    image_separator="",
)
CHAT_TEMPLATE = chat_template(BOS, "", "", "<|start_header_id|>ROLE<|end_header_id|>\n\n", STRINGS["turn_close"],
                              STRINGS["image_placeholder"], STRINGS["image_separator"])

FAMILY = Family(
    name="mllama",
    bos=BOS,
    end_of_text="<|end_of_text|>",
    chat_template=CHAT_TEMPLATE,
    # Vision encoder and linear projector; the cross-attention layers belong to the language model.
    vision_tower=r"(^|\.)vision_model\.",
    projector=r"(^|\.)multi_modal_projector\.",
    **STRINGS,
)
