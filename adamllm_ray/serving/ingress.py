"""The ingress deployment: ray.serve.llm's OpenAI routes and the method's task routes in one FastAPI
app behind the Guard (guard.py), and the Serve application that binds it to the model deployments.

/v1/synthesize asks the synthesizer exactly as the batch pipeline does (the family's raw prompt with the
image beside it, no chat template, the same vLLM sampling params) and runs the pipeline's own row
functions (parse_row, judge_prompt_of, finish_row) on the answer, so a request gives the row the batch
job would give. /v1/evaluate sends the task's prompt in the evaluated family's format with the image.
Both call the model deployments through Serve handles, never over HTTP. Chat images are checked and
fetched only as media.py allows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionRequest, OpenAIHTTPException
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from adamllm_ray import engine
from adamllm_ray.config import dump_config
from adamllm_ray.evaluation.prompts import evaluation_prompt
from adamllm_ray.evaluation.prompts import sampling_params as evaluation_sampling
from adamllm_ray.evaluation.tasks import get_task
from adamllm_ray.families import get_family
from adamllm_ray.records import (CAPTION, CAPTION_PROMPT, ERROR, ID, IMAGE, IMAGE_PATH, MESSAGES, QA_PAIRS,
                                 RAW_OUTPUT, RESPONSE, TRIPLET, VERDICT)
from adamllm_ray.serving import media
from adamllm_ray.serving.config import IngressConfig, ServeConfig
from adamllm_ray.serving.guard import (PARSED, Guard, check_exposure, error_response, request_error_response,
                                       resolve_key)
from adamllm_ray.serving.models import model_deployments
from adamllm_ray.serving.requests import RequestError, parse_evaluate, parse_synthesize, read_body
from adamllm_ray.synthesis.filter import load_judge_prompt
from adamllm_ray.synthesis.pipeline import image_name, synthesis_sampling
from adamllm_ray.synthesis.stages import finish_row, judge_prompt_of, parse_row

INGRESS_NAME = "TaskIngress"
HEALTH_TTL_S = 5.0  # /healthz asks every model at most this often
HEALTH_TIMEOUT_S = 5.0
STALL_HEADROOM = 64  # Serve-level requests beyond the Guard's running + queued (bodies still arriving, GETs)
logger = logging.getLogger("ray.serve")
INTERNALS = re.compile(r"/\w+/|\b\d{1,3}(\.\d{1,3}){3}\b|\bpid\b|Traceback|File \"")


def ingress_fastapi_app(ingress: IngressConfig, api_key: str | None):
    """ray.serve.llm's ingress app without its allow-any-origin CORS: request ids, its HTTP metrics, our
    Guard outermost, CORS only for the configured origins, and every refusal in one JSON shape."""
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware
    from ray.llm._internal.serve.core.ingress.middleware import SetRequestIdMiddleware
    from ray.llm._internal.serve.observability.metrics.fast_api_metrics import (add_http_metrics_middleware,
                                                                                 metrics_lifespan)

    app = FastAPI(lifespan=metrics_lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.add_exception_handler(RequestError, _on_request_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(OpenAIHTTPException, _on_model_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    if ingress.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(ingress.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    add_http_metrics_middleware(app)
    app.add_middleware(SetRequestIdMiddleware)
    app.add_middleware(Guard, api_key=api_key, api_key_env=ingress.api_key_env,
                       max_request_bytes=ingress.max_request_bytes, body_timeout_s=ingress.body_timeout_s,
                       min_body_bytes_per_s=ingress.min_body_bytes_per_s,
                       max_ongoing=ingress.max_ongoing_requests, max_queued=ingress.max_queued_requests,
                       retry_after_s=ingress.retry_after_s)
    return app


def _rid(request: Request) -> str | None:
    return request.headers.get("x-request-id") or getattr(request.state, "request_id", None)


async def _on_request_error(request: Request, err: RequestError) -> Response:
    return request_error_response(err, _rid(request))


async def _on_validation_error(request: Request, err: RequestValidationError) -> Response:
    first = (err.errors() or [{}])[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or "body"
    message = str(first.get("msg", "invalid request")).replace("\n", " ")
    return error_response(400, f"{field}: {message}", param=field, request_id=_rid(request))


async def _on_model_error(request: Request, err: OpenAIHTTPException) -> Response:
    """A model's refusal (prompt too long, ...) is the client's 400/413; a model failure is logged and
    answered without its internals."""
    field = "messages" if request.url.path.endswith("/chat/completions") else "prompt"
    if 400 <= err.status_code < 500:
        return error_response(err.status_code, f"{field}: {err.message}", "invalid_request_error", field,
                              _rid(request))
    logger.error("request %s: model error %s: %s (%s)", _rid(request), err.status_code, err.message,
                 err.internal_message)
    return error_response(502, f"the model failed; the service log has the details under request id {_rid(request)}",
                          "model_error", request_id=_rid(request))


async def _on_http_error(request: Request, err: HTTPException) -> Response:
    return error_response(err.status_code, str(err.detail), request_id=_rid(request))


# ---------------------------------------------------------------- task routes


class TaskIngress(OpenAiIngress):
    """ray.serve.llm's OpenAI ingress plus the method's task routes, in one deployment."""

    def __init__(self, llm_deployments, model_cards, *, config: dict[str, Any], has_key: bool = False):
        super().__init__(llm_deployments, model_cards)
        self.cfg = ServeConfig.model_validate(config)
        self.names = {section: ep.name for section, ep in self.cfg.endpoints().items()}
        self.judge_text = load_judge_prompt(self.cfg.judge_prompt) if self.cfg.judge else None
        self.timeout_s = self.cfg.ingress.request_timeout_s
        self.health: dict[str, str] = {}
        self.health_at = 0.0
        self.health_lock: asyncio.Lock | None = None
        # `serve run/deploy` and RayService bind where their own http_options say: refuse an open host without a key
        try:
            host = serve.context._get_global_client().http_config.host
        except Exception as err:  # no controller to ask (not under Serve): the launcher checked its own host
            logger.info("could not read Serve's HTTP host (%r); not checked here", err)
            host = "127.0.0.1"
        warning = check_exposure(host, "set" if has_key else None, self.cfg.ingress.api_key_env)
        if warning:
            logger.warning(warning)

    async def healthz(self) -> JSONResponse:
        """Ready (200) only when every model answered a health check within the last HEALTH_TTL_S."""
        if self.health_lock is None:
            self.health_lock = asyncio.Lock()
        async with self.health_lock:
            if time.monotonic() - self.health_at > HEALTH_TTL_S or any(v != "ok" for v in self.health.values()):
                names = list(self.names.values())
                answers = await asyncio.gather(*[self._ping(n) for n in names])
                self.health, self.health_at = dict(zip(names, answers)), time.monotonic()
        ready = all(v == "ok" for v in self.health.values())
        return JSONResponse({"status": "ok" if ready else "unavailable", "models": self.names,
                             "model_health": self.health, "family": self.cfg.family, "mode": self.cfg.mode},
                            status_code=200 if ready else 503)

    async def _ping(self, name: str) -> str:
        try:
            await asyncio.wait_for(self._default_serve_handles[name].check_health.remote(), HEALTH_TIMEOUT_S)
            return "ok"
        except Exception as err:
            logger.info("health check of model %s: %r", name, err)
            return "no answer"

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        """ray.serve.llm's chat route, with every image checked (and fetched only as media.py allows) before a model sees it."""
        ingress = self.cfg.ingress
        body.messages = await media.checked_messages(body.messages, self.cfg.images, list(ingress.image_url_domains),
                                                     ingress.max_request_bytes)
        return await super().chat(body, request)

    async def synthesize(self, request: Request) -> JSONResponse:
        req = await _off_loop(request, parse_synthesize, self.cfg.images, self.cfg.family, self.cfg.judge is not None)
        return JSONResponse(await self._synthesize(req))

    async def evaluate(self, request: Request) -> JSONResponse:
        req = await _off_loop(request, parse_evaluate, self.cfg.images)
        return JSONResponse(await self._evaluate(req))

    async def _synthesize(self, req) -> dict[str, Any]:
        family = get_family(req.family)
        row = {ID: req.id, IMAGE: req.image, IMAGE_PATH: image_name(req.id, req.image), CAPTION: req.caption,
               CAPTION_PROMPT: req.caption_prompt, ERROR: None}
        params = synthesis_sampling(self.cfg.synthesizer, family)
        out = await self._generate("synthesizer", family.synthesis_prompt(req.caption), req.image, params,
                                   field="caption")
        row = parse_row({**row, RAW_OUTPUT: out["text"]}, family)
        judge_output = None
        if not req.judge:
            row = finish_row(row, self.cfg.mode, None, judged=False)
        else:
            prompt = judge_prompt_of(row, self.judge_text)
            if prompt is not None:
                judged = await self._generate("judge", prompt, None, engine.sampling_params(self.cfg.judge))
                judge_output = judged["text"]
            row = finish_row(row, self.cfg.mode, judge_output, judged=True)
        example = None
        if req.compose and row[MESSAGES]:
            example = {ID: row[ID], "images": [row[IMAGE_PATH]], "messages": row[MESSAGES]}
        return {
            ID: row[ID], "family": family.name, IMAGE_PATH: row[IMAGE_PATH], RAW_OUTPUT: row[RAW_OUTPUT],
            QA_PAIRS: row[QA_PAIRS], TRIPLET: row[TRIPLET], "judge_output": judge_output, VERDICT: row[VERDICT],
            "kept": row[RESPONSE] is not None, RESPONSE: row[RESPONSE] if req.compose else None,
            "example": example, ERROR: row[ERROR],
            "usage": {k: out[k] for k in ("prompt_tokens", "output_tokens", "finish_reason")},
        }

    async def _evaluate(self, req) -> dict[str, Any]:
        name = req.model or self.names.get("evaluator") or self.names["synthesizer"]
        if name not in self._model_cards:
            raise RequestError("model", f"unknown model {name!r}; served models: {', '.join(self._model_cards)}")
        # the prompt batch evaluation sends for the same example: the family's format (evaluation/prompts.py)
        section = next(s for s, n in self.names.items() if n == name)
        family = self.cfg.endpoints()[section].family or self.cfg.family
        fields = get_task(req.task).prompt_fields
        out = await self._generate(section, evaluation_prompt(family, req.prompt), req.image,
                                   evaluation_sampling(family, req.max_tokens),
                                   field="question" if "question" in fields else fields[-1])
        answer, finish_reason = out["text"], out["finish_reason"]
        score = None
        if req.record is not None:
            result = get_task(req.task).score([{**req.record, "prediction": answer}])
            score = {"scores": result["scores"], "counts": result["counts"]}
        return {"task": req.task, "model": name, "prompt": req.prompt, "answer": answer,
                "finish_reason": finish_reason, "score": score}

    async def _generate(self, section: str, prompt: str, image: bytes | None, sampling: dict,
                        field: str | None = None) -> dict[str, Any]:
        name = self.names[section]
        response = self._default_serve_handles[name].generate_raw.remote(prompt, image, sampling)
        out = await self._bounded(name, response, cancel=response)
        if "refused" in out:
            # the client's input made the prompt unusable (for instance too long): 400; else the model's fault
            raise RequestError(field, f"model '{name}' refused the prompt: {out['refused']}",
                               400 if field else 502, "invalid_request_error" if field else "model_error")
        return out

    async def _bounded(self, name: str, awaitable, cancel) -> Any:
        return await bounded(name, awaitable, self.timeout_s, cancel)


