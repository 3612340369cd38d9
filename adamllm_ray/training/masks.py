"""Tokenization and label masks of one conversation (SPEC §3), and batching on the workers.

Labels: the family's chat template (families/) renders the conversation turn by turn; the assistant turns
(after their header: the answer and its end-of-turn token) carry labels, everything else is -100.
In synthesizer tuning every token after the first round carries a label, user turns included, and
the end-of-text token is appended and trained.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from adamllm_ray.families import PER_TOKEN_KEYS, Family

IMAGE_TAG = "<image>"
IGNORE = -100


class SkipExample(Exception):
    """An example that cannot be trained on: `kind` is counted, `message` says why."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


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
