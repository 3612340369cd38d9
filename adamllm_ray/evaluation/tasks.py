"""The paper's eight evaluation tasks (SPEC.md section 4): prompt, decoding budget, the fields an
example and a prediction record carry, and how a list of prediction records is scored.

A prediction record is a dict with `id` (int or str, as given), `index` (the example's 0-based
position in the benchmark split: it seeds the multiple-choice fallback, SPEC §4; a record without it
takes its position in the list scored), `prediction` (the model's text), `label`, and per task:
- slake, pathvqa, vqa_rad: `answer_type` "OPEN" or "CLOSED"; `label` the answer text.
- pmc_vqa: `options` the four option texts for A-D; `label` a letter.
- food101: `options` the class names in order (choice "k" is options[k]); `label` a class name.
- nutrition5k, foodseg103: `vocabulary` the scored phrases (ids = positions: Nutrition5K's 555
  ingredients, FoodSeg103's 102 categories without background and "other"); `label` a list of them.
- recipe1m: `label` the reference recipe text.

Prompt options are written as "A. text, B. text, C. text, D. text" (PMC-VQA) and as the names
joined by ", " (Food101 classes with `_` as spaces, FoodSeg103 categories).

Each task also owns how a benchmark row becomes its example: the fields (columns) it needs, the
columns that may hold its options, whether it reads the vocabulary file, and its row reader
(task_rows.py); benchmark readers, the service and `adamllm score` ask the task."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from adamllm_ray.evaluation import metrics
from adamllm_ray.evaluation import task_rows as rows
from adamllm_ray.evaluation.task_rows import RecordError, Vocabulary

__all__ = ["PAPER_SCORES", "TASKS", "RecordError", "Task", "build_prompt_text", "get_task"]


@dataclass(frozen=True)
class Task:
    name: str
    title: str  # as the paper writes it
    domain: str  # biomed | food
    prompt: str  # user text; {question} / {options} are filled from the example
    max_new_tokens: int
    metric: str  # vqa | multiple_choice | rouge_l | vocabulary_recall | vocabulary_f1
    prompt_fields: tuple[str, ...]  # what build_prompt_text reads from an example
    record_fields: tuple[str, ...]  # what scoring reads from a prediction record
    score_keys: tuple[str, ...]
    paper_size: Mapping[str, int] | int  # benchmark size (VQA: open / closed)
    _check: Callable[[dict], None]
    _score: Callable[[list[dict]], tuple[dict, dict]]
    _read: Callable[[Mapping, Vocabulary], tuple[dict, dict, bool]]  # a benchmark row (task_rows.py)
    columns: tuple[str, ...]  # the benchmark fields its rows need
    _options: Callable[[Mapping], str] | None = None  # how its options are written in the prompt
    option_columns: tuple[str, ...] = ()  # columns that together may hold the options (PMC-VQA's A-D)
    vocabulary_file: Literal["none", "optional", "required"] = "none"  # names from the task's vocabulary file

    def read_example(self, values: Mapping, vocabulary: Vocabulary = (None, None)) -> tuple[dict, dict, bool]:
        """(record fields, prompt fields, whether the record's vocabulary is the shared file) of a
        benchmark row given by field; RecordError for a value the task cannot use."""
        example = {}
        if "question" in self.columns and "question" in values:
            example["question"] = rows.text(values["question"], "question")
        record, fields, shared = self._read(values, vocabulary)
        return record, {**example, **fields}, shared

    def format_options(self, example: Mapping) -> str:
        if self._options is None:
            raise RecordError(f"task {self.name!r} has no options")
        return self._options(example)

    def build_prompt_text(self, example: Mapping) -> str:
        return build_prompt_text(self.name, example)

    def check_record(self, record: Mapping) -> None:
        """Raise RecordError naming the first missing or bad field."""
        for field in self.record_fields:
            if field not in record:
                raise RecordError(f"missing field '{field}' ({self.name} records need {', '.join(self.record_fields)})")
        example_id = record["id"]
        if isinstance(example_id, bool) or not isinstance(example_id, int | str):
            raise RecordError(f"'id' must be an integer or a string, got {example_id!r}")
        index = record.get("index", 0)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise RecordError(f"'index' must be the example's 0-based position (an integer >= 0), got {index!r}")
        if not isinstance(record["prediction"], str):
            raise RecordError(f"'prediction' must be a string, got {_short(record['prediction'])}")
        self._check(record)

    def score(self, records: Sequence[Mapping]) -> dict:
        """{"task", "n", "scores": {key: mean x100 or None when no example has that key},
        "counts": examples per score key, and for multiple choice how many were guessed}."""
        scores, counts = self._score(list(records))
        return {"task": self.name, "n": len(records), "scores": scores, "counts": counts}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _need_str(record: Mapping, field: str) -> str:
    value = record[field]
    if not isinstance(value, str):
        raise RecordError(f"'{field}' must be a string, got {_short(value)}")
    return value


def _need_str_list(record: Mapping, field: str, length: int | None = None) -> list[str]:
    value = record[field]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecordError(f"'{field}' must be a list of strings, got {_short(value)}")
    if length is not None and len(value) != length:
        raise RecordError(f"'{field}' must hold {length} items, got {len(value)}")
    if not value and length is None:
        raise RecordError(f"'{field}' must not be empty")
    return value


# ---------------------------------------------------------------- checks


def _check_vqa(record: Mapping) -> None:
    _need_str(record, "label")
    if record["answer_type"] not in ("OPEN", "CLOSED"):
        raise RecordError(f"'answer_type' must be \"OPEN\" or \"CLOSED\", got {_short(record['answer_type'])}")


def _check_pmc_vqa(record: Mapping) -> None:
    _need_str_list(record, "options", 4)
    if record["label"] not in metrics.PMC_VQA_CHOICES:
        raise RecordError(f"'label' must be one of A, B, C, D, got {_short(record['label'])}")


def _check_recipe1m(record: Mapping) -> None:
    _need_str(record, "label")


def _check_food101(record: Mapping) -> None:
    options = _need_str_list(record, "options")
    label = _need_str(record, "label")
    if label.replace("_", " ") not in metrics.food101_choices(options).option_texts:
        raise RecordError(f"'label' {label!r} is not one of the {len(options)} options")


def _check_vocabulary(record: Mapping) -> None:
    phrases = _need_str_list(record, "vocabulary")
    labels = record["label"]
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise RecordError(f"'label' must be a list of strings, got {_short(labels)}")
    known = metrics.vocabulary(phrases).ids
    for phrase in labels:
        if phrase not in known:
            raise RecordError(f"'label' phrase {phrase!r} is not in the vocabulary ({len(phrases)} phrases)")


# ---------------------------------------------------------------- scoring


def guess_seed(record: Mapping, position: int) -> int:
    """The seed of a multiple-choice guess: the example's 0-based position in the benchmark split."""
    return record.get("index", position)


def _score_vqa(records: list[dict]) -> tuple[dict, dict]:
    open_recall, closed_hit = [], []
    for r in records:
        if r["answer_type"] == "OPEN":
            open_recall.append(metrics.vqa_open_recall(r["prediction"], r["label"]))
        else:
            closed_hit.append(metrics.vqa_closed_hit(r["prediction"], r["label"]))
    return (
        {"open": metrics.percent_mean(open_recall), "closed": metrics.percent_mean(closed_hit)},
        {"open": len(open_recall), "closed": len(closed_hit)},
    )


def _score_pmc_vqa(records: list[dict]) -> tuple[dict, dict]:
    correct, guessed = [], 0
    for position, r in enumerate(records):
        choice, guess = metrics.pmc_vqa_choice(r["prediction"], r["options"], guess_seed(r, position))
        correct.append(int(choice == r["label"]))
        guessed += guess
    return {"accuracy": metrics.percent_mean(correct)}, {"accuracy": len(correct), "guessed": guessed}


def _score_food101(records: list[dict]) -> tuple[dict, dict]:
    correct, guessed = [], 0
    choice_sets: dict[tuple[str, ...], metrics.MultipleChoice] = {}
    for position, r in enumerate(records):
        key = tuple(r["options"])
        mc = choice_sets.get(key) or choice_sets.setdefault(key, metrics.food101_choices(key))
        choice, guess = mc.parse(r["prediction"], guess_seed(r, position))
        label_choice = str(mc.option_texts.index(r["label"].replace("_", " ")))
        correct.append(int(choice == label_choice))
        guessed += guess
    return {"accuracy": metrics.percent_mean(correct)}, {"accuracy": len(correct), "guessed": guessed}


def _score_recipe1m(records: list[dict]) -> tuple[dict, dict]:
    values = [metrics.rouge_l_f(r["prediction"], r["label"]) for r in records]
    return {"rouge_l": metrics.percent_mean(values)}, {"rouge_l": len(values)}


def _vocabulary_scorer(key: str, measure: Callable) -> Callable[[list[dict]], tuple[dict, dict]]:
    def score(records: list[dict]) -> tuple[dict, dict]:
        values = []
        for r in records:
            vocab = metrics.vocabulary(r["vocabulary"])
            label_ids = [vocab.ids[phrase] for phrase in r["label"]]
            values.append(measure(vocab.match(r["prediction"]), label_ids))
        return {key: metrics.percent_mean(values)}, {key: len(values)}

    return score


# ---------------------------------------------------------------- registry

_BASE = ("id", "prediction", "label")
_VQA_PROMPT = "{question}"


def _vqa(name: str, title: str, size: dict) -> Task:
    return Task(name, title, "biomed", _VQA_PROMPT, 1024, "vqa", ("question",), _BASE + ("answer_type",),
                ("open", "closed"), size, _check_vqa, _score_vqa, rows.read_vqa,
                ("image", "question", "label", "answer_type"))


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _vqa("slake", "SLAKE", {"open": 645, "closed": 416}),
        _vqa("pathvqa", "PathVQA", {"open": 3357, "closed": 3362}),
        _vqa("vqa_rad", "VQA-RAD", {"open": 179, "closed": 272}),
        Task("pmc_vqa", "PMC-VQA", "biomed", "Question: {question} The choices are: {options}", 1024,
             "multiple_choice", ("question", "options"), _BASE + ("options",), ("accuracy",), 2000,
             _check_pmc_vqa, _score_pmc_vqa, rows.read_lettered_choice, ("image", "question", "options", "label"),
             rows.lettered_options, option_columns=metrics.PMC_VQA_CHOICES),
        Task("recipe1m", "Recipe1M", "food", "{question}", 1024, "rouge_l", ("question",), _BASE,
             ("rouge_l",), 1000, _check_recipe1m, _score_recipe1m, rows.read_reference_text,
             ("image", "question", "label")),
        Task("nutrition5k", "Nutrition5K", "food", "What ingredients are used to make the dish in the image?", 256,
             "vocabulary_recall", (), _BASE + ("vocabulary",), ("recall",), 507,
             _check_vocabulary, _vocabulary_scorer("recall", metrics.multilabel_recall), rows.read_phrases,
             ("image", "label"), vocabulary_file="required"),
        Task("food101", "Food101", "food",
             "What type of food is shown in this image? Choose one type from the following options: {options}", 256,
             "multiple_choice", ("options",), _BASE + ("options",), ("accuracy",), 25250,
             _check_food101, _score_food101, rows.read_class_choice, ("image", "options", "label"),
             rows.class_options, vocabulary_file="optional"),
        Task("foodseg103", "FoodSeg103", "food",
             "Identify the food categories present in the image. The available categories are: {options} "
             "Please return a list of the selected food categories, formatted as a list of names like "
             "[candy, egg tart, french fries, chocolate].", 256,
             "vocabulary_f1", ("vocabulary",), _BASE + ("vocabulary",), ("f1",), 2135,
             _check_vocabulary, _vocabulary_scorer("f1", metrics.multilabel_f1), rows.read_phrases,
             ("image", "options", "label"), rows.vocabulary_options, vocabulary_file="optional"),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise RecordError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def build_prompt_text(task: str, example: Mapping) -> str:
    """The user text of one example (the image goes beside it, as the model family does it)."""
    spec = get_task(task)
    for field in spec.prompt_fields:
        if field not in example:
            raise RecordError(f"missing field '{field}' ({task} examples need {', '.join(spec.prompt_fields)})")
    values = {}
    if "{question}" in spec.prompt:
        values["question"] = example["question"]
    if "{options}" in spec.prompt:
        values["options"] = spec.format_options(example)
    return spec.prompt.format(**values)


# ---------------------------------------------------------------- the paper's headline numbers (v4)

PAPER_SCORES: dict[str, dict[str, dict[str, float]]] = {
    "Qwen2-VL-2B": {
        "slake": {"open": 50.0, "closed": 52.4},
        "pathvqa": {"open": 17.8, "closed": 38.7},
        "vqa_rad": {"open": 37.0, "closed": 46.7},
        "pmc_vqa": {"accuracy": 45.8},
        "recipe1m": {"rouge_l": 18.2},
        "nutrition5k": {"recall": 36.4},
        "food101": {"accuracy": 73.9},
        "foodseg103": {"f1": 19.9},
    },
    "AdaMLLM-med-2B": {
        "slake": {"open": 60.2, "closed": 75.0},
        "pathvqa": {"open": 20.6, "closed": 53.6},
        "vqa_rad": {"open": 58.0, "closed": 76.1},
        "pmc_vqa": {"accuracy": 46.5},
    },
    "AdaMLLM-food-2B": {
        "recipe1m": {"rouge_l": 24.0},
        "nutrition5k": {"recall": 41.2},
        "food101": {"accuracy": 72.0},
        "foodseg103": {"f1": 23.9},
    },
}
