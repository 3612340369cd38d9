"""What training needs to know about each model family: where the assistant's answer starts in a
rendered turn (label masking), the end-of-text token (synthesizer tuning), which parameters are the
vision tower and the projector (per-module learning rates, freezing), and how the processor's
tensors are batched. The chat text itself always comes from the model's own chat template."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Processor outputs that run along the token sequence (truncated and padded with it).
PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids", "cross_attention_mask")


@dataclass(frozen=True)
class TrainFamily:
    name: str
    assistant_header: str  # rendered text that opens an assistant turn; the answer follows it
    end_of_text: str  # appended and trained in synthesizer tuning
    vision_tower: str  # regex over parameter names
    projector: str  # regex over parameter names
    concat_keys: tuple[str, ...] = ()  # image tensors without a batch dimension: concatenated along dim 0

    def part_of(self, param_name: str) -> str:
        """vision_tower, projector or language_model (everything else, lm_head included)."""
        if re.search(self.projector, param_name):
            return "projector"
        if re.search(self.vision_tower, param_name):
            return "vision_tower"
        return "language_model"


LLAMA3_ASSISTANT = "<|start_header_id|>assistant<|end_header_id|>\n\n"

TRAIN_FAMILIES = {
    # Qwen2-VL: the vision tower ends in its patch merger, which is the projector.
    "qwen2_vl": TrainFamily(
        name="qwen2_vl", assistant_header="<|im_start|>assistant\n", end_of_text="<|endoftext|>",
        vision_tower=r"(^|\.)visual\.", projector=r"(^|\.)visual\.merger\.",
        concat_keys=("pixel_values", "image_grid_thw"),
    ),
    # LLaVA-NeXT (Llama-3 language model): CLIP tower, MLP projector and the anyres newline vector.
    "llava_next": TrainFamily(
        name="llava_next", assistant_header=LLAMA3_ASSISTANT, end_of_text="<|end_of_text|>",
        vision_tower=r"(^|\.)vision_tower\.", projector=r"(^|\.)(multi_modal_projector\.|image_newline$)",
    ),
    # Llama-3.2-Vision: vision encoder, linear projector; cross-attention layers belong to the language model.
    "mllama": TrainFamily(
        name="mllama", assistant_header=LLAMA3_ASSISTANT, end_of_text="<|end_of_text|>",
        vision_tower=r"(^|\.)vision_model\.", projector=r"(^|\.)multi_modal_projector\.",
    ),
}


def get_train_family(name: str) -> TrainFamily:
    if name not in TRAIN_FAMILIES:
        raise ValueError(f"unknown model family {name!r} for training; known: {', '.join(sorted(TRAIN_FAMILIES))}")
    return TRAIN_FAMILIES[name]
