"""The service's process lifecycle: join or start Ray, deploy the application, wait until it answers
(authenticated, and refused without the key when one is set), stop it and everything it started."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from ray import serve

from adamllm_ray.ray_session import init_ray
from adamllm_ray.serving.config import ServeConfig
from adamllm_ray.serving.guard import check_exposure, resolve_key
from adamllm_ray.serving.ingress import application

APP_NAME = "adamllm"
Prepare = Callable[[ServeConfig], None]


_started_ray = False


def connect_ray(cfg: ServeConfig) -> None:
    """Join an initialised Ray, else start or join one as `cfg.ray` says (local: a private instance with
    at least 4 logical CPUs, which Serve's ingress needs beside the engines)."""
    global _started_ray
    if init_ray(cfg.ray, num_cpus=max(4, os.cpu_count() or 1)):
        _started_ray = True


def warn_or_refuse(cfg: ServeConfig) -> None:
    """Before anything starts: no key on an open host is refused (ExposureError), on loopback one warning line."""
    warning = check_exposure(cfg.ingress.host, resolve_key(cfg.ingress.api_key, cfg.ingress.api_key_env),
                             cfg.ingress.api_key_env)
    if warning:
        print(warning, file=sys.stderr, flush=True)


def start(cfg: ServeConfig, port: int | None = None, timeout_s: float = 900.0,
          prepare: Prepare | None = None) -> str:
    """Deploy the application and return its base URL once every deployment runs and /healthz answers.
    Joins an initialised Ray (tests, the demo), else `connect_ray`. `prepare(cfg)` runs first (the
    embedded default builds its tiny models there). Raises with the deployments' states if it is not up
    within `timeout_s`."""
    warn_or_refuse(cfg)
    connect_ray(cfg)
    if prepare is not None:
        prepare(cfg)
    port = cfg.ingress.port if port is None else port
    target = application(cfg)
    serve.start(http_options={"host": cfg.ingress.host, "port": port,
                              "request_timeout_s": cfg.ingress.request_timeout_s * 2 + 30})
    failure: list[BaseException] = []

    def deploy():
        try:
            serve.run(target, name=APP_NAME, route_prefix="/")
        except BaseException as err:  # reported by the wait below
            failure.append(err)

    threading.Thread(target=deploy, daemon=True).start()
    host = "127.0.0.1" if cfg.ingress.host in ("0.0.0.0", "::") else cfg.ingress.host
    base_url = f"http://{host}:{port}"
    _wait_ready(base_url, cfg, failure, timeout_s)
    return base_url


def _wait_ready(base_url: str, cfg: ServeConfig, failure: list, timeout_s: float) -> None:
    key = resolve_key(cfg.ingress.api_key, cfg.ingress.api_key_env)  # the readiness check authenticates
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if failure:
            raise RuntimeError(f"the serving application failed to deploy: {failure[0]}")
        status = _app_status()
        if status.get("status") == "DEPLOY_FAILED":
            raise RuntimeError(f"the serving application failed to deploy: {json.dumps(status, indent=1)}")
        if status.get("status") == "RUNNING":
            try:
                with urllib.request.urlopen(urllib.request.Request(base_url + "/healthz", headers=headers),
                                            timeout=5) as r:
                    ok = r.status == 200
            except OSError:
                ok = False
            if ok:
                if key:  # the key must have reached the replicas: without it, 401
                    try:
                        urllib.request.urlopen(base_url + "/healthz", timeout=5).close()
                    except urllib.error.HTTPError as err:
                        if err.code == 401:
                            return
                    raise RuntimeError("the service answers without the API key: the key did not reach it")
                return
        time.sleep(1.0)
    raise TimeoutError(f"the serving application is not up after {timeout_s:g}s (a resource request that "
                       f"cannot be met waits silently: check ray.num_cpus and the engines' placement): "
                       f"{json.dumps(_app_status(), indent=1)}")


def _app_status() -> dict[str, Any]:
    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:
        return {}
    if app is None:
        return {}
    return {"status": str(app.status.value if hasattr(app.status, "value") else app.status),
            "message": app.message,
            "deployments": {name: f"{d.status}: {d.message}" for name, d in app.deployments.items()}}


def shutdown() -> None:
    """Stop Serve (the model replicas and their engines, the HTTP proxy) and the Ray this module
    started, if it started one."""
    global _started_ray
    import ray

    if ray.is_initialized():
        serve.shutdown()
        if _started_ray:
            ray.shutdown()
    _started_ray = False


@contextlib.contextmanager
def serving(cfg: ServeConfig, port: int | None = None, prepare: Prepare | None = None):
    """`with serving(cfg) as base_url:` the service is up inside the block and gone after it."""
    try:
        yield start(cfg, port, prepare=prepare)
    finally:
        shutdown()


def run_until_interrupted(cfg: ServeConfig, prepare: Prepare | None = None) -> None:
    """`adamllm serve`: start, say where, block until Ctrl-C or SIGTERM (also during start-up), shut
    down cleanly."""
    import signal

    def interrupt(*_):
        raise KeyboardInterrupt

    check_exposure(cfg.ingress.host, resolve_key(cfg.ingress.api_key, cfg.ingress.api_key_env), cfg.ingress.api_key_env)
    try:
        connect_ray(cfg)  # first: ray.init installs its own SIGTERM handler, which aborts the process
        signal.signal(signal.SIGINT, interrupt)  # also when started in the background, where SIGINT is ignored
        signal.signal(signal.SIGTERM, interrupt)
        base_url = start(cfg, prepare=prepare)
        models = ", ".join(ep.name for ep in cfg.endpoints().values())
        print(f"adamllm serve: {base_url}  (models: {models})\n"
              f"  POST /v1/synthesize  POST /v1/evaluate  GET /healthz\n"
              f"  POST /v1/chat/completions  POST /v1/completions  GET /v1/models\n"
              f"  Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("adamllm serve: shutting down", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        shutdown()
