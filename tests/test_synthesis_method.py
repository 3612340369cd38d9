"""The method without Ray (SPEC.md sections 1-3): prompts, parsing, pairing, judge prompt and
verdicts, composition, training examples."""

import json
import os
import re
import subprocess
import sys

import pytest

from adamllm_ray.families import FAMILIES, get_family
from adamllm_ray.records import ERROR, MESSAGES, QA_PAIRS, RESPONSE, TRIPLET, VERDICT
from adamllm_ray.synthesis import (
    compose_task,
    finish_row,
    judge_keeps,
    judge_prompt,
    judge_prompt_of,
    load_judge_prompt,
    pair_triplet,
    parse_output,
    parse_row,
    parse_verdict,
    response_rule,
    training_example,
)
from adamllm_ray.synthesis.compose import POOLS, default_templates, load_templates
from adamllm_ray.synthesis.filter import JudgePromptError

LLAVA = get_family("llava_next_llama3")
QWEN = get_family("qwen2_vl")

# SPEC.md section 1, written out with real newlines.
LLAVA_PROMPT = """<|begin_of_text|><|start_header_id|>system<|end_header_id|>

You are a helpful language and vision assistant. You are able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.<|eot_id|><|start_header_id|>user<|end_header_id|>

<|reserved_special_token_4|>
Describe the image.<|eot_id|><|start_header_id|>assistant<|end_header_id|>

{caption}<|eot_id|><|start_header_id|>user<|end_header_id|>

"""

QWEN_PROMPT = """<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>
<|im_start|>assistant
{caption}<|im_end|>
<|im_start|>user
"""

# llava separators, spelled out
U = "<|start_header_id|>user<|end_header_id|>\n\n"
QA = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
EOT = "<|eot_id|>"
P = "Answer with a precise response.\n"
I = "Answer with an informative response.\n"


def pair(question, answer, kind):
    return {"question": question, "answer": answer, "kind": kind}


# ---------------------------------------------------------------- families


def test_llava_prompt_is_spec_string():
    caption = "A chest X-ray with {braces} kept as written."
    assert LLAVA.synthesis_prompt(caption) == LLAVA_PROMPT.replace("{caption}", caption)


def test_qwen_prompt_is_qwen2_vl_chat_format():
    assert QWEN.synthesis_prompt("A bowl of ramen.") == QWEN_PROMPT.replace("{caption}", "A bowl of ramen.")


def test_family_strings():
    assert (LLAVA.turn_separator, LLAVA.qa_separator, LLAVA.end_of_turn) == (U, QA, EOT)
    assert LLAVA.stop == ["<|end_of_text|>"]
    assert LLAVA.image_placeholder == "<|reserved_special_token_4|>"
    assert QWEN.turn_separator == "<|im_start|>user\n"
    assert QWEN.qa_separator == "<|im_end|>\n<|im_start|>assistant\n"
    assert QWEN.end_of_turn == "<|im_end|>"
    assert QWEN.stop == ["<|endoftext|>"]
    assert QWEN.image_placeholder == "<|vision_start|><|image_pad|><|vision_end|>"
    assert get_family(QWEN) is QWEN


def test_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown model family 'gpt4v'.*llava_next_llama3.*qwen2_vl"):
        get_family("gpt4v")


SEED_PAIRS = [
    pair("What organ is shown?", "The liver.", "precise"),
    pair("What organ is shown?", "The image shows the liver.\nIts left lobe is enlarged.", "informative"),
    pair("Is there a fracture?", "No", "precise"),
]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_seed_conversation_round_trip(name):
    fam = get_family(name)
    seed = fam.format_seed_conversation("An abdominal CT scan.", SEED_PAIRS)
    prompt = fam.synthesis_prompt("An abdominal CT scan.")
    assert seed.startswith(prompt)
    assert seed.endswith(fam.end_of_turn + ("\n" if name == "qwen2_vl" else "") + fam.stop[0])
    assert parse_output(seed[len(prompt) :], fam) == SEED_PAIRS


def test_seed_conversation_llava_exact():
    seed = LLAVA.format_seed_conversation("Cap.", SEED_PAIRS[:1] + SEED_PAIRS[2:])
    expected = (
        LLAVA_PROMPT.replace("{caption}", "Cap.")
        + "Answer with a precise response.\nWhat organ is shown?"
        + QA
        + "The liver."
        + EOT
        + U
        + "Answer with a precise response.\nIs there a fracture?"
        + QA
        + "No"
        + EOT
        + "<|end_of_text|>"
    )
    assert seed == expected


@pytest.mark.parametrize(
    "caption, pairs, message",
    [
        ("Cap.", [pair("Q?", "A", "detailed")], "qa pair 0: kind must be"),
        ("Cap.", [pair("Q?", "A", "precise"), pair(" ", "A", "precise")], "qa pair 1: the question is empty"),
        ("Cap.", [pair("Q?", "", "informative")], "qa pair 0: the answer is empty"),
        ("Cap.", [pair("Q?<|eot_id|>", "A", "precise")], "qa pair 0: the question contains the format string"),
        ("Cap.", [{"question": "Q?"}], "qa pair 0: expected a dict with question, answer and kind"),
        ("Cap.", [], "at least one question/answer pair"),
        ("  ", [pair("Q?", "A", "precise")], "the caption is empty"),
    ],
)
def test_seed_conversation_rejects_bad_input(caption, pairs, message):
    with pytest.raises(ValueError, match=message):
        LLAVA.format_seed_conversation(caption, pairs)


