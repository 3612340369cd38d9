"""`adamllm <command>`: one entry point for every job. Each command takes `--config FILE.yaml`
where it runs a job, plus dotted `key=value` overrides. Heavy libraries are imported by the command
that needs them, so `--help` stays instant."""

from __future__ import annotations

import argparse
import json
import signal
import sys


def _job(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="job YAML (see jobs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")


def _job_with_prompts(parser: argparse.ArgumentParser) -> None:
    _job(parser)
    parser.add_argument("--show-prompts", type=int, metavar="N", default=None,
                        help="print the exact prompts of the first N input rows and exit, starting no engine")


def cmd_make_tiny_model(a):
    from adamllm_ray.embedded import tiny

    print(tiny.build(a.family, a.out, seed=a.seed))


def cmd_make_sample_data(a):
    from adamllm_ray.embedded import sample_data

    print(sample_data.write_sample_data(a.out, n=a.n, seed=a.seed, broken=not a.no_broken))


def cmd_synthesize(a):
    from adamllm_ray.config import load_config
    from adamllm_ray.synthesis.config import SynthesisConfig

    cfg = load_config(SynthesisConfig, a.config, list(a.overrides) + (["restart=true"] if a.restart else []))
    if a.show_prompts is not None:
        from adamllm_ray import show_prompts

        return show_prompts.run("synthesize", cfg, a.show_prompts)
    from adamllm_ray.synthesis import pipeline

    try:
        pipeline.run(cfg)
    except pipeline.AccountingError as err:
        print(f"adamllm synthesize: {err}", file=sys.stderr)
        return 1


def _synthesize_args(p: argparse.ArgumentParser) -> None:
    _job_with_prompts(p)
    p.add_argument("--restart", action="store_true",
                   help="delete this output folder's earlier results and start over (config: restart: true)")


def cmd_evaluate(a):
    from adamllm_ray.config import load_config
    from adamllm_ray.evaluation.config import EvaluateConfig

    cfg = load_config(EvaluateConfig, a.config, a.overrides)
    if a.show_prompts is not None:
        from adamllm_ray import show_prompts

        return show_prompts.run("evaluate", cfg, a.show_prompts)
    from adamllm_ray.evaluation import run

    return run.main(cfg)


def cmd_make_benchmark(a):
    from adamllm_ray.embedded.make_benchmark import write_benchmark

    print(json.dumps(write_benchmark(a.out, n=a.n, seed=a.seed, broken=a.broken), indent=1))


def cmd_train(a):
    from adamllm_ray.config import load_config
    from adamllm_ray.training.config import TrainConfig

    cfg = load_config(TrainConfig, a.config, a.overrides)
    from adamllm_ray.training import trainer

    try:
        summary = trainer.main(cfg)
    except trainer.TrainError as err:
        print(f"adamllm train: {err}", file=sys.stderr)
        return 1
    keys = ("steps", "first_loss", "final_loss", "examples_skipped", "examples_truncated", "checkpoint", "model")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=1))


def cmd_score(a):
    from adamllm_ray.evaluation import score

    return score.main(a)


def cmd_demo(a):
    from adamllm_ray.embedded import demo

    try:
        demo.run(a.out, n=a.n)
    except demo.CheckFailed as err:
        print(f"adamllm demo: {err}", file=sys.stderr)
        return 1


def cmd_submit(a):
    from adamllm_ray import submit

    command = a.command_line[1:] if a.command_line[:1] == ["--"] else a.command_line
    return submit.submit(a.address, command, working_dir=a.working_dir, env_file=a.runtime_env,
                         follow=not a.no_follow, timeout_s=a.timeout)


def cmd_serve(a):
    from adamllm_ray.config import load_config
    from adamllm_ray.serving.config import ServeConfig

    cfg = load_config(ServeConfig, a.config, a.overrides)
    from adamllm_ray.embedded import tiny
    from adamllm_ray.serving import app

    app.run_until_interrupted(cfg, prepare=tiny.ensure_models)


def cmd_inspect(a):
    from adamllm_ray.inspect import app

    return app.main(a.run_dirs, host=a.host, port=a.port, api_key_env=a.api_key_env)


def cmd_bench(a):
    from adamllm_ray import bench

    bench.run(a.what, a.rows, a.out)


