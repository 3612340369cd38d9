"""`adamllm synthesize`: one streaming Ray Data job from image-caption pairs to a training set.

    read -> write image -> synthesize (vLLM pool 1) -> parse + pair -> judge (vLLM pool 2) -> compose -> write

Every input row ends in OUT/tasks/*.parquet, as a training example or with its error; at the end the
driver streams OUT/train.json (+ train.jsonl, dataset_info.json), OUT/errors/errors.parquet and
OUT/summary.json out of those files, and checks them against the rows the readers counted.
Resume: rows whose id is already in a complete tasks file are skipped before their image is read, so
a re-run after an interruption finishes the job without redoing or duplicating rows; OUT/signature.json
records what the outputs depend on, and a re-run with other settings refuses instead of mixing.

Rows with nothing to ask an engine (failed earlier, or no triplet to judge) stay in the single stream
but go around the engine (`engine.skip`), so no row can be lost between branches and none costs a request.
"""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from collections import Counter
from typing import Any

from adamllm_ray import engine, images, records, scaling, sources, storage
from adamllm_ray.config import dump_config
from adamllm_ray.synthesis.config import SynthesisConfig
from adamllm_ray.families import get_family
from adamllm_ray.ray_session import ray_session
from adamllm_ray.records import ERROR, ID, IMAGE, IMAGE_PATH, error, failed
from adamllm_ray.synthesis.filter import load_judge_prompt
from adamllm_ray.synthesis.resume import completed_ids, prepare_output, signature, signature_changes, task_files  # noqa: F401
from adamllm_ray.synthesis.stages import finish_row, judge_prompt_of, parse_row

CARRIED = (ID, IMAGE_PATH, records.CAPTION, records.CAPTION_PROMPT, ERROR)


def image_name(row_id: str, data: bytes) -> str:
    """A file name per id: readable, unique (crc of the id), with the image's own extension."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", row_id)[-80:]
    ext = "jpg" if data[:3] == b"\xff\xd8\xff" else "png"
    return f"images/{safe}-{zlib.crc32(row_id.encode()):08x}.{ext}"


def write_images(out: str):
    """Over source rows: each good row's image goes to OUT/images/ (atomic, idempotent on retry),
    and `image_path` becomes that path relative to OUT, as train.json will name it."""
    def fn(batch):
        rows = batch.to_pylist()
        for row in rows:
            if not failed(row):
                rel = image_name(row[ID], row[IMAGE])
                storage.write_bytes_atomic(storage.join(out, rel), row[IMAGE])
                row[IMAGE_PATH] = rel
        return records.to_table(rows)
    return fn


def synthesis_sampling(cfg, family) -> dict:
    """SPEC §1: greedy, special tokens kept, stop at the family's end-of-text only. The model's own
    end-of-sequence tokens are ignored: chat models list their end-of-turn token among them, which
    would end the conversation after the first synthesized question."""
    return engine.sampling_params(cfg, stop=list(cfg.sampling.stop or family.stop), ignore_eos=True)


def synthesizer_stage(cfg: SynthesisConfig):
    family = get_family(cfg.family)
    params = synthesis_sampling(cfg.synthesizer, family)

    def pre(row: dict) -> dict:
        # IMAGE: None: the bytes go once, as the engine's image (images.ForEngine), not twice
        carried = {**records.pack({k: row.get(k) for k in CARRIED}), IMAGE: None}
        if failed(row):
            return {**carried, **engine.skip(params)}
        return {**carried, **engine.ask(family.synthesis_prompt(row[records.CAPTION]), params),
                "multimodal_data": {"image": images.ForEngine(row[IMAGE])}}

    def post(row: dict) -> dict:
        out = records.unpack({k: row.get(k) for k in CARRIED})
        out.update(raw_output=None, output_tokens=0)
        if not failed(out):
            message = engine.engine_error(row)
            if message:
                out[ERROR] = error("synthesize", message)
            else:
                out.update(raw_output=row["generated_text"], output_tokens=int(row.get("num_generated_tokens") or 0))
        out = parse_row(out, family)
        if cfg.judge is None:  # compose here: one stage fewer, one JSON round trip fewer a row
            out = finish_row(out, cfg.mode, None, judged=False)
        return records.pack(out)

    return engine.build_processor(one_pass(cfg.synthesizer), pre, post, multimodal=True, tasks=side_tasks(cfg))


def one_pass(synthesizer):
    """The synthesizer sees each image once: vLLM's cache of processed images (4 GiB by default, kept in
    both of the engine's processes) could never hit and would only grow with the rows read, so it is off
    unless the job's `engine_kwargs` ask for it."""
    kwargs = {"mm_processor_cache_gb": 0, **synthesizer.engine_kwargs}
    return synthesizer.model_copy(update={"engine_kwargs": kwargs})


