"""`adamllm bench serve`: what the task routes cost on top of the model, and what concurrency buys.

- task-endpoint overhead: p50 latency of POST /v1/synthesize (judge off) minus p50 of the same raw
  prompt and image sent straight to the synthesizer's model deployment (its Serve handle, from this
  process). The difference is HTTP, the ingress hop, request checks, parsing and composing. Each call
  has its own caption (no prefix-cache hit from its twin) and the order of the twins alternates.
- the same for /v1/evaluate against the model's own /v1/chat/completions with the same request (both HTTP).
- throughput: /v1/synthesize requests per second with 16 concurrent clients vs one client.

Tiny models on vLLM CPU, a private local Ray, 127.0.0.1. `rows` is the number of requests per
measurement (clamped to 8..64)."""

from __future__ import annotations

import asyncio
import base64
import io
import statistics
import tempfile
import time
from pathlib import Path

CONCURRENCY = 16
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

    from adamllm_ray.config import ServeConfig, load_config
    from adamllm_ray.families import get_family
    from adamllm_ray.serving import app
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
    url = app.start(cfg, port=_free_port())
    startup_s = time.perf_counter() - t_start
    try:
        handle = serve.get_deployment_handle("RawPromptServer:synthesizer", app_name=app.APP_NAME)
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
    }


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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
