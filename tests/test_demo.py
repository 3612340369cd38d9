"""`adamllm demo` checks its own outcome: `make demo` (which CI runs from a fresh clone, as the README
says) is the flow's end-to-end test, and a flow that ran without doing what it says fails by name.
Here: the checks on a finished demo's files, each one able to fail."""

import json
from pathlib import Path

from adamllm_ray.embedded import demo


def finished_demo(out: Path) -> dict:
    """The files and summary a healthy demo leaves (as many rows as a tiny run)."""
    (out / "synthesis").mkdir(parents=True)
    (out / "evaluation").mkdir()
    counts = {"read": 6, "bad_input": 4, "errors": 4, "examples": 2, "triplets": 2, "kept": 1,
              "verdicts": {"yes": 1, "open": 1}}
    (out / "synthesis" / "summary.json").write_text(json.dumps({"counts": counts, "checks": {"ids once": True}}))
    (out / "synthesis" / "train.json").write_text(json.dumps([{"images": ["images/a.png"]}, {"images": ["images/b.png"]}]))
    (out / "evaluation" / "metrics.json").write_text(json.dumps(
        {"results": {"untrained": {}, "captions-only": {}, "adapted": {}}, "checks": {"every task scored": True}}))
    (out / "evaluation" / "report.md").write_text("| untrained | captions-only | adapted |")
    for name in ("report.png", "judge", "captions-only", "adapted"):
        (out / name).write_text("x")
    return {
        "synthesis": {"summary": str(out / "synthesis" / "summary.json"), "train_json": str(out / "synthesis" / "train.json")},
        "synthesizer_tuning": {"loss": [7.0, 0.1]},
        "judge_tuning": {"loss": [7.0, 0.01], "model": str(out / "judge"), "check": {"n": 60, "accuracy": 1.0}},
        "post_training": {"captions_only": {"loss": [3.0, 2.0], "model": str(out / "captions-only")},
                          "single_stage": {"loss": [3.0, 2.0], "model": str(out / "adapted")}},
        "evaluation": {"report_md": str(out / "evaluation" / "report.md"), "report_png": str(out / "report.png"),
                       "metrics": str(out / "evaluation" / "metrics.json")},
        "serving": {"synthesize": 200, "evaluate": 200},
    }


def test_a_healthy_demo_passes_every_check(tmp_path):
    result = finished_demo(tmp_path)
    got = demo.checks(result, tmp_path)
    assert len(got) >= 12 and all(got.values()), [k for k, ok in got.items() if not ok]


def test_each_failure_is_named(tmp_path):
    result = finished_demo(tmp_path)
    result["post_training"]["single_stage"]["loss"] = [2.0, 2.5]
    result["serving"]["evaluate"] = 503
    (tmp_path / "adapted").unlink()
    summary = json.loads((tmp_path / "synthesis" / "summary.json").read_text())
    summary["counts"]["kept"] = 0
    summary["counts"]["verdicts"] = {"unparsed": 2}
    (tmp_path / "synthesis" / "summary.json").write_text(json.dumps(summary))
    failed = sorted(k for k, ok in demo.checks(result, tmp_path).items() if not ok)
    assert failed == sorted(["post-training (single stage): the loss goes down", "both service requests answered 200",
                             "every file the summary names exists", "the tuned judge keeps some triplets",
                             "nearly every verdict parses"])
