"""Config loading (unknown keys named with their file, dotted overrides) and the CLI's --help."""

import subprocess
import sys

import pytest

from adamllm_ray.cli import COMMANDS
from adamllm_ray.config import ConfigError, load_config
from adamllm_ray.synthesis.config import SynthesisConfig

GOOD = """\
source: {format: parquet, path: data/}
output: out/
synthesizer: {model: m, concurrency: 1}
"""


@pytest.fixture(autouse=True)
def _in_project(tmp_path, monkeypatch):
    """GOOD's relative paths exist in the directory the command runs in."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()


def test_misspelled_key_names_key_and_file(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text(GOOD.replace("concurrency: 1", "concurency: 1"))
    with pytest.raises(ConfigError) as err:
        load_config(SynthesisConfig, p)
    assert "synthesizer.concurency" in str(err.value) and str(p) in str(err.value)


def test_overrides_and_types(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text(GOOD)
    cfg = load_config(SynthesisConfig, p, ["synthesizer.concurrency=[1,4]", "source.limit=10"])
    assert cfg.synthesizer.concurrency == (1, 4) and cfg.source.limit == 10
    assert cfg.source.path == str(tmp_path / "data") and cfg.output == str(tmp_path / "out")
    assert cfg.synthesizer.model == "m", "a bare name that is not a local path stays a hub id"
    with pytest.raises(ConfigError, match="synthesizer.concurrency"):
        load_config(SynthesisConfig, p, ["synthesizer.concurrency=[4,1]"])
    with pytest.raises(ConfigError, match="missing key 'output'"):
        load_config(SynthesisConfig, None, [])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(SynthesisConfig, p, ["synthesizer.model"])


def test_cli_reports_config_errors_without_traceback(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text(GOOD + "typo_key: 1\n")
    r = subprocess.run([sys.executable, "-m", "adamllm_ray.cli", "synthesize", "--config", str(p)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == f"adamllm synthesize: config error:\n{p}: unknown key 'typo_key'\n", r.stderr


def test_relative_paths_resolve_against_the_command_directory(tmp_path):
    """A job config's relative paths are made absolute where the command starts, before any Ray
    worker sees them; a required one that is not there is named with the directory it was looked for in."""
    from conftest import ROOT

    r = subprocess.run([sys.executable, "-m", "adamllm_ray.cli", "train", "--config",
                        str(ROOT / "jobs" / "train" / "tiny_cpu.yaml")], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "Repo id" not in r.stderr
    assert f"key 'data.path': path '{tmp_path}/demo-output/synthesis/train.json' does not exist" in r.stderr
    assert f"resolved against {tmp_path}" in r.stderr
    (tmp_path / "models" / "m").mkdir(parents=True)
    p = tmp_path / "job.yaml"
    p.write_text(GOOD.replace("model: m", "model: models/m") + "judge_prompt: prompts/missing.txt\n")
    with pytest.raises(ConfigError) as err:
        load_config(SynthesisConfig, p)
    assert f"key 'judge_prompt': path '{tmp_path}/prompts/missing.txt' does not exist" in str(err.value)
    cfg = load_config(SynthesisConfig, p, ["judge_prompt=null"])
    assert cfg.synthesizer.model == str(tmp_path / "models" / "m"), "an existing relative folder is a local model"
    assert load_config(SynthesisConfig, p, ["synthesizer.model=Qwen/Qwen2-VL-2B-Instruct", "judge_prompt=null"]
                       ).synthesizer.model == "Qwen/Qwen2-VL-2B-Instruct"
    assert load_config(SynthesisConfig, p, ["output=s3://bucket/out", "judge_prompt=null"]).output == "s3://bucket/out"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help(command):
    r = subprocess.run([sys.executable, "-m", "adamllm_ray.cli", command, "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and COMMANDS[command][1].split()[0] in r.stdout


def test_engine_pool_size_is_fixed_or_a_range():
    from adamllm_ray import engine
    from adamllm_ray.config import EngineConfig

    fixed = engine.processor_config(EngineConfig(model="m", concurrency=2), multimodal=True)
    assert fixed.get_concurrency() == {"min_size": 2, "max_size": 2}
    scaling = engine.processor_config(EngineConfig(model="m", concurrency=(1, 4)), multimodal=True)
    assert scaling.get_concurrency() == {"min_size": 1, "max_size": 4}


def test_engine_env_leaves_a_submitted_jobs_variables_to_the_job(monkeypatch):
    """Inside `adamllm submit`, Ray refuses a ray.init runtime env naming a variable the job's runtime env
    sets (jobs/runtime_env.yaml sets TOKENIZERS_PARALLELISM): the engines' env must not name it again."""
    import json

    import yaml

    from adamllm_ray import engine
    from adamllm_ray.config import EngineConfig
    from conftest import ROOT

    job_env = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    alone = engine.engine_env(EngineConfig(model="m"))
    assert alone["TOKENIZERS_PARALLELISM"] == "false" and alone["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": job_env}))
    in_job = engine.engine_env(EngineConfig(model="m"))
    assert not set(in_job) & set(job_env["env_vars"])
    assert in_job["HF_HUB_OFFLINE"] == "1" and in_job["VLLM_CPU_KVCACHE_SPACE"]


