"""`adamllm bench serve`: what the task routes cost on top of the model, and what concurrency buys.

- task-endpoint overhead: p50 latency of POST /v1/synthesize (judge off) minus p50 of the same raw
  prompt and image sent straight to the synthesizer's model deployment (its Serve handle, from this
  process). The difference is HTTP, the ingress hop, request checks, parsing and composing. Each call
  has its own caption (no prefix-cache hit from its twin) and the order of the twins alternates.
- the same for /v1/evaluate against the model's own /v1/chat/completions with the same request (both HTTP).
- throughput: /v1/synthesize requests per second with 16 concurrent clients vs one client.
- under attack: 200 requests from 32 clients, half of them hostile (malformed, oversized, SSRF, bombs),
  against 200 all-valid ones: no 5xx but 503, p50/p99 of the valid answers side by side.

Tiny models on vLLM CPU, a private local Ray, 127.0.0.1. `rows` is the number of requests per
measurement (clamped to 8..64)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from adamllm_ray.embedded.local_cluster import free_port

CONCURRENCY = 16
MIXED_REQUESTS = 200
MIXED_CLIENTS = 32
CAPTION = "A bowl of rice with vegetables on a wooden table"
QUESTION = "What food is in the bowl?"
TINY_CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "serve" / "tiny_cpu.yaml"


def _p50_ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 2)


def _image() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (180, 140, 60)).save(buf, "PNG")
    return buf.getvalue()


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_serve(rows: int) -> dict:
    import httpx
    from ray import serve

    from adamllm_ray.config import load_config
    from adamllm_ray.serving.config import ServeConfig
    from adamllm_ray.families import get_family
    from adamllm_ray.embedded import tiny
    from adamllm_ray.serving import app, lifecycle
    from adamllm_ray.synthesis.pipeline import synthesis_sampling

    n = max(8, min(rows, 64))
    tmp = tempfile.mkdtemp(prefix="adamllm-bench-serve-")
    cfg = load_config(ServeConfig, TINY_CONFIG, [
        f"synthesizer.model={tmp}/synthesizer", "judge=null", "ingress.api_key=null", "ingress.api_key_env=null",
        "ingress.max_ongoing_requests=32", "ingress.max_queued_requests=256",
    ])
    image = _image()
    image_b64 = base64.b64encode(image).decode()
    family = get_family(cfg.family)
    params = synthesis_sampling(cfg.synthesizer, family)
    chat_body = {"model": "synthesizer", "temperature": 0.0, "max_tokens": 32, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image_b64}},
        {"type": "text", "text": QUESTION}]}]}
    eval_body = {"task": "slake", "image": image_b64, "question": QUESTION, "max_tokens": 32}

    t_start = time.perf_counter()
    url = app.start(cfg, port=free_port(), prepare=tiny.ensure_models)
    startup_s = time.perf_counter() - t_start
    try:
        handle = serve.get_deployment_handle("RawPromptServer:synthesizer", app_name=lifecycle.APP_NAME)
        http = httpx.Client(timeout=300)

        def synthesize(caption: str) -> None:
            r = http.post(url + "/v1/synthesize", json={"image": image_b64, "caption": caption, "judge": False})
            r.raise_for_status()

        def direct(caption: str) -> None:
            out = handle.generate_raw.remote(family.synthesis_prompt(caption), image, params).result()
            assert "text" in out, out

        def post(path: str, body: dict) -> None:
            http.post(url + path, json=body).raise_for_status()

        for i in range(3):  # warm-up: first requests pay for lazy set-up on every hop
            synthesize(f"{CAPTION} warm {i}")
            direct(f"{CAPTION} warm {i} d")
            post("/v1/evaluate", eval_body)
            post("/v1/chat/completions", chat_body)

        task_s, model_s, eval_s, chat_s, health_s = [], [], [], [], []
        for i in range(n):
            pair = [(task_s, lambda: synthesize(f"{CAPTION} {i} t")), (model_s, lambda: direct(f"{CAPTION} {i} m"))]
            pair += [(eval_s, lambda: post("/v1/evaluate", eval_body)),
                     (chat_s, lambda: post("/v1/chat/completions", chat_body))]
            for out, fn in (pair if i % 2 == 0 else pair[::-1]):
                out.append(_timed(fn))
            health_s.append(_timed(lambda: http.get(url + "/healthz").raise_for_status()))

        total = 4 * n
        sequential_s = _timed(lambda: [synthesize(f"{CAPTION} seq {i}") for i in range(total)])
        concurrent_s, statuses = asyncio.run(_concurrent(url, image_b64, total))
        valid_only = asyncio.run(_mixed(url, chat_body, MIXED_REQUESTS, hostile_share=0.0))
        mixed = asyncio.run(_mixed(url, chat_body, MIXED_REQUESTS, hostile_share=0.5))
        http.close()
    finally:
        app.shutdown()

    sequential_rps = total / sequential_s
    concurrent_rps = total / concurrent_s
    overhead = round(_p50_ms(task_s) - _p50_ms(model_s), 2)
    return {
        "requests_per_measurement": n,
        "startup_s": round(startup_s, 1),
        "synthesize_p50_ms": _p50_ms(task_s),
        "model_handle_p50_ms": _p50_ms(model_s),
        "task_endpoint_overhead_ms": overhead,
        "task_endpoint_overhead_target_ms": 15,
        "task_endpoint_overhead_ok": overhead < 15,
        "evaluate_p50_ms": _p50_ms(eval_s),
        "chat_completions_p50_ms": _p50_ms(chat_s),
        "evaluate_overhead_ms": round(_p50_ms(eval_s) - _p50_ms(chat_s), 2),
        "healthz_p50_ms": _p50_ms(health_s),
        "throughput_requests": total,
        "sequential_requests_per_s": round(sequential_rps, 2),
        f"concurrent_{CONCURRENCY}_requests_per_s": round(concurrent_rps, 2),
        "concurrent_statuses": statuses,
        "throughput_ratio": round(concurrent_rps / sequential_rps, 2),
        "throughput_ratio_target": 3,
        "throughput_ratio_ok": concurrent_rps / sequential_rps >= 3,
        f"mixed_{MIXED_REQUESTS}_requests_{MIXED_CLIENTS}_clients": {
            "all_valid": valid_only, "half_hostile": mixed,
            "valid_p50_ratio": round(mixed["valid_p50_ms"] / valid_only["valid_p50_ms"], 2),
            "valid_p99_ratio": round(mixed["valid_p99_ms"] / valid_only["valid_p99_ms"], 2),
            "ratio_target": 1.5,
            "no_5xx_but_503": mixed["server_errors"] == 0 and valid_only["server_errors"] == 0,
        },
    }


def _hostile(chat_body: dict) -> list[tuple[str, str, bytes]]:
    """(route, content type, body): malformed, oversized, SSRF and bad-image requests, each a 4xx."""
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, "PNG")
    bomb_url = "data:image/png;base64," + base64.b64encode(bomb.getvalue()).decode()
    msgs = lambda content: json.dumps({**chat_body, "messages": [{"role": "user", "content": content}]})  # noqa: E731
    chat, j = "/v1/chat/completions", "application/json"
    return [
        (chat, j, b"[" * 5000 + b"]" * 5000),
        ("/v1/synthesize", j, b'{"caption": "x", "image": "AAAA", "id": ' + b"9" * 5000 + b"}"),
        ("/v1/synthesize", j, rb'{"caption": "\ud800", "image": "AAAA"}'),
        (chat, "text/plain", json.dumps(chat_body).encode()),
        (chat, j, json.dumps({**chat_body, "messages": 5}).encode()),
        (chat, j, msgs([{"type": "image_url", "image_url": {"url": bomb_url}}]).encode()),
        (chat, j, msgs([{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]).encode()),
        (chat, j, msgs([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]).encode()),
        ("/v1/evaluate", j, b'{"task": "slake", "image": "%%%", "question": "q"}'),
        ("/v1/completions", j, json.dumps({"model": "synthesizer", "prompt": "rice " * 3000}).encode()),
    ]


async def _mixed(url: str, chat_body: dict, total: int, hostile_share: float) -> dict:
    """`total` requests from MIXED_CLIENTS clients, every 1/hostile_share-th one hostile (cycling through
    `_hostile`); latency percentiles of the valid ones (chat with an image, which must answer 200 complete)."""
    import httpx

    hostile = _hostile(chat_body)
    step = round(1 / hostile_share) if hostile_share else 0
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    statuses: dict[str, int] = {}
    valid_s: list[float] = []
    incomplete = 0

    async def client(http):
        nonlocal incomplete
        while not queue.empty():
            i = queue.get_nowait()
            if step and i % step == 0:
                route, ctype, body = hostile[(i // step) % len(hostile)]
                r = await http.post(url + route, content=body, headers={"Content-Type": ctype})
            else:
                t0 = time.perf_counter()
                r = await http.post(url + "/v1/chat/completions", json=chat_body)
                valid_s.append(time.perf_counter() - t0)
                if r.status_code != 200 or not r.json()["choices"][0]["message"]["content"]:
                    incomplete += 1
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=MIXED_CLIENTS)) as http:
        await asyncio.gather(*[client(http) for _ in range(MIXED_CLIENTS)])
    valid_s.sort()
    return {"statuses": dict(sorted(statuses.items())), "valid": len(valid_s), "valid_incomplete": incomplete,
            "server_errors": sum(n for code, n in statuses.items() if code.startswith("5") and code != "503"),
            "valid_p50_ms": _p50_ms(valid_s), "valid_p99_ms": round(valid_s[int(0.99 * (len(valid_s) - 1))] * 1000, 2)}


async def _concurrent(url: str, image_b64: str, total: int) -> tuple[float, dict]:
    """`total` requests from CONCURRENCY clients, each sending its next request when the last is answered."""
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    statuses: dict[str, int] = {}

    async def client(http):
        while not queue.empty():
            i = queue.get_nowait()
            r = await http.post(url + "/v1/synthesize",
                                json={"image": image_b64, "caption": f"{CAPTION} conc {i}", "judge": False})
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1

    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*[client(http) for _ in range(CONCURRENCY)])
        return time.perf_counter() - t0, statuses
