"""What Ray prints on the driver from its workers, less the noise of healthy runs: every command that
starts or joins Ray (ray_session.init_ray) installs the filter; every other line, warnings and errors
included, is printed as before."""

from __future__ import annotations

import re

# Lines that healthy engine shutdowns print in Ray's workers. When Ray Data releases an engine actor,
# Python's multiprocessing resource tracker of the engine's processes is stopped before they
# unregister their semaphores and shared memory: it is relaunched, then prints a KeyError traceback
# per name it never saw (benign, vllm-project/vllm#5468), and vLLM's output handler logs the engine
# core it lost while shutting down as an error.
_TRACKER = re.compile(r"multiprocessing/resource_tracker\.py|cache\[rtype\]\.remove\(name\)|^KeyError: '/(mp-|psm_)"
                      r"|resource_tracker: process died unexpectedly|warnings\.warn\('resource_tracker")
# Ray Train's placement-group cleaner (a safety net for a run whose controller dies) polls the state
# API, which a local Ray without a dashboard never offers: a warning every few seconds, and with a
# second Ray on the machine a traceback when its address lookup finds both. Its output is left out.
_QUIET_ACTORS = {"PlacementGroupCleaner"}
# Routine lines of healthy runs, printed once per actor or worker: Ray (2.51+) flags every restartable
# actor whose constructor arguments sit in the object store, at error level (ray-project/ray#53727:
# only a restart after those arguments are lost would fail); Ray Train's controller narrates its worker
# group; DeepSpeed says it runs on CPU; Ray Data says its progress bars are off in the coordinator that
# streams the training set (the workers' step lines say how training goes).
_ROUTINE = re.compile(r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store"
                      r"|Requesting resources: |Attempting to start training worker group|Started training worker group"
                      r"|^- \(ip=[^)]*, pid=\d+\) world_rank=|Setting up process group for: "
                      r"|Setting accelerator to CPU|Progress bars disabled\. To enable")
_SHUTDOWN_STARTS = re.compile(r"Shutting down vLLM engine|\[shutdown\] MPClient")
_SHUTDOWN = re.compile(r"\[async_llm\.py:\d+\]|EngineDeadError|\[shutdown\]|engine core exited unexpectedly"
                       r"|Parent process exited, terminating worker queues")


def benign(lines: list[str], shutting_down: bool, previous: str | None = None) -> list[bool]:
    """For each worker log line, whether it is noise (see above), or the same line the process
    printed just before."""
    drop = []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        tracker = bool(_TRACKER.search(line)) or (line.strip() == "Traceback (most recent call last):"
                                                  and bool(_TRACKER.search(nxt)))
        repeat = line == (lines[i - 1] if i else previous)
        drop.append(tracker or repeat or bool(_ROUTINE.search(line))
                    or (shutting_down and bool(_SHUTDOWN.search(line))))
    return drop


def filter_worker_logs() -> None:
    """Leave the known noise out of the worker logs Ray prints on the driver. Call after `ray.init`."""
    from ray._private import worker

    dispatcher = worker.global_worker_stdstream_dispatcher
    handlers = dict(dispatcher.handlers)
    printer = handlers.get("ray_print_logs")
    if printer is None or getattr(printer, "filtered", False):
        return
    shutting_down: set = set()
    last_line: dict = {}

    def print_filtered(data: dict) -> None:
        lines, pid = data.get("lines") or [], data.get("pid")
        if data.get("actor_name") in _QUIET_ACTORS:
            return
        if any(_SHUTDOWN_STARTS.search(line) for line in lines):
            shutting_down.add(pid)
        drop = benign(lines, pid in shutting_down, last_line.get(pid))
        if lines:
            last_line[pid] = lines[-1]
        kept = [line for line, d in zip(lines, drop) if not d]
        if kept:
            printer({**data, "lines": kept})

    print_filtered.filtered = True
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", print_filtered)
