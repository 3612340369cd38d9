"""The serving application: request checks without Ray, then the service itself (tiny models on vLLM CPU,
127.0.0.1, one start for the whole module).

The synthesizer here is the tiny Qwen2-VL taught one seed conversation (a few seconds of overfitting), so
its greedy output has a triplet and /v1/synthesize goes through every branch: parse, pairing, judge,
compose. The reference for its output is an offline `vllm.LLM` run of the same raw prompt and image in a
separate process (the batch pipeline's engine path); the reference for the judge's output is the judge's
own /v1/completions route."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from adamllm_ray.config import ImageLimits, load_config
from adamllm_ray.serving.config import ServeConfig
from adamllm_ray.records import CAPTION, CAPTION_PROMPT, DEFAULT_CAPTION_PROMPT, ERROR, ID, IMAGE, IMAGE_PATH, \
    RAW_OUTPUT
from adamllm_ray.serving.requests import RequestError, parse_evaluate, parse_synthesize
from conftest import ROOT, free_port

CAPTION_TEXT = "A red square on a white plate."
TAUGHT_PAIRS = [
    {"question": "What color is the square?", "answer": "Red.", "kind": "precise"},
    {"question": "What color is the square?", "answer": "The square is red, so the answer is red.", "kind": "informative"},
]
KEY = "test-key-0123"


def png(w: int = 64, h: int = 48, color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------- request checks (no Ray)

LIMITS = ImageLimits(max_decoded_pixels=200 * 200)


def synth_error(data: dict, judge_available: bool = True) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_synthesize(data, LIMITS, "qwen2_vl", judge_available)
    return info.value


def eval_error(data: dict) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_evaluate(data, LIMITS)
    return info.value


def test_synthesize_request_fields():
    good = {"image": b64(png()), "caption": "a caption"}
    req = parse_synthesize(good, LIMITS, "qwen2_vl", True)
    assert (req.family, req.judge, req.compose, req.caption_prompt) == ("qwen2_vl", True, True, DEFAULT_CAPTION_PROMPT)
    assert req.id == parse_synthesize(dict(good), LIMITS, "qwen2_vl", True).id  # derived from the inputs
    assert parse_synthesize({**good, "id": 7}, LIMITS, "qwen2_vl", True).id == "7"  # rows carry string ids
    data_url = parse_synthesize({**good, "image": "data:image/png;base64," + b64(png())}, LIMITS, "qwen2_vl", True)
    assert data_url.image == png()
    assert parse_synthesize({**good, "judge": "false"}, LIMITS, "qwen2_vl", True).judge is False  # multipart text

    cases = [
        ({"caption": "x"}, "image", 400, "image: missing"),
        ({**good, "image": "not base64!"}, "image", 400, "image: not valid base64"),
        ({**good, "image": b64(b"hello world")}, "image", 400, "image: not an image"),
        ({**good, "image": b64(png(300, 300))}, "image", 413, "image: image too large"),
        ({**good, "image": 5}, "image", 400, "image: must be base64 text"),
        ({"image": good["image"]}, "caption", 400, "caption: missing"),
        ({**good, "caption": "   "}, "caption", 400, "caption: empty"),
        ({**good, "caption": ["x"]}, "caption", 400, "caption: must be a string"),
        ({**good, "family": "gpt"}, "family", 400, "family: unknown model family 'gpt'"),
        ({**good, "judge": "maybe"}, "judge", 400, "judge: must be true or false"),
        ({**good, "id": True}, "id", 400, "id: must be a string or an integer"),
        ({**good, "colour": "red"}, "colour", 400, "colour: unknown field"),
    ]
    for data, field, status, start in cases:
        err = synth_error(data)
        assert (err.field, err.status) == (field, status), (data.keys(), str(err))
        assert str(err).startswith(start), str(err)
    err = synth_error({**good, "judge": True}, judge_available=False)
    assert err.field == "judge" and "no judge model is configured" in str(err)


def test_evaluate_request_fields():
    image = b64(png())
    req = parse_evaluate({"task": "slake", "image": image, "question": "Is it red?"}, LIMITS)
    assert (req.prompt, req.record, req.max_tokens) == ("Is it red?", None, 1024)
    req = parse_evaluate({"task": "pmc_vqa", "image": image, "question": "Which?", "options": ["a", "b", "c", "d"],
                          "label": "B", "id": 3}, LIMITS)
    assert req.prompt == "Question: Which? The choices are: A. a, B. b, C. c, D. d"
    assert req.record == {"id": "3", "index": 0, "label": "B", "options": ["a", "b", "c", "d"]}
    req = parse_evaluate({"task": "food101", "image": image, "options": '["apple_pie", "sushi"]', "label": "sushi"},
                         LIMITS)  # multipart sends lists as JSON text
    assert req.prompt.endswith("options: apple pie, sushi")

    cases = [
        ({"image": image}, "task", "task: missing"),
        ({"task": "imagenet", "image": image}, "task", "task: unknown task 'imagenet'"),
        ({"task": "slake", "image": image}, "question", "question: missing"),
        ({"task": "slake", "question": "q"}, "image", "image: missing"),
        ({"task": "slake", "image": image, "question": "q", "label": "yes"}, "answer_type",
         "answer_type: missing field 'answer_type'"),
        ({"task": "slake", "image": image, "question": "q", "label": "yes", "answer_type": "MAYBE"}, "answer_type",
         "answer_type: 'answer_type' must be"),
        ({"task": "pmc_vqa", "image": image, "question": "q"}, "options", "options: missing"),
        ({"task": "pmc_vqa", "image": image, "question": "q", "options": ["a", "b"]}, "options",
         "options: PMC-VQA needs 4 options"),
        ({"task": "pmc_vqa", "image": image, "question": "q", "options": list("abcd"), "label": "E"}, "label",
         "label: 'label' must be one of A, B, C, D"),
        ({"task": "foodseg103", "image": image, "vocabulary": ["rice"], "label": ["bread"]}, "label",
         "label: 'label' phrase 'bread' is not in the vocabulary"),
        ({"task": "nutrition5k", "image": image, "label": ["rice"]}, "vocabulary", "vocabulary: missing field"),
        ({"task": "slake", "image": image, "question": "q", "max_tokens": 5000}, "max_tokens",
         "max_tokens: must be an integer from 1 to 1024"),
    ]
    for data, field, start in cases:
        err = eval_error(data)
        assert (err.field, err.status) == (field, 400), (data, str(err))
        assert str(err).startswith(start), str(err)


def test_model_calls_time_out_or_fail_with_a_message():
    from adamllm_ray.serving.ingress import bounded

    async def slow():
        await asyncio.sleep(30)

    async def broken():
        raise RuntimeError("engine died\nEngineDeadError: the engine process exited")

    with pytest.raises(RequestError) as info:
        asyncio.run(bounded("synthesizer", slow(), timeout_s=0.05))
    assert info.value.status == 504 and "model 'synthesizer' did not answer within 0.05s" in str(info.value)
    with pytest.raises(RequestError) as info:
        asyncio.run(bounded("judge", broken(), timeout_s=5))
    assert info.value.status == 502
    assert str(info.value) == "model 'judge' failed: EngineDeadError: the engine process exited"


EVALUATOR = ["evaluator.model=outputs/tiny/qwen2_vl", "evaluator.tiny=qwen2_vl", "evaluator.family=qwen2_vl"]
QWEN2_VL_BOUNDS = {"min_pixels": 224 * 224, "max_pixels": 1280 * 28 * 28}  # SPEC: how the authors evaluate


def test_served_evaluator_engine_gets_the_family_pixel_bounds():
    """The evaluator's vLLM engine is configured as batch evaluation configures it (Qwen2-VL images resized
    within the authors' pixel bounds); the synthesizer's as batch synthesis (engine.py, no bounds); a
    configured mm_processor_kwargs still wins."""
    from adamllm_ray import engine
    from adamllm_ray.serving import models

    cfg = load_config(ServeConfig, ROOT / "jobs/serve/tiny_cpu.yaml", EVALUATOR)
    evaluator = models.llm_config(cfg, "evaluator").engine_kwargs
    assert evaluator["mm_processor_kwargs"] == QWEN2_VL_BOUNDS and evaluator["limit_mm_per_prompt"] == {"image": 1}
    synthesizer = models.llm_config(cfg, "synthesizer").engine_kwargs
    assert synthesizer == engine.engine_kwargs(cfg.synthesizer, multimodal=True)
    assert "mm_processor_kwargs" not in synthesizer
    assert "mm_processor_kwargs" not in models.llm_config(cfg, "judge").engine_kwargs
    mine = load_config(ServeConfig, ROOT / "jobs/serve/tiny_cpu.yaml",
                       EVALUATOR + ["evaluator.engine_kwargs={mm_processor_kwargs: {max_pixels: 3136}}"])
    assert models.llm_config(mine, "evaluator").engine_kwargs["mm_processor_kwargs"] == {"max_pixels": 3136}


def test_serve_app_with_an_unbuilt_tiny_model_says_how_to_build_it(tmp_path):
    """`serve run/deploy` of a config whose tiny model is missing, without the prepare hook, stops at build
    with the fix named (else its engine would fail later, far from the cause)."""
    from adamllm_ray.serving.app import build_app

    missing = tmp_path / "not-built"
    with pytest.raises(ValueError) as info:
        build_app({"config": str(ROOT / "jobs/serve/tiny_cpu.yaml"), "overrides": [f"synthesizer.model={missing}", "judge=null"]})
    assert str(info.value) == (f"tiny model not built: synthesizer ({missing}); add `prepare: "
                               f"adamllm_ray.embedded.tiny:ensure_models` to the app's args")


# ---------------------------------------------------------------- the running service

REFERENCE_SCRIPT = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams
    from adamllm_ray import engine, images
    from adamllm_ray.config import load_config
    from adamllm_ray.serving.config import ServeConfig
    from adamllm_ray.families import get_family
    from adamllm_ray.synthesis.pipeline import synthesis_sampling

    if __name__ == "__main__":
        cfg_path, overrides, image_path, caption = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
        ep = load_config(ServeConfig, cfg_path, overrides).synthesizer
        family = get_family("qwen2_vl")
        llm = LLM(model=ep.model, **engine.engine_kwargs(ep, multimodal=True))
        params = SamplingParams(**synthesis_sampling(ep, family))
        image = images.to_pil(open(image_path, "rb").read())
        out = llm.generate({"prompt": family.synthesis_prompt(caption), "multi_modal_data": {"image": image}}, params)
        print("REFERENCE " + json.dumps({"raw_output": out[0].outputs[0].text}))
""")


