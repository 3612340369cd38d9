"""Shared fixtures: tiny models (built once per session), sample data, a moto S3 server on
127.0.0.1, and one private local Ray instance per session (never another instance on the machine)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from adamllm_ray import ray_session
from adamllm_ray.embedded.local_cluster import free_port

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session", autouse=True)
def _vllm_cache(tmp_path_factory):
    os.environ["VLLM_CACHE_ROOT"] = str(tmp_path_factory.mktemp("vllm-cache"))


@pytest.fixture(scope="session")
def tiny_qwen2_vl(cache_dir) -> str:
    from adamllm_ray.embedded import tiny

    return tiny.build("qwen2_vl", cache_dir / "tiny-qwen2-vl", seed=0)


@pytest.fixture(scope="session")
def tiny_text(cache_dir) -> str:
    from adamllm_ray.embedded import tiny

    return tiny.build("text", cache_dir / "tiny-text", seed=0)


@pytest.fixture(scope="session")
def sample(cache_dir) -> dict:
    """32 generated pairs in the three formats, 4 of them deliberately broken."""
    from adamllm_ray.embedded import sample_data

    return sample_data.write_sample_data(str(cache_dir / "sample"), n=32, seed=0)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint (moto's server) on 127.0.0.1, for this session only."""
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture()
def s3_prefix(s3_endpoint) -> str:
    """A fresh bucket for one test: s3://adamllm-test-<uuid>."""
    import boto3

    bucket = f"adamllm-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


def upload_tree(local: Path, s3_uri: str) -> None:
    import boto3

    bucket, _, prefix = s3_uri[len("s3://"):].partition("/")
    client = boto3.client("s3")
    for p in sorted(local.rglob("*")):
        if p.is_file():
            key = "/".join(x for x in (prefix, p.relative_to(local).as_posix()) if x)
            client.put_object(Bucket=bucket, Key=key, Body=p.read_bytes())


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """One private local Ray for the session (4 logical CPUs: Serve's ingress needs that many).
    Started after the S3 endpoint so its workers inherit the endpoint's environment."""
    import ray

    ray_session.start_local(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
