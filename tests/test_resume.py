"""Resume that never mixes and accounting that can fail: the run's signature refuses a re-run with
other settings (and `restart` starts over), a run whose rows are all done starts no engine, a tasks
file is removed only when provably cut short, and a row lost inside the pipeline fails the run, named.
Also the hostile ShareGPT set and a malformed JSONL line through the whole job."""

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from adamllm_ray import sources
from adamllm_ray.config import ConfigError, validate
from adamllm_ray.synthesis.config import SynthesisConfig
from adamllm_ray.embedded import sample_data
from adamllm_ray.synthesis import pipeline, resume
from test_sources import entry, hostile_set
from test_synthesis_pipeline import check_complete, engine, outputs


def job(tmp_path: Path, src: dict, model: str, **kw) -> SynthesisConfig:
    return validate(SynthesisConfig, {"source": src, "output": str(tmp_path / "out"), "family": "qwen2_vl",
                                      "synthesizer": engine(model), "judge": None, **kw})


def parquet_input(tmp_path: Path, n: int) -> tuple[dict, set[str]]:
    rows = sample_data.make_pairs(n, seed=5, broken=False)
    sample_data.write_parquet(rows, tmp_path / "in", shards=2)
    return {"format": "parquet", "path": str(tmp_path / "in")}, {r["id"] for r in rows}


# ---------------------------------------------------------------- no Ray


def test_tasks_file_removed_only_when_provably_incomplete(tmp_path, monkeypatch):
    tasks = tmp_path / "out" / "tasks"
    tasks.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b"]}), tasks / "whole.parquet")
    whole = (tasks / "whole.parquet").read_bytes()
    (tasks / "cut.parquet").write_bytes(whole[: len(whole) - 7])  # a write interrupted before the footer
    assert pipeline.completed_ids(str(tmp_path / "out")) == {"a", "b"}
    assert sorted(p.name for p in tasks.iterdir()) == ["whole.parquet"]

    class Flaky:  # a storage error (S3 timeout, connection reset) is raised, the file stays
        def open_input_file(self, path):
            raise OSError("connection reset by peer")

    monkeypatch.setattr(resume.storage, "filesystem", lambda uri: (Flaky(), uri))
    monkeypatch.setattr(resume, "task_files", lambda out: [str(tasks / "whole.parquet")])
    with pytest.raises(OSError, match="connection reset"):
        pipeline.completed_ids(str(tmp_path / "out"))
    monkeypatch.undo()
    assert (tasks / "whole.parquet").exists()


def test_signature_changes_are_listed():
    old = {"synthesizer": {"sampling": {"max_tokens": 200}}, "family": "qwen2_vl", "judge_prompt_sha256": "a"}
    new = {"synthesizer": {"sampling": {"max_tokens": 50}}, "family": "qwen2_vl", "judge_prompt_sha256": "b"}
    assert pipeline.signature_changes(old, new) == [
        'judge_prompt_sha256: "a" -> "b"', "synthesizer.sampling.max_tokens: 200 -> 50"]


def test_gate_is_a_set_lookup_held_once():
    gate = sources.Gate({"done-1"}, {"dup": (5, "pairs.json entry 5")})
    assert gate("done-1", "p:0", 0) is None
    assert gate("new", "p:1", 1) == ("new", None)
    assert gate("dup", "p:5", 5) == ("dup", None)
    rid, message = gate("dup", "p:9", 9)
    assert rid == "p:9" and "repeats the id of pairs.json entry 5" in message


# ---------------------------------------------------------------- the whole job (heavy)


