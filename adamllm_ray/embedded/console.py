"""What the demo prints: its own lines, Ray Data's progress while a dataset runs, warnings that
matter, and nothing alarming when things go well."""

from __future__ import annotations

import os


def quiet() -> None:
    """Settings for the demo's process and the Ray workers it starts (they inherit the environment)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def made_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(what) for what, _ in rows)
    lines = ["", "what was made".ljust(width) + "  where", "-" * width + "  " + "-" * 5]
    lines += [f"{what.ljust(width)}  {where}" for what, where in rows]
    return "\n".join(lines)
