"""The per-worker training loop: one DeepSpeed ZeRO rank per Ray Train worker.

Each optimizer step takes `gradient_accumulation_steps` micro batches of encoded examples from the
worker's dataset shard. Before a step, the workers agree (one all-reduce) that every one of them has
a full step of data; when the stream runs out on any worker the run ends there, so no rank waits in
a collective for a step the others will never take.

A checkpoint is the DeepSpeed checkpoint of every rank (model, optimizer, scheduler) plus
`train_state.json` (step, data position, counts, loss history) and the model's config and processor
files (`hf/`), so the export needs nothing else. It is reported with `ray.train.report`, which
copies every rank's files into one folder of the run's storage.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "train_state.json"
DS_TAG = "state"
HF_DIR = "hf"


@dataclass
class TrainState:
    """Everything besides the DeepSpeed state that a resumed run needs.

    Data position: every example before `next_position` in the run's stream, and the ones listed in
    `consumed_beyond`, were trained on or skipped. Workers pull examples in parallel, so the consumed
    set is a prefix plus a few stragglers, not a single number."""

    step: int = 0
    next_position: int = 0
    consumed_beyond: list[int] = field(default_factory=list)
    examples: int = 0
    tokens: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skip_messages: list[str] = field(default_factory=list)
    truncated: int = 0
    started_from_step: int = 0
    attempts: int = 1
    history: list[dict] = field(default_factory=list)
    worker_pids: list[int] = field(default_factory=list)

    def consumed(self, position: int) -> bool:
        return position < self.next_position or position in self._beyond

    def merge_positions(self, positions) -> None:
        beyond = set(self.consumed_beyond) | {p for p in positions if p >= self.next_position}
        k = self.next_position
        while k in beyond:
            beyond.remove(k)
            k += 1
        self.next_position, self.consumed_beyond = k, sorted(beyond)
        self._beyond = set(self.consumed_beyond)

    def __post_init__(self):
        self._beyond = set(self.consumed_beyond)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "TrainState":
        return cls(**json.loads(text))


def lr_schedule(optimizer, total_steps: int, warmup_ratio: float):
    """The authors' schedule (Hugging Face Trainer's `cosine`): linear warmup from 0 over
    ceil(warmup_ratio * total) steps, as the Trainer counts them, then cosine to 0."""
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total_steps), total_steps)


def deepspeed_config(cfg) -> dict:
    return {
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_clipping": cfg.optim.max_grad_norm,
        "zero_optimization": {"stage": cfg.zero_stage, "overlap_comm": False, "contiguous_gradients": True},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "zero_allow_untested_optimizer": True,  # torch AdamW: DeepSpeed's own would compile FusedAdam
        "steps_per_print": 2**31 - 1,
    }


def param_groups(model, cfg, family) -> list[dict]:
    """Optimizer groups by (learning rate, weight decay); frozen parts get requires_grad=False.
    The vision tower may have its own learning rate; biases and norms get no weight decay."""
    groups: dict[tuple[float, float], list] = {}
    counts = Counter()
    for name, p in model.named_parameters():
        part = family.part_of(name)
        if getattr(cfg.freeze, part):
            p.requires_grad_(False)
            continue
        counts[part] += 1
        lr = cfg.optim.vision_lr if part == "vision_tower" and cfg.optim.vision_lr is not None else cfg.optim.lr
        ndim = len(getattr(p, "ds_shape", p.shape))  # ZeRO-3 parameters are partitioned: real shape in ds_shape
        wd = cfg.optim.weight_decay if ndim >= 2 else 0.0
        groups.setdefault((lr, wd), []).append(p)
    if not groups:
        raise ValueError("every parameter is frozen (freeze.vision_tower, projector and language_model): nothing to train")
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def load_model(cfg, model_path: str, ds_config: dict):
    import torch
    from transformers import AutoModelForImageTextToText

    keep = None
    if cfg.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep = HfDeepSpeedConfig(ds_config)  # from_pretrained partitions the weights as it loads (zero.Init)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, keep


class ExampleStream:
    """Encoded examples of this worker's shard, minus those a checkpoint says were consumed;
    skipped rows are counted (and marked consumed) on the way."""

    def __init__(self, rows, state: TrainState):
        self.rows = iter(rows)
        self.state = state
        self.skipped = Counter()
        self.skip_messages: list[str] = []
        self.truncated = 0
        self.seen_positions: list[int] = []  # skipped rows: consumed as soon as seen

    def take(self, n: int) -> list[dict]:
        out = []
        for row in self.rows:
            if self.state.consumed(row["position"]):
                continue
            if row["skip"]:
                self.skipped[row["skip"]] += 1
                if len(self.skip_messages) < 10:
                    self.skip_messages.append(row["skip_message"])
                self.seen_positions.append(row["position"])
                continue
            self.truncated += bool(row["truncated"])
            out.append(row)
            if len(out) == n:
                break
        return out


def shard_rows(shard, batch_size: int):
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="pyarrow", prefetch_batches=4):
        yield from batch.to_pylist()


def start_rows(shard, batch_size: int, in_memory: bool):
    """Start pulling the shard in a thread, so the data stage's actors start while the model loads.
    Returns a future of the rows iterator (in memory: the whole shard as a list, for the benchmark)."""
    from concurrent.futures import ThreadPoolExecutor

    rows = shard_rows(shard, batch_size)

    def first():
        return list(rows) if in_memory else itertools.chain(list(itertools.islice(rows, 1)), rows)

    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(first)
    pool.shutdown(wait=False)
    return future


def build_cpu_comm_op() -> None:
    """Build (or load the cached build of) DeepSpeed's CPU shared-memory collectives op, which DeepSpeed
    otherwise JIT-compiles inside `init_distributed` on every CPU worker.

    torch guards that build with a plain lock file in the build folder: a process killed while compiling
    (a stopped run, a lost node) leaves it behind, and every later build on the machine then waits on it
    forever. Here the build runs under a kernel lock on a file beside it, which the kernel drops when its
    holder dies; whoever holds that lock is the only builder of ours, so a torch lock file it finds was left
    by a dead build and is removed. (A DeepSpeed build started outside this project at that same moment
    would lose its lock file; a torch lock is never removed otherwise.)"""
    import fcntl

    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from torch.utils.cpp_extension import _get_build_directory

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return  # DeepSpeed then builds none either (deepspeed/comm/torch.py: build_shm_op)
    build_dir = Path(_get_build_directory(builder.name, verbose=False))
    with open(build_dir / "adamllm-build.flock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        (build_dir / "lock").unlink(missing_ok=True)
        builder.load(verbose=False)  # DeepSpeed keeps the loaded op: its own call later builds nothing


def train_loop_per_worker(loop_config: dict) -> None:
    import deepspeed
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train import Checkpoint

    from adamllm_ray import storage
    from adamllm_ray.training.config import TrainConfig
    from adamllm_ray.training.download import load_processor, local_model
    from adamllm_ray.training.masks import collate, unpack
    from adamllm_ray.families import get_family

    cfg = TrainConfig.model_validate(loop_config["config"])
    total_steps = loop_config["total_steps"]
    model_path = local_model(cfg.model)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if not cfg.scaling.use_gpu:
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    device = ray.train.torch.get_device()
    family = get_family(cfg.family)
    torch.manual_seed(cfg.data.seed)

    # benchmark baseline (in_memory): the same examples, all encoded before the clock starts
    rows = start_rows(ray.train.get_dataset_shard("train"), cfg.micro_batch_size, loop_config.get("in_memory", False))
    if not cfg.scaling.use_gpu:
        build_cpu_comm_op()
    deepspeed.init_distributed()  # adopts Ray Train's process group, so ZeRO-3 loading sees every rank
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    ds_config = deepspeed_config(cfg)
    model, _keep = load_model(cfg, model_path, ds_config)
    if cfg.zero_stage != 3:
        model.to(device)
    groups = param_groups(model, cfg, family)
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                  foreach=False)
    scheduler = lr_schedule(optimizer, total_steps, cfg.optim.warmup_ratio)
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds_config)
    processor = load_processor(model_path)
    pad_id = processor.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else processor.tokenizer.eos_token_id

    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop_config.get("resume_from"):
        fs, path = storage.filesystem(loop_config["resume_from"])
        checkpoint = Checkpoint(path, filesystem=fs)
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True)
            state = TrainState.from_json(Path(d, STATE_FILE).read_text())
        state.started_from_step = state.step
        state.attempts += 1
    pids = [None] * world
    dist.all_gather_object(pids, os.getpid())
    state.worker_pids = pids

    hf_dir = tempfile.mkdtemp(prefix="adamllm-hf-")  # config and processor files, copied into every checkpoint
    if rank == 0:
        engine.module.config.save_pretrained(hf_dir)
        processor.save_pretrained(hf_dir)
        if getattr(engine.module, "generation_config", None) is not None:
            engine.module.generation_config.save_pretrained(hf_dir)

    stream = ExampleStream(rows.result(), state)
    gas = cfg.gradient_accumulation_steps
    step_positions: list[int] = []
    saved_step = state.step if checkpoint is not None else -1

    def save(suffix: str = ""):
        nonlocal step_positions, saved_step
        gathered = [None] * world
        dist.all_gather_object(gathered, (step_positions + stream.seen_positions, dict(stream.skipped),
                                          stream.skip_messages, stream.truncated))
        for positions, skipped, messages, truncated in gathered:
            state.merge_positions(positions)
            state.skipped = dict(Counter(state.skipped) + Counter(skipped))
            state.skip_messages = (state.skip_messages + messages)[:10]
            state.truncated += truncated
        step_positions, stream.seen_positions = [], []
        stream.skipped, stream.skip_messages, stream.truncated = Counter(), [], 0
        out = tempfile.mkdtemp(prefix=f"adamllm-ckpt-{rank}-")
        engine.save_checkpoint(out, tag=DS_TAG)
        if rank == 0:
            Path(out, STATE_FILE).write_text(state.to_json())
            shutil.copytree(hf_dir, Path(out, HF_DIR))
        last = state.history[-1] if state.history else {}
        metrics = {"step": state.step, "loss": last.get("loss"), "lr": last.get("lr"), "examples": state.examples,
                   "tokens": state.tokens, "skipped": state.skipped, "truncated": state.truncated,
                   "started_from_step": state.started_from_step, "next_position": state.next_position}
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(out),
                         checkpoint_dir_name=f"checkpoint_{state.step:08d}{suffix}")
        shutil.rmtree(out, ignore_errors=True)
        saved_step = state.step

    engine.train()
    while state.step < total_steps:
        t0 = time.perf_counter()
        micro = []
        for _ in range(gas):
            got = stream.take(cfg.micro_batch_size)
            if len(got) < cfg.micro_batch_size:
                break
            micro.append(got)
        full = torch.tensor([int(len(micro) == gas)], device=device)
        dist.all_reduce(full, op=dist.ReduceOp.MIN)
        if not full.item():
            break  # some worker's stream ran out: the unfinished step is dropped everywhere
        t_data = time.perf_counter() - t0
        loss_sum, tokens = 0.0, 0
        for rows_ in micro:
            batch = collate([unpack(r) for r in rows_], family, pad_id)
            batch = {k: v.to(device, dtype=dtype if v.is_floating_point() else None) for k, v in batch.items()}
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            loss_sum += loss.item()
            tokens += int(batch["attention_mask"].sum())
            step_positions.extend(r["position"] for r in rows_)
        stats = torch.tensor([loss_sum / gas, float(tokens)], dtype=torch.float64, device=device)
        dist.all_reduce(stats)
        state.step += 1
        state.examples += cfg.global_batch_size
        state.tokens += int(stats[1])
        state.history.append({"step": state.step, "loss": round(float(stats[0]) / world, 5),
                              "lr": scheduler.get_last_lr()[0], "tokens": int(stats[1]),
                              "step_s": round(time.perf_counter() - t0, 4), "data_wait_s": round(t_data, 4)})
        if rank == 0:
            h = state.history[-1]
            print(f"step {state.step}/{total_steps} loss {h['loss']:.4f} lr {h['lr']:.3g} "
                  f"{h['tokens']} tokens {h['step_s']:.3f}s", flush=True)
        if state.step % cfg.checkpoint.every_steps == 0:
            save()
    pending = torch.tensor([int(bool(stream.skipped or stream.truncated or stream.seen_positions))], device=device)
    dist.all_reduce(pending, op=dist.ReduceOp.MAX)
    if saved_step != state.step or pending.item():
        save(suffix="" if saved_step != state.step else "_end")
    shutil.rmtree(hf_dir, ignore_errors=True)