def teach_synthesizer(src: str, out: str, image: bytes, seed: int = 0) -> str:
    """The tiny Qwen2-VL overfit on one seed conversation, so greedy decoding writes the taught hinted
    turns (up to the family's end of text, the synthesizer's only stop)."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from adamllm_ray.families import get_family
    from adamllm_ray.images import to_pil

    if os.path.exists(os.path.join(out, "config.json")):
        return out
    family = get_family("qwen2_vl")
    torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(src)
    model = Qwen2VLForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
    inputs = processor(text=[family.format_seed_conversation(CAPTION_TEXT, TAUGHT_PAIRS)], images=[to_pil(image)],
                       return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sample_image(tmp_path_factory) -> tuple[bytes, str]:
    data = png()
    path = tmp_path_factory.mktemp("serving") / "sample.png"
    path.write_bytes(data)
    return data, str(path)


@pytest.fixture(scope="module")
def overrides(tiny_qwen2_vl, tiny_text, cache_dir, sample_image) -> list[str]:
    synthesizer = teach_synthesizer(tiny_qwen2_vl, str(cache_dir / "taught-synthesizer"), sample_image[0])
    return [
        f"synthesizer.model={synthesizer}", "synthesizer.tiny=null", f"judge.model={tiny_text}", "judge.tiny=null",
        f"ingress.api_key={KEY}", "ingress.max_ongoing_requests=4", "ingress.max_queued_requests=4",
        "ingress.max_request_bytes=1048576", f"images.max_decoded_pixels={512 * 512}",
        "ingress.image_url_domains=[127.0.0.1]",  # the operator lists the test's image server by its IP
    ]


def start_reference(overrides, image_path: str, folder) -> subprocess.Popen:
    """The synthesizer's greedy output for the sample from an offline vllm.LLM (the batch engine path), in
    its own process, started while the service starts."""
    script = folder / "reference.py"
    script.write_text(REFERENCE_SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(ROOT / "jobs/serve/tiny_cpu.yaml"), json.dumps(overrides),
                             image_path, CAPTION_TEXT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)


def reference_output(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=600)
    lines = [line for line in stdout.splitlines() if line.startswith("REFERENCE ")]
    assert proc.returncode == 0 and lines, stderr[-3000:]
    return json.loads(lines[-1][len("REFERENCE "):])


def serve_processes() -> dict[int, str]:
    """The Serve controller, proxy and this application's replicas, with every process they started."""
    import psutil

    found = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(tag in cmd for tag in ("ServeReplica:adamllm", "ServeController", "ProxyActor")):
            found[p.pid] = cmd
            try:
                found.update({c.pid: " ".join(c.cmdline()) for c in p.children(recursive=True)})
            except psutil.Error:
                pass
    return found


