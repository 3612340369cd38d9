"""`adamllm synthesize|evaluate --show-prompts N`: the exact prompts of the first N rows, printed in
seconds from a 10,000-row source, with no Ray, no vLLM and no engine started. Expected prompts are
written out from SPEC.md sections 1 and 4."""

import io
import json
import subprocess
import sys
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

ROWS = 10_000
TARGET_S = 15

# SPEC §1, the released synthesizer's prompt (llava_next_llama3) for the caption "A red car."
LLAVA_SYNTHESIS = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision "
    "assistant. You are able to understand the visual content that the user provides, and assist the user "
    "with a variety of tasks using natural language.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    "<|reserved_special_token_4|>\nDescribe the image.<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    "\n\nA red car.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
)
# the Qwen2-VL chat format of the same conversation
QWEN_SYNTHESIS = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n<|im_start|>assistant\n"
    "A red car.<|im_end|>\n<|im_start|>user\n"
)
# SPEC §4: Qwen2-VL's chat template, default system turn, image then text in one user turn
QWEN_EVALUATION = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>Is the lung healthy?<|im_end|>\n<|im_start|>assistant\n"
)


def png(width=64, height=48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def run_cli(*args, timeout=120):
    """Run the command in a fresh interpreter and report whether Ray or vLLM was ever imported."""
    code = (
        "import sys; from adamllm_ray import cli; rc = cli.main(sys.argv[1:]); "
        "print('LOADED', 'ray' in sys.modules, 'vllm' in sys.modules); sys.exit(rc)"
    )
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    return r, time.perf_counter() - start


def prompts_of(stdout: str, label: str) -> list[str]:
    return [json.loads(line[len(label):]) for line in stdout.splitlines() if line.startswith(label)]


def write_config(path, text):
    path.write_text(text)
    return str(path)


def check_nothing_started(r):
    assert r.returncode == 0, r.stderr
    assert "LOADED False False" in r.stdout  # neither Ray nor vLLM was imported, let alone started


def test_synthesize_sharegpt_first_rows_of_a_large_source(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "car.png").write_bytes(png())
    entries = [{"id": f"p{i}", "images": ["images/car.png" if i != 1 else "images/missing.png"],
                "messages": [{"role": "user", "content": "<image>Describe the image."},
                             {"role": "assistant", "content": "A red car."}]} for i in range(ROWS)]
    (tmp_path / "pairs.json").write_text(json.dumps(entries))
    config = write_config(tmp_path / "job.yaml", (
        f"source: {{format: sharegpt, path: {tmp_path / 'pairs.json'}}}\n"
        f"output: {tmp_path / 'out'}\n"
        "family: llava_next_llama3\n"
        "ray: {address: 'ray://127.0.0.1:1'}\n"  # unreachable: attaching would fail
        "synthesizer: {model: AdaptLLM/visual-instruction-synthesizer}\n"  # a hub id: nothing is fetched
        "judge: {model: meta-llama/Meta-Llama-3-8B}\n"
    ))
    r, wall = run_cli("synthesize", "--config", config, "--show-prompts", "10")
    check_nothing_started(r)
    assert wall < TARGET_S, f"--show-prompts 10 on {ROWS} rows took {wall:.1f}s"
    assert prompts_of(r.stdout, "synthesizer prompt: ") == [LLAVA_SYNTHESIS] * 9
    assert "row 1: id 'p0', images/car.png, image 64x48\n" in r.stdout
    assert "row 2: id 'p1': not sent (read: " in r.stdout
    assert "row 11" not in r.stdout
    assert "judge: model " in r.stdout and "template adamllm_ray/prompts/judge_fewshot.txt" in r.stdout
    assert not (tmp_path / "out").exists()


def test_synthesize_parquet_and_webdataset_qwen(tmp_path):
    image = png()
    ids = [f"q{i}" for i in range(ROWS)]
    pq.write_table(pa.table({"id": ids, "image": [image] * ROWS, "caption": ["A red car."] * ROWS}),
                   tmp_path / "pairs.parquet")
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "shard-0.tar", "w") as tar:
        for i in range(ROWS):
            for ext, data in (("png", image), ("txt", b"A red car.")):
                info = tarfile.TarInfo(f"s{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    for fmt, path in (("parquet", tmp_path / "pairs.parquet"), ("webdataset", tmp_path / "shards")):
        config = write_config(tmp_path / f"{fmt}.yaml", (
            f"source: {{format: {fmt}, path: {path}}}\n"
            f"output: {tmp_path / 'out'}\nfamily: qwen2_vl\nsynthesizer: {{model: none}}\njudge: null\n"
        ))
        r, wall = run_cli("synthesize", "--config", config, "--show-prompts", "10")
        check_nothing_started(r)
        assert wall < TARGET_S, f"{fmt}: --show-prompts 10 on {ROWS} rows took {wall:.1f}s"
        assert prompts_of(r.stdout, "synthesizer prompt: ") == [QWEN_SYNTHESIS] * 10, fmt
        assert "judge: none" in r.stdout


def test_evaluate_first_examples_with_qwen_pixel_bounds(tmp_path):
    folder = tmp_path / "slake"
    folder.mkdir()
    big = png(2000, 1500)  # over Qwen2-VL's max_pixels (1280*28*28)
    pq.write_table(pa.table({
        "image": [{"bytes": big, "path": None}] + [{"bytes": png(), "path": None}] * (ROWS - 1),
        "question": ["Is the lung healthy?"] * ROWS,
        "label": ["yes"] * ROWS,
        "answer_type": ["CLOSED"] * ROWS,
    }), folder / "test.parquet")
    config = write_config(tmp_path / "eval.yaml", (
        f"output: {tmp_path / 'out'}\n"
        "models: [{name: base, model: Qwen/Qwen2-VL-2B-Instruct, family: qwen2_vl}]\n"
        f"tasks: [{{name: slake, data: {folder}}}]\n"
    ))
    r, wall = run_cli("evaluate", "--config", config, "--show-prompts", "10")
    check_nothing_started(r)
    assert wall < TARGET_S, f"--show-prompts 10 on {ROWS} examples took {wall:.1f}s"
    assert prompts_of(r.stdout, "prompt: ") == [QWEN_EVALUATION] * 10
    assert f"task slake: 10 of {ROWS} examples" in r.stdout
    # SPEC §4 bounds: 2000x1500 is resized to sides that are multiples of 28 within 1280*28*28 pixels
    assert "example 0 (id 0), image 2000x1500, sent as 1148x840 after qwen2_vl's resizing" in r.stdout
    assert (1148 // 28) * (840 // 28) <= 1280
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("n", ["0", "-3"])
def test_show_prompts_needs_a_positive_count(tmp_path, n):
    config = write_config(tmp_path / "job.yaml", (
        f"source: {{format: sharegpt, path: {tmp_path}}}\noutput: {tmp_path / 'out'}\nsynthesizer: {{model: none}}\n"
    ))
    r, _ = run_cli("synthesize", "--config", config, "--show-prompts", n)
    assert r.returncode == 2
    assert f"--show-prompts needs a positive number of rows, got {n}" in r.stderr
    assert "Traceback" not in r.stderr


def test_show_prompts_on_a_missing_source_is_one_line(tmp_path):
    config = write_config(tmp_path / "job.yaml", (
        f"source: {{format: parquet, path: {tmp_path / 'nowhere'}}}\noutput: {tmp_path / 'out'}\n"
        "synthesizer: {model: none}\n"
    ))
    r, _ = run_cli("synthesize", "--config", config, "--show-prompts", "3")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "nowhere" in r.stderr


def test_resize_rule_is_the_qwen2_vl_processors():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from adamllm_ray.show_prompts import sent_image_size

    bounds = {"min_pixels": 224 * 224, "max_pixels": 1280 * 28 * 28}
    for width, height in [(2000, 1500), (64, 48), (28, 28), (10, 1900), (4032, 3024), (224, 224), (1000, 37), (333, 777)]:
        h, w = smart_resize(height, width, min_pixels=bounds["min_pixels"], max_pixels=bounds["max_pixels"])
        assert sent_image_size(bounds, width, height) == (w, h), (width, height)
    assert sent_image_size({}, 2000, 1500) is None
    with pytest.raises(ValueError, match="aspect ratio 250 is over 200"):
        sent_image_size(bounds, 5000, 20)
