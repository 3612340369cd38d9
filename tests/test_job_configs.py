"""Every job config under jobs/ parses, fits the config model of the command that runs it, and says on its
first line how to run it: `# adamllm <command> --config <its own path>`. A config that drifts from its model
fails here rather than minutes into a cluster job."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from adamllm_ray import config
from adamllm_ray.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"
# jobs/<folder>/... is run by `adamllm <folder>` and loads into this model of its stage's config.py.
MODELS = {
    "synthesize": "adamllm_ray.synthesis.config:SynthesisConfig",
    "train": "adamllm_ray.training.config:TrainConfig",
    "evaluate": "adamllm_ray.evaluation.config:EvaluateConfig",
    "serve": "adamllm_ray.serving.config:ServeConfig",
}
# Files under jobs/ that are not job configs of an adamllm command.
NOT_JOB_CONFIGS = {"jobs/runtime_env.yaml"}


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def yaml_files() -> list[Path]:
    return sorted([*JOBS.rglob("*.yaml"), *JOBS.rglob("*.yml")])


def job_configs() -> list[Path]:
    return [p for p in yaml_files() if rel(p) not in NOT_JOB_CONFIGS]


def is_serve_deploy_config(data) -> bool:
    """A Ray Serve config for `serve run` / `serve deploy` (its own schema), not an adamllm job config."""
    return isinstance(data, dict) and "applications" in data


def folder_of(path: Path) -> str | None:
    parts = path.relative_to(JOBS).parts
    return parts[0] if len(parts) > 1 else None


def first_line_problem(path: str, text: str, command: str, serve_deploy: bool) -> str | None:
    """What is wrong with the config's first line, or None: it must give the command that runs this file."""
    first = text.splitlines()[0] if text else ""
    if serve_deploy:
        if re.fullmatch(rf"# serve (run|deploy) {re.escape(path)}(\s.*)?", first):
            return None
        return f"{path}: first line should be `# serve run {path}` (or `serve deploy`), got {first!r}"
    if re.fullmatch(rf"# adamllm {re.escape(command)} --config {re.escape(path)}(\s.*)?", first):
        return None
    return f"{path}: first line should be `# adamllm {command} --config {path}`, got {first!r}"


@pytest.mark.parametrize("path", yaml_files(), ids=rel)
def test_yaml_parses_to_a_mapping(path):
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        pytest.fail(f"{rel(path)}: not valid YAML: {err}")
    assert isinstance(data, dict), f"{rel(path)}: the top level must be a mapping of keys"


@pytest.mark.parametrize("path", job_configs(), ids=rel)
def test_job_config_loads_into_its_commands_model(path):
    folder = folder_of(path)
    assert folder in MODELS, f"{rel(path)}: no config model known for jobs/{folder}/ (add it to MODELS)"
    data = yaml.safe_load(path.read_text())
    if is_serve_deploy_config(data):
        from ray.serve.schema import ServeDeploySchema

        ServeDeploySchema.model_validate(data)
        return
    module, name = MODELS[folder].split(":")
    model = getattr(importlib.import_module(module), name)
    try:  # the paths a job names exist where it runs (a cluster, or after the demo), not necessarily here
        config.load_config(model, path, check_paths=False)
    except config.ConfigError as err:
        pytest.fail(str(err))


@pytest.mark.parametrize("path", job_configs(), ids=rel)
def test_job_config_first_line_gives_the_command_that_runs_it(path):
    folder = folder_of(path)
    assert folder in MODELS, f"{rel(path)}: no command known for jobs/{folder}/ (add it to MODELS)"
    text = path.read_text()
    problem = first_line_problem(rel(path), text, folder, is_serve_deploy_config(yaml.safe_load(text)))
    assert problem is None, problem
    if not is_serve_deploy_config(yaml.safe_load(text)):
        assert folder in COMMANDS, f"{rel(path)}: `adamllm {folder}` is not a command (adamllm_ray.cli.COMMANDS)"


def test_first_line_check_names_what_is_wrong():
    path = "jobs/synthesize/x.yaml"
    good = "# adamllm synthesize --config jobs/synthesize/x.yaml\nsource: {}\n"
    assert first_line_problem(path, good, "synthesize", serve_deploy=False) is None
    with_overrides = "# adamllm synthesize --config jobs/synthesize/x.yaml source.limit=8\n"
    assert first_line_problem(path, with_overrides, "synthesize", serve_deploy=False) is None
    assert first_line_problem(path, "source: {}\n", "synthesize", serve_deploy=False) == (
        "jobs/synthesize/x.yaml: first line should be `# adamllm synthesize --config jobs/synthesize/x.yaml`, "
        "got 'source: {}'"
    )
    other_file = "# adamllm synthesize --config jobs/synthesize/y.yaml\n"
    assert first_line_problem(path, other_file, "synthesize", serve_deploy=False) is not None
    assert first_line_problem("jobs/serve/s.yaml", "# serve run jobs/serve/s.yaml\n", "serve", serve_deploy=True) is None
