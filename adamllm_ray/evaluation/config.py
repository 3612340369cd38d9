"""The evaluation job's config model (`adamllm evaluate`); task and paper-model names are checked
against the task registry here, so the shared config module needs no stage."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from adamllm_ray.config import EngineConfig, ImageLimits, InputPath, OutputPath, RayConfig, S3Config, Section
from adamllm_ray.evaluation.tasks import PAPER_SCORES, TASKS


class EvalModelConfig(EngineConfig):
    """One model to evaluate: its vLLM engine pool, the chat format its prompts are written in, and
    optionally the paper's model whose numbers the report puts beside it."""

    name: str  # the report's column and the folder predictions/<name>/
    family: Literal["qwen2_vl", "llava_next_llama3", "mllama"] = "qwen2_vl"
    max_model_len: int = 6144  # the authors' evaluation length
    paper: str | None = None  # a model of the paper's tables: Qwen2-VL-2B, AdaMLLM-med-2B, AdaMLLM-food-2B

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("a model name is a folder name: letters, digits, '.', '_' and '-'")
        return v

    @field_validator("paper")
    @classmethod
    def _known_paper_model(cls, v):
        if v is not None and v not in PAPER_SCORES:
            raise ValueError(f"unknown paper model {v!r}; the paper's tables have {', '.join(PAPER_SCORES)}")
        return v


class EvalTaskConfig(Section):
    """One benchmark: a folder of parquet files (or a Hugging Face `save_to_disk` folder of arrow files)."""

    name: str  # slake, pathvqa, vqa_rad, pmc_vqa, recipe1m, nutrition5k, food101, foodseg103
    data: InputPath  # folder, local or s3://
    vocabulary: InputPath | None = None  # JSON file of phrases/class names; default: DATA/vocabulary.json when present
    limit: int | None = Field(None, ge=1)  # the first N examples only (smoke runs)
    max_new_tokens: int | None = Field(None, ge=1)  # default: the paper's budget (1024; 256 for food tasks)

    @field_validator("name")
    @classmethod
    def _known_task(cls, v):
        if v not in TASKS:
            raise ValueError(f"unknown task {v!r}; known tasks: {', '.join(TASKS)}")
        return v


class EvaluateConfig(Section):
    ray: RayConfig = RayConfig()
    s3: S3Config = S3Config()
    output: OutputPath  # folder, local or s3://: predictions/, errors.jsonl, metrics.json, report.md, report.png
    models: list[EvalModelConfig] = Field(min_length=1)
    tasks: list[EvalTaskConfig] = Field(min_length=1)
    images: ImageLimits = ImageLimits()  # a benchmark image over max_decoded_pixels is an error row
    resume: bool = True  # skip (model, task) pairs already complete in `output`

    @field_validator("models", "tasks")
    @classmethod
    def _unique_names(cls, v):
        names = [item.name for item in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{twice[0]!r} is listed twice; list each once")
        return v
