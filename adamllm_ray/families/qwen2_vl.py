"""Qwen2-VL's chat format, for synthesizers fine-tuned from Qwen2-VL with this project. vLLM expands
the single `<|image_pad|>` into the image's tokens."""

from adamllm_ray.families import Family

FAMILY = Family(
    name="qwen2_vl",
    begin="",
    system_header="<|im_start|>system\n",
    system_message="You are a helpful assistant.",
    user_header="<|im_start|>user\n",
    assistant_header="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    turn_close="<|im_end|>\n",
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    image_separator="",
    end_of_text="<|endoftext|>",
)
