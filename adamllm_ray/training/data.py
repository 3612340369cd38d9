"""The training set as a stream of tokenized examples (SPEC §3).

The driver reads the ShareGPT JSON as light entries (text and image paths, no pixels), checks them,
applies the mixing mode and the per-epoch order, and numbers every example with its `position` in
the run's stream. Ray Data tasks then load the images and tokenize, and Ray Train streams the
result to the workers (`ray.train.get_dataset_shard`). The position is what a checkpoint records
as the data position, so a resumed run skips exactly the examples already trained on.

Tokenization and label masks are in masks.py; reading the model and images from local or s3:// in
download.py.

Nothing bad stops the run: an entry with no assistant turn, a missing or broken image, a
conversation whose image and prompt alone exceed `max_length`... becomes a skipped example with a
reason, counted in the run summary. Longer conversations are truncated at `max_length` and counted.
"""

from __future__ import annotations

import json
import pickle
import posixpath
import random
from collections import Counter
from dataclasses import dataclass, field

from adamllm_ray import sources, storage
from adamllm_ray.config import ImageLimits
from adamllm_ray.engine import pool_range
from adamllm_ray.families import get_family
from adamllm_ray.training.config import TrainDataConfig
from adamllm_ray.training.download import load_images, load_processor
from adamllm_ray.training.masks import IMAGE_TAG, SkipExample, encode_example


# ---------------------------------------------------------------- light entries (driver)


def read_entries(cfg: TrainDataConfig) -> list[dict]:
    """Every entry of the ShareGPT file(s) as {id, images, messages, image_dir}; no image is read."""
    files = storage.list_files(cfg.path, (".json", ".jsonl"))
    if not files:
        raise FileNotFoundError(f"no .json/.jsonl training file under {cfg.path}")
    entries = []
    for uri in files:
        data = sources.load_sharegpt(uri)
        image_dir = cfg.image_root or posixpath.dirname(uri)
        name = posixpath.basename(uri)
        for i, e in enumerate(data):
            e = e if isinstance(e, dict) else {"messages": None}
            entries.append({"id": str(e.get("id", f"{name}:{i}")), "images": e.get("images") or [],
                            "messages": e.get("messages"), "image_dir": image_dir})
            if cfg.limit is not None and len(entries) >= cfg.limit:
                return entries
    return entries


