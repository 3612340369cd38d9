"""One module per model family: every stage takes its strings and settings from there. The
expected strings are written out from SPEC.md (§1 synthesis prompt, §4 how the authors ask)."""

from __future__ import annotations

import pytest

from adamllm_ray.families import FAMILIES, PER_TOKEN_KEYS, get_family

SPEC_SYNTHESIS_PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision "
    "assistant. You are able to understand the visual content that the user provides, and assist the user with "
    "a variety of tasks using natural language.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    "<|reserved_special_token_4|>\nDescribe the image.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    "{caption}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
)


def test_registry_has_one_name_per_family():
    assert sorted(FAMILIES) == ["llava_next_llama3", "mllama", "qwen2_vl"]
    for name in FAMILIES:
        assert get_family(name).name == name
        assert get_family(get_family(name)) is get_family(name)
    with pytest.raises(ValueError, match="unknown model family 'llava_next'; known families: llava_next_llama3"):
        get_family("llava_next")


def test_released_synthesizer_prompt_is_spec_byte_for_byte():
    assert get_family("llava_next_llama3").synthesis_prompt("A red car.") == SPEC_SYNTHESIS_PROMPT.format(
        caption="A red car.")


def test_mllama_prompts_have_no_system_turn_and_no_bos():
    f = get_family("mllama")
    assert f.synthesis_prompt("Cap") == (
        "<|start_header_id|>user<|end_header_id|>\n\n<|image|>Describe the image.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nCap<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")
    assert f.evaluation_stop == ["<|eot_id|>", "<|end_of_text|>"]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_training_chat_template_renders_the_evaluation_prompt(name):
    """A model is trained in the format it is evaluated in: the family's chat template, rendered as
    Hugging Face renders it, gives the tokenizer's BOS plus the evaluation prompt, and a whole
    conversation's assistant turn starts with the family's assistant header."""
    from transformers.utils.chat_template_utils import render_jinja_template

    f = get_family(name)
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}
    (rendered,), _ = render_jinja_template(conversations=[[user]], chat_template=f.chat_template,
                                           add_generation_prompt=True)
    assert rendered == f.bos + f.evaluation_prompt("What is shown?")
    answer = {"role": "assistant", "content": [{"type": "text", "text": "A lung."}]}
    (whole,), _ = render_jinja_template(conversations=[[user, answer]], chat_template=f.chat_template)
    assert whole == rendered + "A lung." + f.turn_close


def test_llava_training_format_is_llava_llama_3():
    from transformers.utils.chat_template_utils import render_jinja_template

    f = get_family("llava_next_llama3")
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A."}]}]
    (text,), _ = render_jinja_template(conversations=[chat], chat_template=f.chat_template)
    # the tokenizer's BOS and the one the conversation is written with (SPEC §1: two BOS, as trained)
    assert text == ("<|begin_of_text|><|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                    "You are a helpful language and vision assistant. You are able to understand the visual content "
                    "that the user provides, and assist the user with a variety of tasks using natural language."
                    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<|reserved_special_token_4|>\nQ?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\nA.<|eot_id|>")


def test_parameter_parts_per_family():
    cases = {
        "qwen2_vl": {"model.visual.blocks.0.attn.qkv.weight": "vision_tower",
                     "model.visual.merger.mlp.0.weight": "projector",
                     "model.language_model.layers.0.mlp.up_proj.weight": "language_model",
                     "lm_head.weight": "language_model"},
        "llava_next_llama3": {"model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight": "vision_tower",
                              "model.multi_modal_projector.linear_1.weight": "projector",
                              "model.image_newline": "projector",
                              "model.language_model.layers.1.self_attn.q_proj.weight": "language_model"},
        "mllama": {"model.vision_model.transformer.layers.0.mlp.fc1.weight": "vision_tower",
                   "model.multi_modal_projector.weight": "projector",
                   "model.language_model.layers.1.cross_attn.q_proj.weight": "language_model"},
    }
    for name, parts in cases.items():
        f = get_family(name)
        assert {p: f.part_of(p) for p in parts} == parts, name
    assert get_family("qwen2_vl").concat_keys == ("pixel_values", "image_grid_thw")
    assert "cross_attention_mask" in PER_TOKEN_KEYS


def test_qwen2_vl_pixel_bounds_are_the_authors():
    f = get_family("qwen2_vl")
    assert f.engine_kwargs() == {"mm_processor_kwargs": {"min_pixels": 224 * 224, "max_pixels": 1280 * 28 * 28}}
    assert f.engine_kwargs(synthesis=True) == {}  # the family does not ask for them in synthesis
    assert get_family("llava_next_llama3").engine_kwargs() == {}
    assert f.evaluation_sampling(256) == {"temperature": 0.0, "max_tokens": 256,
                                          "stop": ["<|im_end|>", "<|endoftext|>"], "skip_special_tokens": True,
                                          "detokenize": True}
