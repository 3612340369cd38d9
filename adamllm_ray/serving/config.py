"""The service's config model (`adamllm serve`): its models, the ingress and its protection."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from adamllm_ray.config import EngineConfig, ImageLimits, InputPath, RayConfig, Section, check_range


class ModelEndpointConfig(EngineConfig):
    """One model behind the OpenAI-compatible routes (a `ray.serve.llm` deployment). `concurrency` is
    the replica count, or [min_replicas, max_replicas] to autoscale on `target_ongoing_requests` per
    replica; `batch_size` and `max_concurrent_batches` are batch-job settings and do not apply here."""

    name: str | None = None  # the model id clients send; default: the section's name (synthesizer, judge, ...)
    accelerator_type: str | None = None  # GPU only: a Ray accelerator type (A10G, L4, A100, ...) to place on
    target_ongoing_requests: float = 16
    max_ongoing_requests: int = 64
    upscale_delay_s: float = Field(30.0, ge=0)  # Serve waits this long over target before adding a replica
    downscale_delay_s: float = Field(600.0, ge=0)  # and this long under it before removing one
    look_back_period_s: float = Field(30.0, gt=0)  # the window Serve averages ongoing requests over
    tiny: Literal["qwen2_vl", "llava_next_llama3", "mllama", "text"] | None = None  # built at `model` by a prepare hook
    family: Literal["qwen2_vl", "llava_next_llama3", "mllama"] | None = None  # the evaluator's chat format; default: `family`


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
