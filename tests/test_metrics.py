"""The paper's evaluation metrics (SPEC.md section 4), checked against hand-computed values, against
a literal transcription of the SPEC steps, and against scikit-learn and the `rouge` package."""

import random
import re
from collections import Counter

import pytest
from rouge import Rouge
from sklearn.metrics import f1_score, recall_score

from adamllm_ray.evaluation import metrics as m
from adamllm_ray.evaluation.tasks import PAPER_SCORES, TASKS, RecordError, build_prompt_text

# ---------------------------------------------------------------- VQA normalization


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes.", "yes"),
        ("The two kidneys", "2 kidneys"),
        ("none of them", "0 of them"),
        ("An apple a day", "apple day"),
        ("it isnt, dont", "it isn't don't"),
        ("Im here", "im here"),  # the table's capitalised keys never match lower-cased text
        ("somebody'd", "somebodyd"),  # the table's own oddity, kept
        # '/' stands next to a space somewhere, so every '/' is deleted, even in "a/b"
        ("a/b c/ d", "ab c d"),
        # no '/' next to a space: each becomes a space, then the article "a" is dropped
        ("a/b c/d", "b c d"),
        # a digit-comma-digit anywhere deletes every punctuation character
        ("1,000 left-lung", "1000 leftlung"),
        ("1, left-lung", "1 left lung"),
        # the test is made on the text before the step: replacing ';' by a space does not make
        # '-' "stand next to a space", so '-' becomes a space too ("c d", not "cd")
        ("x;-y c-d", "x y c d"),
        ("(chest) x-ray", "chest x ray"),
        ("3.5 cm.", "3.5 cm"),
        ("e.g. the liver", "eg liver"),
        ("", ""),
        ("   ", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert m.normalize_answer(text) == expected


def test_period_removal_is_capped_at_32():
    text = "no" + "." * 40
    assert m.normalize_answer(text) == "no" + "." * 8
    # open questions are normalized twice, which removes the rest
    assert m.normalize_open_answer(text) == "no"
    assert m.normalize_answer("x." * 33) == "x" * 33 + "."


def _literal_normalize(token: str) -> str:
    """SPEC §4 steps 1-4 transcribed one to one, as the reference for the fast version."""
    out = token
    for p in m.VQA_PUNCTUATION:
        if (p + " " in token or " " + p in token) or re.search(r"(\d)(,)(\d)", token) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    token = re.sub(r"(?!<=\d)(\.)(?!\d)", "", out, count=32)
    words = []
    for word in token.lower().split():
        word = m.NUMBER_WORDS.get(word, word)
        if word not in m.ARTICLES:
            words.append(word)
    words = [m.CONTRACTIONS.get(w, w) for w in words]
    return " ".join(words).replace(",", "")


def _literal_open_recall(prediction: str, label: str) -> float:
    candidate = _literal_normalize(_literal_normalize(prediction.lower()))
    reference = _literal_normalize(_literal_normalize(label.lower()))
    pc, rc = Counter(candidate.lower().split()), Counter(reference.lower().split())
    tp = sum(pc[w] for w in set(pc) | set(rc) if w in pc and w in rc)
    fn = sum(rc[w] for w in set(pc) | set(rc) if w not in pc and w in rc)
    if not pc or not rc or tp == 0:
        return 0
    return tp / (tp + fn)


def _random_texts(n, seed=0):
    pieces = list(m.VQA_PUNCTUATION) + [".", ".", " ", " ", " ", "1", "2", ",", "the", "a", "one",
                                        "none", "dont", "isnt", "no", "not", "yes", "lung", "Left", "'"]
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 60))) for _ in range(n)]


def test_normalize_matches_literal_procedure():
    texts = _random_texts(3000) + ["a." * 40 + " 1,2", ". " * 50 + "dont"]
    for text in texts:
        assert m.normalize_answer(text) == _literal_normalize(text.lower()), text


def test_open_recall_matches_literal_procedure():
    texts = _random_texts(2000, seed=1)
    labels = _random_texts(2000, seed=2)
    for prediction, label in zip(texts, labels):
        assert m.vqa_open_recall(prediction, label) == _literal_open_recall(prediction, label)


