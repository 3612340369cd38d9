"""`adamllm demo`: the embedded default, end to end on a private local Ray with tiny models and
generated data, in a few minutes on 2 cores:

1. build the tiny models (synthesizer base, judge, target), the sample pairs and a mini-benchmark;
2. tune the tiny synthesizer on generated seed conversations (synthesizer mode of training), so its
   outputs follow the hinted format (jobs/train/tiny_synthesizer_cpu.yaml);
3. synthesize + judge + compose the training set (jobs/synthesize/tiny_cpu.yaml);
4. post-train the tiny target model on it (jobs/train/tiny_cpu.yaml);
5. evaluate the untrained and the post-trained model on the mini-benchmark (jobs/evaluate/tiny_cpu.yaml);
6. serve the tuned synthesizer and the judge, send one synthesize and one evaluate request, shut down
   (jobs/serve/tiny_cpu.yaml);
7. print where summary.json, report.md and report.png are.

The job files name paths under `demo-output/`; with another --out they are moved under it."""

from __future__ import annotations

import base64
import json
import socket
import time
from pathlib import Path

import yaml

from adamllm_ray import sample_data, tiny
from adamllm_ray.config import RayConfig, validate

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "demo-output"


def job(name: str, model, out: Path, **overrides):
    """A job config from jobs/, its demo-output/ paths moved under `out`, with dotted overrides."""
    text = (ROOT / "jobs" / name).read_text().replace(f"{DEFAULT_OUT}/", f"{out.as_posix()}/")
    data = yaml.safe_load(text)
    for key, value in overrides.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return validate(model, data, f"jobs/{name}")


class Steps:
    """Wall time per step, printed as it goes."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n=== demo: {name}", flush=True)
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        self.times[name] = round(time.perf_counter() - t, 1)
        print(f"=== demo: {name}: done in {self.times[name]}s", flush=True)
        return result


def build_inputs(out: Path, n: int) -> dict:
    from adamllm_ray.evaluation.make_benchmark import write_benchmark
    from adamllm_ray.training.sample import write_training_set

    models = out / "models"
    return {
        "synthesizer_base": tiny.build("qwen2_vl", models / "synthesizer-base", seed=0),
        "judge": tiny.build("text", models / "judge", seed=0),
        "target": tiny.build("qwen2_vl", models / "target", seed=1),
        "sample": sample_data.write_sample_data(str(out / "sample"), n=n, seed=0),
        "seed_conversations": write_training_set(out / "seed-conversations", n=64, seed=100, synthesizer=True),
        "benchmark": write_benchmark(str(out / "benchmark"), n=8, seed=0),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query_service(out: Path, synthesizer: str, judge: str) -> dict:
    """One synthesize and one evaluate request against the served tuned synthesizer and judge."""
    import httpx

    from adamllm_ray.config import ServeConfig
    from adamllm_ray.serving import app

    cfg = job("serve/tiny_cpu.yaml", ServeConfig, out, **{"synthesizer.model": synthesizer, "synthesizer.tiny": None,
                                                           "judge.model": judge, "judge.tiny": None})
    pair = sample_data.make_pairs(1, seed=7, broken=False)[0]
    image = base64.b64encode(pair["image"]).decode()
    with app.serving(cfg, port=_free_port()) as base_url:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            synth = client.post("/v1/synthesize", json={"image": image, "caption": pair["caption"], "id": pair["id"]})
            shape, color = pair["scene"]["shapes"][0]
            evaluate = client.post("/v1/evaluate", json={
                "task": "slake", "image": image, "question": f"What color is the {shape}?", "label": color,
                "answer_type": "OPEN"})
    for name, r in (("synthesize", synth), ("evaluate", evaluate)):
        print(f"POST /v1/{name} -> {r.status_code}\n{json.dumps(r.json(), indent=1)[:2000]}")
    return {"synthesize": {"status": synth.status_code, "body": synth.json()},
            "evaluate": {"status": evaluate.status_code, "body": evaluate.json()}}


def run(out: str = DEFAULT_OUT, n: int = 48) -> dict:
    from adamllm_ray.config import EvaluateConfig, SynthesisConfig, TrainConfig
    from adamllm_ray.evaluation import run as evaluation
    from adamllm_ray.ray_session import ray_session
    from adamllm_ray.synthesis import pipeline
    from adamllm_ray.training import trainer

    out_dir = Path(out)
    steps = Steps()
    with ray_session(RayConfig(address="local", num_cpus=4)):
        inputs = steps.run("build tiny models, sample pairs, mini-benchmark", build_inputs, out_dir, n)
        tuned = steps.run("tune the synthesizer (synthesizer mode)", trainer.run,
                          job("train/tiny_synthesizer_cpu.yaml", TrainConfig, out_dir))
        synth = steps.run("synthesize + judge + compose", pipeline.run,
                          job("synthesize/tiny_cpu.yaml", SynthesisConfig, out_dir))
        post = steps.run("post-train the target model", trainer.run, job("train/tiny_cpu.yaml", TrainConfig, out_dir))
        scores = steps.run("evaluate untrained vs post-trained", evaluation.run,
                           job("evaluate/tiny_cpu.yaml", EvaluateConfig, out_dir))
        served = steps.run("serve and query", query_service, out_dir, tuned["model"], inputs["judge"])
    c = synth["counts"]
    good = c["read"] - c["bad_input"]
    result = {
        "synthesis": {"summary": str(out_dir / "synthesis" / "summary.json"), "train_json": str(out_dir / "synthesis" / "train.json"),
                      "images_with_a_triplet": f"{c['triplets']}/{good}",
                      **{k: c[k] for k in ("read", "bad_input", "triplets", "verdicts", "kept", "caption_only", "examples")}},
        "synthesizer_tuning": {"loss": [tuned["first_loss"], tuned["final_loss"]], "model": tuned["model"]},
        "post_training": {"loss": [post["first_loss"], post["final_loss"]], "model": post["model"]},
        "evaluation": {"report_md": scores["outputs"]["report"], "report_png": scores["outputs"]["chart"],
                       "results": scores["results"]},
        "serving": {k: v["status"] for k, v in served.items()},
        "seconds": steps.times,
    }
    (out_dir / "demo_summary.json").write_text(json.dumps(result, indent=2))
    print("\n=== demo summary\n" + json.dumps(result, indent=2))
    for k in ("summary", "train_json"):
        print(f"{k}: {result['synthesis'][k]}")
    print(f"report: {result['evaluation']['report_md']}\nchart: {result['evaluation']['report_png']}")
    return result
