"""The demo's judge tuning is a real training run on real judge prompts, and its verdicts are read
by the pipeline's own code."""

from adamllm_ray.embedded import judge
from adamllm_ray.synthesis import filter as judge_filter


def test_generated_examples_have_the_verdict_their_construction_says():
    import random

    from adamllm_ray.embedded import sample_data

    answers: dict[str, set] = {}  # what each kind of question is answered with, over many scenes
    rng = random.Random(0)
    for _ in range(500):
        for qa in sample_data.scene_qa(sample_data.scene(rng)):
            if qa["kind"] == "precise" and qa["question"] != judge.OPEN_QUESTION:
                answers.setdefault(judge._asks(qa["question"]), set()).add(qa["answer"])
    rows = judge.examples(300, seed=1)
    assert {"yes", "no", "open"} == {v for _, v in rows}
    for triplet, verdict in rows:
        if verdict == "open":
            assert triplet["question"] == judge.OPEN_QUESTION
            continue
        fits = triplet["precise"] in answers[judge._asks(triplet["question"])]
        assert fits == (verdict == "yes"), triplet
        if verdict == "yes":
            assert triplet["precise"].rstrip(".").split()[-1] in triplet["informative"]
    assert judge.examples(50, seed=1) == rows[:50], "drawn from the seed alone"


def test_tuning_lowers_the_loss_and_verdicts_parse(tiny_text, tmp_path):
    template = judge_filter.load_judge_prompt(None)
    tuned = judge.tune(tiny_text, tmp_path / "judge", template, steps=40, batch_size=8)
    assert tuned["final_loss"] < tuned["first_loss"] / 4
    check = judge.check(tuned["model"], template, n=12, seed=99)
    said = [s for row in check["confusion"].values() for s, k in row.items() for _ in range(k)]
    assert len(said) == 12 and all(s in {"yes", "no", "open", "None"} for s in said)
    assert check["accuracy"] == sum(row.get(v, 0) for v, row in check["confusion"].items()) / 12