def judge_stage(cfg: SynthesisConfig):
    prompt_text = load_judge_prompt(cfg.judge_prompt)
    params = engine.sampling_params(cfg.judge)
    columns = list(records.task_schema().names)

    def pre(row: dict) -> dict:
        prompt = judge_prompt_of(records.unpack(row), prompt_text)
        carried = {**{k: row.get(k) for k in columns if k in row}, "judged": prompt is not None}
        if prompt is None:  # no triplet (most rows): no request, the judge's engine never sees the row
            return {**carried, **engine.skip(params)}
        return {**carried, **engine.ask(prompt, params)}

    def post(row: dict) -> dict:
        base = records.unpack({k: row.get(k) for k in columns if k in row})
        if not row["judged"]:
            return records.pack(finish_row(base, cfg.mode, None, judged=True))
        message = engine.engine_error(row)
        if message:
            return records.pack(finish_row({**base, ERROR: error("judge", message)}, cfg.mode))
        text = row["generated_text"]
        return records.pack({**finish_row(base, cfg.mode, text, judged=True), "judge_output": text})

    return engine.build_processor(cfg.judge, pre, post, multimodal=False, tasks=side_tasks(cfg))


def side_tasks(cfg: SynthesisConfig) -> int:
    return engine.side_tasks(cfg.synthesizer, cfg.judge)


def method_stages(cfg: SynthesisConfig, ds):
    """Synthesize, parse + pair, judge (when configured), compose: source rows in, task rows out.
    Without a judge, compose runs in the synthesizer's postprocess."""
    ds = synthesizer_stage(cfg)(ds)
    return judge_stage(cfg)(ds) if cfg.judge is not None else ds


def to_task_table(batch):
    return records.to_table([records.unpack(r) for r in batch.to_pylist()], records.task_schema())


# ---------------------------------------------------------------- what outputs depend on


def reserved_strings(family) -> tuple[str, ...]:
    """Strings a caption may not hold: every special token of the synthesizer's chat format (turn
    markers, end of text, image placeholders) and the training set's `<image>` placeholder."""
    f = get_family(family)
    text = "".join((getattr(f, "bos", ""), f.begin, f.system_header, f.user_header, f.assistant_header, f.end_of_turn, f.turn_close,
                    f.image_placeholder, f.end_of_text))
    tokens = list(dict.fromkeys(re.findall(r"<\|[^|<>\s]+\|>", text)))
    return tuple(tokens + ["<image>"])


def caption_rules(cfg: SynthesisConfig) -> sources.CaptionRules:
    return sources.CaptionRules(cfg.source.max_caption_chars, reserved_strings(cfg.family))


# ---------------------------------------------------------------- final outputs, streamed


class AccountingError(RuntimeError):
    """The outputs do not hold every row read exactly once."""


