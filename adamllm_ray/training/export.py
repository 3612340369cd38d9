"""A trainer checkpoint (ZeRO-2 or ZeRO-3, local or s3://) -> a Hugging Face folder: config,
safetensors weights, tokenizer and processor, loadable by transformers and by vLLM.

DeepSpeed's `zero_to_fp32` helpers merge every rank's partition of the fp32 master weights into one
state dict (the same call for both stages). The model is built on the meta device and the merged
weights are assigned to it, so no second full copy of the weights is allocated, and transformers'
`save_pretrained` writes the keys in the layout vLLM reads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from adamllm_ray import storage
from adamllm_ray.training.download import copy_tree
from adamllm_ray.training.loop import DS_TAG, HF_DIR


class ExportError(RuntimeError):
    pass


@contextlib.contextmanager
def local_copy(uri: str):
    """A local folder with the contents of `uri` (the folder itself when it is local)."""
    if not storage.is_s3(uri):
        yield uri
        return
    tmp = tempfile.mkdtemp(prefix="adamllm-ckpt-")
    try:
        copy_tree(uri, tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(folder: str, out: str) -> None:
    """Move a finished local folder to `out`: a rename locally, an upload on S3 (each object appears whole)."""
    if storage.is_s3(out):
        copy_tree(folder, out)
        return
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    shutil.move(folder, out)


def export_checkpoint(checkpoint: str, out: str, dtype: str = "float32") -> str:
    """Write the Hugging Face folder of `checkpoint` to `out` (local or s3://); returns `out`."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, GenerationConfig

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    with local_copy(checkpoint) as ckpt:
        hf = Path(ckpt, HF_DIR)
        if not Path(ckpt, DS_TAG).is_dir() or not hf.is_dir():
            raise ExportError(f"{checkpoint} is not a trainer checkpoint: expected {DS_TAG}/ (DeepSpeed) and {HF_DIR}/")
        state_dict = get_fp32_state_dict_from_zero_checkpoint(ckpt, tag=DS_TAG)
        config = AutoConfig.from_pretrained(hf)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config, dtype=torch_dtype)
        expected = set(model.state_dict())
        missing = expected - set(state_dict)
        unexpected = set(state_dict) - expected
        if unexpected:
            raise ExportError(f"checkpoint has weights the model does not: {sorted(unexpected)[:5]}")
        model.load_state_dict({k: v.to(torch_dtype) for k, v in state_dict.items()}, strict=False, assign=True)
        model.tie_weights()
        still_meta = [k for k, t in model.state_dict().items() if t.is_meta]
        if still_meta:
            raise ExportError(f"no weights in the checkpoint for {len(still_meta)} tensor(s), e.g. {still_meta[:5]} "
                              f"(missing keys: {sorted(missing)[:5]})")
        tmp = tempfile.mkdtemp(prefix="adamllm-export-")
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            AutoProcessor.from_pretrained(hf).save_pretrained(tmp)
            if Path(hf, "generation_config.json").exists():
                GenerationConfig.from_pretrained(hf).save_pretrained(tmp)
            _publish(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
