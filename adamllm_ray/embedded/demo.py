"""`adamllm demo`: the embedded default, end to end on a private local Ray with tiny models and
generated data, in a few minutes on 2 cores:

1. build the tiny models (synthesizer base, judge, target), the sample pairs and a mini-benchmark;
2. tune the tiny synthesizer on generated seed conversations (synthesizer mode of training), so its
   outputs follow the hinted format (jobs/train/tiny_synthesizer_cpu.yaml);
3. tune the tiny judge on generated judge prompts whose verdict is known (embedded/judge.py), and
   check it on prompts it was not trained on;
4. synthesize + judge + compose the training set (jobs/synthesize/tiny_cpu.yaml);
5. post-train the tiny target twice, the paper's ablation: on captions only, and single-stage on
   captions + synthetic tasks (jobs/train/tiny_cpu.yaml);
6. evaluate the untrained target and both post-trained models on the mini-benchmark
   (jobs/evaluate/tiny_cpu.yaml);
7. serve the tuned synthesizer and judge, send one synthesize and one evaluate request, shut down
   (jobs/serve/tiny_cpu.yaml);
8. print what was made and where, and check that the flow did what it says (`checks`): a failed
   check ends the demo with exit code 1 naming it, so `make demo` is the flow's own end-to-end test.

The job files name paths under `demo-output/`, relative to the directory the demo runs in (the
project root, as the job files' own commands); with another --out they are moved under it."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import yaml

from adamllm_ray.config import RayConfig, validate
from adamllm_ray.embedded import console, sample_data, tiny

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = "demo-output"
BENCHMARK_SIZE = 32  # examples per task: enough that a difference between models can show


class CheckFailed(RuntimeError):
    """The flow ran but did not do what it says (`checks`)."""


def job(name: str, model, out: Path, /, **overrides):
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
    """One line when a step starts, one when it ends with its time and key figures."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def run(self, name: str, figures, fn, *args, **kwargs):
        print(f"\n[demo] {name} ...", flush=True)
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        self.times[name] = round(time.perf_counter() - t, 1)
        print(f"[demo] {name}: done in {self.times[name]} s; {figures(result)}", flush=True)
        return result


def build_inputs(out: Path, n: int) -> dict:
    from adamllm_ray.embedded.make_benchmark import write_benchmark
    from adamllm_ray.embedded.training_set import write_training_set

    models = out / "models"
    return {
        "synthesizer_base": tiny.build("qwen2_vl", models / "synthesizer-base", seed=0),
        "judge_base": tiny.build("text", models / "judge", seed=0),
        "target": tiny.build("qwen2_vl", models / "target", seed=1),
        "sample": sample_data.write_sample_data(str(out / "sample"), n=n, seed=0),
        "seed_conversations": write_training_set(out / "seed-conversations", n=64, seed=100, synthesizer=True),
        "benchmark": write_benchmark(str(out / "benchmark"), n=BENCHMARK_SIZE, seed=0),
    }


def tune_judge(out: Path, base: str) -> dict:
    """Tune the tiny judge, then check its verdicts on generated prompts it did not train on."""
    from adamllm_ray.embedded import judge
    from adamllm_ray.synthesis.filter import load_judge_prompt

    template = load_judge_prompt(None)
    tuned = judge.tune(base, out / "runs" / "judge" / "model", template)
    return {**tuned, "check": judge.check(tuned["model"], template)}


def query_service(out: Path, synthesizer: str, judge: str) -> dict:
    """One synthesize and one evaluate request against the served tuned synthesizer and judge."""
    import httpx

    from adamllm_ray.serving.config import ServeConfig
    from adamllm_ray.embedded.local_cluster import free_port
    from adamllm_ray.serving import app

    cfg = job("serve/tiny_cpu.yaml", ServeConfig, out, **{"synthesizer.model": synthesizer, "synthesizer.tiny": None,
                                                           "judge.model": judge, "judge.tiny": None})
    pair = sample_data.make_pairs(1, seed=7, broken=False)[0]
    image = base64.b64encode(pair["image"]).decode()
    with app.serving(cfg, port=free_port()) as base_url:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            synth = client.post("/v1/synthesize", json={"image": image, "caption": pair["caption"], "id": pair["id"]})
            shape, color = pair["scene"]["shapes"][0]
            evaluate = client.post("/v1/evaluate", json={
                "task": "slake", "image": image, "question": f"What color is the {shape}?", "label": color,
                "answer_type": "OPEN"})
    for name, r in (("synthesize", synth), ("evaluate", evaluate)):
        print(f"POST /v1/{name} -> {r.status_code}\n{json.dumps(r.json(), indent=1)[:1500]}")
    return {"synthesize": {"status": synth.status_code, "body": synth.json()},
            "evaluate": {"status": evaluate.status_code, "body": evaluate.json()}}