@pytest.fixture(scope="module")
def service(ray_local, overrides, sample_image, tmp_path_factory):
    from adamllm_ray.serving import app

    cfg = load_config(ServeConfig, ROOT / "jobs/serve/tiny_cpu.yaml", overrides)
    port = free_port()
    proc = start_reference(overrides, sample_image[1], tmp_path_factory.mktemp("serving-reference"))
    try:
        base_url = app.start(cfg, port=port)
        reference = reference_output(proc)
        yield {"url": base_url, "port": port, "cfg": cfg, "processes": serve_processes(), "reference": reference}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        app.shutdown()


@pytest.fixture(scope="module")
def reference(service) -> dict:
    return service["reference"]


def client(**kw):
    import httpx

    return httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=120, **kw)


def expected_row(row_id: str, image: bytes, raw_output: str, judge_output: str | None, judged: bool, mode: str):
    """What the batch pipeline's row functions make of this row and these engine outputs."""
    from adamllm_ray.synthesis.pipeline import image_name
    from adamllm_ray.synthesis.stages import finish_row, parse_row

    row = {ID: row_id, IMAGE: image, IMAGE_PATH: image_name(row_id, image), CAPTION: CAPTION_TEXT,
           CAPTION_PROMPT: DEFAULT_CAPTION_PROMPT, ERROR: None}
    parsed = parse_row({**row, RAW_OUTPUT: raw_output}, "qwen2_vl")
    return parsed, finish_row(parsed, mode, judge_output, judged=judged)


