"""`adamllm train`: plan the data on the driver, stream it to a Ray Train TorchTrainer running the
DeepSpeed loop, keep checkpoints in the run's storage (local or s3://), export a Hugging Face folder
and write `summary.json`.

Layout of a run: OUTPUT/NAME/checkpoint_<step>/ (Ray Train's checkpoints), OUTPUT/NAME/model/ (the
export), OUTPUT/NAME/summary.json. Re-running with the same OUTPUT and NAME continues that run
from its latest checkpoint (Ray Train restores it); `resume_from` starts a new run from any
checkpoint.
"""

from __future__ import annotations

import json
import os
import time
import warnings

from adamllm_ray import storage
from adamllm_ray.config import dump_config
from adamllm_ray.engine import pool_range
from adamllm_ray.training.config import TrainConfig
from adamllm_ray.training import data
from adamllm_ray.training.loop import STATE_FILE, TrainState, train_loop_per_worker


class TrainError(RuntimeError):
    """A run that cannot start or did not finish; the message says why."""


def worker_bundle(cfg: TrainConfig) -> dict[str, float]:
    return {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if cfg.scaling.use_gpu else {})}


def missing_for(nodes: list[dict[str, float]], bundle: dict[str, float], n: int) -> str | None:
    """What keeps `n` copies of `bundle` off these nodes (their total resources), or None when they fit."""
    fit = sum(min(int(node.get(k, 0) // v) for k, v in bundle.items() if v) for node in nodes)
    if fit >= n:
        return None
    short = [f"{k} (cluster total {sum(node.get(k, 0) for node in nodes):g}, {n} x {v:g} needed)"
             for k, v in bundle.items() if v and sum(node.get(k, 0) for node in nodes) < n * v]
    return ", ".join(short) or f"{n} nodes with {bundle} each ({fit} worker(s) fit the nodes there are)"


def wait_for_workers(cfg: TrainConfig, poll_s: float = 2.0) -> None:
    """Ask the autoscaler for the workers' bundles and wait until the cluster's nodes hold them, at most
    `scaling.wait_timeout_s`: a worker group that can never be placed otherwise waits in silence for ever."""
    import ray
    from ray.autoscaler.sdk import request_resources

    bundle, n = worker_bundle(cfg), cfg.scaling.num_workers
    request_resources(bundles=[bundle] * n)
    deadline = time.monotonic() + cfg.scaling.wait_timeout_s
    try:
        while True:
            missing = missing_for([x["Resources"] for x in ray.nodes() if x.get("Alive")], bundle, n)
            if missing is None:
                return
            if time.monotonic() >= deadline:
                raise TrainError(
                    f"waited {cfg.scaling.wait_timeout_s:g} s for {n} training worker(s) of {bundle}, and the cluster "
                    f"still lacks {missing}: no node offering it joined. Check that a worker node type of the "
                    f"cluster config offers it and that its max_workers allows {n} worker(s).")
            time.sleep(poll_s)
    finally:
        request_resources(bundles=[])  # the trainer's own placement group keeps asking from here on


def check_resources(cfg: TrainConfig) -> None:
    """Fail fast when the cluster can never hold the worker group: Ray would otherwise wait silently."""
    import ray

    if cfg.scaling.wait_for_resources:
        wait_for_workers(cfg)
        return
    have = ray.cluster_resources()
    n = cfg.scaling.num_workers
    if cfg.scaling.use_gpu and have.get("GPU", 0) < n:
        raise TrainError(
            f"scaling asks for {n} GPU worker(s) (scaling.use_gpu=true) but the Ray cluster has "
            f"{int(have.get('GPU', 0))} GPU(s). Set scaling.use_gpu=false to train on CPU, or "
            f"scaling.wait_for_resources=true on a cluster that autoscales GPU nodes.")
    actors = pool_range(cfg.data.map_concurrency)[0]
    need_cpu = n * cfg.scaling.cpus_per_worker + actors * cfg.data.map_num_cpus
    if have.get("CPU", 0) < need_cpu:
        raise TrainError(
            f"the run needs {need_cpu:g} CPUs ({n} worker(s) x {cfg.scaling.cpus_per_worker} CPU, plus {actors} data "
            f"actor(s) x {cfg.data.map_num_cpus} CPU) but the Ray cluster has {have.get('CPU', 0):g}; lower "
            f"scaling.num_workers, scaling.cpus_per_worker or data.map_concurrency.")


def read_state(checkpoint: str) -> TrainState:
    try:
        return TrainState.from_json(storage.read_bytes(storage.join(checkpoint, STATE_FILE)).decode())
    except FileNotFoundError:
        raise TrainError(f"{checkpoint} is not a checkpoint of this trainer (no {STATE_FILE})") from None


def prepare(cfg: TrainConfig) -> tuple[data.DataPlan, list[dict], int]:
    """(data plan, examples still to train on, total optimizer steps of the schedule)."""
    try:
        plan = data.plan(data.read_entries(cfg.data), cfg.data, cfg.epochs)
    except (FileNotFoundError, ValueError) as err:
        raise TrainError(f"training set: {err}") from None
    total = len(plan.examples) // cfg.global_batch_size
    if total == 0:
        raise TrainError(f"the training set gives {len(plan.examples)} examples, fewer than one global batch of "
                         f"{cfg.global_batch_size} (skipped entries: {dict(plan.skipped) or 'none'})")
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    examples = plan.examples
    if cfg.resume_from:
        state = read_state(cfg.resume_from)
        examples = [e for e in examples if not state.consumed(e["position"])]
    return plan, examples, total


def ingest_options():
    """Ray Train's ingest defaults, in the planned order: examples reach the workers in stream
    order, so a checkpoint's data position is a prefix plus a few stragglers."""
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def run(cfg: TrainConfig, in_memory: bool = False) -> dict:
    """Train, export and summarise; returns the summary. Ray must be initialised (see `main`)."""
    import ray
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Ray Train sets a Ray Data option Ray itself has deprecated (exclude_resources): nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*ExecutionOptions\.exclude_resources. is deprecated")

    check_resources(cfg)
    t0 = time.time()
    plan, examples, total_steps = prepare(cfg)
    model = os.path.abspath(cfg.model) if os.path.isdir(cfg.model) else cfg.model  # workers may run elsewhere
    dataset = data.build_dataset(examples, model, cfg.family, cfg.data)
    fs, root = storage.filesystem(cfg.output)
    run_dir = storage.join(cfg.output, cfg.name)
    resources = worker_bundle(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": dump_config(cfg), "total_steps": total_steps,
                           "resume_from": cfg.resume_from, "in_memory": in_memory},
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=cfg.scaling.placement_strategy),
        run_config=RunConfig(name=cfg.name, storage_path=root, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep)),
        datasets={"train": dataset},
        dataset_config=ray.train.DataConfig(execution_options=ingest_options()),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise TrainError(f"training failed (after {cfg.max_failures} allowed restart(s)): {err}") from err
    if result.checkpoint is None:
        raise TrainError("training ended without a checkpoint")
    checkpoint = ("s3://" if storage.is_s3(cfg.output) else "") + result.checkpoint.path
    state = read_state(checkpoint)
    if state.step == 0:
        raise TrainError(f"no training step could be taken: every example was skipped ({state.skipped or 'none'}; "
                         f"skipped entries: {dict(plan.skipped) or 'none'}); e.g. {state.skip_messages[:3]}")
    summary = {
        "data": plan.summary(),
        "examples_skipped": state.skipped,
        "skip_messages": state.skip_messages,
        "examples_truncated": state.truncated,
        "steps": state.step, "steps_planned": total_steps, "examples_trained": state.examples,
        "tokens": state.tokens, "started_from_step": state.started_from_step, "attempts": state.attempts,
        "first_loss": state.history[0]["loss"] if state.history else None,
        "final_loss": state.history[-1]["loss"] if state.history else None,
        "history": state.history, "checkpoint": checkpoint, "wall_s": round(time.time() - t0, 1),
        "config": dump_config(cfg),
    }
    if cfg.export:  # in a Ray task: the merged weights need a node with memory for them, not the driver
        from adamllm_ray.training.export import export_checkpoint

        dtype = cfg.export_dtype if cfg.export_dtype != "auto" else ("bfloat16" if cfg.precision == "bf16" else "float32")
        task = ray.remote(export_checkpoint).options(num_cpus=1, max_retries=0)
        summary["model"] = ray.get(task.remote(checkpoint, storage.join(run_dir, "model"), dtype=dtype))
    storage.write_text_atomic(storage.join(run_dir, "summary.json"), json.dumps(summary, indent=1))
    return summary


def main(cfg: TrainConfig) -> dict:
    from adamllm_ray.ray_session import ray_session

    cfg.s3.apply_to_environment()
    with ray_session(cfg.ray):
        return run(cfg)


def run_demo_training(train_json: str, model_dir: str, out_dir: str, *, steps: int = 6, zero_stage: int = 2,
                      num_workers: int = 2, name: str = "demo") -> dict:
    """A short CPU run for the demo: the tiny Qwen2-VL, fp32, `steps` optimizer steps of 2 examples per
    worker, cycling over the training set as often as needed. Uses the running Ray or starts a local
    one. Returns the run summary; the exported Hugging Face folder is `summary["model"]`
    (OUT_DIR/NAME/model), checkpoints are in OUT_DIR/NAME/."""
    cfg = TrainConfig.model_validate({
        "ray": {"address": "local", "num_cpus": 4},  # used only when Ray is not running yet
        "model": model_dir, "family": "qwen2_vl", "output": out_dir, "name": name,
        "data": {"path": train_json, "max_length": 1024},
        "scaling": {"num_workers": num_workers, "cpus_per_worker": 1},
        "zero_stage": zero_stage, "precision": "fp32", "epochs": 100, "max_steps": steps,
        "global_batch_size": 2 * num_workers, "micro_batch_size": 1,
        "optim": {"lr": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.1},
        "checkpoint": {"every_steps": max(1, steps // 2), "num_to_keep": 1},
    })
    return main(cfg)
