"""The training set as a stream of tokenized examples (SPEC §3).

The driver reads the ShareGPT JSON as light entries (text and image paths, no pixels), checks them,
applies the mixing mode and the per-epoch order, and numbers every example with its `position` in
the run's stream. Ray Data tasks then load the images and tokenize, and Ray Train streams the
result to the workers (`ray.train.get_dataset_shard`). The position is what a checkpoint records
as the data position, so a resumed run skips exactly the examples already trained on.

Labels: the family's chat template (families/) renders the conversation turn by turn; the assistant turns
(after their header: the answer and its end-of-turn token) carry labels, everything else is -100.
In synthesizer tuning every token after the first round carries a label, user turns included, and
the end-of-text token is appended and trained.

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
from typing import Any

import numpy as np

from adamllm_ray import images, sources, storage
from adamllm_ray.config import ImageLimits
from adamllm_ray.training.config import TrainDataConfig
from adamllm_ray.families import PER_TOKEN_KEYS, Family, get_family

IMAGE_TAG = "<image>"
IGNORE = -100


class SkipExample(Exception):
    """An example that cannot be trained on: `kind` is counted, `message` says why."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


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


# ---------------------------------------------------------------- tokenization (pure, per example)


def to_chat(messages: list[dict], n_images: int) -> list[dict]:
    """ShareGPT messages -> chat-template messages with image parts where the `<image>` tags were;
    images without a tag go in front of the first user turn."""
    untagged = n_images - sum(m["content"].count(IMAGE_TAG) for m in messages)
    chat, placed = [], False
    for m in messages:
        parts = []
        if m["role"] == "user" and not placed:
            parts += [{"type": "image"}] * untagged
            placed = True
        for k, piece in enumerate(m["content"].split(IMAGE_TAG)):
            if k:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        chat.append({"role": m["role"], "content": parts})
    return chat


def render_turns(processor, chat: list[dict], family: Family) -> list[str]:
    """The rendered text of each turn, from the family's chat template (the format the family is
    evaluated in): turn k is what rendering the first k+1 messages adds to rendering the first k."""
    turns, prev = [], ""
    for k in range(len(chat)):
        text = processor.apply_chat_template(chat[: k + 1], tokenize=False, chat_template=family.chat_template)
        if not text.startswith(prev):
            raise SkipExample("template", "the chat template renders a conversation differently from its "
                                          "prefix, so turns cannot be told apart for label masking")
        turns.append(text[len(prev):])
        prev = text
    return turns


def labeled_spans(turns: list[str], roles: list[str], family: Family, synthesizer: bool) -> list[tuple[int, int]]:
    """Character spans of the rendered text that carry labels."""
    starts = np.cumsum([0] + [len(t) for t in turns]).tolist()
    if synthesizer:
        first_answer = roles.index("assistant")
        return [(starts[first_answer + 1], starts[-1] + len(family.end_of_text))]
    spans = []
    for k, (turn, role) in enumerate(zip(turns, roles)):
        if role != "assistant":
            continue
        at = turn.find(family.assistant_header)
        if at < 0:
            raise SkipExample("template", f"assistant header {family.assistant_header!r} of family {family.name} "
                                          "not found in the rendered turn: wrong data.family for this model?")
        spans.append((starts[k] + at + len(family.assistant_header), starts[k + 1]))
    return spans


def image_token_id(processor) -> int | None:
    tid = getattr(processor, "image_token_id", None)
    if tid is None and getattr(processor, "image_token", None):
        tid = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return tid


def expand_labels(text_ids: list[int], labels: list[int], ids: list[int], image_id: int | None) -> list[int]:
    """Labels of the processor's ids, where each image token of the text became a run of image tokens."""
    out, j = [], 0
    for t, lab in zip(text_ids, labels):
        if j >= len(ids) or (t != ids[j]):
            break
        if t == image_id:
            while j < len(ids) and ids[j] == image_id:
                out.append(IGNORE)
                j += 1
        else:
            out.append(lab)
            j += 1
    if len(out) != len(ids) or j != len(ids):
        raise SkipExample("tokenization", "the processor's tokens do not match the tokenized conversation")
    return out