def test_synthesize_gives_the_pipeline_row(service, reference, sample_image):
    from adamllm_ray.synthesis.filter import load_judge_prompt
    from adamllm_ray.synthesis.stages import judge_prompt_of

    image, _ = sample_image
    mode = service["cfg"].mode
    with client() as http:
        judged = http.post(service["url"] + "/v1/synthesize",
                           json={"image": b64(image), "caption": CAPTION_TEXT, "id": "sample-1"})
        assert judged.status_code == 200, judged.text
        got = judged.json()
        assert got[RAW_OUTPUT] == reference[RAW_OUTPUT]  # the batch engine path's greedy output, token for token

        parsed, _ = expected_row("sample-1", image, reference[RAW_OUTPUT], None, True, mode)
        assert parsed["triplet"] is not None, "the taught synthesizer should write a question with both answers"
        judge_prompt = judge_prompt_of(parsed, load_judge_prompt())
        judge_cfg = service["cfg"].judge
        completion = http.post(service["url"] + "/v1/completions", json={
            "model": "judge", "prompt": judge_prompt, "temperature": 0.0, "max_tokens": judge_cfg.sampling.max_tokens,
            "skip_special_tokens": False})
        assert completion.status_code == 200, completion.text
        judge_output = completion.json()["choices"][0]["text"]
        _, want = expected_row("sample-1", image, reference[RAW_OUTPUT], judge_output, True, mode)
        assert got["judge_output"] == judge_output
        assert {k: got[k] for k in ("qa_pairs", "triplet", "verdict", "response", "image_path", "id")} == \
               {k: want[k] for k in ("qa_pairs", "triplet", "verdict", "response", "image_path", "id")}
        assert got["kept"] == (want["response"] is not None)
        assert got["example"] == {"id": "sample-1", "images": [want["image_path"]], "messages": want["messages"]}

        # judge off: every triplet is kept, so the example carries the composed task beside the caption task
        unjudged = http.post(service["url"] + "/v1/synthesize",
                             json={"image": b64(image), "caption": CAPTION_TEXT, "id": "sample-1", "judge": False})
        assert unjudged.status_code == 200, unjudged.text
        got = unjudged.json()
        _, want = expected_row("sample-1", image, reference[RAW_OUTPUT], None, False, mode)
        assert got["verdict"] is None and got["judge_output"] is None and got["kept"] is True
        assert got["response"] == want["response"] is not None
        assert got["example"]["messages"] == want["messages"] and len(want["messages"]) == 4

        # compose off: the same pairs and triplet, no example
        bare = http.post(service["url"] + "/v1/synthesize", json={
            "image": b64(image), "caption": CAPTION_TEXT, "id": "sample-1", "judge": False, "compose": False}).json()
        assert bare["qa_pairs"] == want["qa_pairs"] and bare["example"] is None and bare["response"] is None

        # a multipart upload of the same image gives the same row
        upload = http.post(service["url"] + "/v1/synthesize", files={"image": ("sample.png", image, "image/png")},
                           data={"caption": CAPTION_TEXT, "id": "sample-1", "judge": "false"})
        assert upload.status_code == 200, upload.text
        assert upload.json()["example"] == got["example"]


