"""`adamllm bench inspect --rows N`: the inspector on a generated run of N rows against one of N/100
rows, side by side. Per size: index build time and peak memory (in a fresh process), then the server's
time to first byte for the table page, a filtered page (filters + text search) and a row page, each at
random pages / ids, p50 and p95, and the server's resident memory after serving them."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

REQUESTS = 60
TARGET_MS = 300


def _child(code: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# peak memory from VmHWM: ru_maxrss would carry over the forking parent's peak across exec
PEAK = "round(int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024, 1)"
BUILD = """
import json, time
from adamllm_ray.inspect.synthesis import SynthesisRun
t = time.perf_counter()
run = SynthesisRun({run!r})
print(json.dumps({{"build_s": round(time.perf_counter() - t, 2), "rows": run.n, "peak_rss_mb": {peak}}}))
"""
BASELINE = """
import json
import adamllm_ray.inspect.synthesis
print(json.dumps({{"peak_rss_mb": {peak}}}))
"""


def _ttfb(client, url: str, ok: tuple[int, ...] = (200,)) -> float:
    t = time.perf_counter()
    with client.stream("GET", url) as r:
        next(r.iter_raw(), None)
        if r.status_code not in ok:
            raise RuntimeError(f"{url}: HTTP {r.status_code}")
    return (time.perf_counter() - t) * 1000


def _stats(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
            "max_ms": round(ms[-1], 1)}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def measure(n: int, root: str) -> dict:
    import httpx

    from adamllm_ray.embedded.local_cluster import free_port
    from adamllm_ray.embedded.sample_run import write_run

    run = os.path.join(root, f"run-{n}")
    t = time.perf_counter()
    write_run(run, n, distinct_images=False, rows_per_file=10_000, row_group=1_000)
    generated_s = time.perf_counter() - t
    env = {**os.environ, "ADAMLLM_INSPECT_CACHE": os.path.join(root, f"cache-{n}")}
    env.pop("ADAMLLM_API_KEY", None)
    build = _child(BUILD.format(run=run, peak=PEAK), env)
    base = _child(BASELINE.format(peak=PEAK), env)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "adamllm_ray.cli", "inspect", run, "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                httpx.get(url + "/", timeout=5)
                break
            except httpx.TransportError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the inspector did not start")
                time.sleep(0.2)
        rng = random.Random(0)
        pages = max(1, n // 50)
        with httpx.Client(timeout=30) as c:
            _ttfb(c, url + "/r/0/")  # first request: the page template compiles
            table = [_ttfb(c, f"{url}/r/0/?page={rng.randint(1, pages)}") for _ in range(REQUESTS)]
            filters = ["verdict=no&triplet=yes", "status=caption_only", "stage=read", "verdict=yes&status=kept",
                       "triplet=no", "verdict=open"]
            filtered = [_ttfb(c, f"{url}/r/0/?{rng.choice(filters)}&page=1") for _ in range(REQUESTS)]
            # a different search each time (never a cached result): one scan of the memory-mapped search text
            searches = [f"status={st}&q={color}%20{shape}" for st in ("", "kept", "caption_only")
                        for color in ("red", "green", "blue", "yellow", "purple", "orange", "black")
                        for shape in ("circle", "square", "triangle")]
            rng.shuffle(searches)
            searched = [_ttfb(c, f"{url}/r/0/?{q}") for q in searches[:REQUESTS]]
            rows = [_ttfb(c, f"{url}/r/0/row/gen-{rng.randrange(n):07d}") for _ in range(REQUESTS)]
            # a bad-input row has no image in the run folder: its 404 page is a valid answer too
            thumbs = [_ttfb(c, f"{url}/r/0/thumb/gen-{rng.randrange(n):07d}", (200, 404)) for _ in range(REQUESTS // 3)]
        server_rss = _rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"rows": n, "generate_s": round(generated_s, 1), "index_build_s": build["build_s"],
            "index_build_peak_rss_mb": build["peak_rss_mb"], "import_only_rss_mb": base["peak_rss_mb"],
            "index_mb": round(sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in
                                  os.walk(env["ADAMLLM_INSPECT_CACHE"]) for f in fs if f.endswith((".parquet", ".arrow"))) / 2**20, 1),
            "table": _stats(table), "filtered": _stats(filtered), "search": _stats(searched), "row": _stats(rows), "thumbnail": _stats(thumbs),
            "server_rss_mb_after": server_rss}


def bench_inspect(rows: int) -> dict:
    big, small = rows, max(200, rows // 100)
    with tempfile.TemporaryDirectory(prefix="adamllm-bench-inspect-") as root:
        a, b = measure(small, root), measure(big, root)
    pages = ("table", "filtered", "search", "row")
    ratio = {k: round(b[k]["p95_ms"] / a[k]["p95_ms"], 2) for k in pages}
    return {"small": a, "large": b, "p95_ratio_large_to_small": ratio,
            f"large_p95_under_{TARGET_MS}ms": all(b[k]["p95_ms"] < TARGET_MS for k in pages)}