# ---------------------------------------------------------------- open / closed questions


@pytest.mark.parametrize(
    "prediction, label, expected",
    [
        ("left left", "left lung", 2 / 3),  # tp counts the prediction's repeats: kept
        ("The right lung.", "right lung", 1.0),
        ("left lung, right lung", "left lung", 1.0),  # tp = left 1 + lung 2, fn = 0
        ("liver", "left lung", 0.0),
        ("", "left lung", 0.0),
        ("left lung", "the", 0.0),  # the label normalizes to no words
        ("two", "2 nodules", 0.5),
    ],
)
def test_open_recall(prediction, label, expected):
    assert m.vqa_open_recall(prediction, label) == pytest.approx(expected, abs=0)


@pytest.mark.parametrize(
    "prediction, label, expected",
    [
        ("No, it is not.", "no", 1),
        ("It is not", "no", 1),  # "not" contains "no": kept
        ("There is an abnormality", "no", 1),  # so does "abnormality"
        ("Yes", "no", 0),
        ("Yes, it is.", "Yes", 1),
        ("Maybe", "yes", 0),  # neither yes nor no said
        ("", "no", 0),
    ],
)
def test_closed_hit(prediction, label, expected):
    assert m.vqa_closed_hit(prediction, label) == expected


# ---------------------------------------------------------------- multiple choice

OPTIONS = ["left lung", "right lung", "liver", "spleen"]


@pytest.mark.parametrize(
    "response, expected",
    [
        ("(A) is wrong, the answer is (C)", "C"),  # several letters: the last one wins
        ("The answer is B", "B"),
        ("A or B? I would say B", "B"),
        ("B (C)", "C"),  # a bracketed letter beats a bare one
        ("B.", "B"),
        ("'D'", "D"),
        ("It is the spleen.", "D"),  # option text, response longer than 5 characters
        ("Probably the Liver", "C"),  # option text, lower-cased
        ("right lung, not the liver", "C"),  # the latest last occurrence wins
    ],
)
def test_pmc_vqa_choice(response, expected):
    assert m.pmc_vqa_choice(response, OPTIONS, example_id=3) == (expected, False)


def test_option_text_ties_go_to_the_earlier_choice():
    # "left" and "left lung" both last start at the same place
    assert m.pmc_vqa_choice("it is the left lung", ["left", "left lung", "x", "y"], 0) == ("A", False)
    assert m.pmc_vqa_choice("it is the left lung", ["left lung", "left", "x", "y"], 0) == ("A", False)
    # a shorter option inside a longer one starts later, so it wins: kept
    assert m.pmc_vqa_choice("it is the left lung", ["x", "left lung", "lung", "y"], 0) == ("C", False)


def test_no_option_found_is_a_seeded_guess():
    choice, guessed = m.pmc_vqa_choice("I cannot tell.", OPTIONS, example_id=42)
    assert guessed is True
    assert choice == random.Random(42).choice(["A", "B", "C", "D"])
    assert m.pmc_vqa_choice("I cannot tell.", OPTIONS, example_id=42) == (choice, True)
    guesses = {m.pmc_vqa_choice("?", OPTIONS, example_id=i)[0] for i in range(40)}
    assert guesses == {"A", "B", "C", "D"}  # the seed is the example id
    # the string id "42" seeds differently from the integer 42
    assert m.pmc_vqa_choice("?", OPTIONS, "42")[0] == random.Random("42").choice(["A", "B", "C", "D"])


def test_short_responses_skip_option_texts():
    # " x " is 3 characters, not more than 5: option texts are not searched
    assert m.pmc_vqa_choice("x", ["x", "y", "z", "w"], 5) == (random.Random(5).choice("ABCD"), True)
    # end characters are stripped one after the other (',' then '.'): "A,." keeps its comma
    assert m.pmc_vqa_choice("A,.", OPTIONS, 5) == (random.Random(5).choice("ABCD"), True)
    assert m.pmc_vqa_choice("A.,", OPTIONS, 5) == ("A", False)