# ---------------------------------------------------------------- parsing


def test_parse_well_formed_multi_pair_output():
    raw = (
        "Answer with a precise response.\nWhat organ is shown?"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nThe liver<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Answer with an informative response.\nWhat organ is shown?"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "The scan shows the liver in the upper right abdomen.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Answer with a precise response.\nIs contrast used?"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nYes<|eot_id|>"
    )
    assert parse_output(raw, "llava_next_llama3") == [
        pair("What organ is shown?", "The liver", "precise"),
        pair("What organ is shown?", "The scan shows the liver in the upper right abdomen.", "informative"),
        pair("Is contrast used?", "Yes", "precise"),
    ]


def test_parse_drops_cut_off_last_pair():
    complete = P + "Q1?" + QA + "A1" + EOT
    assert parse_output(complete + U + P + "Q2?" + QA + "A2 is cut", LLAVA) == [pair("Q1?", "A1", "precise")]
    assert parse_output(complete + U + P + "Q2 is cu", LLAVA) == [pair("Q1?", "A1", "precise")]
    assert parse_output(complete + U + "Answer with a pre", LLAVA) == [pair("Q1?", "A1", "precise")]
    assert parse_output(complete + U, LLAVA) == [pair("Q1?", "A1", "precise")]
    # the only pair cut off: nothing
    assert parse_output(P + "Q1?" + QA + "A1 is", LLAVA) == []


def test_parse_keeps_last_pair_when_end_of_text_left_in_output():
    raw = P + "Q1?" + QA + "A1" + EOT + "<|end_of_text|>"
    assert parse_output(raw, LLAVA) == [pair("Q1?", "A1", "precise")]


def test_parse_qwen_complete_and_cut_off():
    sep_u, sep_qa = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
    first = P + "Q1?" + sep_qa + "A1<|im_end|>\n"
    assert parse_output(first, QWEN) == [pair("Q1?", "A1", "precise")]
    assert parse_output(first.rstrip("\n"), QWEN) == [pair("Q1?", "A1", "precise")]
    assert parse_output(first + sep_u + I + "Q2?" + sep_qa + "A2 cut", QWEN) == [pair("Q1?", "A1", "precise")]
    full = first + sep_u + I + "Q1?" + sep_qa + "Because A1.<|im_end|>\n"
    assert parse_output(full, QWEN) == [pair("Q1?", "A1", "precise"), pair("Q1?", "Because A1.", "informative")]


def test_parse_drops_chunks_without_exactly_one_qa_separator():
    raw = (
        P + "Q1? with no answer turn" + EOT  # no qa separator
        + U + P + "Q2?" + QA + "A2" + QA + "again" + EOT  # two qa separators: three parts
        + U + P + "Q3?" + QA + "A3" + EOT
    )
    assert parse_output(raw, LLAVA) == [pair("Q3?", "A3", "precise")]


def test_parse_drops_empty_sides_and_unhinted_questions():
    raw = (
        P + "Q1?" + QA + "  " + EOT  # empty answer
        + U + QA + "A2" + EOT  # empty question
        + U + P.strip() + QA + "A3" + EOT  # hint line but no question
        + U + "Q4 without a hint?" + QA + "A4" + EOT  # neither hint
        + U + "answer with a precise response.\nQ5?" + QA + "A5" + EOT  # hint with the wrong case
        + U + I + "  Q6?  " + QA + "\n A6 \n" + EOT
    )
    # the question's text after the hint's newline is kept as it is (leading spaces too)
    assert parse_output(raw, LLAVA) == [pair("  Q6?", "A6", "informative")]


def test_parse_empty_output_and_wrong_type():
    assert parse_output("", LLAVA) == []
    assert parse_output(EOT, LLAVA) == []
    with pytest.raises(TypeError, match="synthesizer output must be a string, got NoneType"):
        parse_output(None, LLAVA)


# ---------------------------------------------------------------- parsing and pairing: SPEC §1-2 edge rules
#
# Each family's separators written out: user turn separator, question/answer separator, end-of-turn
# token E and the close of a well-formed turn (Qwen writes a newline after E).

FORMATS = {
    "llava_next_llama3": {
        "U": "<|start_header_id|>user<|end_header_id|>\n\n",
        "QA": "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "E": "<|eot_id|>",
        "C": "<|eot_id|>",
        "H": "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "END": "<|end_of_text|>",
    },
    "qwen2_vl": {
        "U": "<|im_start|>user\n",
        "QA": "<|im_end|>\n<|im_start|>assistant\n",
        "E": "<|im_end|>",
        "C": "<|im_end|>\n",
        "H": "<|im_start|>assistant\n",
        "END": "<|endoftext|>",
    },
}
BOTH = pytest.mark.parametrize("name", sorted(FORMATS))


def turns(name, *turn_list):
    """Hand-written synthesizer output: each turn (question side, answer side) closed as the family
    closes a turn, joined by the user turn separator; the sides are written out verbatim."""
    f = FORMATS[name]
    return f["U"].join(q + f["QA"] + a + f["C"] for q, a in turn_list)


