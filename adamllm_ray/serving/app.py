"""The serving application: the synthesizer, the judge and an evaluated model behind Ray Serve.

    HTTP -> Guard (guard.py: key, body limits and timeouts, JSON limits, admission, error shape) -> TaskIngress
              /v1/chat/completions, /v1/completions, /v1/models   (ray.serve.llm's OpenAI routes)
              /v1/synthesize, /v1/evaluate, /healthz              (the method's task routes)
           -> handles -> RawPromptServer deployments (ray.serve.llm LLMServer + vLLM), one per model

By concern: models.py (the model deployments and their engine settings), ingress.py (the FastAPI app,
its routes and the application that binds them), guard.py, requests.py and media.py (what a request
may be), lifecycle.py (start, readiness, stop).

Secure by default: the API key is resolved where the app is built and travels with the ingress
deployment; without one the service refuses a non-loopback host and warns on loopback. No CORS unless
ingress.cors_origins lists origins; no image fetched unless ingress.image_url_domains lists its host.

Entry points: `build_app` for `serve run/deploy` and KubeRay (import path
`adamllm_ray.serving.app:build_app`, args `{config: <job yaml>}`); `start(cfg) -> base_url` /
`shutdown()` / `serving(cfg)` / `run_until_interrupted(cfg)` for `adamllm serve`, the demo, tests and
the benchmark.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from adamllm_ray.config import load_config
from adamllm_ray.serving.config import ServeConfig
from adamllm_ray.serving.ingress import application
from adamllm_ray.serving.lifecycle import run_until_interrupted, serving, shutdown, start

__all__ = ["application", "build_app", "run_until_interrupted", "serving", "shutdown", "start"]


def build_app(args: dict[str, Any]):
    """Serve's application builder: `import_path: adamllm_ray.serving.app:build_app` with
    `args: {config: jobs/serve/<file>.yaml, overrides: [key=value, ...], prepare: module:function}` (paths
    relative to the working directory; `prepare(cfg)` runs before the app is built, e.g. the embedded
    default's `adamllm_ray.embedded.tiny:ensure_models`)."""
    if "config" not in args:
        raise ValueError("build_app needs args {config: <path of a jobs/serve/*.yaml file>}")
    cfg = load_config(ServeConfig, args["config"], args.get("overrides", []))
    if args.get("prepare"):
        module, _, name = str(args["prepare"]).partition(":")
        getattr(importlib.import_module(module), name)(cfg)
    missing = [f"{role} ({ep.model})" for role, ep in cfg.endpoints().items()
               if ep.tiny and not os.path.exists(ep.model)]
    if missing:  # a tiny model is built by a prepare hook: without one its engine would fail much later
        raise ValueError(f"tiny model not built: {', '.join(missing)}; add `prepare: "
                         f"adamllm_ray.embedded.tiny:ensure_models` to the app's args")
    return application(cfg)
