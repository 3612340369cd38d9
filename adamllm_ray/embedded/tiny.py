"""Tiny models built locally from configs (no model hub): random weights, a byte-level BPE tokenizer
trained here on the project's own vocabulary, and the processor files vLLM and transformers need,
one per model family (the chat template comes from the family module) plus a text model for the
judge. Deterministic for a given seed; built in seconds. Used by the tests and the demo.

vLLM (0.29) runs qwen2_vl, text and llava_next_llama3 (the latter only with the project's vLLM
plugin, vllm_compat.py, installed); it removed Llama-3.2-Vision (mllama: an encoder-decoder model,
dropped with vLLM's V0 engine in 0.10.2), so the mllama tiny model loads and trains in transformers
only."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from adamllm_ray.families import get_family

QWEN_SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]
MAX_POSITIONS = 8192  # above evaluation's max model length (6144), which vLLM refuses beyond this
LLAMA3_SPECIAL = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|reserved_special_token_4|>", "<|finetune_right_pad_id|>", "<|image|>",
]


def _corpus() -> list[str]:
    """Text the tokenizer is trained on: the sample-data vocabulary and the method's prompt words."""
    from adamllm_ray.embedded import sample_data

    lines = list(sample_data.vocabulary_sentences())
    prompts = Path(__file__).parents[1] / "prompts"
    for p in sorted(prompts.glob("*")) if prompts.exists() else []:
        lines.extend(p.read_text(errors="ignore").splitlines())
    lines += [
        "Describe the image.", "Answer with a precise response.", "Answer with an informative response.",
        "You are a helpful language and vision assistant.", "## Question: ## Informative Answer:",
        "## Precise Answer: ## Consistent: Yes No Open", "The answer is", "Therefore, the answer is",
        "What type of food is shown in this image? Choose one type from the following options:",
        "What ingredients are used to make the dish in the image?", "Question: The choices are:",
        "0 1 2 3 4 5 6 7 8 9 10 yes no A B C D ( ) [ ] , . ; : ? !",
    ]
    return lines


def build_tokenizer(special: list[str], vocab_size: int = 2048):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def _fast_tokenizer(tok, **kwargs):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def build_qwen2_vl(out: Path, seed: int) -> None:
    import torch
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    template = get_family("qwen2_vl").chat_template
    tok = _fast_tokenizer(
        build_tokenizer(QWEN_SPECIAL), eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=template, model_max_length=MAX_POSITIONS,
    )
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL[1:]})
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
            max_window_layers=2,
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=128, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    # Small images: 56x56..112x112 pixels -> 4..16 visual tokens, so tests and the demo stay fast.
    pixels = dict(min_pixels=56 * 56, max_pixels=112 * 112)
    image_processor = Qwen2VLImageProcessor(**pixels)
    video_processor = Qwen2VLVideoProcessor(**pixels)
    Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                     chat_template=template).save_pretrained(out)


def build_text(out: Path, seed: int) -> None:
    """A small text-only causal LM (Qwen2 architecture) for the judge."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = _fast_tokenizer(
        build_tokenizer(QWEN_SPECIAL), bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", chat_template=get_family("qwen2_vl").chat_template,
        model_max_length=MAX_POSITIONS,
    )
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS, bos_token_id=eos, eos_token_id=eos,
        pad_token_id=eos, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).to(torch.float32).save_pretrained(out)
    tok.save_pretrained(out)


def _llama3_tokenizer(family: str):
    """A Llama-3-style tokenizer: the family's special tokens, a BOS put in front of every text (as
    Llama-3's own does, so vLLM's raw prompts get it), the family's chat template."""
    from tokenizers import processors

    raw = build_tokenizer(LLAMA3_SPECIAL)
    bos = raw.token_to_id("<|begin_of_text|>")
    raw.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                        special_tokens=[("<|begin_of_text|>", bos)])
    tok = _fast_tokenizer(raw, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                          pad_token="<|finetune_right_pad_id|>", chat_template=get_family(family).chat_template,
                          model_max_length=MAX_POSITIONS)
    tok.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIAL[2:]})
    return tok, {t: tok.convert_tokens_to_ids(t) for t in LLAMA3_SPECIAL}


def _llama_text(tok, ids: dict, **extra) -> dict:
    return dict(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
                bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|eot_id|>"],
                pad_token_id=ids["<|finetune_right_pad_id|>"], tie_word_embeddings=False, **extra)


