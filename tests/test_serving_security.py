"""The service under hostile use: who may start it where, the key on every route when `adamllm serve`
joins an existing Ray cluster whose nodes do not have it, no CORS, no fetching on a caller's behalf,
every bad request a 4xx naming its field in the OpenAI error shape, stalled bodies that hold nothing.

The pure checks run without Ray; the rest share one service: `adamllm serve` (a separate process, as a
user runs it) joining a one-node local cluster started by the test, tiny Qwen2-VL on vLLM CPU, 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import http.server
import io
import json
import os
import re
import socket
import subprocess
import threading
import time

import pytest

from adamllm_ray.config import load_config
from adamllm_ray.serving.config import ServeConfig
from adamllm_ray.embedded.local_cluster import BIN, LocalCluster, cluster_env, free_port
from adamllm_ray.serving.guard import NO_KEY_WARNING, ExposureError, check_exposure, check_json
from adamllm_ray.serving.requests import RequestError
from conftest import ROOT

KEY = "security-test-key-42"
KEY_ENV = "ADAMLLM_SECURITY_TEST_KEY"  # set only in the serving process, never on the cluster's nodes
LEAKS = re.compile(r'Traceback|File "|' + re.escape(str(ROOT)) + r'|/tmp/|\.py\b|\bpid\b|127\.0\.0\.1|site-packages')


def png(w: int = 64, h: int = 48, mode: str = "RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (w, h), 1 if mode == "1" else (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


# ---------------------------------------------------------------- without Ray


def test_no_key_on_an_open_host_is_refused_and_loopback_warns():
    with pytest.raises(ExposureError) as info:
        check_exposure("0.0.0.0", None, "ADAMLLM_API_KEY")
    assert "refusing to serve on 0.0.0.0 without an API key" in str(info.value)
    assert "export ADAMLLM_API_KEY=<key>" in str(info.value)
    assert check_exposure("10.1.2.3", "k", "ADAMLLM_API_KEY") is None
    assert check_exposure("127.0.0.1", "k", "ADAMLLM_API_KEY") is None
    assert check_exposure("127.0.0.1", None, "ADAMLLM_API_KEY").startswith("WARNING: adamllm serve: no API key")


def test_adamllm_serve_refuses_an_open_host_without_a_key():
    env = {k: v for k, v in cluster_env().items() if k != "ADAMLLM_API_KEY"}
    proc = subprocess.run([str(BIN / "adamllm"), "serve", "--config", str(ROOT / "jobs/serve/tiny_cpu.yaml"),
                           "ingress.host=0.0.0.0"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "refusing to serve on 0.0.0.0 without an API key" in proc.stderr
    assert "export ADAMLLM_API_KEY=<key>" in proc.stderr and "Traceback" not in proc.stderr


def test_loopback_without_a_key_prints_one_warning_line(monkeypatch, capsys):
    from adamllm_ray.serving import app, lifecycle

    class Stop(Exception):
        pass

    def no_ray(cfg):
        raise Stop

    monkeypatch.delenv("ADAMLLM_API_KEY", raising=False)
    monkeypatch.setattr(lifecycle, "connect_ray", no_ray)
    cfg = load_config(ServeConfig, ROOT / "jobs/serve/tiny_cpu.yaml")
    with pytest.raises(Stop):
        app.start(cfg)
    lines = [line for line in capsys.readouterr().err.splitlines() if "no API key" in line]
    assert lines == [NO_KEY_WARNING.format(where="127.0.0.1")]


def test_json_limits_name_the_field():
    cases = [
        (b"[" * 40 + b"]" * 40, "body", "body: JSON nested deeper than 32 levels"),
        (b'{"id": ' + b"7" * 5000 + b"}", "body", "body: a number with more than 64 digits"),
        (b'{"caption": "a \\ud800 b"}', "caption", "caption: contains a lone surrogate"),
        (b'{"messages": [{"content": "\\udfff"}]}', "messages[0].content", "messages[0].content: contains a lone"),
        (b'{"x": NaN}', "body", "body: NaN is not a JSON number"),
        (b"\xff\xfe", "body", "body: not UTF-8 text"),
        (b"{caption:", "body", "body: not valid JSON"),
    ]
    for raw, field, start in cases:
        with pytest.raises(RequestError) as info:
            check_json(raw)
        assert info.value.field == field and str(info.value).startswith(start), (raw[:30], str(info.value))
    assert check_json(b'{"caption": "\\ud83d\\ude00 ok", "deep": [[[1]]]}')["caption"] == "\U0001F600 ok"


def test_chat_image_urls_are_never_fetched_without_an_allowed_domain():
    from adamllm_ray.serving.media import host_allowed, image_bytes

    for url, start in (("http://127.0.0.1:9/x.png", "remote image URLs are not fetched"),
                       ("https://example.com/x.png", "remote image URLs are not fetched"),
                       ("file:///etc/passwd", "file URLs are not accepted"),
                       ("ftp://example.com/x.png", "ftp URLs are not accepted"),
                       ("data:image/png,raw", "a data URL must be base64-encoded"),
                       ("data:image/png;base64,%%%", "not valid base64"),
                       ("http://evil.org\x00.example.com/x.png", "not a valid URL (control characters in the host)")):
        with pytest.raises(RequestError) as info:
            image_bytes(url, "messages[0].content[0].image_url.url", ["example.com"] if "evil" in url else [], 1 << 20)
        assert info.value.status == 400 and str(info.value).startswith(
            "messages[0].content[0].image_url.url: " + start), str(info.value)
    assert host_allowed("img.example.com", ["example.com"]) and not host_allowed("evilexample.com", ["example.com"])


class ImageServer:
    """A local HTTP server (127.0.0.1) that records every request: /x.png a PNG, /hold.png the same once
    `release` is set, /missing 404, /locked 401, /moved a redirect to /x.png, /big 5,000 bytes, /drip 100 bytes a byte at a time."""

    def __init__(self, image: bytes | None = None):
        hits, release = self.hits, self.release = [], threading.Event()
        body = image or png()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                if self.path == "/hold.png":
                    release.wait(60)
                if self.path == "/drip":  # a byte every 0.3 s: each read would be within a per-read timeout
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    for _ in range(100):
                        if release.wait(0.3):
                            return
                        self.wfile.write(b"\0")
                        self.wfile.flush()
                    return
                status, data, extra = {"/x.png": (200, body, {}), "/hold.png": (200, body, {}),
                                       "/big": (200, b"\0" * 5000, {}), "/missing": (404, b"no such image", {}),
                                       "/locked": (401, b"", {"WWW-Authenticate": "Basic realm=internal"}),
                                       "/moved": (302, b"", {"Location": "/x.png"})}.get(self.path, (404, b"", {}))
                self.send_response(status)
                for k, v in {"Content-Type": "image/png", "Content-Length": str(len(data)), **extra}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_allowed_domains_are_fetched_only_from_public_or_listed_addresses(monkeypatch):
    """An allowed host is fetched only when it resolves to a public address or to an IP the operator listed;
    no redirect is followed; size and time limits hold; a 404 and a 401 of the fetched server read the same."""
    from adamllm_ray.serving import media
    from adamllm_ray.serving.media import image_bytes, resolve

    field = "messages[0].content[0].image_url.url"
    server = ImageServer()
    base = f"http://127.0.0.1:{server.port}"

    def refusal(url, domains, max_bytes=1 << 20) -> RequestError:
        with pytest.raises(RequestError) as info:
            image_bytes(url, field, domains, max_bytes)
        return info.value

    try:
        assert image_bytes(base + "/x.png", field, ["127.0.0.1"], 1 << 20) == png()
        assert server.hits == ["/x.png"]
        failed = f"{field}: the image could not be fetched from that URL"
        missing, locked = refusal(base + "/missing", ["127.0.0.1"]), refusal(base + "/locked", ["127.0.0.1"])
        assert str(missing) == str(locked) == failed and missing.status == locked.status == 400
        assert str(refusal(base + "/moved", ["127.0.0.1"])) == failed
        big = refusal(base + "/big", ["127.0.0.1"], max_bytes=4096)
        assert big.status == 413 and str(big) == f"{field}: the image at that URL is over 4,096 bytes"
        assert server.hits == ["/x.png", "/missing", "/locked", "/moved", "/big"]  # the redirect was not followed
        monkeypatch.setattr(media, "FETCH_TIMEOUT_S", 1.0)  # the limit is for the whole fetch, not per read
        started = time.monotonic()
        assert str(refusal(base + "/drip", ["127.0.0.1"])) == failed
        assert time.monotonic() - started < 2.5
        server.hits.remove("/drip")

        # a listed name that resolves to loopback: refused before any connection
        local = refusal(f"http://localhost:{server.port}/x.png", ["localhost"])
        assert local.status == 400 and str(local).startswith(f"{field}: the host of that URL resolves to a loopback")
        unlisted = refusal(base + "/x.png", ["localhost"])
        assert str(unlisted).startswith(f"{field}: remote image URLs are not fetched by this service")
        assert len(server.hits) == 5
    finally:
        server.close()
    for address in ("10.1.2.3", "169.254.169.254", "::ffff:127.0.0.1", "224.0.0.1", "0.0.0.0", "100.64.0.1",
                    "2002:a01:203::1", "64:ff9b::a01:203"):  # 10.1.2.3 through 6to4 and NAT64
        with pytest.raises(RequestError):
            resolve(address, 80, ["example.com"], field)
    assert resolve("10.1.2.3", 80, ["10.1.2.3"], field) == "10.1.2.3"  # listed explicitly by the operator
    assert resolve("93.184.215.14", 443, [], field) == "93.184.215.14"  # public


def test_the_key_is_resolved_when_the_app_is_built(monkeypatch, tiny_qwen2_vl):
    """`serve run/deploy` and RayService build the app where the variable is set; the key then travels in
    the ingress deployment's definition, so a replica on a node without the variable still enforces it."""
    from fastapi import FastAPI
    from starlette.middleware.cors import CORSMiddleware

    from adamllm_ray.serving import app, models
    from adamllm_ray.serving.guard import Guard

    monkeypatch.setenv("ADAMLLM_BUILD_TEST_KEY", "built-key")
    cfg = load_config(ServeConfig, ROOT / "jobs/serve/tiny_cpu.yaml", [
        f"synthesizer.model={tiny_qwen2_vl}", "synthesizer.tiny=null", "judge=null",
        "ingress.api_key_env=ADAMLLM_BUILD_TEST_KEY"])
    # the model deployments' options read Ray's runtime context (which would start a Ray): not needed here
    monkeypatch.setattr(models, "build_llm_deployment", lambda config, deployment_cls: f"model {config.model_id}")
    ingress = app.application(cfg)._bound_deployment
    monkeypatch.delenv("ADAMLLM_BUILD_TEST_KEY")  # as on a replica's node
    assert ingress.init_kwargs["has_key"] is True
    cells = [c.cell_contents for c in ingress.func_or_class.__init__.__closure__ or ()]
    fastapi_app = next(c for c in cells if isinstance(c, FastAPI))
    guards = [m for m in fastapi_app.user_middleware if m.cls is Guard]
    assert len(guards) == 1 and guards[0].kwargs["api_key"] == "built-key"
    assert not any(m.cls is CORSMiddleware for m in fastapi_app.user_middleware)