def test_evaluate_answers_and_scores(service, sample_image):
    from adamllm_ray.evaluation.tasks import get_task

    image, _ = sample_image
    with client() as http:
        body = {"task": "slake", "image": b64(image), "question": "Is the square red?", "label": "yes",
                "answer_type": "CLOSED", "id": "e1", "max_tokens": 8}
        r = http.post(service["url"] + "/v1/evaluate", json=body)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["model"] == "synthesizer" and got["prompt"] == "Is the square red?"
        want = get_task("slake").score([{"id": "e1", "prediction": got["answer"], "label": "yes",
                                         "answer_type": "CLOSED"}])
        assert got["score"] == {"scores": want["scores"], "counts": want["counts"]}
        assert got["score"]["counts"] == {"open": 0, "closed": 1}

        # the answer is the model's chat answer to the same request
        chat = http.post(service["url"] + "/v1/chat/completions", json={
            "model": "synthesizer", "temperature": 0.0, "max_tokens": 8, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(image)}},
                {"type": "text", "text": "Is the square red?"}]}]})
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"] == got["answer"]

        no_label = http.post(service["url"] + "/v1/evaluate", json={**body, "label": None, "answer_type": None})
        assert no_label.status_code == 200 and no_label.json()["score"] is None


def test_openai_client_chat_with_an_image(service, sample_image):
    from openai import OpenAI

    image, _ = sample_image
    api = OpenAI(base_url=service["url"] + "/v1", api_key=KEY)
    assert {m.id for m in api.models.list().data} == {"synthesizer", "judge"}
    text = {"type": "text", "text": "Describe the image."}
    with_image = api.chat.completions.create(model="synthesizer", temperature=0, max_tokens=4, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(image)}},
                                     text]}])
    text_only = api.chat.completions.create(model="synthesizer", temperature=0, max_tokens=4,
                                            messages=[{"role": "user", "content": [text]}])
    assert isinstance(with_image.choices[0].message.content, str)
    # 64x48 -> 56x56 pixels -> 4 merged visual tokens, plus vision start/end around them
    assert with_image.usage.prompt_tokens == text_only.usage.prompt_tokens + 4 + 2


def test_api_key(service):
    import httpx

    url = service["url"]
    for method, path in (("GET", "/v1/models"), ("GET", "/healthz"), ("POST", "/v1/synthesize"),
                         ("POST", "/v1/evaluate"), ("POST", "/v1/chat/completions")):
        missing = httpx.request(method, url + path, json={})
        assert missing.status_code == 401 and "missing API key" in missing.json()["error"]["message"], path
        assert missing.headers["www-authenticate"] == "Bearer"
        for auth in ("Bearer wrong-key", "Basic " + KEY, KEY):
            wrong = httpx.request(method, url + path, json={}, headers={"Authorization": auth})
            assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid API key", (path, auth)
    with client() as http:
        assert http.get(url + "/v1/models").status_code == 200
        health = http.get(url + "/healthz")
        assert health.status_code == 200 and health.json()["models"] == {"synthesizer": "synthesizer", "judge": "judge"}