def _losses(r: dict) -> str:
    return f"loss {r['first_loss']:.2f} -> {r['final_loss']:.2f}, model in {console.shown(r['model'])}"


def _synthesis_figures(r: dict) -> str:
    c = r["counts"]
    return (f"{c['read']} pairs read, {c['bad_input']} bad, {c['triplets']} triplets, verdicts {c['verdicts']}, "
            f"{c['kept']} kept, {c['examples']} training examples")


def _score_figures(r: dict) -> str:
    return f"{len(r['results'])} models x {len(next(iter(r['results'].values())))} tasks scored"


def run(out: str = DEFAULT_OUT, n: int = 48) -> dict:
    from adamllm_ray.evaluation.config import EvaluateConfig
    from adamllm_ray.synthesis.config import SynthesisConfig
    from adamllm_ray.training.config import TrainConfig
    from adamllm_ray.evaluation import run as evaluation
    from adamllm_ray.ray_session import ray_session
    from adamllm_ray.synthesis import pipeline
    from adamllm_ray.training import trainer

    out_dir = Path(out)
    steps = Steps()
    console.quiet()
    with ray_session(RayConfig(address="local", num_cpus=4)):
        inputs = steps.run("build tiny models, sample pairs, mini-benchmark",
                           lambda r: f"{n} sample pairs, {BENCHMARK_SIZE} examples per task, models in {out_dir / 'models'}",
                           build_inputs, out_dir, n)
        tuned = steps.run("tune the synthesizer", _losses, trainer.run,
                          job("train/tiny_synthesizer_cpu.yaml", TrainConfig, out_dir))
        judged = steps.run("tune the judge", lambda r: f"{_losses(r)}, {r['check']['accuracy']:.0%} right on "
                           f"{r['check']['n']} unseen prompts", tune_judge, out_dir, inputs["judge_base"])
        synth = steps.run("synthesize + judge + compose", _synthesis_figures, pipeline.run,
                          job("synthesize/tiny_cpu.yaml", SynthesisConfig, out_dir))
        captions = steps.run("post-train on captions only", _losses, trainer.run,
                             job("train/tiny_cpu.yaml", TrainConfig, out_dir,
                                 **{"name": "captions-only", "data.mode": "caption_only"}))
        post = steps.run("post-train single-stage (captions + tasks)", _losses, trainer.run,
                         job("train/tiny_cpu.yaml", TrainConfig, out_dir))
        scores = steps.run("evaluate untrained, captions-only, single-stage", _score_figures, evaluation.run,
                           job("evaluate/tiny_cpu.yaml", EvaluateConfig, out_dir))
        served = steps.run("serve and query", lambda r: ", ".join(f"/v1/{k} {v['status']}" for k, v in r.items()),
                           query_service, out_dir, tuned["model"], judged["model"])
    c = synth["counts"]
    good = c["read"] - c["bad_input"]
    synthesis_dir = out_dir / "synthesis"
    result = {
        "synthesis": {"summary": str(synthesis_dir / "summary.json"), "train_json": str(synthesis_dir / "train.json"),
                      "kept_share": round(c["kept"] / good, 3) if good else 0.0,
                      **{k: c[k] for k in ("read", "bad_input", "triplets", "verdicts", "kept", "caption_only",
                                           "examples")}},
        "synthesizer_tuning": {"loss": [tuned["first_loss"], tuned["final_loss"]], "model": console.shown(tuned["model"])},
        "judge_tuning": {"loss": [judged["first_loss"], judged["final_loss"]], "model": console.shown(judged["model"]),
                         "check": judged["check"]},
        "post_training": {"captions_only": {"loss": [captions["first_loss"], captions["final_loss"]],
                                            "model": console.shown(captions["model"])},
                          "single_stage": {"loss": [post["first_loss"], post["final_loss"]],
                                           "model": console.shown(post["model"])}},
        "evaluation": {"report_md": console.shown(scores["outputs"]["report"]),
                       "report_png": console.shown(scores["outputs"]["chart"]),
                       "metrics": str(out_dir / "evaluation" / "metrics.json"), "results": scores["results"]},
        "serving": {k: v["status"] for k, v in served.items()},
        "seconds": steps.times,
    }
    (out_dir / "demo_summary.json").write_text(json.dumps(result, indent=2))
    print(console.made_table([
        ("synthesis summary", result["synthesis"]["summary"]),
        ("training set", result["synthesis"]["train_json"]),
        ("model: captions only", result["post_training"]["captions_only"]["model"]),
        ("model: single-stage", result["post_training"]["single_stage"]["model"]),
        ("evaluation report", result["evaluation"]["report_md"]),
        ("evaluation chart", result["evaluation"]["report_png"]),
        ("demo summary", str(out_dir / "demo_summary.json")),
    ]))
    print(f"kept share: {c['kept']}/{good} images have a kept synthetic task "
          f"({result['synthesis']['kept_share']:.0%}; the paper keeps about 30%)")
    print(f"look at the run: adamllm inspect {synthesis_dir} {out_dir / 'evaluation'}")
    failed = [name for name, ok in checks(result, out_dir).items() if not ok]
    if failed:
        raise CheckFailed(f"{len(failed)} check(s) failed: {'; '.join(failed)}")
    print("demo checks: all pass")
    return result


