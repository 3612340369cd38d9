"""What the demo prints: its own lines, Ray Data's progress while a dataset runs, warnings that
matter, and nothing alarming when things go well."""

from __future__ import annotations

import os
import re

# Lines that healthy engine shutdowns print in Ray's workers. When Ray Data releases an engine actor,
# Python's multiprocessing resource tracker of the engine's processes is stopped before they
# unregister their semaphores and shared memory: it is relaunched, then prints a KeyError traceback
# per name it never saw (benign, vllm-project/vllm#5468), and vLLM's output handler logs the engine
# core it lost while shutting down as an error.
_TRACKER = re.compile(r"multiprocessing/resource_tracker\.py|cache\[rtype\]\.remove\(name\)|^KeyError: '/(mp-|psm_)"
                      r"|resource_tracker: process died unexpectedly|warnings\.warn\('resource_tracker")
_SHUTDOWN = re.compile(r"\[async_llm\.py:\d+\]|EngineDeadError|\[shutdown\]|engine core exited unexpectedly"
                       r"|Parent process exited, terminating worker queues")


def quiet() -> None:
    """Settings for the demo's process and the Ray workers it starts (they inherit the environment)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # engine INFO lines: one screen per engine start


def benign(lines: list[str], shutting_down: bool) -> list[bool]:
    """For each worker log line, whether it is shutdown noise (see above)."""
    drop = []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        tracker = bool(_TRACKER.search(line)) or (line.strip() == "Traceback (most recent call last):"
                                                  and bool(_TRACKER.search(nxt)))
        drop.append(tracker or (shutting_down and bool(_SHUTDOWN.search(line))))
    return drop


def filter_worker_logs() -> None:
    """Leave the known shutdown noise out of the worker logs Ray prints on the driver (every other
    line, warnings and errors included, is printed as before). Call after `ray.init`."""
    from ray._private import worker

    dispatcher = worker.global_worker_stdstream_dispatcher
    handlers = dict(dispatcher.handlers)
    if "ray_print_logs" not in handlers:
        return
    printer = handlers["ray_print_logs"]
    shutting_down: set = set()

    def print_filtered(data: dict) -> None:
        lines = data.get("lines") or []
        if any("Shutting down vLLM engine" in line for line in lines):
            shutting_down.add(data.get("pid"))
        drop = benign(lines, data.get("pid") in shutting_down)
        kept = [line for line, d in zip(lines, drop) if not d]
        if kept:
            printer({**data, "lines": kept})

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", print_filtered)


def made_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(what) for what, _ in rows)
    lines = ["", "what was made".ljust(width) + "  where", "-" * width + "  " + "-" * 5]
    lines += [f"{what.ljust(width)}  {where}" for what, where in rows]
    return "\n".join(lines)