def entry_problem(entry: dict) -> tuple[str, str] | None:
    """(kind, message) when an entry cannot make a training example, else None."""
    msgs = entry["messages"]
    if not isinstance(msgs, list) or not msgs:
        return "bad_entry", f"entry {entry['id']}: 'messages' must be a non-empty list"
    for k, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            return "bad_entry", f"entry {entry['id']}: message {k} needs a role (user/assistant) and text content"
    turns = [m for m in msgs if m["role"] != "system"]
    if not any(m["role"] == "assistant" for m in turns):
        return "no_assistant_turn", f"entry {entry['id']}: no assistant turn, nothing to learn from"
    if any(m["role"] == "system" for m in msgs[1:]):
        return "bad_turns", f"entry {entry['id']}: a system message may only come first"
    if [m["role"] for m in turns] != ["user", "assistant"] * (len(turns) // 2) or len(turns) % 2:
        return "bad_turns", f"entry {entry['id']}: turns must alternate user, assistant, ... starting with user"
    if not isinstance(entry["images"], list) or not all(isinstance(p, str) and p for p in entry["images"]):
        return "bad_entry", f"entry {entry['id']}: 'images' must be a list of paths"
    tags = sum(m["content"].count(IMAGE_TAG) for m in msgs)
    if tags > len(entry["images"]):
        return "image_count", f"entry {entry['id']}: {tags} {IMAGE_TAG} tags but {len(entry['images'])} images"
    return None


def _rounds(messages: list[dict]) -> list[list[dict]]:
    turns = [m for m in messages if m["role"] != "system"]
    return [turns[k:k + 2] for k in range(0, len(turns), 2)]


def split_caption_task(messages: list[dict], caption_prompts: list[str]) -> tuple[list[dict], list[dict]]:
    """(caption part, task part) of a single-stage conversation. The caption task is the round whose
    user prompt (without `<image>`) is one of `caption_prompts`, else the first round; the task part
    is every other round (possibly none). `<image>` tags are removed: the image goes back in front of
    whichever part is trained (see `to_chat`)."""
    rounds = _rounds(messages)
    wanted = {p.strip() for p in caption_prompts}
    idx = next((k for k, r in enumerate(rounds) if r[0]["content"].replace(IMAGE_TAG, "").strip() in wanted), 0)

    def clean(msgs):
        return [{"role": m["role"], "content": m["content"].replace(IMAGE_TAG, "").strip()} for m in msgs]

    return clean(rounds[idx]), clean([m for k, r in enumerate(rounds) if k != idx for m in r])


@dataclass
class DataPlan:
    """The run's stream of light examples and what happened to the entries on the way."""

    examples: list[dict]
    entries: int
    skipped: Counter = field(default_factory=Counter)
    skip_messages: list[str] = field(default_factory=list)
    left_out: int = 0  # entries the mode does not use (synthetic_only and no synthetic task)

    def summary(self) -> dict:
        return {"entries": self.entries, "examples_planned": len(self.examples), "skipped_entries": dict(self.skipped),
                "skip_examples": self.skip_messages[:10], "left_out_by_mode": self.left_out}


def plan(entries: list[dict], cfg: TrainDataConfig, epochs: int) -> DataPlan:
    """Check the entries, apply the mixing mode, order each epoch, number the examples.

    single_stage: each conversation as written; caption_only / synthetic_only: only the caption part /
    only the task part; two_stage: all caption parts (every epoch) first, then all task parts."""
    if cfg.synthesizer_tuning and cfg.mode != "single_stage":
        raise ValueError("data.synthesizer_tuning trains whole conversations: use data.mode=single_stage")
    result = DataPlan(examples=[], entries=len(entries))
    caption_parts, task_parts, whole = [], [], []
    for e in entries:
        problem = entry_problem(e)
        if problem:
            result.skipped[problem[0]] += 1
            result.skip_messages.append(problem[1])
            continue
        base = {"id": e["id"], "images": list(e["images"]), "image_dir": e["image_dir"]}
        if cfg.mode == "single_stage":
            whole.append({**base, "messages": e["messages"]})
            continue
        caption, task = split_caption_task(e["messages"], cfg.caption_prompts)
        if cfg.mode in ("caption_only", "two_stage"):
            caption_parts.append({**base, "messages": caption})
        if cfg.mode in ("synthetic_only", "two_stage"):
            if task:
                task_parts.append({**base, "messages": task})
            elif cfg.mode == "synthetic_only":
                result.left_out += 1
    stages = {"single_stage": [whole], "caption_only": [caption_parts], "synthetic_only": [task_parts],
              "two_stage": [caption_parts, task_parts]}[cfg.mode]
    for s, stage in enumerate(stages):
        for epoch in range(epochs):
            order = list(stage)
            if cfg.shuffle:
                random.Random(f"{cfg.seed}:{s}:{epoch}").shuffle(order)
            for ex in order:
                blank = cfg.synthesizer_tuning and random.Random(f"blank:{cfg.seed}:{ex['id']}").random() \
                    < cfg.blank_image_share
                result.examples.append({"position": len(result.examples), "id": ex["id"], "images": ex["images"],
                                        "image_dir": ex["image_dir"], "blank": bool(blank),
                                        "messages": json.dumps(ex["messages"])})
    return result


# ---------------------------------------------------------------- Ray Data stage (images + tokenization)


def encode_rows(rows: list[dict], model: str, family: str, max_length: int, synthesizer: bool,
                limits: ImageLimits) -> list[dict]:
    """Light examples -> encoded rows (tensors pickled) or skipped rows (kind + message)."""
    processor, fam = load_processor(model), get_family(family)
    out = []
    for ex in rows:
        row = {"position": ex["position"], "id": ex["id"], "skip": None, "skip_message": None, "truncated": False,
               "num_tokens": 0, "tensors": None}
        try:
            enc = encode_example(json.loads(ex["messages"]), load_images(ex, limits), processor, fam, max_length,
                                 synthesizer)
            row.update(truncated=enc["truncated"], num_tokens=enc["num_tokens"],
                       tensors=pickle.dumps(enc["tensors"], protocol=5))
        except SkipExample as err:
            row.update(skip=err.kind, skip_message=f"example {ex['id']}: {err.message}")
        except Exception as err:  # one example the processor cannot take must not stop the run
            row.update(skip="encode_error", skip_message=f"example {ex['id']}: {type(err).__name__}: {err}")
        out.append(row)
    return out


def _encoded_table(rows: list[dict]):
    import pyarrow as pa

    schema = pa.schema([("position", pa.int64()), ("id", pa.string()), ("skip", pa.string()),
                        ("skip_message", pa.string()), ("truncated", pa.bool_()), ("num_tokens", pa.int64()),
                        ("tensors", pa.binary())])
    return pa.Table.from_pylist(rows, schema=schema)


class EncodeBatch:
    """Ray Data actor: the processor is loaded once per actor, not once per task process."""

    def __init__(self, model: str, family: str, max_length: int, synthesizer: bool, limits: ImageLimits):
        self.args = dict(model=model, family=family, max_length=max_length, synthesizer=synthesizer, limits=limits)
        load_processor(model)

    def __call__(self, batch):
        return _encoded_table(encode_rows(batch.to_pylist(), **self.args))


def build_dataset(examples: list[dict], model: str, family: str, cfg: TrainDataConfig):
    """The Ray Dataset the workers stream: light examples in, encoded rows out (in a pool of Ray
    Data actors)."""
    import ray

    blocks = max(1, min(len(examples) // cfg.map_batch_size, 2000))
    low, high = pool_range(cfg.map_concurrency)
    ds = ray.data.from_items(examples, override_num_blocks=blocks)
    ds = ds.map_batches(
        EncodeBatch, fn_constructor_kwargs=dict(model=model, family=family, max_length=cfg.max_length,
                                                synthesizer=cfg.synthesizer_tuning, limits=cfg.images),
        batch_format="pyarrow", batch_size=cfg.map_batch_size, num_cpus=cfg.map_num_cpus,
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high))
    # The stream runs in a coordinator actor whose progress bars reach the console as repeated lines;
    # the workers' step lines say how training goes.
    ds.context.enable_progress_bars = False
    return ds
