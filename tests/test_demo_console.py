"""The filter of the workers' logs (every command that starts Ray): the resource-tracker tracebacks and
engine-lost errors that healthy engine shutdowns print in Ray's workers, and the routine lines of
healthy runs, are left out; every other line, real errors included, stays.
The lines are as a demo run printed them (vLLM 0.29 on CPU, Python 3.11)."""

from adamllm_ray.worker_logs import benign

TRACKER_BLOCK = [
    "Traceback (most recent call last):",
    '  File "/usr/lib/python3.11/multiprocessing/resource_tracker.py", line 239, in main',
    "    cache[rtype].remove(name)",
    "KeyError: '/psm_b0dd2efe'",
    "(Worker pid=20762) /usr/lib/python3.11/multiprocessing/resource_tracker.py:123: UserWarning: resource_tracker: "
    "process died unexpectedly, relaunching.  Some resources might leak.",
    "(Worker pid=20762)   warnings.warn('resource_tracker: process died unexpectedly, '",
]
ENGINE_LOST = [
    "WARNING 12-04 14:35:35 [core_client.py:728] [shutdown] MPClient: engine core exited unexpectedly; starting cleanup",
    "ERROR 12-04 14:35:35 [async_llm.py:819] AsyncLLM output_handler failed.",
    "ERROR 12-04 14:35:35 [async_llm.py:819] vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.",
]
REAL_ERROR = [
    "Traceback (most recent call last):",
    '  File "/srv/app/adamllm_ray/synthesis/stages.py", line 40, in __call__',
    "    raise ValueError('bad row')",
    "ValueError: bad row",
]


def test_shutdown_noise_is_dropped_and_nothing_else():
    assert benign(TRACKER_BLOCK, shutting_down=False) == [True] * len(TRACKER_BLOCK)
    assert benign(ENGINE_LOST, shutting_down=True) == [True] * len(ENGINE_LOST)
    assert benign(REAL_ERROR, shutting_down=True) == [False] * len(REAL_ERROR)


def test_an_engine_lost_outside_a_shutdown_is_printed():
    assert benign(ENGINE_LOST, shutting_down=False) == [False] * len(ENGINE_LOST)
    mixed = REAL_ERROR + TRACKER_BLOCK
    assert benign(mixed, shutting_down=False) == [False] * len(REAL_ERROR) + [True] * len(TRACKER_BLOCK)


def test_a_line_repeated_by_the_same_process_is_printed_once():
    step = "step 1/150 loss 7.2772 lr 0.000667 2917 tokens 0.644s"
    assert benign([step, step, "step 2/150"], shutting_down=False) == [False, True, False]
    assert benign([step], shutting_down=False, previous=step) == [True]


ROUTINE = [  # once per actor or worker of a healthy demo run (Ray 2.60, Ray Train v2, DeepSpeed on CPU)
    "[2026-12-05 06:29:09,998 E 10878 10908] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and "
    "ID: '496b6c16c365130e37b20a1501000000' has constructor arguments in the object store and max_restarts > 0. If "
    "the arguments in the object store go out of scope or are lost, the actor restart will fail. See "
    "https://github.com/ray-project/ray/issues/53727 for more details.",
    "Requesting resources: {'CPU': 1.0} * 2",
    "Attempting to start training worker group of size 2 with the following resources: [{'CPU': 1.0}] * 2",
    "Started training worker group of size 2: ",
    "- (ip=192.0.2.2, pid=10972) world_rank=0, local_rank=0, node_rank=0",
    "Setting up process group for: env:// [rank=0, world_size=2]",
    "[2026-12-05 06:29:10,020] [WARNING] [real_accelerator.py:213:get_accelerator] Setting accelerator to CPU. If you "
    "have GPU or other accelerator, we were unable to detect it.",
    "Progress bars disabled. To enable, set `ray.data.DataContext.get_current().enable_progress_bars = True`.",
]
OTHER_RAY_ERRORS = [
    "[2026-12-05 06:29:12,242 E 11114 11203] core_worker.cc:1020: Failed to register worker to Raylet: IOError",
    "Training worker group of size 2 failed to start: resources not available",
]


def test_routine_lines_of_a_healthy_run_are_dropped_and_other_errors_kept():
    assert benign(ROUTINE, shutting_down=False) == [True] * len(ROUTINE)
    assert benign(OTHER_RAY_ERRORS, shutting_down=False) == [False] * len(OTHER_RAY_ERRORS)
