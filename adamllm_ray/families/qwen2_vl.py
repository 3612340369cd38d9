"""Qwen2-VL: its chat format (for evaluation, training, and synthesizers fine-tuned from Qwen2-VL with
this project), its processor's pixel bounds as the authors evaluated with them, its parameter names.
vLLM expands the single `<|image_pad|>` into the image's tokens. The tokenizer adds no BOS."""

from adamllm_ray.families import Family, chat_template

STRINGS = dict(
    begin="",
    system_header="<|im_start|>system\n",
    system_message="You are a helpful assistant.",
    user_header="<|im_start|>user\n",
    assistant_header="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    turn_close="<|im_end|>\n",
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    image_separator="",
)
# Qwen2-VL's own chat template, for the messages this project renders (default system turn; image parts
# as vision tokens before the text).
CHAT_TEMPLATE = chat_template(STRINGS["begin"], STRINGS["system_header"], STRINGS["system_message"],
                              "<|im_start|>ROLE\n", STRINGS["turn_close"], STRINGS["image_placeholder"],
                              STRINGS["image_separator"])
# The authors' evaluation bounds: an image is resized to between 224*224 and 1280*28*28 pixels, so it
# becomes 64 to 1280 visual tokens (one per 28x28 block).
MIN_PIXELS = 224 * 224
MAX_PIXELS = 1280 * 28 * 28

FAMILY = Family(
    name="qwen2_vl",
    bos="",
    end_of_text="<|endoftext|>",
    chat_template=CHAT_TEMPLATE,
    processor_kwargs={"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS},
    # The vision tower ends in its patch merger, which is the projector.
    vision_tower=r"(^|\.)visual\.",
    projector=r"(^|\.)visual\.merger\.",
    concat_keys=("pixel_values", "image_grid_thw"),
    **STRINGS,
)