def test_bad_requests_get_4xx_naming_the_field(service, sample_image):
    image, _ = sample_image
    good = {"image": b64(image), "caption": CAPTION_TEXT, "judge": False}
    big = png(600, 600)  # 360,000 pixels > 512*512 = 262,144
    cases = [
        ("/v1/synthesize", {**good, "image": "%%%"}, 400, "image: not valid base64"),
        ("/v1/synthesize", {**good, "image": b64(b"GIF89a but not really")}, 400, "image: not an image"),
        ("/v1/synthesize", {**good, "image": b64(big)}, 413, "image: image too large: 600x600"),
        ("/v1/synthesize", {**good, "caption": ""}, 400, "caption: empty"),
        ("/v1/synthesize", {**good, "caption": None}, 400, "caption: missing"),
        ("/v1/synthesize", {**good, "caption": "rice " * 3000}, 400,  # over max_model_len 2048
         "caption: model 'synthesizer' refused the prompt"),
        ("/v1/evaluate", {"task": "vqa", "image": b64(image), "question": "q"}, 400, "task: unknown task 'vqa'"),
        ("/v1/evaluate", {"task": "vqa_rad", "image": b64(image), "question": "q", "label": "yes"}, 400,
         "answer_type: missing field 'answer_type'"),
        ("/v1/evaluate", {"task": "food101", "image": b64(image), "label": "sushi"}, 400, "options: missing"),
        ("/v1/evaluate", {"task": "slake", "image": b64(image), "question": "q", "model": "gpt-4"}, 400,
         "model: unknown model 'gpt-4'"),
    ]
    with client() as http:
        for path, body, status, start in cases:
            r = http.post(service["url"] + path, json=body)
            assert r.status_code == status, (start, r.text)
            assert r.json()["error"]["message"].startswith(start), r.text
        not_json = http.post(service["url"] + "/v1/synthesize", content=b"{caption:", headers={"Content-Type": "application/json"})
        assert not_json.status_code == 400 and not_json.json()["error"]["message"].startswith("body: not valid JSON")
        too_big = http.post(service["url"] + "/v1/synthesize", json={**good, "image": "A" * (1 << 20)})
        assert too_big.status_code == 413
        assert "is over the limit of 1,048,576 bytes" in too_big.json()["error"]["message"]
        # still serving
        after = http.post(service["url"] + "/v1/synthesize", json=good)
        assert after.status_code == 200 and after.json()["error"] is None


@pytest.fixture(scope="module")
def image_server(sample_image):
    from test_serving_security import ImageServer

    server = ImageServer(sample_image[0])
    yield server
    server.close()


def chat_body(url: str, max_tokens: int = 4) -> dict:
    return {"model": "synthesizer", "temperature": 0.0, "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Describe the image."}]}]}


def test_an_image_on_a_listed_address_is_fetched(service, image_server, sample_image):
    """ingress.image_url_domains lists 127.0.0.1: an image there is fetched and answered as the same image
    sent inline; an address not listed is refused with a 400 naming the field and never contacted."""
    image, _ = sample_image
    with client() as http:
        fetched = http.post(service["url"] + "/v1/chat/completions",
                            json=chat_body(f"http://127.0.0.1:{image_server.port}/x.png"))
        inline = http.post(service["url"] + "/v1/chat/completions", json=chat_body("data:image/png;base64," + b64(image)))
        assert fetched.status_code == inline.status_code == 200, fetched.text
        assert fetched.json()["choices"][0]["message"] == inline.json()["choices"][0]["message"]
        assert fetched.json()["usage"]["prompt_tokens"] == inline.json()["usage"]["prompt_tokens"]
        assert image_server.hits == ["/x.png"]
        for host in (f"127.0.0.2:{image_server.port}", f"localhost:{image_server.port}"):
            r = http.post(service["url"] + "/v1/chat/completions", json=chat_body(f"http://{host}/x.png"))
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == "messages[0].content[0].image_url.url", r.text
        assert image_server.hits == ["/x.png"]


