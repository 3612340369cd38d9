"""Server-rendered pages (Jinja2, autoescaped) and the funnel chart as inline SVG: nothing is
fetched from the internet and no JavaScript is needed."""

from __future__ import annotations

from markupsafe import Markup, escape
from jinja2 import DictLoader, Environment, select_autoescape

BASE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ title }} - adamllm inspect</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;vertical-align:top;text-align:left}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:.5em;white-space:pre-wrap;max-width:70em}
.msg{background:#fee;border:1px solid #c66;padding:.8em;max-width:60em}
mark.precise{background:#cdf}mark.informative{background:#fdc}.kind{font-size:.8em;padding:0 .3em;border-radius:3px}
.kind.precise{background:#cdf}.kind.informative{background:#fdc}.wrong{background:#fff3f3}
form.filters label{margin-right:1em}nav{margin:.5em 0}nav a{margin-right:.6em}
</style></head><body><p><a href="/">runs</a>{% block crumbs %}{% endblock %}</p>
<h1>{{ title }}</h1>{% block body %}{% endblock %}</body></html>"""

ERROR = """{% extends "base" %}{% block body %}<p class="msg" id="message">{{ message }}</p>
<p>HTTP {{ status }}</p>{% endblock %}"""

HOME = """{% extends "base" %}{% block body %}<table><tr><th>#</th><th>folder</th><th>kind</th></tr>
{% for r in runs %}<tr><td>{{ loop.index0 }}</td><td><a href="/r/{{ loop.index0 }}/">{{ r.uri }}</a></td>
<td>{{ r.kind }}</td></tr>{% endfor %}</table>
{% if compare %}<h2>Evaluation runs side by side</h2><ul>{% for a, b, t in compare %}
<li><a class="compare" href="/compare/{{ t }}?a={{ a }}&amp;b={{ b }}">{{ t }}: run {{ a }} and run {{ b }}</a></li>{% endfor %}</ul>{% endif %}
{% endblock %}"""

PAGER = """{% macro pager(p, url) %}<nav id="pager"><span id="page-info">page {{ p.page }} of {{ p.pages }}
({{ p.total }} rows)</span>
{% if p.page > 1 %}<a id="first" href="{{ url(1) }}">first</a><a id="prev" href="{{ url(p.page - 1) }}">previous</a>{% endif %}
{% if p.page < p.pages %}<a id="next" href="{{ url(p.page + 1) }}">next</a><a id="last" href="{{ url(p.pages) }}">last</a>{% endif %}
</nav>{% endmacro %}"""

SYNTHESIS = """{% extends "base" %}{% from "pager" import pager %}{% block body %}
<h2>Funnel</h2>{{ funnel }}
<h2>Rows</h2>
<form class="filters" method="get" action="/r/{{ run_no }}/">
<label>verdict <select name="verdict" id="f-verdict"><option value="">any</option>
{% for v in ["yes", "no", "open", "none"] %}<option{% if f.verdict == v %} selected{% endif %}>{{ v }}</option>{% endfor %}</select></label>
<label>status <select name="status" id="f-status"><option value="">any</option>
{% for v in statuses %}<option{% if f.status == v %} selected{% endif %}>{{ v }}</option>{% endfor %}</select></label>
<label>error stage <select name="stage" id="f-stage"><option value="">any</option>
{% for v in stages %}<option{% if f.stage == v %} selected{% endif %}>{{ v }}</option>{% endfor %}</select></label>
<label>triplet <select name="triplet" id="f-triplet"><option value="">any</option>
{% for v in ["yes", "no"] %}<option{% if f.triplet == v %} selected{% endif %}>{{ v }}</option>{% endfor %}</select></label>
<label>search <input name="q" id="f-q" value="{{ f.q }}" placeholder="caption or question"></label>
<button id="apply" type="submit">apply</button></form>
{{ pager(p, url) }}
<table id="rows"><tr><th>image</th><th>id</th><th>caption</th><th>verdict</th><th>status</th><th>branch</th><th>error</th></tr>
{% for r in rows %}<tr class="row" data-id="{{ r.id }}" data-verdict="{{ r.verdict or 'none' }}" data-status="{{ r.status }}"
 data-stage="{{ r.stage or '' }}" data-triplet="{{ 'yes' if r.has_triplet else 'no' }}">
<td>{% if r.status != "error" or r.stage != "read" %}<img src="/r/{{ run_no }}/thumb/{{ r.id | urlencode }}" alt="" class="thumb">{% endif %}</td>
<td><a class="open" href="/r/{{ run_no }}/row/{{ r.id | urlencode }}">{{ r.id }}</a></td><td class="caption">{{ r.caption }}</td>
<td class="verdict">{{ r.verdict or "" }}</td><td>{{ r.status }}</td><td>{{ r.branch or "" }}</td>
<td class="error">{% if r.error %}{{ r.error.stage }}: {{ r.error.message }}{% endif %}</td></tr>{% endfor %}</table>
{{ pager(p, url) }}{% endblock %}"""

ROW = """{% extends "base" %}{% block crumbs %} / <a href="/r/{{ run_no }}/">run {{ run_no }}</a>{% endblock %}
{% block body %}<p>status: <b id="status">{{ r.status }}</b>{% if r.branch %}, composed as: <b id="branch">{{ r.branch }}</b>{% endif %}</p>
{% if r.error %}<p class="msg" id="row-error">error at stage {{ r.error.stage }}: {{ r.error.message }}</p>{% endif %}
<h2>Image</h2><p><img id="image" src="/r/{{ run_no }}/image/{{ r.id | urlencode }}" alt="{{ r.image_path }}" style="max-width:40em"></p>
<p>{{ r.image_path }}</p>
<h2>Caption task</h2><p>prompt: <code id="caption-prompt">{{ r.caption_prompt }}</code></p><p id="caption">{{ r.caption }}</p>
<h2>Synthesizer output</h2>{% if r.raw_output is none %}<p id="raw-output-none">(none)</p>{% else %}
<pre id="raw-output">{{ raw_marked }}</pre><p>{{ r.output_tokens }} output tokens</p>{% endif %}
<h3>Parsed pairs ({{ (r.qa_pairs or []) | length }})</h3><ol id="pairs">
{% for p in r.qa_pairs or [] %}<li class="pair" data-kind="{{ p.kind }}"><span class="kind {{ p.kind }}">{{ p.kind }}</span>
Q: <span class="q">{{ p.question }}</span><br>A: <span class="a">{{ p.answer }}</span></li>{% endfor %}</ol>
<h2>Triplet</h2>{% if r.triplet %}<table id="triplet"><tr><th>question</th><td class="t-question">{{ r.triplet.question }}</td></tr>
<tr><th>precise</th><td class="t-precise">{{ r.triplet.precise }}</td></tr><tr><th>informative</th><td class="t-informative">{{ r.triplet.informative }}</td></tr></table>
{% else %}<p id="no-triplet">no question has both a precise and an informative answer</p>{% endif %}
<h2>Judge</h2><p>verdict: <b id="verdict">{{ r.verdict or "none" }}</b></p><p>raw output: <code id="judge-output">{{ r.judge_output if r.judge_output is not none else "" }}</code></p>
<h2>Training example (train.json)</h2>{% if r.example_text %}<pre id="example">{{ r.example_text }}</pre>
{% else %}<p id="no-example">this row has no training example</p>{% endif %}{% endblock %}"""

EVALUATION = """{% extends "base" %}{% block body %}<h2>Scores (x100) beside the paper's</h2>
<table id="scores"><tr><th>task</th><th>score</th>{% for m in models %}<th>{{ m }}</th>{% endfor %}</tr>
{% for s in scores %}<tr><td><a href="/r/{{ run_no }}/eval/{{ s.task }}">{{ s.title }}</a></td><td>{{ s.key }}</td>
{% for c in s.cells %}<td class="score">{{ "%.1f" | format(c.score) if c.score is not none else "-" }}
{% if c.paper is not none %}<small class="paper">(paper {{ c.paper_model }}: {{ "%.1f" | format(c.paper) }})</small>{% endif %}</td>{% endfor %}
</tr>{% endfor %}</table>
{% if chart %}<p><img src="/r/{{ run_no }}/file/report.png" alt="report chart"></p>{% endif %}{% endblock %}"""

EVAL_TASK = """{% extends "base" %}{% from "pager" import pager %}{% block crumbs %} / <a href="/r/{{ run_no }}/">run {{ run_no }}</a>{% endblock %}
{% block body %}<form class="filters" method="get"><label>wrong answers of <select name="wrong" id="f-wrong">
<option value="">(all examples)</option><option value="any"{% if wrong == "any" %} selected{% endif %}>any model</option>
{% for m in models %}<option{% if wrong == m %} selected{% endif %}>{{ m }}</option>{% endfor %}</select></label>
{% for k, v in (hidden or {}).items() %}<input type="hidden" name="{{ k }}" value="{{ v }}">{% endfor %}
<button id="apply" type="submit">apply</button> <small>wrong: per-example score below 100, or no prediction</small></form>
{{ pager(p, url) }}
<table id="examples"><tr><th>#</th><th>image</th><th>prompt</th><th>label</th>{% for m in models %}<th>{{ m }}</th>{% endfor %}</tr>
{% for e in rows %}<tr class="example" data-index="{{ e.index }}">
<td>{{ e.index }}</td><td>{% if not e.bench_error %}<img src="/r/{{ run_no }}/eval/{{ task }}/thumb/{{ e.index }}" alt="">{% else %}<small>{{ e.bench_error }}</small>{% endif %}</td>
<td class="prompt">{{ e.prompt or "" }}</td><td class="label">{{ e.label if e.label is not none else "" }}</td>
{% for a in e.models %}<td class="answer{% if a.wrong %} wrong{% endif %}" data-model="{{ a.model }}" data-wrong="{{ 'yes' if a.wrong else 'no' }}">
{% if a.error %}<i>{{ a.error }}</i>{% else %}<span class="prediction">{{ a.prediction }}</span><br>
score <b class="ex-score">{{ "%.1f" | format(a.score) }}</b>{% if a.guessed %} <span class="guessed">guessed</span>{% endif %}{% endif %}</td>{% endfor %}
</tr>{% endfor %}</table>{{ pager(p, url) }}{% endblock %}"""

ENV = Environment(loader=DictLoader({"base": BASE, "error": ERROR, "home": HOME, "pager": PAGER,
                                     "synthesis": SYNTHESIS, "row": ROW, "evaluation": EVALUATION,
                                     "eval_task": EVAL_TASK}),
                  autoescape=select_autoescape(default=True, default_for_string=True))


def render(name: str, **values) -> str:
    return ENV.get_template(name).render(**values)


def funnel_svg(counts: dict) -> Markup:
    """Horizontal bars from summary.json's counts: read -> bad input -> synthesized -> with pairs ->
    triplets -> judged yes/no/open -> kept, caption-only, errors by stage."""
    bars = [("read", counts.get("read")), ("bad input", counts.get("bad_input")),
            ("synthesized", counts.get("synthesized")), ("with pairs", counts.get("rows_with_pairs")),
            ("triplets", counts.get("triplets"))]
    bars += [(f"judged {k}", v) for k, v in sorted((counts.get("verdicts") or {}).items())]
    bars += [("kept", counts.get("kept")), ("caption-only", counts.get("caption_only"))]
    bars += [(f"error: {k}", v) for k, v in sorted((counts.get("errors_by_stage") or {}).items())]
    bars = [(label, int(v or 0)) for label, v in bars]
    top = max([v for _, v in bars] + [1])
    h, width = 22, 420
    parts = [f'<svg id="funnel" xmlns="http://www.w3.org/2000/svg" width="{width + 260}" height="{h * len(bars) + 4}">']
    for i, (label, v) in enumerate(bars):
        w = max(1, round(width * v / top)) if v else 0
        color = "#c66" if label.startswith(("error", "bad")) else "#6a9" if label in ("kept", "judged yes") else "#79c"
        y = i * h + 2
        parts.append(f'<text x="0" y="{y + 15}" font-size="13">{escape(label)}</text>'
                     f'<rect x="110" y="{y}" width="{w}" height="{h - 4}" fill="{color}"/>'
                     f'<text class="count" x="{116 + w}" y="{y + 15}" font-size="13">{v}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def mark_pairs(raw: str, pairs: list[dict] | None) -> Markup:
    """The raw output, escaped, with each parsed question and answer highlighted by its kind, found
    in order from where the previous pair ended."""
    out, pos = [], 0
    for p in pairs or []:
        for part in (p["question"], p["answer"]):
            at = raw.find(part, pos) if part else -1
            if at < 0:
                continue
            out += [str(escape(raw[pos:at])), f'<mark class="{escape(p["kind"])}">{escape(part)}</mark>']
            pos = at + len(part)
    out.append(str(escape(raw[pos:])))
    return Markup("".join(out))
