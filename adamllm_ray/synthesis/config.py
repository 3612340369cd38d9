"""The synthesis job's config model (`adamllm synthesize`); shared sections come from config.py."""

from __future__ import annotations

from typing import Literal

from adamllm_ray.config import (EngineConfig, InputPath, OutputPath, RayConfig, S3Config, Section,
                               SourceConfig)


class SynthesisConfig(Section):
    ray: RayConfig = RayConfig()
    s3: S3Config = S3Config()
    source: SourceConfig
    output: OutputPath  # folder, local or s3://
    family: Literal["llava_next_llama3", "qwen2_vl", "mllama"] = "llava_next_llama3"
    synthesizer: EngineConfig
    judge: EngineConfig | None = None  # None: no filter, every triplet is kept
    judge_prompt: InputPath | None = None  # path to another few-shot prompt file; default: the project's own
    mode: Literal["single_stage", "synthetic_only", "caption_only"] = "single_stage"
    resume: bool = True
    restart: bool = False  # start over: delete this output's earlier results, even when the settings changed
