"""`adamllm demo` end to end, as a user runs it: from the project root (a copy of the checkout), with
the default output folder and the job files' relative paths, on a private local Ray: tiny models,
synthesizer and judge tuning, synthesis with the judge, post-training on captions only and single
stage, evaluation of the three models, serving."""

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from conftest import ROOT


def checkout_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(src.read_bytes())
    return dest


def test_demo_runs_the_whole_flow_from_the_project_root(tmp_path):
    root = checkout_copy(tmp_path / "project")
    r = subprocess.run([sys.executable, "-m", "adamllm_ray.cli", "demo"], cwd=root, capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    out = root / "demo-output"
    result = json.loads((out / "demo_summary.json").read_text())

    synthesis = json.loads((out / "synthesis" / "summary.json").read_text())
    c = synthesis["counts"]
    good = c["read"] - c["bad_input"]
    assert c["bad_input"] == 4 and all(synthesis["checks"].values())
    assert c["kept"] > 0, "the tuned judge keeps some triplets"
    assert sum(c["verdicts"].values()) == c["triplets"]
    unparsed = c["verdicts"].get("unparsed", 0) + c["verdicts"].get("null", 0) + c["verdicts"].get("None", 0)
    assert unparsed * 10 <= c["triplets"], f"nearly every verdict parses: {c['verdicts']}"
    assert result["synthesis"]["kept_share"] == round(c["kept"] / good, 3)
    train = json.loads((out / "synthesis" / "train.json").read_text())
    assert len(train) == c["examples"] == c["read"] - c["errors"]
    assert all(e["images"] for e in train)

    for key in ("synthesizer_tuning", "judge_tuning"):
        first, last = result[key]["loss"]
        assert last < first, f"{key}: the loss goes down: {first} -> {last}"
    for part in ("captions_only", "single_stage"):
        first, last = result["post_training"][part]["loss"]
        assert last < first, f"{part}: the loss goes down: {first} -> {last}"
    assert result["judge_tuning"]["check"]["n"] >= 30

    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert set(metrics["results"]) == {"untrained", "captions-only", "adapted"}, "the three models side by side"
    assert all(metrics["checks"].values())
    report = (out / "evaluation" / "report.md").read_text()
    assert all(name in report for name in ("untrained", "captions-only", "adapted"))
    Image.open(out / "evaluation" / "report.png").verify()
    assert result["serving"] == {"synthesize": 200, "evaluate": 200}

    named = [result["synthesis"]["summary"], result["synthesis"]["train_json"], result["evaluation"]["report_md"],
             result["evaluation"]["report_png"], result["evaluation"]["metrics"], result["judge_tuning"]["model"],
             result["post_training"]["captions_only"]["model"], result["post_training"]["single_stage"]["model"]]
    for path in named:
        assert (root / path).exists(), f"the summary names {path}, which is not there"
    assert "Traceback" not in r.stdout + r.stderr, "a healthy run prints no traceback"
    assert "kept share" in r.stdout and "adamllm inspect" in r.stdout
