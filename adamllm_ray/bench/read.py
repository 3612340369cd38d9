"""`adamllm bench read`: rows/s from parquet into validated rows, one process vs Ray Data."""

from __future__ import annotations

import time
from pathlib import Path

from adamllm_ray import ray_session
from adamllm_ray.config import SourceConfig
from adamllm_ray.sources import iter_rows, read_pairs


def bench_read(rows: int) -> dict:
    """Rows/s from parquet (generated sample pairs) into validated rows: one process vs Ray Data."""
    import tempfile

    import ray

    from adamllm_ray.embedded import sample_data

    with tempfile.TemporaryDirectory() as tmp:
        pairs = sample_data.make_pairs(rows, seed=1, broken=False)
        sample_data.write_parquet(pairs, Path(tmp) / "parquet", shards=16)
        cfg = SourceConfig(format="parquet", path=f"{tmp}/parquet")
        t = time.perf_counter()
        n_local = sum(1 for _ in iter_rows(cfg))
        local_s = time.perf_counter() - t
        ray_session.start_local(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            read_pairs(cfg).count()  # warm the workers
            t = time.perf_counter()
            n_ray = sum(len(b["id"]) for b in read_pairs(cfg).iter_batches(batch_size=1024, batch_format="pyarrow"))
            ray_s = time.perf_counter() - t
        finally:
            ray.shutdown()
    return {"rows": rows, "one_process_rows_per_s": round(n_local / local_s), "ray_data_rows_per_s": round(n_ray / ray_s),
            "target_rows_per_s": 2000, "ray_data_over_target": round(n_ray / ray_s / 2000, 2)}
