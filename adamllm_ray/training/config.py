"""The post-training job's config model (`adamllm train`, SPEC §3)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, model_validator

from adamllm_ray.config import (ImageLimits, InputPath, ModelPath, OutputPath, RayConfig, S3Config, Section,
                               check_model_exists)


class TrainDataConfig(Section):
    """The training set (SPEC §3): ShareGPT JSON written by the synthesis run, images relative to the file."""

    path: InputPath  # a ShareGPT .json/.jsonl file, a folder or a glob of them; local or s3://
    image_root: InputPath | None = None  # default: the folder of each JSON file
    mode: Literal["single_stage", "two_stage", "synthetic_only", "caption_only"] = "single_stage"
    caption_prompts: list[str] = ["Describe the image."]  # user prompts (without <image>) of the caption task
    synthesizer_tuning: bool = False  # loss on everything after the first round, end-of-text trained
    blank_image_share: float = Field(0.1, ge=0.0, le=1.0)  # synthesizer tuning: images replaced by a blank one
    max_length: int = Field(6144, ge=16)  # tokens, image tokens included; longer examples are truncated
    shuffle: bool = True  # a new order every epoch (seeded), drawn on the driver over the light entries
    seed: int = 0
    limit: int | None = None  # use at most this many entries (smoke runs)
    images: ImageLimits = ImageLimits()
    map_batch_size: int = 16  # examples per batch of the Ray Data stage that loads images and tokenizes
    map_concurrency: int | tuple[int, int] = 2  # actors of that stage, or [min, max] to autoscale
    map_num_cpus: float = 0.5  # logical CPUs per actor


class TrainScalingConfig(Section):
    """Ray Train's ScalingConfig: one DeepSpeed rank per worker."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # how the workers' bundles spread over nodes (Ray's placement group strategies); STRICT_SPREAD puts
    # each worker on its own node
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    wait_for_resources: bool = False  # autoscaling clusters: ask the autoscaler for the workers' nodes and wait
    wait_timeout_s: float = Field(900.0, gt=0)  # ... this long at most, then fail naming what never came


class TrainOptimConfig(Section):
    lr: float = 1e-5
    vision_lr: float | None = None  # vision tower; default: lr
    weight_decay: float = 0.0
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0


class TrainFreezeConfig(Section):
    """Parts left out of training (the paper trains everything)."""

    vision_tower: bool = False
    projector: bool = False
    language_model: bool = False


class TrainCheckpointConfig(Section):
    every_steps: int = Field(100, ge=1)  # and always at the end
    num_to_keep: int | None = 2


class TrainConfig(Section):
    ray: RayConfig = RayConfig()
    s3: S3Config = S3Config()
    model: ModelPath  # local folder, s3:// prefix or hub id
    family: Literal["qwen2_vl", "llava_next_llama3", "mllama"] = "qwen2_vl"
    data: TrainDataConfig
    output: OutputPath  # folder, local or s3://: checkpoints under OUTPUT/NAME/, the exported model in OUTPUT/NAME/model
    name: str = "train"
    resume_from: InputPath | None = None  # a checkpoint folder (local or s3://) to start a new run from
    scaling: TrainScalingConfig = TrainScalingConfig()
    zero_stage: Literal[2, 3] = 2
    precision: Literal["bf16", "fp32"] = "bf16"
    epochs: int = Field(1, ge=1)
    global_batch_size: int = Field(128, ge=1)  # examples per optimizer step over all workers
    micro_batch_size: int = Field(1, ge=1)  # examples per forward pass per worker
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs); the schedule spans them
    optim: TrainOptimConfig = TrainOptimConfig()
    freeze: TrainFreezeConfig = TrainFreezeConfig()
    gradient_checkpointing: bool = False
    checkpoint: TrainCheckpointConfig = TrainCheckpointConfig()
    max_failures: int = 0  # worker-group restarts from the latest checkpoint
    export: bool = True  # write a Hugging Face folder at the end
    export_dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bfloat16 when trained in bf16

    @model_validator(mode="after")
    def _model_exists(self, info: ValidationInfo):
        check_model_exists(self.model, info)
        return self

    @model_validator(mode="after")
    def _batch_fits(self):
        per_step = self.micro_batch_size * self.scaling.num_workers
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size x "
                f"scaling.num_workers = {self.micro_batch_size} x {self.scaling.num_workers}")
        return self

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.scaling.num_workers)