@BOTH
def test_edge_hint_must_be_followed_by_a_newline(name):
    raw = turns(
        name,
        ("Answer with a precise response. What color is the car?", "Red"),
        ("Answer with an informative response. What color is the car?", "The car is painted red."),
        ("Answer with a precise response.\nWhat color is the car?", "Red"),
    )
    assert parse_output(raw, name) == [pair("What color is the car?", "Red", "precise")]
    assert pair_triplet(parse_output(raw, name), name) is None


@BOTH
def test_edge_whitespace_after_the_hint_newline_is_part_of_the_question(name):
    raw = turns(
        name,
        ("Answer with a precise response.\n What color is the car?", "Red"),
        ("Answer with an informative response.\nWhat color is the car?", "The car is painted red."),
        ("Answer with a precise response.\n\tWhat color is the car?", "Crimson"),
        ("Answer with an informative response.\n What color is the car?", "It is a red car."),
    )
    pairs = parse_output(raw, name)
    assert pairs == [
        pair(" What color is the car?", "Red", "precise"),
        pair("What color is the car?", "The car is painted red.", "informative"),
        pair("\tWhat color is the car?", "Crimson", "precise"),
        pair(" What color is the car?", "It is a red car.", "informative"),
    ]
    assert pair_triplet(pairs, name) == {
        "question": " What color is the car?", "precise": "Red", "informative": "It is a red car."
    }


@BOTH
def test_edge_stray_end_of_turn_stays_in_the_question_and_takes_no_part_in_pairing(name):
    e = FORMATS[name]["E"]
    raw = turns(
        name,
        ("Answer with a precise response.\nIs the bowl full?" + e, "Yes"),
        ("Answer with an informative response.\nIs the bowl full?", "The bowl is filled to the rim with soup."),
        ("Answer with a precise response.\nIs the bowl full?" + e, "No"),
        ("Answer with an informative response.\nIs the bowl full?" + e, "Soup reaches the rim."),
    )
    pairs = parse_output(raw, name)
    assert pairs == [
        pair("Is the bowl full?" + e, "Yes", "precise"),
        pair("Is the bowl full?", "The bowl is filled to the rim with soup.", "informative"),
        pair("Is the bowl full?" + e, "No", "precise"),
        pair("Is the bowl full?" + e, "Soup reaches the rim.", "informative"),
    ]
    assert pair_triplet(pairs, name) is None


@BOTH
def test_edge_answer_without_end_of_turn_is_dropped(name):
    f = FORMATS[name]
    raw = (
        "Answer with a precise response.\nWhat is on the plate?" + f["QA"] + "Rice"  # no E before the next turn
        + f["U"] + turns(name,
                         ("Answer with an informative response.\nWhat is on the plate?", "A mound of white rice."),
                         ("Answer with a precise response.\nWhat is on the plate?", "White rice"))
    )
    pairs = parse_output(raw, name)
    assert pairs == [
        pair("What is on the plate?", "A mound of white rice.", "informative"),
        pair("What is on the plate?", "White rice", "precise"),
    ]
    assert pair_triplet(pairs, name) == {
        "question": "What is on the plate?", "precise": "White rice", "informative": "A mound of white rice."
    }


@BOTH
def test_edge_whitespace_after_end_of_turn(name):
    f = FORMATS[name]
    middle = ("Answer with a precise response.\nWhich side is the lesion on?" + f["QA"] + "Left" + f["E"]
              + " \n" + f["U"])
    last = "Answer with an informative response.\nWhich side is the lesion on?" + f["QA"] + "The lesion is on the left."
    # inside the output: trailing whitespace removed, then E, then the answer is clean
    pairs = parse_output(middle + last + f["C"], name)
    assert pairs == [
        pair("Which side is the lesion on?", "Left", "precise"),
        pair("Which side is the lesion on?", "The lesion is on the left.", "informative"),
    ]
    assert pair_triplet(pairs, name) == {
        "question": "Which side is the lesion on?", "precise": "Left", "informative": "The lesion is on the left."
    }
    # at the very end: the output does not end with E (or the turn close), so its last turn counts as cut off
    assert parse_output(middle + last + f["E"] + " \n", name) == [pair("Which side is the lesion on?", "Left", "precise")]


@BOTH
def test_edge_repeated_same_kind_question_keeps_the_latest_answer(name):
    raw = turns(
        name,
        ("Answer with a precise response.\nWhat color is the car?", "Red"),
        ("Answer with a precise response.\nWhat color is the car?", "Blue"),
        ("Answer with an informative response.\nWhat color is the car?", "The car is blue."),
        ("Answer with an informative response.\nWhat color is the car?", "It is a blue sedan."),
    )
    pairs = parse_output(raw, name)
    assert pairs == [
        pair("What color is the car?", "Red", "precise"),
        pair("What color is the car?", "Blue", "precise"),
        pair("What color is the car?", "The car is blue.", "informative"),
        pair("What color is the car?", "It is a blue sedan.", "informative"),
    ]
    assert pair_triplet(pairs, name) == {
        "question": "What color is the car?", "precise": "Blue", "informative": "The car is blue."
    }


