"""`adamllm score` end to end: a subprocess per run, small JSONL files, exact JSON out, and a clear
one-line message with exit code 2 for each kind of bad input."""

import json
import random
import subprocess
import sys

import pytest

OPTIONS = ["left lung", "right lung", "liver", "spleen"]
VOCAB = ["egg", "egg tart", "tart", "french fries", "rice"]


def score(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "adamllm_ray.cli", "score", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_ok(tmp_path, task, records):
    predictions = write_jsonl(tmp_path / f"{task}.jsonl", records)
    out = tmp_path / "metrics.json"
    proc = score("--task", task, "--predictions", predictions, "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert f"task {task}: {len(records)} predictions" in proc.stdout
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.parametrize("task", ["slake", "pathvqa", "vqa_rad"])
def test_vqa_tasks(tmp_path, task):
    records = [
        {"id": 0, "prediction": "The left lung.", "label": "left lung", "answer_type": "OPEN"},  # 1
        {"id": 1, "prediction": "liver", "label": "left lung", "answer_type": "OPEN"},  # 0
        {"id": 2, "prediction": "No, it is not.", "label": "no", "answer_type": "CLOSED"},  # 1
        {"id": 3, "prediction": "It is not", "label": "no", "answer_type": "CLOSED"},  # 1 ("not" contains "no")
        {"id": 4, "prediction": "Yes", "label": "no", "answer_type": "CLOSED"},  # 0
        {"id": 5, "prediction": "yes", "label": "yes", "answer_type": "CLOSED"},  # 1
    ]
    result, stdout = run_ok(tmp_path, task, records)
    assert result == {"task": task, "n": 6, "scores": {"open": 50.0, "closed": 75.0},
                      "counts": {"open": 2, "closed": 4}}
    assert "open" in stdout and "50.00" in stdout and "Qwen2-VL-2B" in stdout


def test_pmc_vqa_guess_is_seeded_by_the_integer_index(tmp_path):
    """SPEC §4: the seed of a guess is the example's 0-based position in the split (an int), never
    its id; a record without `index` takes its position among the file's records."""
    letters = ["A", "B", "C", "D"]
    # an index whose integer and string seeds guess differently, so the test tells them apart
    i = next(i for i in range(100) if random.Random(i).choice(letters) != random.Random(f"q{i}").choice(letters))
    records = [
        {"id": "q100", "index": 0, "prediction": "(A) is wrong; the answer is (C)", "label": "C", "options": OPTIONS},
        {"id": "q101", "index": 1, "prediction": "The spleen.", "label": "D", "options": OPTIONS},
        {"id": f"q{i}", "index": i, "prediction": "unsure", "label": random.Random(i).choice(letters),
         "options": OPTIONS},
        {"id": "q7", "prediction": "unsure", "label": random.Random(3).choice(letters), "options": OPTIONS},
        {"id": "q102", "index": 4, "prediction": "B", "label": "A", "options": OPTIONS},
    ]
    result, stdout = run_ok(tmp_path, "pmc_vqa", records)
    assert result == {"task": "pmc_vqa", "n": 5, "scores": {"accuracy": 80.0},
                      "counts": {"accuracy": 5, "guessed": 2}}
    assert "no choice found (seeded guess): 2" in stdout


def test_food101(tmp_path):
    names = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio"]
    records = [
        {"id": 0, "prediction": "This is baklava.", "label": "baklava", "options": names},
        {"id": 1, "prediction": "Beef carpaccio", "label": "beef_carpaccio", "options": names},
        {"id": 2, "prediction": "Baby back ribs", "label": "apple_pie", "options": names},
        {"id": 3, "prediction": "(1)", "label": "baby_back_ribs", "options": names},
    ]
    result, _ = run_ok(tmp_path, "food101", records)
    assert result == {"task": "food101", "n": 4, "scores": {"accuracy": 75.0},
                      "counts": {"accuracy": 4, "guessed": 0}}


def test_recipe1m(tmp_path):
    records = [
        {"id": 0, "prediction": "a b c d", "label": "a c"},  # f = 2 * 0.5 * 1 / (1.5 + 1e-8)
        {"id": 1, "prediction": "", "label": "mix the flour"},  # the package raises: 0
    ]
    result, _ = run_ok(tmp_path, "recipe1m", records)
    assert result["scores"]["rouge_l"] == pytest.approx((1 / (1.5 + 1e-8)) / 2 * 100, rel=1e-12)
    assert {k: v for k, v in result.items() if k != "scores"} == {"task": "recipe1m", "n": 2,
                                                                  "counts": {"rouge_l": 2}}


def test_nutrition5k_with_vocabulary_file(tmp_path):
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "ingredients.json").write_text(json.dumps(VOCAB))
    records = [
        {"id": 0, "prediction": "egg tart and rice", "label": ["egg tart", "egg"], "vocabulary": "vocab/ingredients.json"},
        {"id": 1, "prediction": "French fries, egg", "label": ["french fries", "egg"], "vocabulary": "vocab/ingredients.json"},
        {"id": 2, "prediction": "nothing", "label": [], "vocabulary": "vocab/ingredients.json"},
        {"id": 3, "prediction": "", "label": ["rice"], "vocabulary": VOCAB},
    ]
    # the relative path is taken from the predictions file's folder, not the working directory
    predictions = write_jsonl(tmp_path / "nutrition5k.jsonl", records)
    proc = score("--task", "nutrition5k", "--predictions", predictions, cwd="/")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "nutrition5k.metrics.json").read_text())  # default output
    assert result == {"task": "nutrition5k", "n": 4, "scores": {"recall": 62.5}, "counts": {"recall": 4}}


