"""Job configuration: pydantic models that reject unknown keys, one YAML file per job, and dotted
overrides from the command line (`engine.concurrency=4`, `synthesizer.concurrency=[1,4]`).

Sections shared by several jobs (storage, source, engine) live here; each job's top-level model
sits beside them so every key a user can write is defined in this one file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)


# Logical CPUs asked by the light Ray Data stages (read, prepare, parse, compose). Equal requests let
# Ray fuse consecutive stages into one task, so rows are not serialised between them.
LIGHT_TASK_CPUS = 0.1


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ConfigError(ValueError):
    """A config file or override that does not fit its model; the message names key and file."""


# ---------------------------------------------------------------- paths
# Ray workers, Train workers and Serve replicas do not run in the directory a command was started
# in, so every local path is made absolute when the config is loaded (against `base`, the command's
# directory), before anything leaves the driver. s3:// URIs and hub ids pass unchanged. Existence is
# checked only where the config is loaded for a command (`check` in the validation context), not when
# a worker re-validates a config that was already resolved.

_GLOB = set("*?[")


def _base(info: ValidationInfo) -> Path:
    return Path((info.context or {}).get("base") or os.getcwd())


def _is_uri(value: str) -> bool:
    return "://" in value


def _resolve(value: str | None, info: ValidationInfo) -> str | None:
    if value is None or _is_uri(value) or not value:
        return value
    return str((_base(info) / Path(value).expanduser()).resolve())


def _must_exist(path: str, info: ValidationInfo) -> None:
    if (info.context or {}).get("check") and not _is_uri(path) and not _GLOB & set(path) and not Path(path).exists():
        raise ValueError(f"path {path!r} does not exist (relative paths are resolved against {_base(info)})")


def _output_path(value: str, info: ValidationInfo) -> str:
    return _resolve(value, info)


def _input_path(value: str | None, info: ValidationInfo) -> str | None:
    value = _resolve(value, info)
    if value is not None:
        _must_exist(value, info)
    return value


def looks_local(value: str, base: Path) -> bool:
    """A model given as a relative path, not a hub id (`org/name`): it starts with `.`, `/` or `~`,
    has more than one `/`, or its first part exists where the command runs."""
    if _is_uri(value):
        return False
    first = value.split("/", 1)[0]
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or (base / first).exists()


def _model_path(value: str, info: ValidationInfo) -> str:
    return _resolve(value, info) if looks_local(value, _base(info)) else value


OutputPath = Annotated[str, AfterValidator(_output_path)]  # resolved, may not exist yet
InputPath = Annotated[str, AfterValidator(_input_path)]  # resolved, must exist (globs and s3:// aside)
ModelPath = Annotated[str, AfterValidator(_model_path)]  # a local folder (resolved) or a hub id


def check_model_exists(model: str, info: ValidationInfo) -> None:
    """A model that is a local path must be there when the command starts."""
    if not _is_uri(model) and Path(model).is_absolute():
        try:
            _must_exist(model, info)
        except ValueError as err:
            raise ValueError(f"model {err}") from None


# ---------------------------------------------------------------- shared sections


def check_range(name: str, v):
    """A pool size: a positive int, or [min, max] to autoscale between."""
    lo, hi = (v, v) if isinstance(v, int) else v
    if lo < 1 or hi < lo:
        raise ValueError(f"{name} must be a positive int or [min, max] with 1 <= min <= max")
    return v


class S3Config(Section):
    """S3 or an S3-compatible endpoint (MinIO, moto). Unset fields come from the usual AWS
    environment variables (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...)."""

    endpoint_url: str | None = None
    region: str | None = None

    def apply_to_environment(self) -> None:
        """Export to the environment so Ray workers started afterwards see the same endpoint."""
        if self.endpoint_url:
            os.environ["AWS_ENDPOINT_URL"] = self.endpoint_url
        if self.region:
            os.environ["AWS_REGION"] = self.region


class ImageLimits(Section):
    max_pixels: int = 4096 * 4096  # larger images are downscaled to fit (aspect kept)
    max_decoded_pixels: int = 16384 * 16384  # above this the image is refused (decompression bomb)
    reencode_format: Literal["PNG", "JPEG"] = "PNG"


class SourceConfig(Section):
    """Where the image-caption pairs come from."""

    format: Literal["sharegpt", "parquet", "webdataset"]
    path: InputPath  # a file, a folder or a glob; local or s3://
    image_root: InputPath | None = None  # ShareGPT only: folder or prefix the image paths are relative to
    limit: int | None = None  # read at most this many pairs (smoke runs)
    files_per_block: int = 1  # many small files spread over many blocks
    rows_per_block: int = Field(64, ge=1)  # rows per block after reading: results are written steadily
    max_caption_chars: int = Field(16384, ge=1)  # a longer caption is an error row at read
    images: ImageLimits = ImageLimits()


class SamplingConfig(Section):
    temperature: float = 0.0
    max_tokens: int = 512
    min_tokens: int = 0  # > 0 forces that many tokens (benchmarks compare equal work)
    stop: list[str] = []
    skip_special_tokens: bool = False


class EngineConfig(Section):
    """One vLLM engine pool (engine.py turns it into a ray.data.llm processor)."""

    model: ModelPath  # local folder, s3:// prefix, or hub id
    accelerator: Literal["cpu", "gpu"] = "cpu"
    tensor_parallel_size: int = 1
    concurrency: int | tuple[int, int] = 1  # pool size, or [min, max] to autoscale
    batch_size: int = 64
    max_concurrent_batches: int = 4
    max_model_len: int = 4096
    dtype: str = "auto"
    cpu_kvcache_gib: int = 1  # CPU only: VLLM_CPU_KVCACHE_SPACE
    cpus_per_engine: float = 1.0  # CPU only: logical CPUs reserved per engine actor
    engine_kwargs: dict[str, Any] = {}
    sampling: SamplingConfig = SamplingConfig()

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, v):
        return check_range("concurrency", v)

    @model_validator(mode="after")
    def _model_exists(self, info: ValidationInfo):
        if getattr(self, "tiny", None) is None:  # a served tiny model is built where it is missing
            check_model_exists(self.model, info)
        return self


class RayConfig(Section):
    """How the job reaches Ray: `local` starts a private instance; an address attaches to a cluster
    (inside `ray job submit` the job's own cluster is used)."""

    address: str = "local"
    num_cpus: int | None = None  # local only
    progress_bars: bool = True


# ---------------------------------------------------------------- job models


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


class ModelEndpointConfig(EngineConfig):
    """One model behind the OpenAI-compatible routes (a `ray.serve.llm` deployment). `concurrency` is
    the replica count, or [min_replicas, max_replicas] to autoscale on `target_ongoing_requests` per
    replica; `batch_size` and `max_concurrent_batches` are batch-job settings and do not apply here."""

    name: str | None = None  # the model id clients send; default: the section's name (synthesizer, judge, ...)
    accelerator_type: str | None = None  # GPU only: a Ray accelerator type (A10G, L4, A100, ...) to place on
    target_ongoing_requests: float = 16
    max_ongoing_requests: int = 64
    tiny: Literal["qwen2_vl", "llava_next_llama3", "mllama", "text"] | None = None  # build this tiny model at `model` when it is missing
    family: Literal["qwen2_vl", "llava_next_llama3", "mllama"] | None = None  # the evaluator's chat format; default: `family`


def is_loopback(host: str) -> bool:
    """Whether a host to bind is this machine only (anything else needs an API key)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class IngressConfig(Section):
    """The task routes' deployment and its protection. Requests beyond `max_ongoing_requests` per
    replica wait in a queue of `max_queued_requests`; beyond that they get 503 with Retry-After."""

    host: str = "127.0.0.1"  # `adamllm serve` only; `serve deploy` takes http_options from its own file
    port: int = 8000
    api_key: str | None = None  # bearer token; prefer api_key_env so the key stays out of files
    api_key_env: str | None = "ADAMLLM_API_KEY"  # environment variable holding the token, read when the app is built
    cors_origins: list[str] = []  # browser origins allowed to call the service; none: no CORS headers at all
    image_url_domains: list[str] = []  # hosts chat image_url may be fetched from; none: only data URLs
    max_request_bytes: int = 16 * 2**20
    body_timeout_s: float = Field(10.0, gt=0)  # a request body that sends nothing for this long gets 408
    min_body_bytes_per_s: int = Field(16384, ge=1)  # and the whole body must arrive at least this fast
    request_timeout_s: float = 300.0  # per model call; past it the request gets 504
    replicas: int | tuple[int, int] = 1  # or [min, max] to autoscale on target_ongoing_requests
    target_ongoing_requests: float = 8
    max_ongoing_requests: int = 32
    max_queued_requests: int = 64
    retry_after_s: int = 1
    num_cpus: float = 0.25

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, v):
        return check_range("replicas", v)


class ServeConfig(Section):
    ray: RayConfig = RayConfig(num_cpus=4)  # local: Serve's ingress needs 4 logical CPUs beside the engines
    ingress: IngressConfig = IngressConfig()
    family: Literal["llava_next_llama3", "qwen2_vl", "mllama"] = "llava_next_llama3"  # default of /v1/synthesize
    synthesizer: ModelEndpointConfig
    judge: ModelEndpointConfig | None = None  # None: /v1/synthesize keeps every triplet
    judge_prompt: InputPath | None = None
    evaluator: ModelEndpointConfig | None = None  # None: /v1/evaluate asks the synthesizer
    mode: Literal["single_stage", "synthetic_only", "caption_only"] = "single_stage"
    images: ImageLimits = ImageLimits()  # over max_decoded_pixels: 413; over max_pixels: downscaled

    @model_validator(mode="after")
    def _model_names(self):
        seen = set()
        for section, ep in self.endpoints().items():
            if ep.name is None:
                ep.name = section
            if ep.name in seen:
                raise ValueError(f"model name {ep.name!r} is used twice; give each model its own name")
            seen.add(ep.name)
        return self

    def endpoints(self) -> dict[str, ModelEndpointConfig]:
        """The configured models by section name."""
        eps = {"synthesizer": self.synthesizer, "judge": self.judge, "evaluator": self.evaluator}
        return {k: v for k, v in eps.items() if v is not None}


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
        from adamllm_ray.evaluation.tasks import PAPER_SCORES

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
        from adamllm_ray.evaluation.tasks import TASKS

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


# ---------------------------------------------------------------- loading

C = TypeVar("C", bound=BaseModel)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = node[k] = {}
            node = nxt
        node[keys[-1]] = value
    return data


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing key '{key}'")
        elif e["type"] == "value_error":  # our own messages say what was given
            lines.append(f"{source}: key '{key}': {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{source}: key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate(model: type[C], data: dict[str, Any], source: str = "config", base: str | os.PathLike | None = None,
             check_paths: bool = True) -> C:
    """The config as `model`, local paths resolved against `base` (default: the current directory)
    and, with `check_paths`, checked to exist where an input is required."""
    try:
        return model.model_validate(data, context={"base": str(base or os.getcwd()), "check": check_paths})
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def load_config(model: type[C], path: str | os.PathLike | None, overrides: list[str] = (),
                check_paths: bool = True) -> C:
    data: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
    if overrides:
        source += " + overrides"
    return validate(model, apply_overrides(data, list(overrides)), source, check_paths=check_paths)


def dump_config(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json")

