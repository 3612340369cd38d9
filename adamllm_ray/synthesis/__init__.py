"""Synthesis, the method without Ray: parse synthesizer output into hinted question/answer pairs,
pair a triplet, build the judge prompt and read its verdict, compose the training example.
pipeline.py wires these into Ray Data."""

from adamllm_ray.synthesis.compose import compose_task, response_rule, training_example
from adamllm_ray.synthesis.filter import judge_keeps, judge_prompt, load_judge_prompt, pair_triplet, parse_verdict
from adamllm_ray.synthesis.parse import parse_output
from adamllm_ray.synthesis.stages import finish_row, judge_prompt_of, parse_row

__all__ = [
    "compose_task",
    "finish_row",
    "judge_keeps",
    "judge_prompt",
    "judge_prompt_of",
    "load_judge_prompt",
    "pair_triplet",
    "parse_output",
    "parse_row",
    "parse_verdict",
    "response_rule",
    "training_example",
]
