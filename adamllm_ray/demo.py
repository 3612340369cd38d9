"""`adamllm demo`: the embedded default, end to end on a private local Ray with tiny models and
generated data, in a few minutes on 2 cores:

1. build the tiny models (synthesizer base, judge, target) and the sample pairs;
2. tune the tiny synthesizer on generated seed conversations (synthesizer mode of training), so its
   outputs follow the hinted format;
3. synthesize + judge + compose the training set (jobs/synthesize/tiny_cpu.yaml);
4. post-train the tiny target model on it (jobs/train/tiny_cpu.yaml);
5. evaluate the untrained and the post-trained model on a generated mini-benchmark;
6. serve the synthesizer, send one synthesize and one evaluate request, shut down;
7. print where summary.json, report.md and report.png are.

The job files under jobs/ name paths under `demo-output/`; with another --out they are rewritten."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from adamllm_ray import sample_data, tiny
from adamllm_ray.config import RayConfig, validate

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "demo-output"


def job(name: str, model, out: Path, **overrides):
    """A job config from jobs/, its demo-output/ paths moved under `out`, with overrides."""
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
    """Wall time per step, printed as it goes and at the end."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n=== demo: {name}", flush=True)
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        self.times[name] = round(time.perf_counter() - t, 1)
        print(f"=== demo: {name} done in {self.times[name]}s", flush=True)
        return result


def build_inputs(out: Path, n: int) -> dict:
    from adamllm_ray.training.sample import write_training_set

    models = out / "models"
    return {
        "synthesizer_base": tiny.build("qwen2_vl", models / "synthesizer-base", seed=0),
        "judge": tiny.build("text", models / "judge", seed=0),
        "target": tiny.build("qwen2_vl", models / "target", seed=1),
        "sample": sample_data.write_sample_data(str(out / "sample"), n=n, seed=0),
        "seed_conversations": write_training_set(out / "seed-conversations", n=64, seed=100, synthesizer=True),
    }


def run(out: str = DEFAULT_OUT, n: int = 48) -> dict:
    from adamllm_ray.config import SynthesisConfig, TrainConfig
    from adamllm_ray.ray_session import ray_session
    from adamllm_ray.synthesis import pipeline
    from adamllm_ray.training import trainer

    out_dir = Path(out)
    steps = Steps()
    result: dict = {"out": str(out_dir)}
    with ray_session(RayConfig(address="local", num_cpus=4)):
        inputs = steps.run("build tiny models and sample data", build_inputs, out_dir, n)
        tune = job("train/tiny_synthesizer_cpu.yaml", TrainConfig, out_dir)
        tuned = steps.run("tune the synthesizer (synthesizer mode)", trainer.run, tune)
        synth = steps.run("synthesize + judge + compose", pipeline.run,
                          job("synthesize/tiny_cpu.yaml", SynthesisConfig, out_dir))
        counts = synth["counts"]
        good = counts["read"] - counts["bad_input"]
        result["synthesis"] = {"summary": str(out_dir / "synthesis" / "summary.json"), **{
            k: counts[k] for k in ("read", "bad_input", "triplets", "kept", "caption_only", "examples")},
            "verdicts": counts["verdicts"], "images_with_a_triplet": f"{counts['triplets']}/{good}"}
        post = steps.run("post-train the target model", trainer.run, job("train/tiny_cpu.yaml", TrainConfig, out_dir))
        result["tuning"] = {"first_loss": tuned.get("first_loss"), "final_loss": tuned.get("final_loss")}
        result["training"] = {"first_loss": post.get("first_loss"), "final_loss": post.get("final_loss"),
                              "model": post.get("model")}
    result["seconds"] = steps.times
    (out_dir / "demo_summary.json").write_text(json.dumps(result, indent=2))
    print("\n=== demo summary\n" + json.dumps(result, indent=2))
    return result