@BOTH
def test_edge_format_token_in_an_answer_takes_no_part_in_pairing(name):
    f = FORMATS[name]
    raw = turns(
        name,
        ("Answer with a precise response.\nHow many eggs?", "Two" + f["E"] + "Three"),
        ("Answer with a precise response.\nHow many eggs?", "Four" + f["END"]),
        ("Answer with a precise response.\nHow many eggs?", "Three"),
        ("Answer with an informative response.\nHow many eggs?", "Five" + f["H"] + "eggs"),
        ("Answer with an informative response.\nHow many eggs?", "I count three eggs in the carton."),
    )
    pairs = parse_output(raw, name)
    assert pairs == [
        pair("How many eggs?", "Two" + f["E"] + "Three", "precise"),
        pair("How many eggs?", "Four" + f["END"], "precise"),
        pair("How many eggs?", "Three", "precise"),
        pair("How many eggs?", "Five" + f["H"] + "eggs", "informative"),
        pair("How many eggs?", "I count three eggs in the carton.", "informative"),
    ]
    assert pair_triplet(pairs, name) == {
        "question": "How many eggs?", "precise": "Three", "informative": "I count three eggs in the carton."
    }


@BOTH
def test_edge_rules_together(name):
    """One output with every edge case, the pairs and triplet written out in full."""
    f = FORMATS[name]
    raw = (
        "Answer with a precise response. Is there a fracture?" + f["QA"] + "No" + f["C"]  # hint on the question's line
        + f["U"] + "Answer with a precise response.\nIs there a fracture?" + f["E"] + f["QA"] + "Yes" + f["C"]
        + f["U"] + "Answer with a precise response.\nIs there a fracture?" + f["QA"] + "Maybe"  # no E
        + f["U"] + "Answer with a precise response.\nIs there a fracture?" + f["QA"] + "No" + f["E"] + "  \n"
        + f["U"] + "Answer with a precise response.\nIs there a fracture?" + f["QA"] + "No fracture" + f["C"]
        + f["U"] + "Answer with an informative response.\n Is there a fracture?" + f["QA"] + "The bone is intact." + f["C"]
        + f["U"] + "Answer with an informative response.\nIs there a fracture?" + f["QA"]
        + "The cortex is continuous, so there is no fracture." + f["C"]
        + f["U"] + "Answer with a precise response.\nIs the film lateral?" + f["QA"] + "Ye"  # cut off
    )
    pairs = parse_output(raw, name)
    assert pairs == [
        pair("Is there a fracture?" + f["E"], "Yes", "precise"),
        pair("Is there a fracture?", "No", "precise"),
        pair("Is there a fracture?", "No fracture", "precise"),
        pair(" Is there a fracture?", "The bone is intact.", "informative"),
        pair("Is there a fracture?", "The cortex is continuous, so there is no fracture.", "informative"),
    ]
    assert pair_triplet(pairs, name) == {
        "question": "Is there a fracture?",
        "precise": "No fracture",
        "informative": "The cortex is continuous, so there is no fracture.",
    }


# ---------------------------------------------------------------- pairing


def test_pair_needs_both_kinds():
    assert pair_triplet([pair("Q?", "a", "precise"), pair("Q?", "b", "precise")], LLAVA) is None
    assert pair_triplet([pair("Q?", "a", "informative"), pair("Q?", "b", "informative")], LLAVA) is None
    assert pair_triplet([], LLAVA) is None
    # exact text only
    assert pair_triplet([pair("What is it?", "a", "precise"), pair("what is it?", "b", "informative")], LLAVA) is None


def test_pair_takes_latest_answers_of_a_repeated_question():
    pairs = [
        pair("Q?", "p1", "precise"),
        pair("Other?", "x", "informative"),
        pair("Q?", "p2", "precise"),
        pair("Q?", "i1", "informative"),
        pair("Q?", "i2", "informative"),
    ]
    assert pair_triplet(pairs, "llava_next_llama3") == {"question": "Q?", "precise": "p2", "informative": "i1"}


def test_pair_takes_the_first_question_completed_in_the_walk():
    pairs = [
        pair("Q1?", "p1", "precise"),
        pair("Q2?", "i2", "informative"),
        pair("Q2?", "p2", "precise"),
        pair("Q1?", "i1", "informative"),
    ]
    assert pair_triplet(pairs, QWEN) == {"question": "Q2?", "precise": "p2", "informative": "i2"}


def test_pair_skips_turn_headers_of_its_own_family_only():
    qwen_header = "<|im_start|>assistant\n"
    pairs = [pair("Q?", "a" + qwen_header, "precise"), pair("Q?", "b", "informative"), pair("Q?", "c", "precise")]
    assert pair_triplet(pairs, QWEN) == {"question": "Q?", "precise": "c", "informative": "b"}
    assert pair_triplet(pairs, LLAVA) == {"question": "Q?", "precise": "a" + qwen_header, "informative": "b"}
    system = pair("Q?" + "<|start_header_id|>system<|end_header_id|>\n\n", "d", "precise")
    assert pair_triplet([system, pair("Q?", "b", "informative")], LLAVA) is None


