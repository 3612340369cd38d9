"""The ingress's outer layer, in front of every route: API key, body size, body-read timeout and minimum
rate, JSON shape limits, admission (running + queued, else 503 with Retry-After), one JSON error shape
(the OpenAI error object) for every refusal, and a request id on every answer. Tracebacks, paths, pids
and addresses go to the log under that id, never into a body.

Admission is counted here, after the body is read, not by Serve's own max_ongoing_requests: a client
that stalls mid-body holds no slot, /healthz and GET routes are never queued, and the 503 is JSON."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import time
import uuid
from typing import Any

from starlette.responses import JSONResponse

from adamllm_ray.config import ConfigError, is_loopback
from adamllm_ray.serving.requests import RequestError

logger = logging.getLogger("ray.serve")

ROUTES = ("/v1/synthesize", "/v1/evaluate", "/v1/chat/completions", "/v1/completions", "/v1/models", "/healthz")
JSON_ROUTES = ("/v1/chat/completions", "/v1/completions")  # the task routes also take multipart
LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]
MAX_JSON_DEPTH = 32
INLINE_BYTES = 1 << 16  # bodies up to this size are checked on the event loop (a thread hop costs more)
PARSED = "adamllm.json"  # scope key of the checked JSON body
MAX_NUMBER_DIGITS = 64
NO_KEY_WARNING = ("WARNING: adamllm serve: no API key is set, so anyone who can reach {where} can use every route; "
                  "export ADAMLLM_API_KEY=<key> (or set ingress.api_key_env) to require 'Authorization: Bearer <key>'")


# ---------------------------------------------------------------- who may reach the service




def resolve_key(api_key: str | None, api_key_env: str | None) -> str | None:
    """The bearer token from the config or the environment variable it names, in this process."""
    return api_key or (os.environ.get(api_key_env) if api_key_env else None) or None


def check_exposure(host: str, key: str | None, api_key_env: str | None) -> str | None:
    """Refuse a service reachable from other machines without a key; on loopback, the warning to print."""
    if key:
        return None
    if not is_loopback(host):
        var = api_key_env or "ADAMLLM_API_KEY"
        raise ExposureError(f"refusing to serve on {host} without an API key: anyone on the network could use it. "
                            f"Set one with `export {var}=<key>` (ingress.api_key_env names the variable) or "
                            f"ingress.api_key, or bind ingress.host / http_options.host to 127.0.0.1")
    return NO_KEY_WARNING.format(where=host)


class ExposureError(ConfigError):
    """`adamllm serve` prints it as a config error (exit 2, no traceback); in a replica it fails the deploy."""


# ---------------------------------------------------------------- the error shape


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   request_id: str | None = None, headers: dict | None = None) -> JSONResponse:
    error = {"message": message, "type": kind, "param": param, "code": status}
    if request_id:
        error["request_id"] = request_id
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def request_error_response(err: RequestError, request_id: str | None = None) -> JSONResponse:
    body = err.body()
    if request_id:
        body["error"]["request_id"] = request_id
    return JSONResponse(body, status_code=err.status)


# ---------------------------------------------------------------- JSON limits

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")
_LONG_NUMBER = re.compile(r"\d{%d,}" % (MAX_NUMBER_DIGITS + 1))


def _no_constant(name: str):
    raise RequestError("body", f"{name} is not a JSON number")


def check_json(raw: bytes) -> Any:
    """The parsed body, or a RequestError naming the field: nesting, long numbers, NaN, lone surrogates."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError("body", f"not UTF-8 text (byte {err.start})") from None
    bare = _STRING.sub('""', text)
    depth = deepest = 0
    for m in _BRACKET.finditer(bare):
        depth += 1 if m.group() in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise RequestError("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        deepest = max(depth, deepest)
    if _LONG_NUMBER.search(bare):
        raise RequestError("body", f"a number with more than {MAX_NUMBER_DIGITS} digits")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RequestError:
        raise
    except (ValueError, RecursionError) as err:
        raise RequestError("body", f"not valid JSON ({err})") from None
    _check_text(data, "")
    return data


def check_shape(path: str, data: Any) -> None:
    """The outline of an OpenAI body, before vLLM's own request models see it (some of their validators
    fail with a TypeError, not a validation error, on a wrong type)."""
    if not isinstance(data, dict):
        raise RequestError("body", f"expected a JSON object, got {type(data).__name__}")
    if path not in JSON_ROUTES:
        return
    if not isinstance(data.get("model"), str):
        raise RequestError("model", "missing or not a string; GET /v1/models lists the served models")
    if path.endswith("/chat/completions"):
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages", "must be a non-empty list of messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise RequestError(f"messages[{i}]", "must be an object with a role and a content")
            content = m.get("content")
            if content is not None and not isinstance(content, str | list):
                raise RequestError(f"messages[{i}].content", "must be a string or a list of parts")
            if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
                raise RequestError(f"messages[{i}].content", "every part must be an object with a type")
    else:
        prompt = data.get("prompt")
        if not isinstance(prompt, str | list) or not prompt:
            raise RequestError("prompt", "must be a non-empty string or list")
        if "prompt_embeds" in data:
            raise RequestError("prompt_embeds", "not accepted by this service; send the prompt as text")


def _check_text(value: Any, path: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(path or "body", "contains a lone surrogate (\\ud800-\\udfff), not valid Unicode "
                                               "text") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, path or "body")
            _check_text(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_text(v, f"{path}[{i}]")


# ---------------------------------------------------------------- the middleware


class _Refusal(Exception):
    def __init__(self, response: JSONResponse | None):
        self.response = response  # None: the client is gone, answer nothing


class Guard:
    """See the module docstring. `api_key` is resolved when the application is built (so it travels with
    the deployment to every replica); the replica's own environment variable is only a fallback."""

    def __init__(self, app, api_key: str | None, api_key_env: str | None, max_request_bytes: int,
                 body_timeout_s: float, min_body_bytes_per_s: int, max_ongoing: int, max_queued: int,
                 retry_after_s: float):
        self.app = app
        self.api_key = api_key
        self.api_key_env = api_key_env
        self.max_request_bytes = max_request_bytes
        self.body_timeout_s = body_timeout_s
        self.min_rate = min_body_bytes_per_s
        self.max_ongoing, self.max_queued, self.retry_after_s = max_ongoing, max_queued, retry_after_s
        self.running = self.waiting = 0
        self.freed: asyncio.Condition | None = None
        self.metrics = None

    def key(self) -> str | None:
        return resolve_key(self.api_key, self.api_key_env)

    def _metrics(self):
        if self.metrics is None:
            from ray.serve.metrics import Counter, Histogram

            self.metrics = (
                Counter("adamllm_requests", description="Requests answered, by route and status.",
                        tag_keys=("route", "status")),
                Histogram("adamllm_request_latency_ms", description="Request latency at the ingress (ms).",
                          boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("route",)),
            )
        return self.metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id")  # set by Serve's proxy, which also puts it on the answer
        tag = rid is None
        rid = rid or uuid.uuid4().hex
        path = scope.get("path", "")
        route = next((r for r in ROUTES if path == r or path.startswith(r + "/")), "other")
        state = {"code": 500, "started": False}

        async def send_tagged(message):
            if message["type"] == "http.response.start":
                state["code"], state["started"] = message["status"], True
            if message["type"] == "http.response.start" and tag:
                tagged = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": tagged + [(b"x-request-id", rid.encode())]}
            await send(message)

        admitted = False
        try:
            self._check_key(headers, rid)
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                body = await self._read_body(scope, headers, receive, rid, path)
                receive = _replay(body, receive)
                await self._admit(rid)
                admitted = True
            await self.app(scope, receive, send_tagged)
        except _Refusal as refusal:
            if refusal.response is not None:
                await refusal.response(scope, receive, send_tagged)
        except Exception:  # anything a route did not turn into an answer: logged here, never sent
            logger.exception("request %s to %s failed", rid, path)
            if not state["started"]:
                await error_response(500, f"internal error; the service log has the details under request id "
                                          f"{rid}", "internal_error", request_id=rid)(scope, receive, send_tagged)
        finally:
            if admitted:
                await self._release()
            counter, histogram = self._metrics()
            counter.inc(tags={"route": route, "status": str(state["code"])})
            histogram.observe((time.perf_counter() - t0) * 1000, tags={"route": route})

    def _check_key(self, headers: dict, rid: str) -> None:
        key = self.key()
        if not key:
            return
        auth = headers.get("authorization", "")
        www = {"WWW-Authenticate": "Bearer"}
        if not auth:
            raise _Refusal(error_response(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                                          "authentication_error", request_id=rid, headers=www))
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise _Refusal(error_response(401, "invalid API key", "authentication_error", request_id=rid, headers=www))

    async def _read_body(self, scope, headers: dict, receive, rid: str, path: str) -> bytes:
        """The whole body, within the size limit, with no gap over body_timeout_s and at the minimum rate."""
        limit = self.max_request_bytes
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if path in JSON_ROUTES and ctype != "application/json":
            raise _Refusal(error_response(415, f"body: Content-Type must be application/json, got {ctype or 'none'}",
                                          param="body", request_id=rid))
        if path not in JSON_ROUTES and ctype not in ("application/json", "multipart/form-data"):
            raise _Refusal(error_response(415, f"body: Content-Type must be application/json or multipart/form-data, "
                                               f"got {ctype or 'none'}", param="body", request_id=rid))
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise _Refusal(_too_large(declared, limit, rid))
        expected = int(declared) if declared else limit
        deadline = time.monotonic() + self.body_timeout_s + expected / self.min_rate
        chunks, size, more = [], 0, True
        while more:
            wait = min(self.body_timeout_s, deadline - time.monotonic())
            try:
                if wait <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), wait)
            except asyncio.TimeoutError:
                logger.info("request %s: body stalled after %d bytes; closed", rid, size)
                raise _Refusal(error_response(
                    408, f"body: stalled after {size:,} bytes (no data for {self.body_timeout_s:g}s, or slower than "
                         f"{self.min_rate:,} bytes/s); send the whole body promptly", "timeout", "body",
                    request_id=rid, headers={"Connection": "close"})) from None
            if message["type"] != "http.request":
                raise _Refusal(None)  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                raise _Refusal(_too_large(str(size), limit, rid))
        body = b"".join(chunks)
        if ctype == "application/json":
            try:
                data = await asyncio.to_thread(check_json, body) if len(body) > INLINE_BYTES else check_json(body)
                check_shape(path, data)
                scope[PARSED] = data  # the task routes take it from here instead of parsing twice
            except RequestError as err:
                raise _Refusal(request_error_response(err, rid)) from None
        return body

    async def _admit(self, rid: str) -> None:
        if self.freed is None:
            self.freed = asyncio.Condition()
        async with self.freed:
            if self.running < self.max_ongoing:
                self.running += 1
                return
            if self.waiting >= self.max_queued:
                raise _Refusal(error_response(
                    503, f"the service is at capacity ({self.max_ongoing} requests running, {self.max_queued} "
                         f"waiting); retry after {self.retry_after_s:g}s", "overloaded", request_id=rid,
                    headers={"Retry-After": str(max(1, round(self.retry_after_s)))}))
            self.waiting += 1
            try:
                await self.freed.wait_for(lambda: self.running < self.max_ongoing)
                self.running += 1
            finally:
                self.waiting -= 1

    async def _release(self) -> None:
        async with self.freed:
            self.running -= 1
            self.freed.notify(1)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _too_large(size: str, limit: int, rid: str) -> JSONResponse:
    shown = f"{int(size):,}" if size.isdigit() else repr(size)
    return error_response(413, f"body: request of {shown} bytes is over the limit of {limit:,} bytes "
                               f"(ingress.max_request_bytes)", param="body", request_id=rid)
