"""Evaluation: the paper's eight tasks, their prompts, and their scores (SPEC.md section 4)."""