def dataset_info() -> dict:
    """LLaMA-Factory's registration of train.json: sharegpt format, `messages` and `images` columns."""
    return {"adamllm_synthesis": {
        "file_name": "train.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}


def _task_batches(out: str):
    """Task rows as dicts, the long columns (raw output, parsed pairs) reduced in Arrow to what the
    summary needs: whether there was an output, how many pairs."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for f in task_files(out):
        fs, path = storage.filesystem(f)
        with fs.open_input_file(path) as fh:
            for b in pq.ParquetFile(fh).iter_batches(batch_size=4096):
                synthesized = pc.is_valid(b.column(records.RAW_OUTPUT)).to_pylist()
                pairs = pc.fill_null(pc.list_value_length(b.column(records.QA_PAIRS)), 0).to_pylist()
                rest = b.drop_columns([records.RAW_OUTPUT, records.QA_PAIRS]).to_pylist()
                for r, done, n in zip(rest, synthesized, pairs):
                    r["synthesized"], r["n_pairs"] = done, n
                    yield r


def _id_check(expected: Any, seen: Counter) -> tuple[list[str], list[str]]:
    missing = [i for i in expected if i not in seen]
    doubled = [i for i, n in seen.items() if n > 1]
    return missing, doubled


def finalize(cfg: SynthesisConfig, wall_s: float, resumed: set[str], scan: sources.Scan | None = None) -> dict[str, Any]:
    """train.json, train.jsonl, dataset_info.json, errors/errors.parquet and summary.json, streamed
    from every tasks file (this run's and earlier interrupted runs'), one row in memory at a time.
    With the readers' count (`scan`), the outputs are checked against the rows read: a lost or
    doubled row fails the run, named."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = cfg.output
    c: Counter = Counter()
    verdicts: Counter = Counter()
    error_stages: Counter = Counter()
    seen: Counter = Counter()
    err_schema = pa.schema([(k, pa.string()) for k in (ID, IMAGE_PATH, records.CAPTION, "stage", "message")])
    with storage.open_atomic(storage.join(out, "train.json")) as tj, \
            storage.open_atomic(storage.join(out, "train.jsonl")) as tl, \
            storage.open_atomic(storage.join(out, "errors", "errors.parquet")) as ef:
        errors = pq.ParquetWriter(ef, err_schema)
        tj.write(b"[")
        pending: list[dict] = []
        for r in _task_batches(out):
            seen[r[ID]] += 1
            c["rows"] += 1
            if r[ERROR]:
                error_stages[r[ERROR]["stage"]] += 1
                pending.append({ID: r[ID], IMAGE_PATH: r[IMAGE_PATH], records.CAPTION: r[records.CAPTION],
                                "stage": r[ERROR]["stage"], "message": r[ERROR]["message"]})
                if len(pending) >= 1024:
                    errors.write_table(pa.Table.from_pylist(pending, schema=err_schema))
                    pending = []
            if r[ID] not in resumed:
                c["this_run"] += 1
                c["this_run_tokens"] += r["output_tokens"] or 0
            c["synthesized"] += r["synthesized"]
            c["pairs_parsed"] += r["n_pairs"]
            c["rows_with_pairs"] += r["n_pairs"] > 0
            c["triplets"] += r[records.TRIPLET] is not None
            if r[records.TRIPLET] is not None and cfg.judge is not None and not r[ERROR]:
                verdicts[r[records.VERDICT] or "unparsed"] += 1
            if r[records.RESPONSE] is not None:
                c["kept"] += 1
            if r[records.MESSAGES]:
                example = json.dumps({ID: r[ID], "images": [r[IMAGE_PATH]], "messages": r[records.MESSAGES]},
                                     ensure_ascii=False)
                tj.write((",\n" if c["examples"] else "\n").encode() + example.encode())
                tl.write(example.encode() + b"\n")
                c["examples"] += 1
                c["caption_only"] += r[records.RESPONSE] is None
            elif not r[ERROR]:
                c["left_out"] += 1
        tj.write(b"\n]\n")
        errors.write_table(pa.Table.from_pylist(pending, schema=err_schema))
        errors.close()
    storage.write_text_atomic(storage.join(out, "dataset_info.json"), json.dumps(dataset_info(), indent=2))

    read = scan.read if scan is not None else c["rows"]
    counts = {
        "read": read,
        "bad_input": error_stages["read"],
        "duplicate_pairs": scan.duplicate_pairs if scan is not None else None,
        "repeated_ids": len(scan.repeat_pos_ids) if scan is not None else None,
        "synthesized": c["synthesized"],
        "rows_with_pairs": c["rows_with_pairs"],
        "pairs_parsed": c["pairs_parsed"],
        "triplets": c["triplets"],
        "verdicts": dict(verdicts) if cfg.judge is not None else None,
        "kept": c["kept"],
        "caption_only": c["caption_only"],
        "left_out_by_mode": c["left_out"],
        "examples": c["examples"],
        "errors": sum(error_stages.values()),
        "errors_by_stage": dict(error_stages),
    }
    missing, doubled = _id_check(scan.expected_ids(), seen) if scan is not None else ([], [])
    checks = {
        "rows read (counted by the readers) = rows in the outputs": read == c["rows"],
        "every id read is in the outputs once": not missing and not doubled,
        "every row is an example, an error, or left out by the mode":
            counts["examples"] + counts["errors"] + counts["left_out_by_mode"] == read,
        "rows left out only in synthetic_only mode": cfg.mode == "synthetic_only" or not counts["left_out_by_mode"],
        "examples = kept + caption_only": counts["examples"] == counts["kept"] + counts["caption_only"],
        "synthesized + errors before synthesis = read":
            counts["synthesized"] + error_stages["read"] + error_stages["synthesize"] == read,
    }
    summary = {
        "counts": counts,
        "checks": checks,
        "this_run": {"rows": c["this_run"], "output_tokens": c["this_run_tokens"], "wall_s": round(wall_s, 2),
                     "rows_per_s": round(c["this_run"] / wall_s, 2) if wall_s else 0.0,
                     "resumed_rows": len(resumed),
                     "output_tokens_per_s": round(c["this_run_tokens"] / wall_s, 2) if wall_s else 0.0},
        "outputs": {k: storage.join(out, v) for k, v in
                    (("train", "train.json"), ("train_jsonl", "train.jsonl"), ("dataset_info", "dataset_info.json"),
                     ("images", "images"), ("tasks", "tasks"), ("errors", "errors"))},
        "config": dump_config(cfg),
    }
    if missing or doubled:
        summary["accounting"] = {"missing_ids": missing[:100], "doubled_ids": doubled[:100]}
    storage.write_text_atomic(storage.join(out, "summary.json"), json.dumps(summary, indent=2))
    if not all(checks.values()):
        failed_checks = [k for k, ok in checks.items() if not ok]
        raise AccountingError(
            f"synthesis outputs in {out} do not add up ({'; '.join(failed_checks)}): "
            f"{len(missing)} id(s) read but missing from the outputs {missing[:20]}, "
            f"{len(doubled)} id(s) doubled {doubled[:20]} (summary.json has the counts)")
    return summary


def print_summary(summary: dict) -> None:
    c, r = summary["counts"], summary["this_run"]
    print("\nsynthesis summary")
    for key in ("read", "bad_input", "synthesized", "rows_with_pairs", "pairs_parsed", "triplets", "kept",
                "caption_only", "examples", "errors"):
        print(f"  {key:<16}{c[key]:>10}")
    if c["verdicts"] is not None:
        print(f"  {'verdicts':<16}{json.dumps(c['verdicts']):>10}")
    print(f"  {'errors by stage':<16}{json.dumps(c['errors_by_stage'])}")
    if c.get("duplicate_pairs"):
        print(f"  {c['duplicate_pairs']} repeated image+caption pair(s) in the input")
    print(f"  this run: {r['rows']} rows in {r['wall_s']:.1f}s ({r['rows_per_s']} rows/s, "
          f"{r['output_tokens_per_s']} output tokens/s); {r['resumed_rows']} rows done by an earlier run")
    print(f"  all checks pass: {all(summary['checks'].values())}")


def run(cfg: SynthesisConfig) -> dict:
    cfg.s3.apply_to_environment()
    out = cfg.output
    if cfg.judge is not None:
        load_judge_prompt(cfg.judge_prompt)  # a refused template stops the job before Ray starts
    prepare_output(cfg)
    done = completed_ids(out) if cfg.resume else set()
    rules = caption_rules(cfg)
    with ray_session(cfg.ray):
        t0 = time.perf_counter()
        sampler = scaling.start()  # nodes and engines alive over the run: summary.json "scaling", scaling.png
        index = sources.read_index(cfg.source, rules)
        scan = sources.scan_index(index)
        if scan.to_do(done):  # a run whose rows are all done starts no engine
            gate = scan.gate(done, drop=os.environ.get(sources.DROP_ENV))
            side = engine.side_stage(side_tasks(cfg))
            ds = sources.read_rows(cfg.source, index, gate, rules, concurrency=side["concurrency"])
            ds = ds.map_batches(write_images(out), batch_format="pyarrow", **side)
            ds = method_stages(cfg, ds)
            ds = ds.map_batches(to_task_table, batch_format="pyarrow", **side)
            fs, path = storage.filesystem(storage.join(out, "tasks"))
            # file names carry a per-run write id: runs never overwrite. A light CPU request like the other
            # side stages: at Ray's default of 1 CPU the writes wait until the engines have finished, and
            # every row stays buffered in the object store until then.
            ds.write_parquet(path, filesystem=fs, ray_remote_args={"num_cpus": side["num_cpus"]},
                             concurrency=side["concurrency"])
        wall = time.perf_counter() - t0
        timeline = sampler.stop()
    summary = finalize(cfg, wall, done, scan)
    scaling.record(out, "summary.json", summary, timeline)
    print_summary(summary)
    return summary