def _save_generation(model, ids: dict) -> None:
    model.generation_config.eos_token_id = [ids["<|eot_id|>"], ids["<|end_of_text|>"]]
    model.generation_config.pad_token_id = ids["<|finetune_right_pad_id|>"]
    model.generation_config.bos_token_id = ids["<|begin_of_text|>"]


def build_llava_next_llama3(out: Path, seed: int) -> None:
    """LLaVA-NeXT (CLIP tower, anyres tiles of 28x28 pixels) over a Llama language model; the image
    goes where `<|reserved_special_token_4|>` is, as in the released synthesizer."""
    import torch
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessor, LlavaNextProcessor)

    tok, ids = _llama3_tokenizer("llava_next_llama3")
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=28, patch_size=14, projection_dim=32),
        text_config=LlamaConfig(**_llama_text(tok, ids)),
        image_token_index=ids["<|reserved_special_token_4|>"], image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default", vision_feature_layer=-1, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).to(torch.float32)
    _save_generation(model, ids)
    model.save_pretrained(out)
    _released_vision_tower_names(out)
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                              image_grid_pinpoints=pinpoints)
    LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                       vision_feature_select_strategy="default", image_token="<|reserved_special_token_4|>",
                       num_additional_image_tokens=1,  # the CLIP tower's CLS token
                       chat_template=get_family("llava_next_llama3").chat_template).save_pretrained(out)


def _released_vision_tower_names(out: Path) -> None:
    """transformers 5.23 saves the CLIP tower as `vision_tower.*`; released LLaVA-NeXT checkpoints (and
    vLLM's loader) name it `vision_tower.vision_model.*`. transformers loads either."""
    from safetensors.torch import load_file, save_file

    path = out / "model.safetensors"
    tensors = load_file(path)
    prefix = "vision_tower."
    renamed = {(prefix + "vision_model." + k[len(prefix):] if k.startswith(prefix) and
                not k.startswith(prefix + "vision_model.") else k): v for k, v in tensors.items()}
    save_file(renamed, path, metadata={"format": "pt"})


def build_mllama(out: Path, seed: int) -> None:
    """Llama-3.2-Vision: a tiled vision encoder (tiles of 28x28 pixels) and cross-attention layers in
    the language model; the image goes where `<|image|>` is."""
    import torch
    from transformers import (MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessor, MllamaProcessor,
                              MllamaTextConfig, MllamaVisionConfig)

    tok, ids = _llama3_tokenizer("mllama")
    config = MllamaConfig(
        vision_config=MllamaVisionConfig(hidden_size=32, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
                                         intermediate_size=64, vision_output_dim=64, image_size=28, patch_size=14,
                                         max_num_tiles=4, intermediate_layers_indices=[0]),
        text_config=MllamaTextConfig(**_llama_text(tok, ids, cross_attention_layers=[1])),
        image_token_index=ids["<|image|>"], tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(config).to(torch.float32)
    _save_generation(model, ids)
    model.save_pretrained(out)
    image_processor = MllamaImageProcessor(size={"height": 28, "width": 28}, max_image_tiles=4)
    MllamaProcessor(image_processor=image_processor, tokenizer=tok,
                    chat_template=get_family("mllama").chat_template).save_pretrained(out)


BUILDERS = {"qwen2_vl": build_qwen2_vl, "llava_next_llama3": build_llava_next_llama3, "mllama": build_mllama,
            "text": build_text}
VLLM_FAMILIES = ("qwen2_vl", "llava_next_llama3", "text")  # what vLLM 0.29 runs (see above)


def build(family: str, out: str | os.PathLike, seed: int = 0, overwrite: bool = False) -> str:
    """Build the tiny model of `family` into `out` (atomically: a finished folder or none)."""
    if family not in BUILDERS:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {sorted(BUILDERS)}")
    out = Path(out)
    if (out / "config.json").exists() and not overwrite:
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        BUILDERS[family](tmp, seed)
        (tmp / "tiny_model.json").write_text(json.dumps({"family": family, "seed": seed}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def ensure_models(cfg) -> None:
    """A serve config's models marked `tiny:` are built at their path when missing (`adamllm serve` and
    `serve run` of the embedded default pass this as the service's `prepare`)."""
    for ep in cfg.endpoints().values():
        if ep.tiny:
            build(ep.tiny, ep.model, seed=0)
