"""The inspector's ASGI app (FastAPI, run by uvicorn) and `adamllm inspect`.

Routes, per run folder n given on the command line:
    /                            the runs
    /r/n/                        synthesis: funnel + filtered, paged rows; evaluation: scores beside the paper's
    /r/n/row/ID                  one synthesis row: image, caption task, raw output, pairs, triplet, verdict, example
    /r/n/image/ID, /r/n/thumb/ID the row's image, full size or a cached thumbnail
    /r/n/eval/TASK               evaluation examples, every model side by side, filter to wrong answers
    /r/n/eval/TASK/image/I, .../thumb/I
    /compare/TASK?a=n&b=m        two evaluation runs' models side by side on the same examples
    /r/n/file/PATH               a file of the run folder (report.png ...), never one outside it
Every user mistake (not a run, a missing file, an unknown id, a page past the end, a bad path) is an
HTML page with a 4xx status and one sentence, never a traceback."""

from __future__ import annotations

import hmac
import math
import os
import sys
import time
import traceback
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from adamllm_ray import storage
from adamllm_ray.config import is_loopback
from adamllm_ray.inspect import templates
from adamllm_ray.inspect.evaluation import EvaluationRun
from adamllm_ray.inspect.runs import InspectError, image_type, inside, kind_of, thumbnail
from adamllm_ray.inspect.synthesis import STATUSES, SynthesisRun

PAGE_SIZE = 50
KEY_COOKIE = "adamllm_inspect_key"
MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".json": "application/json",
         ".md": "text/plain; charset=utf-8", ".jsonl": "text/plain; charset=utf-8", ".txt": "text/plain; charset=utf-8"}


class Runs:
    """The folders given on the command line, each opened once (index built or loaded); a folder
    that is not a usable run keeps its message and shows it on its page."""

    def __init__(self, uris: list[str]):
        self.uris = [str(u) for u in uris]
        self.opened: dict[int, SynthesisRun | EvaluationRun | InspectError] = {}

    def open(self, n: int):
        if n not in self.opened:
            uri = self.uris[n]
            try:
                kind = kind_of(uri)
                self.opened[n] = SynthesisRun(uri) if kind == "synthesis" else EvaluationRun(uri)
            except InspectError as err:
                self.opened[n] = err
            except Exception as err:  # noqa: BLE001 - an unreadable file in the run: say which run, not a 500
                first = (str(err).splitlines() or [""])[0][:300]
                self.opened[n] = InspectError(422, f"cannot read the run {uri}: {type(err).__name__}: {first}")
        return self.opened[n]

    def get(self, n: str):
        if not n.isdigit() or int(n) >= len(self.uris):
            raise InspectError(404, f"no run {n!r}: this inspector has runs 0 to {len(self.uris) - 1}")
        run = self.open(int(n))
        if isinstance(run, InspectError):
            raise run
        return run


def _int(value: str, name: str, low: int = 1) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise InspectError(400, f"{name} must be a whole number, got {value!r}") from None
    if v < low:
        raise InspectError(400, f"{name} must be at least {low}, got {v}")
    return v


def _page(positions, page: str, size: int = PAGE_SIZE):
    total = len(positions)
    pages = max(1, math.ceil(total / size))
    n = _int(page, "page")
    if n > pages:
        raise InspectError(404, f"page {n} is past the end: this view has {pages} page{'s' * (pages > 1)} "
                                f"({total} rows)")
    return positions[(n - 1) * size: n * size], {"page": n, "pages": pages, "total": total}


def _html(name: str, http_status: int = 200, **values) -> HTMLResponse:
    return HTMLResponse(templates.render(name, **values), status_code=http_status)


def _error(status: int, message: str) -> HTMLResponse:
    return _html("error", status, title="cannot show this", message=message, status=status)