def test_food101_choices():
    mc = m.food101_choices(["apple_pie", "baby_back_ribs", "baklava"])
    assert mc.choices == ["0", "1", "2"]
    assert mc.parse("This is baklava.", 0) == ("2", False)
    assert mc.parse("Baby back ribs with apple pie", 0) == ("0", False)  # latest last occurrence
    assert mc.parse("I see 1 or 2 ribs", 0) == ("2", False)  # bare numbers are choices: kept
    assert mc.parse("(1)", 0) == ("1", False)


# ---------------------------------------------------------------- ROUGE-L


def test_rouge_l():
    assert m.rouge_l_f("the cat sat", "the cat sat") == pytest.approx(2 / (2 + 1e-8), abs=1e-15)
    # one sentence each, LCS 2: recall 2/2, precision 2/4
    assert m.rouge_l_f("a b c d", "a c") == pytest.approx(2 * 0.5 / (1.5 + 1e-8), abs=1e-15)
    assert m.rouge_l_f("", "a recipe") == 0.0  # the package raises on an empty hypothesis
    assert m.rouge_l_f("...", "a recipe") == 0.0  # no sentence left after its '.' split
    assert m.rouge_l_f("a recipe", "") == 0.0
    for prediction, label in [("Mix flour. Bake it well.", "Mix the flour and sugar. Bake."),
                              ("boil water. add pasta. drain", "add pasta to boiling water. drain it")]:
        assert m.rouge_l_f(prediction, label) == Rouge().get_scores(prediction, label)[0]["rouge-l"]["f"]


# ---------------------------------------------------------------- vocabulary matching


def test_vocabulary_longest_first_and_deleted():
    vocab = m.Vocabulary(["egg", "egg tart", "tart", "french fries"])
    assert vocab.match("Egg tart with French Fries and an egg.") == [3, 1, 0]
    assert vocab.match("tart") == [2]
    assert vocab.match("") == []


def test_vocabulary_ties_keep_vocabulary_order():
    vocab = m.Vocabulary(["rice", "corn", "bean", "pea"])
    assert vocab.match("pea, bean, corn, rice") == [0, 1, 2, 3]


def test_vocabulary_deletion_joins_the_rest():
    # deleting "egg tart" (not replacing it by a space) lets "bacon" appear: kept
    assert m.Vocabulary(["egg tart", "bacon"]).match("baegg tartcon") == [0, 1]


def test_vocabulary_phrase_case():
    assert m.Vocabulary(["French Toast"]).match("french toast") == [0]


def test_multilabel_recall_and_f1_by_hand():
    assert m.multilabel_recall([0, 2], [0, 1]) == 0.5
    assert m.multilabel_recall([], []) == 1.0  # zero_division=1
    assert m.multilabel_recall([3], []) == 1.0
    assert m.multilabel_recall([], [1]) == 0.0
    assert m.multilabel_f1([0, 2, 3], [0, 1]) == 0.4
    assert m.multilabel_f1([], []) == 1.0  # zero_division=1
    assert m.multilabel_f1([1], []) == 0.0
    assert m.multilabel_f1([], [1]) == 0.0


def test_multilabel_scores_equal_scikit_learn():
    rng = random.Random(0)
    size = 12
    cases = [([], []), ([], [1]), ([1], []), (list(range(size)), list(range(size)))]
    cases += [(rng.sample(range(size), rng.randint(0, 5)), rng.sample(range(size), rng.randint(0, 5)))
              for _ in range(400)]
    for predicted, labels in cases:
        y_true = [int(i in labels) for i in range(size)]
        y_pred = [int(i in predicted) for i in range(size)]
        assert m.multilabel_recall(predicted, labels) == recall_score(y_true, y_pred, zero_division=1)
        assert m.multilabel_f1(predicted, labels) == f1_score(y_true, y_pred, zero_division=1)


# ---------------------------------------------------------------- task scores


