"""A run's scaling timeline: how many nodes and vLLM engines were alive when, and how many rows the engines
had done, sampled from Ray's own state.

A daemon thread on the driver asks the GCS every few seconds for the nodes alive and this job's alive
(and not yet alive) actors. Ray Data runs each vLLM engine pool as actors of class `MapWorker(<operator name>)` whose operator
maps `vLLMEngineStageUDF`; those are counted per class name (two pools of the same operator name count
together). Rows done per pool are the row counts of the pool operator's finished tasks, read from the
driver's own Ray Data executors (an execution callback keeps a handle on each). One sample is two GCS
calls, never per row; a long run keeps at most `max_samples` samples by dropping every other one and
sampling half as often.
The timeline goes into summary.json / metrics.json under "scaling" and is drawn as scaling.png.
"""

from __future__ import annotations

import functools
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


def _executor_rows(executor) -> dict[str, int]:
    rows: dict[str, int] = {}
    for op in list(executor._topology):
        if ENGINE_UDF in op.name:
            rows[op.name] = rows.get(op.name, 0) + op.metrics.rows_task_outputs_generated
    return rows


class EngineRows:
    """Keeps the Ray Data executions of this process in view, so `engine_rows` can read their engine
    operators' row counts while they run and after they end (Ray Data itself only exports them to
    Prometheus). Registered as a Ray Data execution callback by `watch_engine_rows`."""

    lock = threading.Lock()
    running: list = []
    finished: dict[str, int] = {}

    def before_execution_starts(self, executor) -> None:
        with self.lock:
            self.running.append(executor)

    def after_execution_succeeds(self, executor) -> None:
        with self.lock:
            if executor in self.running:
                self.running.remove(executor)
                for pool, n in _executor_rows(executor).items():
                    self.finished[pool] = self.finished.get(pool, 0) + n

    def after_execution_fails(self, executor, error) -> None:
        self.after_execution_succeeds(executor)


def watch_engine_rows() -> None:
    """Register `EngineRows` with Ray Data (datasets created afterwards run it)."""
    from ray.data import DataContext

    callbacks = DataContext.get_current().custom_execution_callback_classes
    if _callback_class() not in callbacks:
        callbacks.append(_callback_class())


@functools.cache
def _callback_class() -> type:
    """EngineRows as Ray Data's callback type, made when first needed: importing Ray here would load it
    for commands that never start it (--show-prompts)."""
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    return type("EngineRowsCallback", (EngineRows, ExecutionCallback), {})


def engine_rows() -> dict[str, int]:
    """Rows out of each vLLM engine pool, over this process's Ray Data executions so far."""
    with EngineRows.lock:
        rows = dict(EngineRows.finished)
        for executor in EngineRows.running:
            for pool, n in _executor_rows(executor).items():
                rows[pool] = rows.get(pool, 0) + n
    return rows


class ScalingSampler:
    """Samples `probe()` (default: Ray's state) and `rows()` (rows done per pool, counted from the
    first sample) on a daemon thread from `start()` to `stop()`."""

    def __init__(self, every_s: float = 2.0, max_samples: int = 240,
                 probe: Callable[[], tuple] = ray_state, rows: Callable[[], dict] = engine_rows):
        self.every_s, self.max_samples, self.probe, self.rows = every_s, max(4, max_samples), probe, rows
        self._rows0: dict[str, int] | None = None
        self.samples: list[dict[str, Any]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def start(self) -> "ScalingSampler":
        if self.rows is engine_rows:
            watch_engine_rows()
        self._t0 = time.monotonic()
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="scaling-sampler", daemon=True)
        self._thread.start()
        return self

    def sample(self) -> None:
        t = round(time.monotonic() - self._t0, 2)  # when the sample was asked for (a probe takes some ms)
        try:
            nodes, names, *starting = self.probe()
            rows = self.rows()
        except Exception as err:  # Ray going away under us ends the timeline, never the run
            self.error = self.error or f"{type(err).__name__}: {err}"[:300]
            self._stop.set()
            return
        with self._lock:
            if self._rows0 is None:  # rows of earlier runs in this process are not this run's
                self._rows0 = rows
            self.samples.append({"t": t, "nodes": nodes,
                                 "engines": engine_pools(names),
                                 "engines_starting": engine_pools(starting[0] if starting else []),
                                 "rows": {p: n - self._rows0.get(p, 0) for p, n in sorted(rows.items())}})
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
        """The samples, each with rows/s per pool since the sample before."""
        with self._lock:
            samples = [dict(s) for s in self.samples]
        prev = None
        for s in samples:
            dt = s["t"] - prev["t"] if prev else 0
            s["rows_per_s"] = {p: round((n - prev["rows"].get(p, 0)) / dt, 2) if dt > 0 else 0.0
                               for p, n in s["rows"].items()}
            prev = s
        pools = sorted({p for s in samples for p in (*s["engines"], *s.get("engines_starting", {}), *s["rows"])})
        out = {"every_s": self.every_s, "samples": samples,
               "max_nodes": max((s["nodes"] for s in samples), default=0),
               "max_engines": {p: max(s["engines"].get(p, 0) for s in samples) for p in pools},
               "rows": samples[-1]["rows"] if samples else {}}
        if self.error:
            out["error"] = self.error
        return out


def start(every_s: float = 2.0) -> ScalingSampler:
    return ScalingSampler(every_s=every_s).start()


def chart_png(timeline: dict[str, Any], title: str = "scaling") -> bytes:
    """Nodes and engines per pool alive over time (top), rows/s per pool (bottom), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    samples = timeline["samples"]
    t = [s["t"] for s in samples]
    fig = Figure(figsize=(7, 4.8))
    ax, rate = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    ax.step(t, [s["nodes"] for s in samples], where="post", label="nodes alive", color="0.5", linestyle="--")
    for pool in timeline.get("max_engines", {}):
        line, = ax.step(t, [s["engines"].get(pool, 0) for s in samples], where="post", label=f"engines: {pool}")
        ax.step(t, [s.get("engines_starting", {}).get(pool, 0) for s in samples], where="post", linestyle=":",
                color=line.get_color(), label=f"starting: {pool}")
        # a sample's rows/s is over the interval that ends at it
        rate.step(t, [s.get("rows_per_s", {}).get(pool, 0) for s in samples], where="pre", color=line.get_color(),
                  label=pool)
    ax.set_ylabel("alive")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(0, max([s["nodes"] for s in samples] + list(timeline.get("max_engines", {}).values()) + [1]) * 1.6)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7)
    rate.set_ylabel("rows/s")
    rate.set_ylim(bottom=0)
    rate.set_xlabel("seconds since start")
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
