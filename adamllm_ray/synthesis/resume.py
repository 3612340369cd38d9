"""What a synthesis run's outputs depend on, and which rows an earlier run finished.

OUT/signature.json records the settings every row's outputs depend on; a re-run with other settings
refuses, listing what changed, unless told to start over. Rows are done when their id is in a
complete tasks file; a file is removed only when it provably is not complete (no parquet footer)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from adamllm_ray import storage
from adamllm_ray.config import ConfigError
from adamllm_ray.synthesis.config import SynthesisConfig
from adamllm_ray.records import ID
from adamllm_ray.synthesis.filter import load_judge_prompt


def signature(cfg: SynthesisConfig) -> dict[str, Any]:
    """Everything a row's outputs depend on; pool sizes, batch sizes and paths are left out."""
    def engine_part(e):
        return None if e is None else e.model_dump(mode="json", include={
            "model", "dtype", "max_model_len", "engine_kwargs", "sampling"})

    judge_text = load_judge_prompt(cfg.judge_prompt) if cfg.judge is not None else None
    return {"family": cfg.family, "mode": cfg.mode, "synthesizer": engine_part(cfg.synthesizer),
            "judge": engine_part(cfg.judge),
            "judge_prompt_sha256": hashlib.sha256(judge_text.encode()).hexdigest() if judge_text else None,
            "source": {"format": cfg.source.format, "max_caption_chars": cfg.source.max_caption_chars,
                       "images": cfg.source.images.model_dump(mode="json")}}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


def signature_changes(old: dict, new: dict) -> list[str]:
    a, b = _flat(old), _flat(new)
    return [f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


OUTPUTS = ("tasks", "images", "errors", "train.json", "train.jsonl", "dataset_info.json", "summary.json",
           "signature.json")


def prepare_output(cfg: SynthesisConfig) -> None:
    """Start over (restart, or resume off), or check the earlier run's signature; record this one."""
    out = cfg.output
    sig_uri = storage.join(out, "signature.json")
    new = signature(cfg)
    if cfg.restart or not cfg.resume:
        for name in OUTPUTS:
            storage.delete_dir(storage.join(out, name))
            storage.delete_file(storage.join(out, name))
    elif storage.exists(sig_uri):
        changes = signature_changes(json.loads(storage.read_bytes(sig_uri)), new)
        if changes:
            raise ConfigError(
                f"{out} holds results made with other settings; resuming would mix them. Changed:\n  "
                + "\n  ".join(changes) + "\nUse another output folder, or set restart: true (override restart=true) "
                "to delete those results and start over.")
    elif task_files(out):
        raise ConfigError(f"{out} holds task files but no signature.json (what they were made with is unknown); "
                          "set restart: true (override restart=true) to start over, or use another output folder.")
    storage.write_text_atomic(sig_uri, json.dumps(new, indent=2, sort_keys=True))


def task_files(out: str) -> list[str]:
    tasks = storage.join(out, "tasks")
    return storage.list_files(tasks, (".parquet",)) if storage.exists(tasks) else []


def complete(uri: str) -> bool:
    """A parquet file ends with its footer and the magic bytes: a file cut short by an interruption
    does not. A storage error is raised, never taken for an incomplete file."""
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as f:
        size = f.size()
        if size < 12:
            return False
        f.seek(size - 4)
        return f.read(4) == b"PAR1"


def completed_ids(out: str) -> set[str]:
    """Ids in complete tasks files. A provably incomplete file is removed and its rows are done again."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for f in task_files(out):
        if not complete(f):
            storage.delete_file(f)
            continue
        fs, path = storage.filesystem(f)
        done.update(pq.read_table(path, filesystem=fs, columns=[ID]).column(ID).to_pylist())
    return done