def _vqa_records():
    return [
        {"id": 0, "prediction": "left left", "label": "left lung", "answer_type": "OPEN"},  # 2/3
        {"id": 1, "prediction": "The liver.", "label": "liver", "answer_type": "OPEN"},  # 1
        {"id": 2, "prediction": "", "label": "liver", "answer_type": "OPEN"},  # 0
        {"id": 3, "prediction": "No, it is not.", "label": "no", "answer_type": "CLOSED"},  # 1
        {"id": 4, "prediction": "Yes", "label": "no", "answer_type": "CLOSED"},  # 0
    ]


@pytest.mark.parametrize("task", ["slake", "pathvqa", "vqa_rad"])
def test_vqa_task_score(task):
    result = TASKS[task].score(_vqa_records())
    assert result["task"] == task and result["n"] == 5
    assert result["scores"]["open"] == pytest.approx((2 / 3 + 1 + 0) / 3 * 100)
    assert result["scores"]["closed"] == 50.0
    assert result["counts"] == {"open": 3, "closed": 2}


def test_vqa_task_with_only_closed_questions():
    result = TASKS["slake"].score(_vqa_records()[3:])
    assert result["scores"] == {"open": None, "closed": 50.0}


def test_pmc_vqa_task_score():
    records = [
        {"id": 0, "prediction": "(B)", "label": "B", "options": OPTIONS},
        {"id": 1, "prediction": "the answer is C", "label": "A", "options": OPTIONS},
        {"id": 2, "prediction": "It is the spleen.", "label": "D", "options": OPTIONS},
        {"id": "q7", "index": 7, "prediction": "unsure", "label": random.Random(7).choice("ABCD"), "options": OPTIONS},
    ]
    result = TASKS["pmc_vqa"].score(records)
    assert result == {"task": "pmc_vqa", "n": 4, "scores": {"accuracy": 75.0},
                      "counts": {"accuracy": 4, "guessed": 1}}


def test_food101_task_score():
    names = ["apple_pie", "baby_back_ribs", "baklava"]
    records = [
        {"id": 0, "prediction": "This is baklava.", "label": "baklava", "options": names},
        {"id": 1, "prediction": "Apple pie", "label": "apple pie", "options": names},
        {"id": 2, "prediction": "Baby back ribs", "label": "apple_pie", "options": names},
        {"id": 3, "prediction": "(1)", "label": "baby_back_ribs", "options": names},
    ]
    assert TASKS["food101"].score(records)["scores"] == {"accuracy": 75.0}


def test_recipe1m_task_score():
    records = [
        {"id": 0, "prediction": "the cat sat", "label": "the cat sat"},
        {"id": 1, "prediction": "", "label": "mix flour"},
        {"id": 2, "prediction": "a b c d", "label": "a c"},
    ]
    expected = (2 / (2 + 1e-8) + 0 + 1 / (1.5 + 1e-8)) / 3 * 100
    assert TASKS["recipe1m"].score(records)["scores"]["rouge_l"] == pytest.approx(expected, rel=1e-12)


VOCAB = ["egg", "egg tart", "tart", "french fries", "rice"]


def test_nutrition5k_task_score():
    records = [
        {"id": 0, "prediction": "egg tart and rice", "label": ["egg tart", "egg"], "vocabulary": VOCAB},  # 1/2
        {"id": 1, "prediction": "French fries, egg", "label": ["french fries", "egg"], "vocabulary": VOCAB},  # 1
        {"id": 2, "prediction": "nothing", "label": [], "vocabulary": VOCAB},  # zero_division=1
        {"id": 3, "prediction": "", "label": ["rice"], "vocabulary": VOCAB},  # 0
    ]
    assert TASKS["nutrition5k"].score(records)["scores"] == {"recall": 62.5}


def test_foodseg103_task_score():
    records = [
        {"id": 0, "prediction": "[egg tart, rice, tart]", "label": ["egg tart"], "vocabulary": VOCAB},  # 2/4
        {"id": 1, "prediction": "[]", "label": [], "vocabulary": VOCAB},  # zero_division=1
        {"id": 2, "prediction": "[rice]", "label": [], "vocabulary": VOCAB},  # 0
        {"id": 3, "prediction": "[egg]", "label": ["egg"], "vocabulary": VOCAB},  # 1
    ]
    assert TASKS["foodseg103"].score(records)["scores"] == {"f1": 62.5}


