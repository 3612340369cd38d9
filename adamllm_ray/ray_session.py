"""Starting or joining Ray for a job: `ray.address: local` starts a private instance (never another
one on the machine); inside `ray job submit` (RAY_ADDRESS set) or with an address, the job joins
that cluster. An already initialised Ray (tests, the demo) is reused."""

from __future__ import annotations

import contextlib
import os

from adamllm_ray.config import RayConfig


@contextlib.contextmanager
def ray_session(cfg: RayConfig):
    import ray

    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or cfg.address
        if address == "local":
            # Ray Train's print patch logs each print of a worker and also prints it: every line twice.
            os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
            ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False)
        else:
            ray.init(address=address)
        started = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress_bars
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