def test_cors_only_for_listed_origins(monkeypatch):
    import httpx

    from adamllm_ray.serving.config import IngressConfig
    from adamllm_ray.serving import guard, ingress

    class NoMetric:
        def inc(self, **_):
            pass

        def observe(self, *_, **__):
            pass

    monkeypatch.setattr(guard.Guard, "_metrics", lambda self: (NoMetric(), NoMetric()))
    fastapi_app = ingress.ingress_fastapi_app(IngressConfig(cors_origins=["https://ok.example"]), "k")

    @fastapi_app.get("/v1/models")
    async def models():
        return {"data": []}

    async def preflight(origin: str):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fastapi_app), base_url="http://t") as c:
            return await c.options("/v1/models", headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                                                          "Authorization": "Bearer k"})

    ok, evil = asyncio.run(preflight("https://ok.example")), asyncio.run(preflight("https://evil.example"))
    assert ok.headers.get("access-control-allow-origin") == "https://ok.example"
    assert "access-control-allow-credentials" not in ok.headers
    assert "access-control-allow-origin" not in evil.headers


# ---------------------------------------------------------------- one service, joined to a running cluster


@pytest.fixture(scope="module")
def service(tiny_qwen2_vl, tmp_path_factory):
    """`adamllm serve` with the key in its own environment only, joining a cluster started before it."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve-security") / "serve.log"
    overrides = [
        f"synthesizer.model={tiny_qwen2_vl}", "synthesizer.tiny=null", "synthesizer.sampling.max_tokens=8",
        "judge=null", f"ingress.port={port}", f"ingress.api_key_env={KEY_ENV}",
        "ingress.max_ongoing_requests=2", "ingress.max_queued_requests=2", "ingress.body_timeout_s=2",
        "ingress.max_request_bytes=1048576", f"images.max_decoded_pixels={512 * 512}",
        "ingress.image_url_domains=[localhost]",  # an allowed name that resolves to loopback: never fetched
    ]
    with LocalCluster(cpus_per_node=4) as cluster:
        assert KEY_ENV not in os.environ
        env = cluster_env({KEY_ENV: KEY})
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [str(BIN / "adamllm"), "serve", "--config", str(ROOT / "jobs/serve/tiny_cpu.yaml"),
                 f"ray.address=127.0.0.1:{cluster.gcs_port}", *overrides],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 600
            while "adamllm serve: http://" not in log.read_text():
                assert proc.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(1)
            yield {"url": url, "port": port, "log": log}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def authed(timeout: float = 120, **kw):
    import httpx

    return httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=timeout, **kw)


def test_every_route_needs_the_key_though_the_nodes_lack_it(service):
    import httpx

    routes = [("GET", "/healthz"), ("GET", "/v1/models"), ("GET", "/v1/models/synthesizer"),
              ("POST", "/v1/synthesize"), ("POST", "/v1/evaluate"), ("POST", "/v1/chat/completions"),
              ("POST", "/v1/completions"), ("GET", "/docs"), ("GET", "/nowhere")]
    for method, path in routes:
        r = httpx.request(method, service["url"] + path, json={})
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["type"] == "authentication_error" and r.headers["x-request-id"]
        wrong = httpx.request(method, service["url"] + path, json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid API key"
    with authed() as http:
        health = http.get(service["url"] + "/healthz")
        assert health.status_code == 200 and health.json()["model_health"] == {"synthesizer": "ok"}, health.text
        models = http.get(service["url"] + "/v1/models").json()["data"]
        assert [(m["id"], m["metadata"]["input_modality"]) for m in models] == [("synthesizer", "image")]


def test_no_cors_headers_by_default(service):
    with authed() as http:
        for r in (http.get(service["url"] + "/v1/models", headers={"Origin": "https://evil.example"}),
                  http.options(service["url"] + "/v1/chat/completions", headers={
                      "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})):
            assert "access-control-allow-origin" not in r.headers, dict(r.headers)
            assert "access-control-allow-credentials" not in r.headers


def test_image_urls_are_not_fetched(service):
    """The service lists `localhost` as an image domain: 127.0.0.1 is not listed (400), localhost is but
    resolves to a loopback address (400), file:// is never accepted; the image server is never contacted."""
    server = ImageServer()
    port = server.port
    try:
        with authed() as http_:
            for url in (f"http://127.0.0.1:{port}/x.png", f"http://localhost:{port}/secret", "file:///etc/passwd"):
                r = http_.post(service["url"] + "/v1/chat/completions", json={
                    "model": "synthesizer", "max_tokens": 2, "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What?"}]}]})
                assert r.status_code == 400, (url, r.text)
                error = r.json()["error"]
                assert error["param"] == "messages[0].content[0].image_url.url", r.text
                assert str(port) not in error["message"] and not LEAKS.search(r.text), r.text
                if "localhost" in url:  # on an allowed domain, but it resolves to a loopback address
                    assert "resolves to a loopback" in error["message"], r.text
        time.sleep(0.5)
        assert server.hits == []  # never contacted
    finally:
        server.close()