def test_pair_rejects_unknown_kind():
    with pytest.raises(ValueError, match="qa pair 1: kind must be"):
        pair_triplet([pair("Q?", "a", "precise"), pair("Q?", "b", "long")], LLAVA)


# ---------------------------------------------------------------- judge


TRIPLET_C = {"question": "Which side is the effusion on?", "precise": "Right", "informative": "Fluid fills the right base."}

# a template in the authors' style: instructions, a worked example, the block with the three placeholders
AUTHORS_STYLE = (
    "Decide whether the precise answer agrees with the informative answer. Reply Yes, No or Open.\n\n"
    "## Question: What is 2+2? Answer as {{number}}.\n"
    "## Informative Answer: Two plus two is four.\n"
    "## Precise Answer: 4\n"
    "## Consistent: Yes\n\n"
    "## Question: {Q}\n"
    "## Informative Answer: {informative_A}\n"
    "## Precise Answer: {precise_A}\n"
    "## Consistent:"
)


def test_judge_prompt_is_what_str_format_gives(tmp_path):
    path = tmp_path / "consistency_filter_prompt.txt"
    path.write_text(AUTHORS_STYLE, encoding="utf-8")
    template = load_judge_prompt(path)
    assert template == AUTHORS_STYLE
    expected = AUTHORS_STYLE.format(Q=TRIPLET_C["question"], informative_A=TRIPLET_C["informative"],
                                    precise_A=TRIPLET_C["precise"])
    assert judge_prompt(TRIPLET_C, template) == expected
    assert expected == (
        "Decide whether the precise answer agrees with the informative answer. Reply Yes, No or Open.\n\n"
        "## Question: What is 2+2? Answer as {number}.\n"
        "## Informative Answer: Two plus two is four.\n"
        "## Precise Answer: 4\n"
        "## Consistent: Yes\n\n"
        "## Question: Which side is the effusion on?\n"
        "## Informative Answer: Fluid fills the right base.\n"
        "## Precise Answer: Right\n"
        "## Consistent:"
    )


def test_judge_prompt_inserts_braces_in_the_triplet_verbatim():
    triplet = {"question": "Is {x} a set?", "precise": "{Q}", "informative": "The braces {0} and {informative_A} stay."}
    text = judge_prompt(triplet, AUTHORS_STYLE)
    assert text.endswith(
        "## Question: Is {x} a set?\n"
        "## Informative Answer: The braces {0} and {informative_A} stay.\n"
        "## Precise Answer: {Q}\n"
        "## Consistent:"
    )


def test_judge_template_file_used_as_it_is(tmp_path):
    """No stripping or appending: a trailing newline and repeated placeholders stay as written."""
    path = tmp_path / "mine.txt"
    path.write_text("Q={Q} I={informative_A} P={precise_A} again {Q}\n", encoding="utf-8")
    assert judge_prompt(TRIPLET_C, load_judge_prompt(str(path))) == (
        "Q=Which side is the effusion on? I=Fluid fills the right base. P=Right again Which side is the effusion on?\n"
    )


def test_default_judge_prompt_is_a_template_with_six_examples():
    text = load_judge_prompt()
    lines = text.splitlines()
    verdicts = [line.split(":", 1)[1].strip() for line in lines if line.startswith("## Consistent:")]
    assert sorted(verdicts) == ["", "No", "No", "Open", "Open", "Yes", "Yes"]
    for head in ("## Question: ", "## Informative Answer: ", "## Precise Answer: "):
        assert sum(line.startswith(head) for line in lines) == 7
    assert text.endswith("\n\n## Question: {Q}\n## Informative Answer: {informative_A}\n"
                         "## Precise Answer: {precise_A}\n## Consistent:")
    prompt = judge_prompt(TRIPLET_C, text)
    assert prompt.endswith("Consistent: Open\n\n## Question: Which side is the effusion on?\n"
                           "## Informative Answer: Fluid fills the right base.\n## Precise Answer: Right\n## Consistent:")
    assert prompt == text.format(Q=TRIPLET_C["question"], informative_A=TRIPLET_C["informative"],
                                 precise_A=TRIPLET_C["precise"])


@pytest.mark.parametrize(
    "content, message",
    [
        ("Their instructions only.\n", r"lacks the placeholder\(s\) \{Q\}, \{informative_A\}, \{precise_A\}"),
        ("## Question: {Q}\n## Informative Answer: {informative_A}\n## Consistent:",
         r"lacks the placeholder\(s\) \{precise_A\}"),
        ("## Question: {Q}\n## Precise Answer: {precise_A}\n## Consistent:", r"lacks the placeholder\(s\) \{informative_A\}"),
        ("{Q} {informative_A} {precise_A} {answer}", r"unknown placeholder\(s\) '\{answer\}'"),
        ("{Q} {informative_A} {precise_A} a set {x", "is not a valid template"),
    ],
)
def test_judge_template_without_placeholders_is_refused(tmp_path, content, message):
    path = tmp_path / "their_prompt.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(JudgePromptError, match=f"judge prompt file {re.escape(str(path))} .*{message}"):
        load_judge_prompt(path)


def test_judge_prompt_refuses_an_unchecked_text():
    with pytest.raises(JudgePromptError, match=r"lacks the placeholder\(s\) \{Q\}"):
        judge_prompt(TRIPLET_C, "Instructions.\n\n## Question: x\n## Consistent: Yes\n\n")


