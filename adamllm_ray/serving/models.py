"""The model deployments: one ray.serve.llm LLMServer (vLLM) per configured model, with the engine
settings the batch jobs give the same model in the same role."""

from __future__ import annotations

import uuid
from typing import Any

from ray.serve.llm import LLMConfig, build_llm_deployment
from ray.serve.llm.deployment import LLMServer

from adamllm_ray import engine, images
from adamllm_ray.evaluation.prompts import engine_kwargs as evaluation_engine_kwargs
from adamllm_ray.serving.config import ModelEndpointConfig, ServeConfig

class RawPromptServer(LLMServer):
    """ray.serve.llm's model server plus the batch pipeline's way of asking a model: a raw prompt in
    the family's own format with the image beside it, and the pipeline's vLLM sampling params. The
    OpenAI completions route cannot carry an image, so this goes to the server's vLLM engine directly."""

    async def generate_raw(self, prompt: str, image: bytes | None, sampling: dict[str, Any]) -> dict[str, Any]:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError

        inputs: dict[str, Any] = {"prompt": prompt}
        if image is not None:
            inputs["multi_modal_data"] = {"image": images.to_pil(image)}
        final = None
        try:
            async for final in self.engine._engine_client.generate(inputs, SamplingParams(**sampling),
                                                                   uuid.uuid4().hex):
                pass
        except (VLLMClientError, ValueError) as err:  # vLLM refuses the input (too long for the model, ...)
            return {"refused": str(err)}
        out = final.outputs[0]
        return {"text": out.text, "finish_reason": out.finish_reason, "output_tokens": len(out.token_ids),
                "prompt_tokens": len(final.prompt_token_ids or [])}


def role_engine_kwargs(cfg: ServeConfig, section: str) -> dict[str, Any]:
    """A served model's vLLM engine kwargs, built as its batch job builds them: the evaluator as batch
    evaluation does (its family's image processor settings, Qwen2-VL's pixel bounds, under the configured
    engine_kwargs: evaluation/run.py), the synthesizer and the judge as batch synthesis does (engine.py)."""
    ep = cfg.endpoints()[section]
    if section == "evaluator":
        family = ep.family or cfg.family
        ep = ep.model_copy(update={"engine_kwargs": evaluation_engine_kwargs(family, ep.engine_kwargs)})
    return engine.engine_kwargs(ep, multimodal=section != "judge")


def llm_config(cfg: ServeConfig, section: str) -> LLMConfig:
    """One model's LLMConfig: the batch job's engine kwargs (`role_engine_kwargs`), autoscaling from the
    endpoint's replica range. On CPU the engine gets a CPU placement bundle (else it waits for a GPU for
    ever) and the replica actor reserves nothing beyond it."""
    ep: ModelEndpointConfig = cfg.endpoints()[section]
    lo, hi = engine.pool_range(ep.concurrency)
    deployment: dict[str, Any] = {
        "max_ongoing_requests": ep.max_ongoing_requests,
        "autoscaling_config": {"min_replicas": lo, "initial_replicas": lo, "max_replicas": hi,
                               "target_ongoing_requests": ep.target_ongoing_requests,
                               "upscale_delay_s": ep.upscale_delay_s, "downscale_delay_s": ep.downscale_delay_s,
                               "look_back_period_s": ep.look_back_period_s},
    }
    extra = engine.cpu_placement(ep)
    if ep.accelerator == "cpu":
        deployment["ray_actor_options"] = {"num_cpus": 0}
    elif ep.accelerator_type:
        extra["accelerator_type"] = ep.accelerator_type
    return LLMConfig(
        model_loading_config={"model_id": ep.name, "model_source": engine.model_source(ep.model)},
        engine_kwargs=role_engine_kwargs(cfg, section),
        deployment_config=deployment,
        runtime_env={"env_vars": engine.engine_env(ep)},
        **extra,
    )


def model_deployments(cfg: ServeConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bound model deployments and their model cards (what /v1/models lists), by model name."""
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata

    deployments, cards = {}, {}
    for section, ep in cfg.endpoints().items():
        config = llm_config(cfg, section)
        deployments[ep.name] = build_llm_deployment(config, deployment_cls=RawPromptServer)
        modality = "text" if section == "judge" else "image"
        cards[ep.name] = to_model_metadata(ep.name, config, {"input_modality": modality})
    return deployments, cards
