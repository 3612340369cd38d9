"""The evaluation report: a table of tasks x models beside the paper's numbers (report.md) and the
same scores as a grouped bar chart (report.png), both from metrics.json's content."""

from __future__ import annotations

import io

from adamllm_ray.evaluation.tasks import PAPER_SCORES, TASKS


def score_rows(metrics: dict) -> list[tuple[str, str]]:
    """(task, score key) in the order of the config's tasks."""
    return [(task, key) for task in metrics["tasks"] for key in TASKS[task].score_keys]


def paper_columns(metrics: dict) -> list[str]:
    """The paper's models named by the evaluated models, each once, in model order."""
    return list(dict.fromkeys(p for p in metrics["paper"].values() if p))


def _cell(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _label(task: str, key: str) -> str:
    spec = TASKS[task]
    return spec.title if len(spec.score_keys) == 1 else f"{spec.title} {key}"


def markdown(metrics: dict) -> str:
    models = list(metrics["results"])
    papers = paper_columns(metrics)
    head = ["task", "score", *models, *[f"{p} (paper)" for p in papers]]
    lines = ["# Evaluation report", "",
             "Scores x100 with the paper's metrics (SPEC.md section 4): zero-shot, greedy. "
             "Columns marked (paper) are the paper's numbers (v4) for the model each evaluated model names.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task, key in score_rows(metrics):
        ours = [_cell(metrics["results"][m][task]["scores"][key]) for m in models]
        paper = [_cell(PAPER_SCORES[p].get(task, {}).get(key)) for p in papers]
        lines.append("| " + " | ".join([TASKS[task].title, key, *ours, *paper]) + " |")
    lines += ["", "## Examples", "",
              "Every example has a prediction or an error (listed in errors.jsonl). "
              "`guessed`: multiple-choice answers with no choice found, drawn with the example's seed.", "",
              "| model | task | examples | predictions | errors | guessed |", "|---|---|---|---|---|---|"]
    for m in models:
        for task in metrics["tasks"]:
            r = metrics["results"][m][task]
            guessed = r["counts"].get("guessed", "-")
            lines.append(f"| {m} | {TASKS[task].title} | {r['examples']} | {r['n']} | {r['errors']} | {guessed} |")
    c = metrics["counts"]
    lines += ["", f"All models and tasks: {c['examples']} examples, {c['predictions']} predictions, "
              f"{c['errors']} errors.", ""]
    return "\n".join(lines)


def chart_png(metrics: dict) -> bytes:
    """Grouped bars: one group per task score, one bar per model; the paper's numbers hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = score_rows(metrics)
    series = [(m, [metrics["results"][m][t]["scores"][k] for t, k in rows], False) for m in metrics["results"]]
    series += [(f"{p} (paper)", [PAPER_SCORES[p].get(t, {}).get(k) for t, k in rows], True)
               for p in paper_columns(metrics)]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, values, paper) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=name, color=colors[i % len(colors)], alpha=0.55 if paper else 1.0,
                      hatch="//" if paper else None, edgecolor="black", linewidth=0.4)
        ax.bar_label(bars, labels=[_cell(v) for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([_label(t, k) for t, k in rows], rotation=30, ha="right")
    ax.set_ylabel("score x100")
    ax.set_ylim(0, 105)
    ax.set_title("adamllm evaluate")
    ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