def test_judge_prompt_file_errors(tmp_path):
    with pytest.raises(JudgePromptError, match="judge prompt file not found: .*missing.txt"):
        load_judge_prompt(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(JudgePromptError, match="judge prompt file .*empty.txt is empty"):
        load_judge_prompt(tmp_path / "empty.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(JudgePromptError, match="not UTF-8 text"):
        load_judge_prompt(tmp_path / "binary.txt")


def test_refused_judge_template_is_a_one_line_config_error(tmp_path):
    """`adamllm synthesize` reports it before starting Ray: exit 2, the file named, no traceback."""
    bad = tmp_path / "prompt.txt"
    bad.write_text("Instructions only.\n")
    (tmp_path / "pairs.json").write_text("[]")
    config = tmp_path / "job.yaml"
    config.write_text(
        f"source: {{format: sharegpt, path: {tmp_path / 'pairs.json'}}}\n"
        f"output: {tmp_path / 'out'}\n"
        "synthesizer: {model: none}\n"
        "judge: {model: none}\n"
        f"judge_prompt: {bad}\n"
    )
    r = subprocess.run([sys.executable, "-m", "adamllm_ray.cli", "synthesize", "--config", str(config)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"judge prompt file {bad} lacks the placeholder(s) {{Q}}, {{informative_A}}, {{precise_A}}" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "output, kept, verdict",
    [
        ("Yes", True, "yes"),
        (" yes\n", True, "yes"),
        (" YES", True, "yes"),
        ("yes.", False, "yes"),
        (" Yes No", False, "yes"),
        ("No", False, "no"),
        (" no,", False, "no"),
        ("Open", False, "open"),
        ("", False, None),
        ("  \n", False, None),
        (None, False, None),
        ("Maybe", False, None),
        ("Yesterday", False, None),
    ],
)
def test_verdicts(output, kept, verdict):
    assert judge_keeps(output) is kept
    assert parse_verdict(output) == verdict


# ---------------------------------------------------------------- compose


def test_rule_a_informative_already_concludes():
    triplet = {"question": "Where is the mass?", "precise": "Right lobe",
               "informative": "A mass sits in the liver. So the answer is the right lobe."}
    assert response_rule(triplet) == "a"
    question, response = compose_task(triplet, "row-1")
    assert response == triplet["informative"]
    assert "Where is the mass?" in question


def test_rule_a_looks_only_at_the_last_sentence():
    triplet = {"question": "Q?", "precise": "Spine",
               "informative": "Therefore the organ is clear. It lies near the spine."}
    assert response_rule(triplet) == "c"


def test_rule_a_indicators_are_substrings():
    # "also " contains "so ": the method matches substrings, and so do we
    triplet = {"question": "Q?", "precise": "Yes", "informative": "The kidney is also enlarged."}
    assert response_rule(triplet) == "a"


def test_rule_b_precise_reads_as_conclusion():
    triplet = {"question": "What does the test show?", "precise": "The result is positive.",
               "informative": "The strip shows two lines."}
    assert response_rule(triplet) == "b"
    question, response = compose_task(triplet, "row-2")
    assert response == "The strip shows two lines. The result is positive."
    assert "What does the test show?" in question


def test_rule_c_chain_of_thought():
    triplet = {"question": "How many eggs are in the bowl?", "precise": "3",
               "informative": "There are two eggs on the left and one on the right, three in all."}
    assert response_rule(triplet) == "c"
    cot = default_templates()["cot"]
    for record_id in ("row-3", "row-4", "row-5"):
        question, response = compose_task(triplet, record_id)
        filled = {
            (t["question"].format(question=triplet["question"]),
             t["response"].format(informative=triplet["informative"], precise=triplet["precise"]))
            for t in cot
        }
        assert (question, response) in filled
        assert response.index(triplet["informative"]) < response.rindex("3")


def test_template_choice_reproducible_and_varied():
    triplet = {"question": "Q?", "precise": "Right", "informative": "Fluid at the right base."}
    assert compose_task(triplet, "abc") == compose_task(triplet, "abc")
    questions = {compose_task(triplet, f"id-{i}")[0] for i in range(300)}
    assert len(questions) >= 30  # 40 templates in the pool


def test_template_choice_from_the_id_alone_across_processes():
    """Another interpreter, another hash seed, same choices."""
    triplets = [
        {"question": "Q?", "precise": "Right", "informative": "Fluid at the right base."},
        {"question": "Q?", "precise": "Final: 4", "informative": "Four."},
    ]
    here = [list(compose_task(t, f"id-{i}")) for i in range(20) for t in triplets]
    code = (
        "import json, sys; from adamllm_ray.synthesis import compose_task; ts = json.loads(sys.argv[1]);"
        "print(json.dumps([list(compose_task(t, f'id-{i}')) for i in range(20) for t in ts]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(triplets)], env=env, capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout) == here


def test_compose_rejects_missing_id():
    with pytest.raises(ValueError, match="record id must be a string or an int, got None"):
        compose_task(TRIPLET_C, None)


def test_shipped_template_pools():
    for pool in POOLS:
        templates = load_templates(pool)
        assert len(templates) >= 24
        assert len({t["question"] for t in templates}) == len(templates)


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "expected a JSON object with a 'templates' list"),
        ('{"templates": []}', "'templates' must be a non-empty list"),
        ('{"templates": [{"question": "{question}"}]}', "template 0 must have exactly the keys"),
        ('{"templates": [{"question": "{question}", "response": "{answer}"}, {"question": "x", "response": "{answer}"}]}',
         r"template 1 question uses placeholders \[\], expected \['question'\]"),
        ('{"templates": [{"question": "{question}", "response": "{answer} {precise}"}]}',
         r"template 0 response uses placeholders \['answer', 'precise'\], expected \['answer'\]"),
        ('{"templates": [{"question": "{question", "response": "{answer}"}]}', "template 0 question: "),
    ],
)
def test_template_file_errors(tmp_path, content, message):
    path = tmp_path / "pool.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"pool.json: {message}"):
        load_templates("qa", path)


# ---------------------------------------------------------------- training examples


def row_with(record_id="r-1", kept=True, **extra):
    row = {
        "id": record_id,
        "image_path": "images/r-1.jpg",
        "caption": "A chest X-ray showing a right pleural effusion.",
        "caption_prompt": "<image>Describe the image.",
        "triplet": dict(TRIPLET_C),
        "response": None,
    }
    if kept:
        row["response"] = compose_task(row["triplet"], record_id)[1]
    row.update(extra)
    return row


def check_shape(example, n_turns):
    assert example["images"] == ["images/r-1.jpg"]
    roles = [m["role"] for m in example["messages"]]
    assert roles == ["user", "assistant"] * n_turns
    assert example["messages"][0]["content"].startswith("<image>\n")
    assert sum(m["content"].count("<image>") for m in example["messages"]) == 1


def test_single_stage_example_with_kept_task():
    row = row_with()
    example = training_example(row)
    check_shape(example, 2)
    question, response = compose_task(row["triplet"], row["id"])
    caption_turns = ["Describe the image.", row["caption"]]
    task_turns = [question, response]
    contents = [m["content"].removeprefix("<image>\n") for m in example["messages"]]
    assert contents in (caption_turns + task_turns, task_turns + caption_turns)


def test_caption_task_position_varies_by_id_and_is_reproducible():
    first = {}
    for i in range(100):
        row = row_with(f"img-{i}")
        example = training_example(row)
        first[i] = example["messages"][1]["content"] == row["caption"]
        assert training_example(row) == example
    assert 20 < sum(first.values()) < 80


def test_caption_position_is_not_tied_to_the_template():
    pool = [t["question"].format(question=TRIPLET_C["question"]) for t in default_templates()["cot"]]
    seen = set()
    for i in range(200):
        row = row_with(f"img-{i}")
        messages = training_example(row)["messages"]
        caption_first = messages[1]["content"] == row["caption"]
        task_question = messages[0 if not caption_first else 2]["content"].removeprefix("<image>\n")
        seen.add((caption_first, pool.index(task_question) < len(pool) // 2))
    assert seen == {(True, True), (True, False), (False, True), (False, False)}


def test_example_without_kept_task_is_caption_only_with_image():
    row = row_with(kept=False, triplet=None)
    example = training_example(row)
    check_shape(example, 1)
    assert example["messages"] == [
        {"role": "user", "content": "<image>\nDescribe the image."},
        {"role": "assistant", "content": row["caption"]},
    ]


@pytest.mark.parametrize(
    "prompt, user_turn",
    [
        ("<image>Describe the image.", "Describe the image."),
        ("<image>\nWhat is shown in this picture?", "What is shown in this picture?"),
        ("Give a short caption.\n<image>", "Give a short caption."),
        ("<image>", "Describe the image."),
        (None, "Describe the image."),
    ],
)
def test_caption_prompt_loses_its_image_token(prompt, user_turn):
    example = training_example(row_with(kept=False, caption_prompt=prompt))
    assert example["messages"][0]["content"] == "<image>\n" + user_turn


def test_stray_image_token_in_task_is_removed():
    row = row_with(triplet={"question": "<image>What is it?", "precise": "A cat", "informative": "A cat on a mat."})
    row["response"] = "set"
    example = training_example(row, "synthetic_only")
    check_shape(example, 1)


def test_modes():
    kept, plain = row_with(), row_with(kept=False)
    question, response = compose_task(kept["triplet"], kept["id"])
    synthetic = training_example(kept, "synthetic_only")
    check_shape(synthetic, 1)
    assert [m["content"] for m in synthetic["messages"]] == ["<image>\n" + question, response]
    assert training_example(plain, "synthetic_only") is None
    caption = training_example(kept, "caption_only")
    check_shape(caption, 1)
    assert caption["messages"][1]["content"] == kept["caption"]
    assert training_example(plain, "caption_only") == caption
    check_shape(training_example(plain, "single_stage"), 1)
    with pytest.raises(ValueError, match="unknown mode 'two_stage'"):
        training_example(kept, "two_stage")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"caption": ""}, "row 'r-1': the caption is missing or empty"),
        ({"caption": None}, "row 'r-1': the caption is missing or empty"),
        ({"image_path": None}, "row 'r-1': image_path is missing"),
        ({"caption_prompt": 7}, "row 'r-1': caption_prompt must be a string, got int"),
        ({"triplet": None}, "row 'r-1': has a response but no triplet"),
        ({"id": None}, "record id must be a string or an int, got None"),
    ],
)
def test_training_example_bad_rows(change, message):
    with pytest.raises(ValueError, match=message):
        training_example(row_with(**change))