def test_a_burst_beyond_running_and_queued_gets_json_503(service, image_server, sample_image):
    """4 running + 4 queued: 4 chat requests hold the running slots (their image is fetched from a server
    that answers only when the test lets it), then 8 synthesize requests arrive at once: 4 wait in the
    queue and exactly 4 get the JSON 503 with Retry-After, whatever the machine's speed. Once the images are
    served, every admitted request is answered."""
    import httpx

    image, _ = sample_image
    hold = chat_body(f"http://127.0.0.1:{image_server.port}/hold.png")
    synth = {"image": b64(image), "caption": CAPTION_TEXT, "judge": False}
    before = len(image_server.hits)

    async def burst():
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=300, limits=limits) as http:
            holders = [asyncio.create_task(http.post(service["url"] + "/v1/chat/completions", json=hold))
                       for _ in range(4)]
            for _ in range(600):  # the 4 running slots are held once the server has seen the 4 fetches
                if image_server.hits[before:].count("/hold.png") == 4:
                    break
                await asyncio.sleep(0.05)
            assert image_server.hits[before:].count("/hold.png") == 4, image_server.hits
            rest = [asyncio.create_task(http.post(service["url"] + "/v1/synthesize", json={**synth, "id": f"b{i}"}))
                    for i in range(8)]
            refused = []
            for done in asyncio.as_completed(rest):  # nothing can finish before the images are served
                refused.append(await done)
                if len(refused) == 4:
                    break
            image_server.release.set()
            return await asyncio.gather(*holders), refused, await asyncio.gather(*rest)

    try:
        held, refused, answered = asyncio.run(burst())
    finally:
        image_server.release.set()
    for r in refused:
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"]["type"] == "overloaded" and r.json()["error"]["code"] == 503, r.text
    assert [r.status_code for r in held] == [200] * 4, [r.text for r in held]
    assert sorted(r.status_code for r in answered) == [200] * 4 + [503] * 4
    assert all(r.json()["example"] is not None for r in answered if r.status_code == 200)
    with client() as http:
        assert http.get(service["url"] + "/healthz").status_code == 200


def test_the_deployed_evaluator_carries_the_pixel_bounds(service, overrides):
    """The evaluator's deployment as Serve gets it (ray.serve.llm's builder, from the config): its engine
    kwargs carry the family's pixel bounds."""
    from adamllm_ray.serving import models

    cfg = load_config(ServeConfig, ROOT / "jobs/serve/tiny_cpu.yaml", overrides + EVALUATOR)
    deployments, cards = models.model_deployments(cfg)
    llm_config = deployments["evaluator"]._bound_deployment.init_kwargs["llm_config"]
    assert llm_config.engine_kwargs["mm_processor_kwargs"] == QWEN2_VL_BOUNDS
    assert "mm_processor_kwargs" not in deployments["synthesizer"]._bound_deployment.init_kwargs[
        "llm_config"].engine_kwargs


def test_cpu_engines_run_on_tcmalloc_when_the_system_has_it(service):
    """vLLM's CPU engines get the system's tcmalloc through their runtime env (with glibc's malloc an
    engine's worker grew with every image size it met); without one installed, nothing is preloaded."""
    from pathlib import Path

    from adamllm_ray import engine
    from adamllm_ray.config import EngineConfig

    allocator = engine.cpu_allocator()
    env = engine.engine_env(EngineConfig(model="m"))
    assert "LD_PRELOAD" not in engine.engine_env(EngineConfig(model="m", accelerator="gpu"))
    if allocator is None:
        assert "LD_PRELOAD" not in env
        return
    assert env["LD_PRELOAD"].split(":")[0] == allocator
    engines = {pid: cmd for pid, cmd in service["processes"].items() if "EngineCore" in cmd or "VLLM::Worker" in cmd}
    assert engines, service["processes"]
    for pid, cmd in engines.items():
        assert "libtcmalloc" in Path(f"/proc/{pid}/maps").read_text(), (pid, cmd)


def test_shutdown_closes_the_port_and_ends_every_process(service):
    import psutil

    from adamllm_ray.serving import app

    tracked = service["processes"]
    assert any("ServeReplica:adamllm:RawPromptServer:synthesizer" in cmd for cmd in tracked.values())
    assert len(tracked) >= 5  # controller, proxy, ingress, two model replicas (and their engine processes)
    app.shutdown()
    procs = []
    for pid in tracked:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    gone, alive = psutil.wait_procs(procs, timeout=60)
    assert not alive, [tracked.get(p.pid) for p in alive]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", service["port"])) != 0