def test_changed_settings_refuse_and_restart_redoes(tmp_path, ray_local, tiny_qwen2_vl, monkeypatch):
    src, ids = parquet_input(tmp_path, 6)
    first = pipeline.run(job(tmp_path, src, tiny_qwen2_vl))
    assert first["this_run"]["rows"] == len(ids)

    def no_engine(*a, **k):
        raise AssertionError("a run whose rows are all done must start no engine")

    monkeypatch.setattr(pipeline, "method_stages", no_engine)
    again = pipeline.run(job(tmp_path, src, tiny_qwen2_vl))  # all done: nothing redone, same outputs
    assert again["this_run"]["rows"] == 0 and again["this_run"]["resumed_rows"] == len(ids)
    check_complete(*outputs(tmp_path / "out"), ids)

    changed = engine(tiny_qwen2_vl, sampling={"max_tokens": 12})
    with pytest.raises(ConfigError) as err:
        pipeline.run(job(tmp_path, src, tiny_qwen2_vl, synthesizer=changed))
    assert "synthesizer.sampling.max_tokens: 24 -> 12" in str(err.value)
    assert "restart" in str(err.value)
    monkeypatch.undo()
    redone = pipeline.run(job(tmp_path, src, tiny_qwen2_vl, synthesizer=changed, restart=True))
    assert redone["this_run"]["rows"] == len(ids) and redone["this_run"]["resumed_rows"] == 0
    train, errors, summary = outputs(tmp_path / "out")
    check_complete(train, errors, summary, ids)
    assert summary["config"]["synthesizer"]["sampling"]["max_tokens"] == 12
    tasks = pq.read_table(tmp_path / "out" / "tasks").to_pylist()
    assert sorted(r["id"] for r in tasks) == sorted(ids)  # nothing of the first run left
    assert all(r["output_tokens"] <= 12 for r in tasks)
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
    assert info["adamllm_synthesis"]["formatting"] == "sharegpt"
    assert info["adamllm_synthesis"]["columns"] == {"messages": "messages", "images": "images"}
    jsonl = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert jsonl == train


def test_a_row_lost_inside_the_pipeline_fails_the_run_named(tmp_path, ray_local, tiny_qwen2_vl, monkeypatch):
    src, ids = parquet_input(tmp_path, 6)
    lost = sorted(ids)[2]
    monkeypatch.setenv(sources.DROP_ENV, lost)
    with pytest.raises(pipeline.AccountingError) as err:
        pipeline.run(job(tmp_path, src, tiny_qwen2_vl))
    assert f"missing from the outputs ['{lost}']" in str(err.value)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["accounting"]["missing_ids"] == [lost]
    assert summary["counts"]["read"] == len(ids)
    assert not summary["checks"]["every id read is in the outputs once"]


def test_hostile_sharegpt_set_through_the_job(tmp_path, ray_local, tiny_qwen2_vl):
    cfg, expected, good_ids, secret = hostile_set(tmp_path)
    # a malformed JSONL file beside the JSON one: one error row with its file and line, the rest go on
    lines = [json.dumps(entry(f"line-{i}", ["good.png"], caption=f"Line {i}.")) for i in range(4)]
    lines.insert(2, '{"id": "x", "images": [')
    (tmp_path / "set" / "more.jsonl").write_text("\n".join(lines) + "\n")
    src = {"format": "sharegpt", "path": str(tmp_path / "set"), "image_root": cfg.image_root}
    pipeline.run(job(tmp_path, src, tiny_qwen2_vl))
    train, errors, summary = outputs(tmp_path / "out")
    ids = set(expected) | good_ids | {f"line-{i}" for i in range(4)} | {"more.jsonl:2"}
    check_complete(train, errors, summary, ids)
    by_id = {e["id"]: e for e in errors}
    assert by_id["more.jsonl:2"]["message"].startswith("more.jsonl line 3: not valid JSON"), by_id["more.jsonl:2"]
    for rid, message in expected.items():
        assert by_id[rid]["stage"] == "read" and message in by_id[rid]["message"], by_id[rid]
    assert {e["id"] for e in train} == good_ids | {f"line-{i}" for i in range(4)}
    assert summary["counts"]["duplicate_pairs"] >= 1
    copied = [p.read_bytes() for p in (tmp_path / "out" / "images").iterdir()]
    secret_pixels = Image.open(io.BytesIO(secret)).tobytes()
    assert copied and all(Image.open(io.BytesIO(c)).convert("RGB").tobytes() != secret_pixels for c in copied)
    gray = next(e for e in train if e["id"] == "gray16")["images"][0]
    assert Image.open(tmp_path / "out" / gray).convert("RGB").getpixel((2, 0)) == (128, 128, 128)


def test_resume_cost_per_row_does_not_grow_with_rows_done():
    import time

    def per_row(done_count: int) -> float:
        gate = sources.Gate({f"done-{i:07d}" for i in range(done_count)}, {})
        keys = [(f"done-{i:07d}" if i % 2 else f"new-{i}", f"p:{i}", i) for i in range(20000)]
        best = float("inf")
        for _ in range(7):  # best of seven: a shared machine's noise only ever adds time
            t = time.perf_counter()
            for k in keys:
                gate(*k)
            best = min(best, (time.perf_counter() - t) / len(keys))
        return best

    small, large = per_row(1000), per_row(400_000)
    assert large < small * 3 + 2e-6, (small, large)  # a set lookup, not a fetch of the done set per row
