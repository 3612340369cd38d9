"""Starting or joining Ray for a job: `ray.address: local` starts a private instance (never another
one on the machine); inside `ray job submit` (RAY_ADDRESS set) or with an address, the job joins
that cluster. An already initialised Ray (tests, the demo) is reused."""

from __future__ import annotations

import contextlib
import os

from adamllm_ray import worker_logs
from adamllm_ray.config import RayConfig


def init_ray(cfg: RayConfig, num_cpus: int | None = None) -> bool:
    """Start or join Ray as `cfg` says, unless it is initialised; True when this call did. `num_cpus` is
    a private instance's CPU count when `cfg.num_cpus` gives none (else all the machine's). The workers'
    logs reach the console without the noise of healthy runs (worker_logs.py)."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or cfg.address
    if address == "local":
        # Ray Train's print patch logs each print of a worker and also prints it: every line twice.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        store = int(cfg.object_store_gib * 2**30) if cfg.object_store_gib else None
        ray.init(address="local", num_cpus=cfg.num_cpus or num_cpus, object_store_memory=store, include_dashboard=False)
    else:
        ray.init(address=address)
    worker_logs.filter_worker_logs()
    return True


@contextlib.contextmanager
def ray_session(cfg: RayConfig):
    import ray

    started = init_ray(cfg)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress_bars
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