def hostile_cases() -> list[tuple[str, str, dict | bytes, int, str]]:
    """(route, content type, body, expected status, field named)."""
    from PIL import Image

    image = png()
    wide = png(2010, 10)
    big = png(600, 600)  # 360,000 pixels > 512*512
    bomb = png(9000, 9000, mode="1")  # a few KB that decode to 81 M pixels
    assert len(bomb) < 100_000 and Image.open(io.BytesIO(bomb)).size == (9000, 9000)
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    synth = {"image": b64(image), "caption": "a red square", "judge": False}
    evaluate = {"task": "slake", "image": b64(image), "question": "Is it red?", "max_tokens": 4}

    def chat(content, **extra):
        return {"model": "synthesizer", "max_tokens": 2, "messages": [{"role": "user", "content": content}], **extra}

    def chat_image(data: bytes):
        return chat([{"type": "image_url", "image_url": {"url": data_url(data)}}, {"type": "text", "text": "?"}])

    completion = {"model": "synthesizer", "prompt": "Hello", "max_tokens": 2}
    routes = {"/v1/synthesize": synth, "/v1/evaluate": evaluate, "/v1/chat/completions": chat("hi"),
              "/v1/completions": completion}
    J = "application/json"
    cases = []
    for route, good in routes.items():
        text = json.dumps(good)
        cases += [
            (route, J, b"[" * 200 + b"]" * 200, 400, "body"),
            (route, J, text[:-1].encode() + b', "n": ' + b"9" * 5000 + b"}", 400, "body"),
            (route, J, text[:-1].encode() + b', "n": NaN}', 400, "body"),
            (route, J, b"{caption:", 400, "body"),
            (route, J, b"[1, 2]", 400, "body"),
            (route, "text/plain", text.encode(), 415, "body"),
            (route, J, b"\xff\xfe{}", 400, "body"),
        ]
    cases += [
        ("/v1/synthesize", J, {**synth, "caption": "x \ud800"}, 400, "caption"),
        ("/v1/synthesize", J, {**synth, "id": "\udc00"}, 400, "id"),
        ("/v1/synthesize", J, {**synth, "family": "llava_next_llama3"}, 400, "family"),
        ("/v1/synthesize", J, {**synth, "image": b64(wide)}, 400, "image"),
        ("/v1/synthesize", J, {**synth, "image": b64(big)}, 413, "image"),
        ("/v1/synthesize", J, {**synth, "image": b64(bomb)}, 413, "image"),
        ("/v1/synthesize", J, {**synth, "caption": "rice " * 3000}, 400, "caption"),
        ("/v1/synthesize", J, {**synth, "caption": 5}, 400, "caption"),
        ("/v1/evaluate", J, {**evaluate, "question": "\ud800?"}, 400, "question"),
        ("/v1/evaluate", J, {**evaluate, "question": "rice " * 3000}, 400, "question"),
        ("/v1/evaluate", J, {**evaluate, "image": b64(bomb)}, 413, "image"),
        ("/v1/evaluate", J, {**evaluate, "image": b64(wide)}, 400, "image"),
        ("/v1/evaluate", J, {**evaluate, "task": 5}, 400, "task"),
        ("/v1/chat/completions", J, {**chat("hi"), "messages": 5}, 400, "messages"),
        ("/v1/chat/completions", J, {**chat("hi"), "messages": [5]}, 400, "messages[0]"),
        ("/v1/chat/completions", J, {"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
        ("/v1/chat/completions", J, chat("\ud800"), 400, "messages[0].content"),
        ("/v1/chat/completions", J, chat_image(big), 413, "messages[0].content[0].image_url"),
        ("/v1/chat/completions", J, chat_image(bomb), 413, "messages[0].content[0].image_url"),
        ("/v1/chat/completions", J, chat_image(wide), 400, "messages[0].content[0].image_url"),
        ("/v1/chat/completions", J, chat_image(b"GIF89a not an image"), 400, "messages[0].content[0].image_url"),
        ("/v1/chat/completions", J, chat([{"type": "video_url", "video_url": {"url": "http://x/v.mp4"}}]), 400,
         "messages[0].content[0].type"),
        ("/v1/chat/completions", J, chat("rice " * 3000), 400, "messages"),
        ("/v1/chat/completions", J, chat("hi", max_tokens="many"), 400, "max_tokens"),
        ("/v1/completions", J, {**completion, "prompt": 5}, 400, "prompt"),
        ("/v1/completions", J, {**completion, "prompt_embeds": "AAAA"}, 400, "prompt_embeds"),
        ("/v1/completions", J, {**completion, "prompt": "rice " * 3000}, 400, "prompt"),
    ]
    return cases


def test_hostile_payloads_get_a_4xx_naming_the_field(service):
    failures = []
    with authed() as http:
        for route, ctype, body, status, field in hostile_cases():
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = http.post(service["url"] + route, content=raw, headers={"Content-Type": ctype})
            try:
                error = r.json()["error"]
                ok = (r.status_code == status and error["param"] == field and error["message"].startswith(field)
                      and error["code"] == status and error["request_id"] == r.headers["x-request-id"]
                      and not LEAKS.search(r.text))
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                failures.append((route, field, status, r.status_code, r.text[:300]))
        # still serving, every route
        assert http.post(service["url"] + "/v1/chat/completions", json={
            "model": "synthesizer", "max_tokens": 2, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(png())}}, {"type": "text", "text": "?"}]}]}
        ).status_code == 200
        assert http.post(service["url"] + "/v1/synthesize", json={
            "image": base64.b64encode(png()).decode(), "caption": "a red square", "judge": False}).status_code == 200
    assert not failures, "\n".join(map(str, failures))


def test_stalled_bodies_hold_no_slot(service):
    """16 connections announce 100 more body bytes than they send; /healthz and a request still answer at
    once, and the stalled ones are closed with a 408 within seconds."""
    import httpx

    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: 300\r\n\r\n").encode()
    stalled = []
    for _ in range(16):
        s = socket.create_connection(("127.0.0.1", service["port"]), timeout=30)
        s.sendall(head + b"{" + b" " * 199)
        stalled.append(s)
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        with authed(timeout=5) as http:
            assert http.get(service["url"] + "/healthz").status_code == 200
            r = http.post(service["url"] + "/v1/chat/completions", json={
                "model": "synthesizer", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
        assert time.monotonic() - t0 < 5
        for s in stalled:
            answer = s.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        for s in stalled:
            s.close()
    assert httpx.get(service["url"] + "/healthz", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