def test_unknown_placement_strategy_is_named():
    from adamllm_ray.training.config import TrainConfig
    from conftest import ROOT

    with pytest.raises(ConfigError, match="scaling.placement_strategy"):
        load_config(TrainConfig, ROOT / "jobs" / "train" / "tiny_cpu.yaml", ["scaling.placement_strategy=SPREAD_OUT"])


@pytest.mark.parametrize("argv, says", [
    (["synthesize", "--config", "missing.yaml"], "config file not found: missing.yaml"),
    (["score", "--task", "slake", "--predictions", "missing.jsonl"], "missing.jsonl"),
    (["make-tiny-model", "--family", "text", "--out", "/proc/not-writable/m"], "No such file or directory"),
    (["train", "--config", "job.yaml"], "missing key 'model'"),
])
def test_user_errors_are_one_message_and_exit_2(tmp_path, argv, says):
    (tmp_path / "job.yaml").write_text("output: out\n")
    r = subprocess.run([sys.executable, "-m", "adamllm_ray.cli", *argv], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"adamllm {argv[0]}:")


def test_debug_shows_the_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "adamllm_ray.cli", "make-tiny-model", "--family", "text", "--out",
                        "/proc/not-writable/m", "--debug"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr


def local_ray_prints(tmp_path, ray_config: str, tag: str, values: str, env: dict | None = None) -> list[str]:
    """In a fresh process: `init_ray(RayConfig(RAY_CONFIG))` as a job starts its private Ray, then print
    `TAG` and the Python expressions `values` (`ray` and `os` imported); the printed values."""
    import os

    from conftest import ROOT

    code = ("import os, ray; from adamllm_ray.config import RayConfig; from adamllm_ray.ray_session import init_ray; "
            f"init_ray(RayConfig({ray_config})); print({tag!r}, {values}); ray.shutdown()")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    line = next((x for x in r.stdout.splitlines() if x.startswith(f"{tag} ")), None)
    assert line is not None, r.stderr[-2000:]
    return line.split()[1:]


def test_a_local_ray_gets_the_object_store_size_the_job_asks_for(tmp_path):
    """`ray.object_store_gib` bounds a private Ray's object store (a long streaming run's resident
    memory grows until the store's pages have all been used once); 0 or less is refused, named."""
    from adamllm_ray.config import RayConfig

    with pytest.raises(ValueError, match="object_store_gib"):
        RayConfig(object_store_gib=0)
    store = local_ray_prints(tmp_path, "num_cpus=1, object_store_gib=0.25", "STORE",
                             "ray.cluster_resources()['object_store_memory']")
    assert float(store[0]) == 0.25 * 2**30


def test_a_local_ray_runs_its_workers_at_the_drivers_priority(tmp_path):
    """A private Ray's workers (and so the vLLM processes an engine actor starts) run at the driver's
    niceness, not Ray's default 15; the setting stays with that instance: the caller's environment, which
    a cluster's `ray start` would inherit, is unchanged. RAY_worker_niceness in the environment still wins."""
    values = "os.nice(0), ray.get(ray.remote(lambda: os.nice(0)).remote()), os.environ.get('RAY_worker_niceness')"
    driver, worker, env = local_ray_prints(tmp_path, "num_cpus=1", "NICE", values)
    assert worker == driver and env == "None"
    assert local_ray_prints(tmp_path, "num_cpus=1", "NICE", values, {"RAY_worker_niceness": "7"})[1] == str(int(driver) + 7)
