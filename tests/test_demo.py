"""`adamllm demo` end to end, as a user runs it: tiny models, synthesizer tuning, synthesis with the
judge, post-training, evaluation before/after, serving; everything on a private local Ray."""

import json
import subprocess
import sys

from PIL import Image


def test_demo_runs_the_whole_flow(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "adamllm_ray.cli", "demo", "--out", str(out)],
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    result = json.loads((out / "demo_summary.json").read_text())

    synthesis = json.loads((out / "synthesis" / "summary.json").read_text())
    c = synthesis["counts"]
    good = c["read"] - c["bad_input"]
    assert c["bad_input"] == 4 and all(synthesis["checks"].values())
    assert c["triplets"] * 2 >= good, f"after tuning, at least half the images yield a triplet: {c['triplets']}/{good}"
    assert sum(c["verdicts"].values()) == c["triplets"]
    train = json.loads((out / "synthesis" / "train.json").read_text())
    assert len(train) == c["examples"] == c["read"] - c["errors"]

    tuning, post = result["synthesizer_tuning"]["loss"], result["post_training"]["loss"]
    assert tuning[1] < tuning[0] and post[1] < post[0]

    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    models = set(metrics["results"])
    assert models == {"untrained", "adapted"}, "post-trained metrics reported next to the untrained model's"
    assert all(metrics["checks"].values())
    report = (out / "evaluation" / "report.md").read_text()
    assert "untrained" in report and "adapted" in report
    Image.open(out / "evaluation" / "report.png").verify()

    assert result["serving"] == {"synthesize": 200, "evaluate": 200}
    assert "report:" in r.stdout and "summary" in r.stdout
