"""A run's scaling timeline: how many nodes and vLLM engines were alive when, sampled from Ray's own state.

A daemon thread on the driver asks the GCS every few seconds for the nodes alive and this job's alive
(and not yet alive) actors. Ray Data runs each vLLM engine pool as actors of class `MapWorker(<operator name>)` whose operator
maps `vLLMEngineStageUDF`; those are counted per class name (two pools of the same operator name count
together). One sample is two GCS calls, never per row; a long run keeps at most `max_samples` samples by
dropping every other one and sampling half as often.
The timeline goes into summary.json / metrics.json under "scaling" and is drawn as scaling.png.
"""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any, Callable

from adamllm_ray import storage

ENGINE_UDF = "vLLMEngineStageUDF"  # ray.data.llm's vLLM stage (ray/llm/_internal/batch/stages/vllm_engine_stage.py)
WORKER_PREFIX = "MapWorker("  # Ray Data's actor-pool class name: MapWorker(<operator name>)


def engine_pools(class_names: list[str]) -> dict[str, int]:
    """Alive engine actors per pool, from the class names of a job's alive actors."""
    pools: dict[str, int] = {}
    for name in class_names:
        if name.startswith(WORKER_PREFIX) and ENGINE_UDF in name:
            pool = name[len(WORKER_PREFIX):-1]
            pools[pool] = pools.get(pool, 0) + 1
    return dict(sorted(pools.items()))


def ray_state() -> tuple[int, list[str], list[str]]:
    """(nodes alive, class names of this job's alive actors, of its actors waiting to be created: for an
    engine, waiting for a node with room or loading its model), straight from the GCS (no dashboard needed)."""
    import ray
    from ray._private import state

    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
    names = [[a["ActorClassName"] for a in state.actors(job_id=job, actor_state_name=s).values()]
             for s in ("ALIVE", "PENDING_CREATION")]
    return nodes, names[0], names[1]


class ScalingSampler:
    """Samples `probe()` (default: Ray's state) on a daemon thread from `start()` to `stop()`."""

    def __init__(self, every_s: float = 2.0, max_samples: int = 240,
                 probe: Callable[[], tuple] = ray_state):
        self.every_s, self.max_samples, self.probe = every_s, max(4, max_samples), probe
        self.samples: list[dict[str, Any]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def start(self) -> "ScalingSampler":
        self._t0 = time.monotonic()
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="scaling-sampler", daemon=True)
        self._thread.start()
        return self

    def sample(self) -> None:
        t = round(time.monotonic() - self._t0, 2)  # when the sample was asked for (a probe takes some ms)
        try:
            nodes, names, *starting = self.probe()
        except Exception as err:  # Ray going away under us ends the timeline, never the run
            self.error = self.error or f"{type(err).__name__}: {err}"[:300]
            self._stop.set()
            return
        with self._lock:
            self.samples.append({"t": t, "nodes": nodes,
                                 "engines": engine_pools(names),
                                 "engines_starting": engine_pools(starting[0] if starting else [])})
            if len(self.samples) > self.max_samples:
                self.samples = self.samples[::2]
                self.every_s *= 2

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def stop(self) -> dict[str, Any]:
        """Take a last sample, end the thread and return the timeline."""
        if not self._stop.is_set():
            self.sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self.timeline()

    def timeline(self) -> dict[str, Any]:
        with self._lock:
            samples = list(self.samples)
        pools = sorted({p for s in samples for p in (*s["engines"], *s.get("engines_starting", {}))})
        out = {"every_s": self.every_s, "samples": samples,
               "max_nodes": max((s["nodes"] for s in samples), default=0),
               "max_engines": {p: max(s["engines"].get(p, 0) for s in samples) for p in pools}}
        if self.error:
            out["error"] = self.error
        return out


def start(every_s: float = 2.0) -> ScalingSampler:
    return ScalingSampler(every_s=every_s).start()


def chart_png(timeline: dict[str, Any], title: str = "scaling") -> bytes:
    """Engines per pool and nodes alive over time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    samples = timeline["samples"]
    t = [s["t"] for s in samples]
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    ax.step(t, [s["nodes"] for s in samples], where="post", label="nodes alive", color="0.5", linestyle="--")
    for pool in timeline.get("max_engines", {}):
        line, = ax.step(t, [s["engines"].get(pool, 0) for s in samples], where="post", label=f"engines: {pool}")
        ax.step(t, [s.get("engines_starting", {}).get(pool, 0) for s in samples], where="post", linestyle=":",
                color=line.get_color(), label=f"starting: {pool}")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("alive")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(0, max([s["nodes"] for s in samples] + list(timeline.get("max_engines", {}).values()) + [1]) * 1.6)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def record(out: str, summary_file: str, summary: dict[str, Any], timeline: dict[str, Any]) -> None:
    """Put the timeline into the run's summary file (rewritten) and draw OUT/scaling.png beside it."""
    summary["scaling"] = timeline
    storage.write_text_atomic(storage.join(out, summary_file), json.dumps(summary, indent=2))
    if timeline["samples"]:
        storage.write_bytes_atomic(storage.join(out, "scaling.png"), chart_png(timeline))
