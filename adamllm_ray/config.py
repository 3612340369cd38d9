"""Job configuration: pydantic models that reject unknown keys, one YAML file per job, and dotted
overrides from the command line (`engine.concurrency=4`, `synthesizer.concurrency=[1,4]`).

The sections shared by several jobs (Ray, S3 storage, source, image limits, engine) and the loader
live here; each job's top-level model lives in its stage package (synthesis/config.py,
training/config.py, evaluation/config.py, serving/config.py), so this module imports no stage.
"""

from __future__ import annotations

import ipaddress
import os
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
    # local only: the object store's size (Ray's default: 30% of the machine's memory). A streaming job's
    # resident memory grows over a long run until the store's pages have all been used once: this bounds it
    object_store_gib: float | None = Field(None, gt=0)
    progress_bars: bool = True


def is_loopback(host: str) -> bool:
    """Whether a host to bind is this machine only (anything else needs an API key)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False



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