def checks(result: dict, out_dir: Path) -> dict[str, bool]:
    """What the flow must have done, by name: counts that add up (SPEC §2), losses that go down, a judge
    that answers on prompts it never saw, three models side by side, both service requests answered,
    every file the summary names present."""
    synthesis = json.loads((out_dir / "synthesis" / "summary.json").read_text())
    c = synthesis["counts"]
    verdicts = c["verdicts"] or {}
    train = json.loads((out_dir / "synthesis" / "train.json").read_text())
    metrics = json.loads((out_dir / "evaluation" / "metrics.json").read_text())
    report = (out_dir / "evaluation" / "report.md").read_text()
    losses = {"synthesizer tuning": result["synthesizer_tuning"]["loss"], "judge tuning": result["judge_tuning"]["loss"],
              **{f"post-training ({k.replace('_', ' ')})": v["loss"] for k, v in result["post_training"].items()}}
    named = [result["synthesis"]["summary"], result["synthesis"]["train_json"], result["evaluation"]["report_md"],
             result["evaluation"]["report_png"], result["evaluation"]["metrics"], result["judge_tuning"]["model"],
             result["post_training"]["captions_only"]["model"], result["post_training"]["single_stage"]["model"]]
    return {
        "the 4 broken sample pairs are the bad input": c["bad_input"] == 4,
        "the synthesis summary's own checks pass": all(synthesis["checks"].values()),
        "every triplet has a verdict": sum(verdicts.values()) == c["triplets"],
        "nearly every verdict parses": 10 * sum(verdicts.get(k, 0) for k in ("unparsed", "null", "None"))
        <= c["triplets"],
        "the tuned judge keeps some triplets": c["kept"] > 0,
        "train.json holds one example per good row": len(train) == c["examples"] == c["read"] - c["errors"]
        and all(e["images"] for e in train),
        **{f"{name}: the loss goes down": last < first for name, (first, last) in losses.items()},
        "the judge is checked on 30 or more unseen prompts": result["judge_tuning"]["check"]["n"] >= 30,
        "three models evaluated side by side": set(metrics["results"]) == {"untrained", "captions-only", "adapted"}
        and all(name in report for name in ("untrained", "captions-only", "adapted")),
        "the evaluation's own checks pass": all(metrics["checks"].values()),
        "both service requests answered 200": result["serving"] == {"synthesize": 200, "evaluate": 200},
        "every file the summary names exists": all(Path(p).exists() for p in named),
    }