async def _off_loop(request: Request, parse, *args):
    """The request's fields (the JSON the Guard checked, else the multipart form) through `parse`, in a
    thread: it decodes the image, and a small PNG can hold many pixels."""
    data = request.scope.get(PARSED)
    if not isinstance(data, dict):
        data = await read_body(request)
    return await asyncio.to_thread(parse, data, *args)


async def bounded(name: str, awaitable, timeout_s: float, cancel=None) -> Any:
    """A model call that answers, fails with a message (502), or times out (504): never hangs."""
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except asyncio.TimeoutError:
        if cancel is not None:
            with contextlib.suppress(Exception):
                cancel.cancel()
        raise RequestError(None, f"model '{name}' did not answer within {timeout_s:g}s (ingress.request_timeout_s)",
                           504, "timeout") from None
    except RequestError:
        raise
    except Exception as err:
        text = str(err).strip()
        message = text.splitlines()[-1] if text else type(err).__name__
        if INTERNALS.search(message):  # paths, addresses, pids stay in the log
            logger.error("model %s failed: %s", name, text)
            message = type(err).__name__
        raise RequestError(None, f"model '{name}' failed: {message}", 502, "model_error") from None


OPENAI_ROUTES = ("models", "model_data", "completions", "chat")


def _endpoint_map():
    from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS

    routes = {k: DEFAULT_ENDPOINTS[k] for k in OPENAI_ROUTES}
    routes.update(
        synthesize=lambda app: app.post("/v1/synthesize"),
        evaluate=lambda app: app.post("/v1/evaluate"),
        healthz=lambda app: app.get("/healthz"),
    )
    return routes


