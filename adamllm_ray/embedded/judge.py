"""Tuning the demo's tiny judge, so that its outputs are verdicts.

A random-weight judge writes noise, and then no triplet is kept. Here it learns the judge's task
from generated examples whose verdict is known by construction (SPEC §2): the precise answer taken
from the informative one -> Yes; the precise answer of another question -> No; a description
question -> Open. Every example is the real judge prompt (the pipeline's template and
`judge_prompt`), trained with the loss on the verdict only; its outputs are read back with the
pipeline's own `parse_verdict`.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from adamllm_ray.embedded import sample_data
from adamllm_ray.synthesis import filter as judge_filter

VERDICT_WORDS = {"yes": "Yes", "no": "No", "open": "Open"}
OPEN_QUESTION = "Describe the image briefly."


def examples(n: int, seed: int) -> list[tuple[dict, str]]:
    """n (triplet, verdict) pairs from generated scenes: about 40% yes, 40% no, 20% open.

    A No takes its precise answer from another question (a count answering a colour question...):
    a precise answer that cannot follow from the informative one. Same-kind contradictions (two
    different colours) are left out: the tiny 2-layer judge did not learn to compare two answers
    within a demo's budget (700 steps), and its verdicts would be guesses there."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        qa = _by_question(sample_data.scene_qa(sample_data.scene(rng)))
        draw = rng.random()
        if draw < 0.2:
            out.append((_triplet(OPEN_QUESTION, qa[OPEN_QUESTION]), "open"))
            continue
        closed = sorted(q for q in qa if q != OPEN_QUESTION)
        question = rng.choice(closed)
        answers = dict(qa[question])
        verdict = "yes"
        if draw >= 0.6:
            other = _by_question(sample_data.scene_qa(sample_data.scene(rng)))
            asked = [q for q in sorted(other) if q != OPEN_QUESTION and _asks(q) != _asks(question)]
            answers["precise"] = other[rng.choice(asked)]["precise"]
            verdict = "no"
        out.append((_triplet(question, answers), verdict))
    return out


def _asks(question: str) -> str:
    """What a generated question asks for: a count, the background's colour or a shape's colour."""
    return "count" if question.startswith("How many") else "background" if "background" in question else "colour"


def _by_question(qa: list[dict]) -> dict[str, dict[str, str]]:
    grouped: dict[str, dict[str, str]] = {}
    for pair in qa:
        grouped.setdefault(pair["question"], {})[pair["kind"]] = pair["answer"]
    return grouped


def _triplet(question: str, answers: dict[str, str]) -> dict[str, str]:
    return {"question": question, "precise": answers["precise"], "informative": answers["informative"]}


def tune(model: str, out: str | Path, template: str, steps: int = 150, batch_size: int = 16, lr: float = 2e-3,
         seed: int = 0) -> dict:
    """Train `model` on generated judge prompts (loss on the verdict and end of text), save to `out`.

    Every prompt starts with the same few-shot text, so each step runs it once, without gradient,
    and the batch continues from its cached keys and values: the step costs the short triplet
    block, not the whole prompt. The model learns to judge the block behind that text, as it sees
    it at inference (the cache is recomputed with the current weights every step)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    data = [_encode(tok, judge_filter.judge_prompt(t, template), v) for t, v in examples(steps * batch_size, seed)]
    prefix = _shared_prefix([ids for ids, _ in data])
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(opt, max(1, steps // 20), steps)
    losses, start = [], time.perf_counter()
    lm.train()
    for step in range(steps):
        rows = [(ids[len(prefix):], labels[len(prefix):]) for ids, labels in data[step * batch_size:(step + 1) * batch_size]]
        ids, labels = _batch(rows, tok.pad_token_id)
        with torch.no_grad():
            cache = lm(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(rows))
        mask = torch.cat([torch.ones(len(rows), len(prefix), dtype=torch.long), (labels != -200).long()], dim=1)
        positions = torch.arange(len(prefix), len(prefix) + ids.shape[1]).expand(len(rows), -1)
        loss = lm(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                  labels=labels.clamp(min=-100)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad()
        losses.append(round(loss.item(), 4))
    out = Path(out)
    lm.save_pretrained(out)
    tok.save_pretrained(out)
    result = {"model": str(out), "steps": steps, "first_loss": losses[0], "final_loss": sum(losses[-10:]) / 10,
              "seconds": round(time.perf_counter() - start, 1)}
    (out / "judge_tuning.json").write_text(json.dumps({**result, "losses": losses}, indent=1))
    return result


def _shared_prefix(sequences: list[list[int]]) -> list[int]:
    """The token ids every prompt starts with (the few-shot text), one token short of the shortest
    prompt so that every row keeps a tail."""
    first = sequences[0]
    n = min(len(s) for s in sequences) - 1
    for seq in sequences[1:]:
        n = next((i for i in range(n) if seq[i] != first[i]), n)
    return first[:n]


def _encode(tok, prompt: str, verdict: str) -> tuple[list[int], list[int]]:
    """Prompt and answer tokenized apart, as the engine sees the prompt and then generates."""
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tok(" " + VERDICT_WORDS[verdict], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def _batch(rows, pad_id: int):
    """Right-padded ids and labels; padding is labelled -200 so the attention mask can be derived."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -200)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, :len(row_ids)] = torch.tensor(row_ids)
        labels[i, :len(row_labels)] = torch.tensor(row_labels)
    return ids, labels


def check(model: str, template: str, n: int = 60, seed: int = 10_000) -> dict:
    """Greedy verdicts (2 new tokens, as the pipeline's judge) on a generated check set drawn apart
    from the training set, read with the pipeline's `parse_verdict`; the share that is right."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    right = 0
    confusion: dict[str, dict[str, int]] = {}
    for triplet, verdict in examples(n, seed):
        ids = torch.tensor([tok(judge_filter.judge_prompt(triplet, template), add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            new = lm.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        said = judge_filter.parse_verdict(tok.decode(new, skip_special_tokens=True))
        right += said == verdict
        row = confusion.setdefault(verdict, {})
        row[str(said)] = row.get(str(said), 0) + 1
    return {"n": n, "accuracy": right / n, "confusion": confusion}
