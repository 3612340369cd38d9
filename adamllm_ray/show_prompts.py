"""`--show-prompts N`: the exact prompts a synthesis or evaluation job would send, for its first N
input rows, printed without starting Ray or an engine, so a user sees what will be asked before
paying for the engines.

Only what the first N rows need is read: the sources' index is built file by file until N rows are
known, and only their images are read and checked. Prompts are printed as JSON strings, so every
newline, space and special token is visible and the text can be copied back exactly with
`json.loads`. The prompts come from the functions the jobs call.
"""

from __future__ import annotations

import io
import json
import math
import sys
from typing import Any

from PIL import Image

from adamllm_ray import records, sources
from adamllm_ray.config import ConfigError, SourceConfig
from adamllm_ray.evaluation.config import EvaluateConfig
from adamllm_ray.synthesis.config import SynthesisConfig


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def sent_image_size(processor_kwargs: dict[str, Any], width: int, height: int) -> tuple[int, int] | None:
    """(width, height) after the processor's resizing within the pixel bounds the engine is given
    (Qwen2-VL's min_pixels/max_pixels); None when no bounds are set. The rule is the Hugging Face
    Qwen2-VL processor's `smart_resize` (sides multiples of 28 = patch 14 x merge 2, pixels within
    the bounds, aspect kept), written out here because importing it loads torch: tens of seconds.
    A test checks it against the processor's own function."""
    if "min_pixels" not in processor_kwargs and "max_pixels" not in processor_kwargs:
        return None
    lo = processor_kwargs.get("min_pixels", 56 * 56)
    hi = processor_kwargs.get("max_pixels", 28 * 28 * 1280)
    factor = 28
    ratio = max(height, width) / min(height, width)
    if ratio > 200:
        raise ValueError(f"aspect ratio {ratio:.0f} is over 200: the processor refuses it")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > hi:
        beta = math.sqrt(height * width / hi)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < lo:
        beta = math.sqrt(lo / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return w, h


def _image_text(family: Any, engine_kwargs: dict[str, Any], data: bytes) -> str:
    w, h = _size(data)
    try:
        sent = sent_image_size(engine_kwargs.get("mm_processor_kwargs") or {}, w, h)
    except ValueError as err:
        return f"image {w}x{h}, {err}"
    if sent is None:
        return f"image {w}x{h}"
    return f"image {w}x{h}, sent as {sent[0]}x{sent[1]} after {family.name}'s resizing"


# ---------------------------------------------------------------- the first rows of a synthesis source


def source_head(cfg: SourceConfig, n: int, rules: sources.CaptionRules) -> list[dict]:
    """The first n source rows as the job reads them (same ids, checks and error rows). The index is
    built file by file until n rows are known; only their images are read. A repeated id among them
    is found too: its first occurrence is always earlier in the source."""
    n = n if cfg.limit is None else min(n, cfg.limit)
    files, root = sources.source_files(cfg)
    index: list[dict] = []
    for i, f in enumerate(files):
        if len(index) >= n:
            break
        index.extend(sources.index_file(cfg, f, root, i, rules)[: n - len(index)])
    return sources._rows_of(cfg, index, sources.scan_rows(index).gate(set()), rules)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def synthesis(cfg: SynthesisConfig, n: int, out=sys.stdout) -> int:
    from adamllm_ray.families import get_family
    from adamllm_ray.synthesis.filter import DEFAULT_JUDGE_PROMPT, load_judge_prompt
    from adamllm_ray.synthesis.pipeline import caption_rules, synthesis_sampling

    family = get_family(cfg.family)
    kwargs = {**family.engine_kwargs(synthesis=True), **cfg.synthesizer.engine_kwargs}
    print(f"adamllm synthesize --show-prompts {n}: nothing started; the first {n} rows of {cfg.source.path}",
          file=out)
    print(f"synthesizer: model {cfg.synthesizer.model}, family {family.name}, sampling "
          f"{_json(synthesis_sampling(cfg.synthesizer, family))}", file=out)
    if cfg.judge is None:
        print("judge: none (every triplet is kept)", file=out)
    else:
        load_judge_prompt(cfg.judge_prompt)  # a refused template is reported here too
        template = cfg.judge_prompt or f"adamllm_ray/prompts/{DEFAULT_JUDGE_PROMPT} (the project's own)"
        print(f"judge: model {cfg.judge.model}, template {template}; its prompt is that template filled with the "
              "triplet ({Q}, {informative_A}, {precise_A}) parsed from the synthesizer's output, so it cannot be "
              "shown before synthesis", file=out)
    for i, row in enumerate(source_head(cfg.source, n, caption_rules(cfg)), start=1):
        err = row[records.ERROR]
        if err is not None:
            print(f"\nrow {i}: id {row[records.ID]!r}: not sent ({err['stage']}: {err['message']})", file=out)
            continue
        image = _image_text(family, kwargs, row[records.IMAGE])
        print(f"\nrow {i}: id {row[records.ID]!r}, {row[records.IMAGE_PATH]}, {image}", file=out)
        print("synthesizer prompt: " + _json(family.synthesis_prompt(row[records.CAPTION])), file=out)
    return 0


# ---------------------------------------------------------------- the first examples of each benchmark


def _first_examples(plan, limits, n: int) -> list[dict]:
    from adamllm_ray.evaluation import benchmark

    rows: list[dict] = []
    for f in plan.files:
        for chunk in benchmark.read_file(plan, f, limits, chunk=max(1, n - len(rows))):
            rows.extend(chunk[: n - len(rows)])
            if len(rows) >= n:
                return rows
    return rows


def evaluation(cfg: EvaluateConfig, n: int, out=sys.stdout) -> int:
    from adamllm_ray.evaluation import benchmark
    from adamllm_ray.evaluation.prompts import engine_kwargs, evaluation_prompt
    from adamllm_ray.families import get_family

    print(f"adamllm evaluate --show-prompts {n}: nothing started; the first {n} examples of each task", file=out)
    plans = [benchmark.plan_task(t) for t in cfg.tasks]
    for model in cfg.models:
        family = get_family(model.family)
        kwargs = engine_kwargs(family, model.engine_kwargs)
        for plan in plans:
            examples = _first_examples(plan, cfg.images, n)
            print(f"\nmodel {model.name} ({model.model}, family {family.name}), task {plan.task}: "
                  f"{len(examples)} of {plan.examples} examples", file=out)
            for row in examples:
                record = json.loads(row["record"])
                if row[records.ERROR] is not None:
                    err = json.loads(row[records.ERROR])
                    print(f"example {row['index']} (id {record['id']!r}): not sent ({err['stage']}: {err['message']})",
                          file=out)
                    continue
                image = _image_text(family, kwargs, row["image"])
                print(f"example {row['index']} (id {record['id']!r}), {image}", file=out)
                print("prompt: " + _json(evaluation_prompt(family, row["prompt_text"])), file=out)
    return 0


def run(kind: str, cfg: Any, n: int) -> int:
    """Print and return an exit code; a source or benchmark the job could not read is one line, exit 2."""
    from adamllm_ray.evaluation.benchmark import BenchmarkError

    if n < 1:
        print(f"adamllm {kind}: --show-prompts needs a positive number of rows, got {n}", file=sys.stderr)
        return 2
    try:
        return synthesis(cfg, n) if kind == "synthesize" else evaluation(cfg, n)
    except ConfigError:
        raise
    except (FileNotFoundError, BenchmarkError, ValueError, OSError) as err:
        print(f"adamllm {kind}: {err}", file=sys.stderr)
        return 2

