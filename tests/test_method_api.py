"""The public method API (adamllm_ray.method): one caption through prompt -> parse -> pair -> judge
prompt -> keep -> compose -> training example, with every expected value written out from SPEC.md."""

import pytest

from adamllm_ray import method
from adamllm_ray.synthesis import stages

CAPTION = "A red car parked beside a brick wall."

# SPEC.md section 1, the released synthesizer's prompt, with the caption in place
LLAVA_PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision "
    "assistant. You are able to understand the visual content that the user provides, and assist the user "
    "with a variety of tasks using natural language.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    "<|reserved_special_token_4|>\nDescribe the image.<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    "\n\nA red car parked beside a brick wall.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
)

# what the synthesizer wrote after the prompt: a question asked both ways (the precise one twice),
# an unhinted question, and a last turn cut off by the token limit
SYNTHESIZER_OUTPUT = (
    "Answer with a precise response.\nWhat color is the car?"
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nCrimson<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "Answer with a precise response.\nWhat color is the car?"
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nRed<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "Is it raining?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nNo<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "Answer with an informative response.\nWhat color is the car?"
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    "The car in the photo is painted a bright red.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "Answer with a precise response.\nWhat is the wall made of?"
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nBri"
)

JUDGE_TEMPLATE = (
    "Say whether the answers agree.\n\n"
    "## Question: {Q}\n## Informative Answer: {informative_A}\n## Precise Answer: {precise_A}\n## Consistent:"
)

# one template per pool, so the composed wording is known
POOLS = {
    "qa": [{"question": "{question}", "response": "{answer}"}],
    "cot": [{"question": "Q: {question}", "response": "{informative}\nThe answer is {precise}"}],
}


def test_one_caption_through_the_method():
    family = "llava_next_llama3"
    assert method.synthesis_prompt(family, CAPTION) == LLAVA_PROMPT

    pairs = method.parse_output(SYNTHESIZER_OUTPUT, family)
    assert pairs == [
        {"question": "What color is the car?", "answer": "Crimson", "kind": "precise"},
        {"question": "What color is the car?", "answer": "Red", "kind": "precise"},
        {"question": "What color is the car?", "answer": "The car in the photo is painted a bright red.",
         "kind": "informative"},
    ]

    triplet = method.pair_triplet(pairs, family)
    assert triplet == {"question": "What color is the car?", "precise": "Red",
                       "informative": "The car in the photo is painted a bright red."}

    judge_text = method.judge_prompt(triplet, JUDGE_TEMPLATE)
    assert judge_text == (
        "Say whether the answers agree.\n\n"
        "## Question: What color is the car?\n"
        "## Informative Answer: The car in the photo is painted a bright red.\n"
        "## Precise Answer: Red\n"
        "## Consistent:"
    )

    assert method.judge_keeps(" Yes")
    assert not method.judge_keeps("Yes.")
    assert not method.judge_keeps("Open")

    assert method.response_rule(triplet) == "c"  # no indicator word: chain of thought
    task = method.compose_task(triplet, "img-0001", POOLS)
    assert task == ("Q: What color is the car?", "The car in the photo is painted a bright red.\nThe answer is Red")

    row = {"id": "img-0001", "image_path": "images/img-0001.jpg", "caption": CAPTION,
           "caption_prompt": "<image>Describe the image."}
    example = method.training_example(row, task)
    caption_turns = [{"role": "user", "content": "Describe the image."}, {"role": "assistant", "content": CAPTION}]
    task_turns = [{"role": "user", "content": "Q: What color is the car?"},
                  {"role": "assistant", "content": "The car in the photo is painted a bright red.\nThe answer is Red"}]
    orders = [caption_turns + task_turns, task_turns + caption_turns]
    for messages in orders:
        messages[0] = {"role": "user", "content": "<image>\n" + messages[0]["content"]}
    assert example["images"] == ["images/img-0001.jpg"]
    assert example["messages"] in orders
    assert method.training_example(row, task) == example  # the order comes from the id alone

    assert method.training_example(row, None, "synthetic_only") is None
    assert method.training_example(row, None) == {
        "images": ["images/img-0001.jpg"],
        "messages": [{"role": "user", "content": "<image>\nDescribe the image."},
                     {"role": "assistant", "content": CAPTION}],
    }


def test_the_default_judge_template_and_pools():
    template = method.load_judge_prompt()
    triplet = {"question": "What color is the car?", "precise": "Red", "informative": "It is red."}
    assert method.judge_prompt(triplet, template) == template.format(
        Q="What color is the car?", informative_A="It is red.", precise_A="Red")
    question, response = method.compose_task(triplet, "img-0001")
    assert "What color is the car?" in question and "It is red." in response


def test_qwen2_vl_synthesis_prompt():
    assert method.synthesis_prompt("qwen2_vl", CAPTION) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"
        "<|im_start|>assistant\nA red car parked beside a brick wall.<|im_end|>\n<|im_start|>user\n"
    )


def test_evaluation_prompt_of_a_task_example():
    example = {"question": "Is the lung healthy?", "answer_type": "CLOSED"}
    # SPEC §4: Qwen2-VL's chat template, system turn, one user turn with the image then the text
    assert method.evaluation_prompt("qwen2_vl", "slake", example) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is the lung healthy?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # the authors' sets carry the full prompt in `input`: sent verbatim
    with_input = {**example, "input": "Question: is the lung healthy? Answer yes or no.\n"}
    assert method.evaluation_prompt("qwen2_vl", "slake", with_input) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Question: is the lung healthy? Answer yes or "
        "no.\n<|im_end|>\n<|im_start|>assistant\n"
    )


def test_the_pipeline_calls_the_same_functions():
    assert stages.parse_output is method.parse_output
    assert stages.pair_triplet is method.pair_triplet
    assert stages.judge_prompt is method.judge_prompt
    assert stages.judge_keeps is method.judge_keeps
    assert stages.compose_task is method.compose_task


def test_bad_input_gives_a_clear_message():
    with pytest.raises(ValueError, match="unknown model family 'llava'"):
        method.synthesis_prompt("llava", CAPTION)
    with pytest.raises(method.JudgePromptError, match=r"lacks the placeholder\(s\) \{precise_A\}"):
        method.judge_prompt({"question": "q", "precise": "p", "informative": "i"}, "{Q} {informative_A}")