# ---------------------------------------------------------------- row functions


def synth_row(record_id, raw):
    return {"id": record_id, "image_path": "images/r-1.jpg", "caption": "A CT scan.",
            "caption_prompt": "<image>Describe the image.", "raw_output": raw, "error": None}


RAW_WITH_TRIPLET = P + "Which side?" + QA + "Right" + EOT + U + I + "Which side?" + QA + "Fluid on the right." + EOT
RAW_WITHOUT = P + "Which side?" + QA + "Right" + EOT


def test_row_functions_count_up():
    rows = [parse_row(synth_row(f"r{i}", raw), "llava_next_llama3")
            for i, raw in enumerate([RAW_WITH_TRIPLET, RAW_WITH_TRIPLET, RAW_WITH_TRIPLET, RAW_WITHOUT, 42])]
    assert [r[ERROR] is None for r in rows] == [True, True, True, True, False]
    assert rows[4][ERROR] == {"stage": "parse", "message": "raw_output must be the synthesizer's text, got int"}
    assert rows[4]["caption"] == "A CT scan."  # nothing else lost
    assert [len(r[QA_PAIRS]) for r in rows[:4]] == [2, 2, 2, 1]
    assert rows[0][TRIPLET] == {"question": "Which side?", "precise": "Right", "informative": "Fluid on the right."}
    assert rows[3][TRIPLET] is None
    prompt_text = load_judge_prompt()
    prompts = [judge_prompt_of(r, prompt_text) for r in rows]
    assert [p is not None for p in prompts] == [True, True, True, False, False]
    assert prompts[0].endswith("## Question: Which side?\n## Informative Answer: Fluid on the right.\n"
                               "## Precise Answer: Right\n## Consistent:")

    judge = [" Yes", "No", "Yes.", None, None]
    done = [finish_row(r, "single_stage", out) for r, out in zip(rows, judge)]
    assert [r[VERDICT] for r in done] == ["yes", "no", "yes", None, None]
    assert [r[RESPONSE] is not None for r in done] == [True, False, False, False, False]
    assert [None if r[MESSAGES] is None else len(r[MESSAGES]) for r in done] == [4, 2, 2, 2, None]
    assert done[4][ERROR]["stage"] == "parse"

    synthetic = [finish_row(r, "synthetic_only", out) for r, out in zip(rows, judge)]
    assert [r[MESSAGES] is not None for r in synthetic] == [True, False, False, False, False]

    unjudged = [finish_row(r, "single_stage", judged=False) for r in rows]
    assert [r[RESPONSE] is not None for r in unjudged] == [True, True, True, False, False]
    assert all(r[VERDICT] is None for r in unjudged)