def encode_example(messages: list[dict], pil_images: list, processor, family: Family, max_length: int,
                   synthesizer: bool = False) -> dict[str, Any]:
    """One conversation -> {tensors: processor outputs + labels as numpy arrays, truncated, num_tokens}."""
    chat = to_chat(messages, len(pil_images))
    turns = render_turns(processor, chat, family)
    text = "".join(turns) + (family.end_of_text if synthesizer else "")
    spans = labeled_spans(turns, [m["role"] for m in chat], family, synthesizer)
    enc = processor.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [tid if any(a <= s < b for a, b in spans) else IGNORE
              for tid, (s, _) in zip(enc["input_ids"], enc["offset_mapping"])]
    kwargs = {"images": pil_images} if pil_images else {}
    out = processor(text=[text], return_tensors="np", add_special_tokens=False, **kwargs)
    tensors = {k: np.asarray(v) for k, v in out.items()}
    ids = tensors["input_ids"][0].tolist()
    image_id = image_token_id(processor)
    full = expand_labels(enc["input_ids"], labels, ids, image_id)
    truncated = len(ids) > max_length
    if truncated:
        last_image = max((k for k, t in enumerate(ids) if t == image_id), default=-1)
        if last_image >= max_length:
            raise SkipExample("too_long", f"the image and prompt alone take {last_image + 1} tokens, over "
                                          f"max_length {max_length}")
        for k in PER_TOKEN_KEYS:
            if k in tensors:
                tensors[k] = tensors[k][:, :max_length]
        full = full[:max_length]
    if all(lab == IGNORE for lab in full):
        raise SkipExample("too_long" if truncated else "no_answer_tokens",
                          f"no answer token within max_length {max_length} ({len(ids)} tokens)" if truncated
                          else "no token carries a label")
    tensors["labels"] = np.asarray([full], dtype=np.int64)
    return {"tensors": tensors, "truncated": truncated, "num_tokens": len(full),
            "num_label_tokens": sum(lab != IGNORE for lab in full)}


# ---------------------------------------------------------------- Ray Data stage (images + tokenization)

_PROCESSORS: dict[str, Any] = {}


def local_model(model: str) -> str:
    """A folder or hub id transformers can load: an s3:// prefix is downloaded once per node into
    a cache folder (each process that needs it calls this; the first finished copy wins)."""
    if not storage.is_s3(model):
        return model
    import os
    import shutil
    import tempfile
    from pathlib import Path

    dest = Path(tempfile.gettempdir(), "adamllm-models", model[len("s3://"):].strip("/").replace("/", "_"))
    if (dest / "config.json").exists():
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".download-"))
    for uri in storage.list_files(model):
        target = tmp / storage.relative(uri, model)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(uri))
    try:
        os.replace(tmp, dest)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


def load_processor(model: str):
    """The model's processor, once per process (Ray Data reuses its worker processes)."""
    if model not in _PROCESSORS:
        from transformers import AutoProcessor

        _PROCESSORS[model] = AutoProcessor.from_pretrained(local_model(model))
    return _PROCESSORS[model]


def load_images(example: dict, limits: ImageLimits) -> list:
    from PIL import Image

    out = []
    for rel in example["images"]:
        uri = rel if storage.is_s3(rel) or rel.startswith("/") else storage.join(example["image_dir"], rel)
        try:
            data = storage.read_bytes(uri)
        except (FileNotFoundError, OSError) as err:
            raise SkipExample("missing_image", f"image not found: {rel} ({type(err).__name__})") from None
        try:
            img = images.decode(data, limits)
        except images.ImageError as err:
            raise SkipExample("bad_image", f"bad image {rel}: {err}") from None
        out.append(Image.new("RGB", img.size, (255, 255, 255)) if example["blank"] else img)
    return out


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
    ds = ray.data.from_items(examples, override_num_blocks=blocks)
    ds = ds.map_batches(
        EncodeBatch, fn_constructor_kwargs=dict(model=model, family=family, max_length=cfg.max_length,
                                                synthesizer=cfg.synthesizer_tuning, limits=cfg.images),
        batch_format="pyarrow", batch_size=cfg.map_batch_size, num_cpus=cfg.map_num_cpus,
        concurrency=cfg.map_concurrency)
    # The stream runs in a coordinator actor whose progress bars reach the console as repeated lines;
    # the workers' step lines say how training goes.
    ds.context.enable_progress_bars = False
    return ds


# ---------------------------------------------------------------- batching (workers)


def unpack(row: dict) -> dict[str, np.ndarray]:
    return pickle.loads(row["tensors"])


def collate(examples: list[dict[str, np.ndarray]], family: Family, pad_id: int) -> dict:
    """Encoded examples -> one batch of torch tensors, right-padded."""
    import torch

    batch = {}
    for key in sorted({k for ex in examples for k in ex}):
        arrays = [ex[key] for ex in examples if key in ex]
        if key in family.concat_keys:
            batch[key] = torch.from_numpy(np.concatenate(arrays, axis=0))
            continue
        pad = pad_id if key == "input_ids" else IGNORE if key == "labels" else 0
        shape = [max(a.shape[d] for a in arrays) for d in range(arrays[0].ndim)]
        padded = []
        for a in arrays:
            p = np.full([a.shape[0], *shape[1:]], pad, dtype=a.dtype)
            p[tuple(slice(0, n) for n in a.shape)] = a
            padded.append(p)
        batch[key] = torch.from_numpy(np.concatenate(padded, axis=0))
    return batch