def _key_ok(request: Request, key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    for given in ((token if scheme.lower() == "bearer" else ""), request.cookies.get(KEY_COOKIE, ""),
                  request.query_params.get("key", "")):
        if given and hmac.compare_digest(given.strip().encode(), key.encode()):
            return True
    return False


def create_app(run_dirs: list[str], api_key: str | None = None) -> FastAPI:
    runs = Runs(run_dirs)
    app = FastAPI(title="adamllm inspect", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runs = runs

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key and not _key_ok(request, api_key):
            return _error(401, "this inspector needs its API key: open any page once with ?key=<key> "
                               "(kept in a cookie) or send 'Authorization: Bearer <key>'")
        response = await call_next(request)
        if api_key and request.query_params.get("key"):
            response.set_cookie(KEY_COOKIE, api_key, httponly=True, samesite="strict")
        return response

    @app.exception_handler(InspectError)
    async def _inspect_error(request, err: InspectError):
        return _error(err.status, err.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err):
        message = "no such page" if err.status_code == 404 else str(err.detail)
        return _error(err.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request, err):
        return _error(400, "bad request: " + "; ".join(str(e.get("msg")) for e in err.errors()))

    @app.exception_handler(Exception)
    async def _unexpected(request, err):
        traceback.print_exception(err, file=sys.stderr)
        return _error(500, f"the inspector failed on this page ({type(err).__name__}); the server log has the details")

    @app.get("/", response_class=HTMLResponse)
    async def home():
        items = []
        for n, uri in enumerate(runs.uris):
            run = runs.open(n)
            items.append({"uri": uri, "kind": f"not a usable run: {run.message}" if isinstance(run, InspectError)
                          else run.kind})
        evals = [n for n in range(len(runs.uris)) if isinstance(runs.open(n), EvaluationRun)]
        shared = []
        if len(evals) >= 2:
            a, b = runs.open(evals[0]), runs.open(evals[1])
            shared = [(evals[0], evals[1], t) for t in a.tasks if t in b.tasks]
        return _html("home", title="runs", runs=items, compare=shared)

    @app.get("/r/{n}/", response_class=HTMLResponse)
    async def run_page(n: str, page: str = "1", verdict: str = "", status: str = "", stage: str = "",
                       triplet: str = "", q: str = ""):
        run = runs.get(n)
        if isinstance(run, EvaluationRun):
            return _html("evaluation", title=f"evaluation run {run.uri}", run_no=n, models=run.models,
                         scores=run.scores(), chart=storage.exists(storage.join(run.uri, "report.png")))
        choices = {"verdict": ("yes", "no", "open", "none"), "status": STATUSES, "stage": run.stages,
                   "triplet": ("yes", "no")}
        f = {"verdict": verdict, "status": status, "stage": stage, "triplet": triplet, "q": q}
        for name, allowed in choices.items():
            if f[name] and f[name] not in allowed:
                raise InspectError(400, f"unknown {name} {f[name]!r}; choose one of {', '.join(allowed) or '(none)'}")
        shown, p = _page(run.filter(**f), page)
        query = {k: v for k, v in f.items() if v}
        return _html("synthesis", title=f"synthesis run {run.uri}", run_no=n, f=f, p=p,
                     rows=run.table_rows(shown), stages=run.stages, statuses=STATUSES,
                     funnel=templates.funnel_svg(run.summary.get("counts") or {}),
                     url=lambda k: f"/r/{n}/?" + urlencode({**query, "page": k}))

    def synthesis(n: str) -> SynthesisRun:
        run = runs.get(n)
        if not isinstance(run, SynthesisRun):
            raise InspectError(404, f"run {n} is an evaluation run: it has no synthesis rows")
        return run

    def evaluation(n: str) -> EvaluationRun:
        run = runs.get(n)
        if not isinstance(run, EvaluationRun):
            raise InspectError(404, f"run {n} is a synthesis run: it has no evaluation examples")
        return run

    @app.get("/r/{n}/row/{row_id:path}", response_class=HTMLResponse)
    async def row_page(n: str, row_id: str):
        r = synthesis(n).row(row_id)
        return _html("row", title=f"row {row_id}", run_no=n, r=r,
                     raw_marked=templates.mark_pairs(r["raw_output"] or "", r["qa_pairs"]))

    @app.get("/r/{n}/image/{row_id:path}")
    async def row_image(n: str, row_id: str):
        _, data = synthesis(n).image(row_id)
        return Response(data, media_type=image_type(data), headers={"Cache-Control": "max-age=3600"})

    @app.get("/r/{n}/thumb/{row_id:path}")
    async def row_thumb(n: str, row_id: str):
        run = synthesis(n)
        rel, data = run.image(row_id)
        return Response(thumbnail(run.cache, rel, data), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/r/{n}/eval/{task}", response_class=HTMLResponse)
    async def eval_task(n: str, task: str, page: str = "1", wrong: str = ""):
        run = evaluation(n)
        shown, p = _page(run.filter(task, wrong), page)
        return _html("eval_task", title=f"{task}: examples", run_no=n, task=task, models=run.models, wrong=wrong,
                     p=p, rows=run.examples(task, shown),
                     url=lambda k: f"/r/{n}/eval/{task}?" + urlencode({**({"wrong": wrong} if wrong else {}), "page": k}))

    @app.get("/compare/{task}", response_class=HTMLResponse)
    async def compare(task: str, a: str = "0", b: str = "1", page: str = "1", wrong: str = ""):
        """Two evaluation runs' models side by side on the same examples of one task."""
        ra, rb = evaluation(a), evaluation(b)
        if len(ra.index(task)) != len(rb.index(task)):
            raise InspectError(422, f"runs {a} and {b} hold different numbers of {task} examples "
                                    f"({len(ra.index(task))} and {len(rb.index(task))}): not the same benchmark")
        labels = [f"{a}:{m}" for m in ra.models] + [f"{b}:{m}" for m in rb.models]
        if wrong and wrong != "any" and wrong not in labels:
            raise InspectError(400, f"no model {wrong!r} in these runs (they have {', '.join(labels)})")
        if wrong == "any":
            positions = sorted(set(ra.filter(task, "any")) | set(rb.filter(task, "any")))
        elif wrong:
            run_no, _, model = wrong.partition(":")
            positions = list((ra if run_no == a else rb).filter(task, model))
        else:
            positions = list(range(len(ra.index(task))))
        shown, p = _page(positions, page)
        rows = ra.examples(task, shown)
        for row, other in zip(rows, rb.examples(task, shown)):
            row["models"] = [{**m, "model": f"{a}:{m['model']}"} for m in row["models"]] + \
                            [{**m, "model": f"{b}:{m['model']}"} for m in other["models"]]
        keep = {"a": a, "b": b, **({"wrong": wrong} if wrong else {})}
        return _html("eval_task", title=f"{task}: runs {a} and {b} side by side", run_no=a, task=task, models=labels,
                     wrong=wrong, p=p, rows=rows, hidden={"a": a, "b": b},
                     url=lambda k: f"/compare/{task}?" + urlencode({**keep, "page": k}))

    @app.get("/r/{n}/eval/{task}/image/{index}")
    async def eval_image(n: str, task: str, index: str):
        data = evaluation(n).image(task, _int(index, "example index", 0))
        return Response(data, media_type=image_type(data))

    @app.get("/r/{n}/eval/{task}/thumb/{index}")
    async def eval_thumb(n: str, task: str, index: str):
        run = evaluation(n)
        i = _int(index, "example index", 0)
        return Response(thumbnail(run.cache, f"{task}/{i}", run.image(task, i)), media_type="image/png")

    @app.get("/r/{n}/file/{rel:path}")
    async def run_file(n: str, rel: str):
        run = runs.get(n)
        uri = inside(run.uri, rel)
        if not storage.exists(uri) or storage.is_dir(uri):
            raise InspectError(404, f"{rel} is not a file of this run")
        return Response(storage.read_bytes(uri), media_type=MEDIA.get(os.path.splitext(rel)[1].lower(),
                                                                      "application/octet-stream"))

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    return app




def main(run_dirs: list[str], host: str = "127.0.0.1", port: int = 8765, api_key_env: str = "ADAMLLM_API_KEY") -> int:
    """`adamllm inspect`: index each run (once; later starts reuse the cache), then serve."""
    import uvicorn

    key = os.environ.get(api_key_env) or None
    if not is_loopback(host) and not key:
        print(f"adamllm inspect: --host {host} exposes the runs beyond this machine; set the API key in "
              f"${api_key_env} first (pages then need ?key=<key> once, or 'Authorization: Bearer <key>')",
              file=sys.stderr)
        return 2
    app = create_app(run_dirs, api_key=key)
    for n, uri in enumerate(run_dirs):
        t0 = time.perf_counter()
        run = app.state.runs.open(n)
        if isinstance(run, InspectError):
            print(f"  run {n}: {uri}: {run.message}", file=sys.stderr)
        else:
            print(f"  run {n}: {uri}: {run.kind}, ready in {time.perf_counter() - t0:.1f}s")
    print(f"adamllm inspect: http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