def ingress_options(ingress: IngressConfig) -> dict[str, Any]:
    """The Guard counts running and queued requests once their bodies are in; Serve's own bound sits above
    it, so bodies still arriving, /healthz and GETs never wait behind it."""
    lo, hi = engine.pool_range(ingress.replicas)
    outer = ingress.max_ongoing_requests + ingress.max_queued_requests + STALL_HEADROOM
    return {
        "name": INGRESS_NAME,
        "max_ongoing_requests": outer,
        "max_queued_requests": outer,  # Serve counts requests still being routed as queued: a burst is not backlog
        "backpressure_config": {"status_code": 503, "retry_after_s": ingress.retry_after_s},
        "autoscaling_config": {"min_replicas": lo, "initial_replicas": lo, "max_replicas": hi,
                               "target_ongoing_requests": ingress.target_ongoing_requests},
        "ray_actor_options": {"num_cpus": ingress.num_cpus},
    }


def application(cfg: ServeConfig):
    """The Serve application of a config: one model deployment per configured model, the ingress. The API
    key is resolved here, where the app is built (`adamllm serve`'s process, `serve run`, or the cluster's
    build task for `serve deploy` and RayService), and travels with the ingress deployment to every
    replica, so it holds whether or not the replicas' nodes have the variable."""
    key = resolve_key(cfg.ingress.api_key, cfg.ingress.api_key_env)
    deployments, cards = model_deployments(cfg)
    ingress_cls = make_fastapi_ingress(TaskIngress, endpoint_map=_endpoint_map(),
                                       app=ingress_fastapi_app(cfg.ingress, key))
    return serve.deployment(ingress_cls, **ingress_options(cfg.ingress)).bind(
        llm_deployments=deployments, model_cards=cards, config=dump_config(cfg), has_key=key is not None)
