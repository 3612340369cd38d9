"""What the demo prints: its own lines, Ray Data's progress while a dataset runs, warnings that
matter, and nothing alarming when things go well (worker_logs.py leaves the healthy runs' noise out
of every command's worker logs)."""

from __future__ import annotations

import os


def quiet() -> None:
    """Settings for the demo's process and the Ray workers it starts (they inherit the environment)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # engine INFO lines: one screen per engine start


def shown(path: str) -> str:
    """A path as the user typed the command: relative to the current directory when inside it."""
    rel = os.path.relpath(os.path.abspath(path))
    return path if rel.startswith("..") else rel


def made_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(what) for what, _ in rows)
    lines = ["", "what was made".ljust(width) + "  where", "-" * width + "  " + "-" * 5]
    lines += [f"{what.ljust(width)}  {shown(where)}" for what, where in rows]
    return "\n".join(lines)