COMMANDS = {
    "make-tiny-model": (
        cmd_make_tiny_model,
        "Build a tiny random-weight model (qwen2_vl, llava_next_llama3, mllama or text) with a locally trained "
        "tokenizer.",
        lambda p: (
            p.add_argument("--family", required=True, choices=["qwen2_vl", "llava_next_llama3", "mllama", "text"]),
            p.add_argument("--out", required=True),
            p.add_argument("--seed", type=int, default=0),
        ),
    ),
    "make-sample-data": (
        cmd_make_sample_data,
        "Draw image-caption pairs with PIL and write them as ShareGPT JSON, parquet and webdataset shards.",
        lambda p: (
            p.add_argument("--out", required=True),
            p.add_argument("--n", type=int, default=32),
            p.add_argument("--seed", type=int, default=0),
            p.add_argument("--no-broken", action="store_true", help="leave out the deliberately broken rows"),
        ),
    ),
    "synthesize": (
        cmd_synthesize,
        "Turn image-caption pairs into a training set: synthesize tasks, judge them, compose, write.",
        _synthesize_args,
    ),
    "evaluate": (
        cmd_evaluate,
        "Evaluate models on the paper's benchmarks (vLLM pools on Ray Data); write predictions, metrics, report.",
        _job_with_prompts,
    ),
    "make-benchmark": (
        cmd_make_benchmark,
        "Write a small benchmark of each of the eight evaluation tasks, in the public sets' layout.",
        lambda p: (
            p.add_argument("--out", required=True),
            p.add_argument("--n", type=int, default=8, help="examples per task"),
            p.add_argument("--seed", type=int, default=0),
            p.add_argument("--broken", action="store_true", help="make row 1 of every task a truncated image"),
        ),
    ),
    "train": (
        cmd_train,
        "Post-train a model on a training set: Ray Train + DeepSpeed ZeRO, checkpoints, Hugging Face export.",
        _job,
    ),
    "serve": (
        cmd_serve,
        "Serve the synthesizer, judge and evaluated model: OpenAI routes plus /v1/synthesize and /v1/evaluate.",
        _job,
    ),
    "score": (
        cmd_score,
        "Score saved predictions (JSONL) of one evaluation task with the paper's metrics.",
        lambda p: (
            p.add_argument("--task", required=True, metavar="TASK",
                           help="slake, pathvqa, vqa_rad, pmc_vqa, recipe1m, nutrition5k, food101 or foodseg103"),
            p.add_argument("--predictions", required=True, metavar="FILE.jsonl",
                           help="one record a line: id, prediction, label and the task's fields"),
            p.add_argument("--output", default=None, metavar="metrics.json",
                           help="where to write the scores (default: FILE.metrics.json beside the predictions)"),
        ),
    ),
    "demo": (
        cmd_demo,
        "Run the whole flow on a private local Ray with tiny models and generated data: tune the synthesizer, "
        "synthesize, post-train, evaluate, serve.",
        lambda p: (
            p.add_argument("--out", default="demo-output", help="folder for everything the demo writes"),
            p.add_argument("--n", type=int, default=48, help="number of generated image-caption pairs"),
        ),
    ),
    "submit": (
        cmd_submit,
        "Run an adamllm command as a Ray job on a cluster (ships the working directory), follow its logs, "
        "and exit with the job's status.",
        lambda p: (
            p.add_argument("--address", required=True, help="the cluster's job API, e.g. http://HEAD:8265"),
            p.add_argument("--working-dir", default=".", help="folder shipped to the cluster (the project root)"),
            p.add_argument("--runtime-env", default="jobs/runtime_env.yaml", help="runtime env YAML (excludes, env vars)"),
            p.add_argument("--no-follow", action="store_true", help="do not print the job's logs (still waits for its end)"),
            p.add_argument("--timeout", type=float, default=None, help="stop the job after this many seconds"),
            p.add_argument("command_line", nargs=argparse.REMAINDER, help="-- adamllm <command> --config FILE ..."),
        ),
    ),
    "inspect": (
        cmd_inspect,
        "Look at a synthesis or evaluation output folder (or two side by side) in the browser before training on it.",
        lambda p: (
            p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="synthesis or evaluation output folder"),
            p.add_argument("--host", default="127.0.0.1", help="other than loopback only with the API key set"),
            p.add_argument("--port", type=int, default=8765),
            p.add_argument("--api-key-env", default="ADAMLLM_API_KEY", help="environment variable holding the key"),
        ),
    ),
    "bench": (
        cmd_bench,
        "Measure throughput targets side by side in one run and print ratios.",
        lambda p: (
            p.add_argument("what", choices=sorted(__import__("adamllm_ray.bench").bench.BENCHMARKS)),
            p.add_argument("--rows", type=int, default=10000),
            p.add_argument("--out", default=None, help="write the measurements as JSON here"),
        ),
    ),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="adamllm", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, help_text, configure) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", help="show the traceback of an error")
        configure(p)
        p.set_defaults(func=func)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error (config, input file, model path, storage) is one line and exit
    code 2; anything else one line and exit code 1; the traceback only with --debug."""
    args = parser().parse_args(argv)
    from adamllm_ray.config import ConfigError

    try:
        rc = args.func(args)
    except ConfigError as err:
        if args.debug:
            raise
        print(f"adamllm {args.command}: config error:\n{err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"adamllm {args.command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as stop:  # Ray's driver handler turns SIGTERM (kill, `ray job stop`) into sys.exit(15)
        if stop.code != signal.SIGTERM:
            raise
        print(f"adamllm {args.command}: stopped (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception as err:  # noqa: BLE001 - the one place errors become messages
        if args.debug:
            raise
        user = isinstance(err, (OSError, ValueError))
        print(f"adamllm {args.command}: {'error' if user else 'unexpected error'}: "
              f"{type(err).__name__}: {' '.join(str(err).split()) or '(no message)'} (--debug shows the traceback)",
              file=sys.stderr)
        return 2 if user else 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