def test_finish_row_bad_input_becomes_error_row():
    row = parse_row(synth_row("r1", RAW_WITH_TRIPLET), LLAVA)
    bad_caption = finish_row({**row, "caption": ""}, judge_output="Yes")
    assert bad_caption[ERROR] == {"stage": "compose", "message": "row 'r1': the caption is missing or empty"}
    assert bad_caption[TRIPLET] == row[TRIPLET]
    bad_judge = finish_row(row, judge_output=["Yes"])
    assert bad_judge[ERROR] == {"stage": "judge", "message": "judge output must be text, got list"}
    with pytest.raises(ValueError, match="unknown mode"):
        finish_row(row, "everything")


def test_failed_row_passes_through():
    row = {**synth_row("r1", RAW_WITH_TRIPLET), "error": {"stage": "read", "message": "bad image"}}
    parsed = parse_row(row, LLAVA)
    assert parsed[QA_PAIRS] is None and parsed[ERROR] == row["error"]
    assert finish_row(parsed, judge_output="Yes")[MESSAGES] is None


def test_bench_rows_parse_like_real_output():
    """The benchmark's rows are synthesizer output in the family's format: a whole output parses to
    pairs that, written out again in that format, are the output itself; an output cut by the token
    limit parses to the pairs before the cut; a question asked both ways gives its triplet."""
    from adamllm_ray.bench.method import sample_rows

    rows = sample_rows(200, "qwen2_vl", seed=1)
    whole = cut = 0
    for r in rows:
        pairs = parse_output(r["raw_output"], QWEN)
        written = QWEN.format_turns(pairs) if pairs else ""
        assert r["raw_output"].startswith(written), r["raw_output"][:200]
        whole += written == r["raw_output"]
        cut += written != r["raw_output"]
        asked_both = {q for q in {p["question"] for p in pairs}
                      if {p["kind"] for p in pairs if p["question"] == q} == {"precise", "informative"}}
        triplet = pair_triplet(pairs, QWEN)
        assert (triplet is not None) == bool(asked_both)
        assert triplet is None or triplet["question"] in asked_both
    assert whole > 0 and cut > 0 and whole + cut == len(rows)