def test_check_record_names_the_problem():
    with pytest.raises(RecordError, match="missing field 'answer_type'"):
        TASKS["slake"].check_record({"id": 0, "prediction": "x", "label": "y"})
    with pytest.raises(RecordError, match="'label' must be one of A, B, C, D"):
        TASKS["pmc_vqa"].check_record({"id": 0, "prediction": "x", "label": "E", "options": OPTIONS})
    with pytest.raises(RecordError, match="'options' must hold 4 items"):
        TASKS["pmc_vqa"].check_record({"id": 0, "prediction": "x", "label": "A", "options": OPTIONS[:3]})
    with pytest.raises(RecordError, match="not in the vocabulary"):
        TASKS["foodseg103"].check_record({"id": 0, "prediction": "x", "label": ["cake"], "vocabulary": VOCAB})
    with pytest.raises(RecordError, match="'id' must be an integer or a string"):
        TASKS["recipe1m"].check_record({"id": [1], "prediction": "x", "label": "y"})


# ---------------------------------------------------------------- registry and prompts


def test_registry():
    assert list(TASKS) == ["slake", "pathvqa", "vqa_rad", "pmc_vqa", "recipe1m", "nutrition5k", "food101", "foodseg103"]
    budgets = {name: t.max_new_tokens for name, t in TASKS.items()}
    assert budgets == {"slake": 1024, "pathvqa": 1024, "vqa_rad": 1024, "pmc_vqa": 1024, "recipe1m": 1024,
                       "nutrition5k": 256, "food101": 256, "foodseg103": 256}
    for name, by_task in ((m_, t) for m_, tasks in PAPER_SCORES.items() for t in tasks.items()):
        task, numbers = by_task
        assert set(numbers) == set(TASKS[task].score_keys), (name, task)


def test_build_prompt_text():
    assert build_prompt_text("slake", {"question": "Where is the liver?"}) == "Where is the liver?"
    assert build_prompt_text("recipe1m", {"question": "How is it made?"}) == "How is it made?"
    assert build_prompt_text("pmc_vqa", {"question": "Which organ?", "options": OPTIONS}) == (
        "Question: Which organ? The choices are: A. left lung, B. right lung, C. liver, D. spleen")
    assert build_prompt_text("nutrition5k", {}) == "What ingredients are used to make the dish in the image?"
    assert build_prompt_text("food101", {"options": ["apple_pie", "baklava"]}) == (
        "What type of food is shown in this image? Choose one type from the following options: apple pie, baklava")
    assert build_prompt_text("foodseg103", {"vocabulary": ["candy", "egg tart"]}) == (
        "Identify the food categories present in the image. The available categories are: candy, egg tart "
        "Please return a list of the selected food categories, formatted as a list of names like "
        "[candy, egg tart, french fries, chocolate].")
    with pytest.raises(RecordError, match="missing field 'question'"):
        build_prompt_text("pathvqa", {})
    with pytest.raises(RecordError, match="unknown task 'vqa'"):
        build_prompt_text("vqa", {"question": "?"})


def test_bench_score_reports_each_tasks_own_scores():
    """`adamllm bench score` times the tasks' own scorers on seeded records: the scores it reports are
    what each task gives those records, and the ratio is the rate over the task's target."""
    from adamllm_ray.bench.score import TARGETS, bench_score, synthetic_records

    result = bench_score(20)
    assert list(result["tasks"]) == list(TASKS)
    for name, measured in result["tasks"].items():
        records = synthetic_records(name, 20)
        assert measured["rows"] == len(records) == 20
        assert measured["scores"] == TASKS[name].score(records)["scores"]
        assert all(v is None or 0 <= v <= 100 for v in measured["scores"].values())
        if TARGETS[name]:
            assert measured["ratio"] == pytest.approx(measured["predictions_per_s"] / TARGETS[name], abs=0.01)
        else:
            assert measured["ratio"] is None
    assert result["min_ratio"] == min(t["ratio"] for t in result["tasks"].values() if t["ratio"] is not None)
