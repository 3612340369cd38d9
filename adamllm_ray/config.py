"""Job configuration: pydantic models that reject unknown keys, one YAML file per job, and dotted
overrides from the command line (`engine.concurrency=4`, `synthesizer.concurrency=[1,4]`).

Sections shared by several jobs (storage, source, engine) live here; each job's top-level model
sits beside them so every key a user can write is defined in this one file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ConfigError(ValueError):
    """A config file or override that does not fit its model; the message names key and file."""


# ---------------------------------------------------------------- shared sections


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
    path: str  # a file, a folder or a glob; local or s3://
    image_root: str | None = None  # ShareGPT only: folder or prefix the image paths are relative to
    limit: int | None = None  # read at most this many pairs (smoke runs)
    files_per_block: int = 1  # many small files spread over many blocks
    images: ImageLimits = ImageLimits()


class SamplingConfig(Section):
    temperature: float = 0.0
    max_tokens: int = 512
    stop: list[str] = []
    skip_special_tokens: bool = False


class EngineConfig(Section):
    """One vLLM engine pool (engine.py turns it into a ray.data.llm processor)."""

    model: str  # local folder, s3:// prefix, or hub id
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
        lo, hi = (v, v) if isinstance(v, int) else v
        if lo < 1 or hi < lo:
            raise ValueError("concurrency must be a positive int or [min, max] with 1 <= min <= max")
        return v


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
    output: str  # folder, local or s3://
    family: Literal["llava_next_llama3", "qwen2_vl"] = "llava_next_llama3"
    synthesizer: EngineConfig
    judge: EngineConfig | None = None  # None: no filter, every triplet is kept
    judge_prompt: str | None = None  # path to another few-shot prompt file; default: the project's own
    mode: Literal["single_stage", "synthetic_only", "caption_only"] = "single_stage"
    resume: bool = True


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
        else:
            lines.append(f"{source}: key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate(model: type[C], data: dict[str, Any], source: str = "config") -> C:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def load_config(model: type[C], path: str | os.PathLike | None, overrides: list[str] = ()) -> C:
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
    return validate(model, apply_overrides(data, list(overrides)), source)


def dump_config(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json")