def test_foodseg103(tmp_path):
    records = [
        {"id": 0, "prediction": "[egg tart, rice, tart]", "label": ["egg tart"], "vocabulary": VOCAB},  # 2/4
        {"id": 1, "prediction": "[]", "label": [], "vocabulary": VOCAB},  # 1
        {"id": 2, "prediction": "[rice]", "label": [], "vocabulary": VOCAB},  # 0
        {"id": 3, "prediction": "[Egg]", "label": ["egg"], "vocabulary": VOCAB},  # 1
    ]
    result, _ = run_ok(tmp_path, "foodseg103", records)
    assert result == {"task": "foodseg103", "n": 4, "scores": {"f1": 62.5}, "counts": {"f1": 4}}


# ---------------------------------------------------------------- bad input

GOOD_VQA = {"id": 0, "prediction": "yes", "label": "yes", "answer_type": "CLOSED"}


def assert_fails(proc, message):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_task(tmp_path):
    predictions = write_jsonl(tmp_path / "p.jsonl", [GOOD_VQA])
    proc = score("--task", "vqa", "--predictions", predictions, "--output", tmp_path / "m.json")
    assert_fails(proc, "unknown task 'vqa'; known tasks: slake, pathvqa")
    assert not (tmp_path / "m.json").exists()


def test_bad_json_line(tmp_path):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps(GOOD_VQA) + "\n" + '{"id": 1, "prediction": "yes",\n')
    proc = score("--task", "slake", "--predictions", predictions, "--output", tmp_path / "m.json")
    assert_fails(proc, f"{predictions}:2: not valid JSON")
    assert not (tmp_path / "m.json").exists()


def test_missing_field(tmp_path):
    bad = {"id": 2, "prediction": "yes", "label": "yes"}
    predictions = write_jsonl(tmp_path / "p.jsonl", [GOOD_VQA, GOOD_VQA, bad])
    proc = score("--task", "vqa_rad", "--predictions", predictions)
    assert_fails(proc, f"{predictions}:3: missing field 'answer_type'")
    assert not (tmp_path / "p.metrics.json").exists()


@pytest.mark.parametrize(
    "task, record, message",
    [
        ("slake", {"id": 0, "prediction": "yes", "label": "yes", "answer_type": "closed"}, "'answer_type' must be \"OPEN\" or \"CLOSED\""),
        ("slake", {"id": 0, "prediction": None, "label": "yes", "answer_type": "OPEN"}, "'prediction' must be a string"),
        ("pmc_vqa", {"id": 0, "prediction": "A", "label": "E", "options": OPTIONS}, "'label' must be one of A, B, C, D"),
        ("food101", {"id": 0, "prediction": "pie", "label": "pizza", "options": ["apple_pie"]}, "'label' 'pizza' is not one of the 1 options"),
        ("foodseg103", {"id": 0, "prediction": "x", "label": ["cake"], "vocabulary": VOCAB}, "'label' phrase 'cake' is not in the vocabulary"),
        ("nutrition5k", {"id": 0, "prediction": "x", "label": [], "vocabulary": "missing.json"}, "cannot read vocabulary file"),
        ("recipe1m", {"id": {"a": 1}, "prediction": "x", "label": "y"}, "'id' must be an integer or a string"),
        ("pmc_vqa", {"id": "q1", "index": "3", "prediction": "A", "label": "A", "options": OPTIONS},
         "'index' must be the example's 0-based position (an integer >= 0), got '3'"),
    ],
)
def test_bad_field(tmp_path, task, record, message):
    predictions = write_jsonl(tmp_path / "p.jsonl", [record])
    proc = score("--task", task, "--predictions", predictions)
    assert_fails(proc, f"{predictions}:1: {message}")


def test_not_an_object_and_empty_file(tmp_path):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("[1, 2]\n")
    assert_fails(score("--task", "slake", "--predictions", predictions), f"{predictions}:1: a prediction record must be a JSON object")
    predictions.write_text("\n")
    assert_fails(score("--task", "slake", "--predictions", predictions), "no prediction records")


def test_missing_predictions_file(tmp_path):
    proc = score("--task", "slake", "--predictions", tmp_path / "nope.jsonl")
    assert_fails(proc, "cannot read predictions file")
