"""Per-example scores of the paper's eight tasks (SPEC.md section 4), quirks included, so that our
numbers can be compared with the paper's tables. Pure Python (no Ray, no scikit-learn in the hot
loop); patterns are compiled once so a whole benchmark scores in about a second on one core."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

from rouge import Rouge

# ---------------------------------------------------------------- VQA answers (SLAKE, PathVQA, VQA-RAD)

VQA_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = ("a", "an", "the")
# The VQA evaluation's contraction table, as the LLaVA-Med copy has it (the capitalised keys can
# never match lower-cased text, and "somebody'd" maps to "somebodyd": both kept).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}
PERIOD_CAP = 32  # the original passes re.UNICODE (== 32) where re.sub expects its count

_PUNCTUATION = re.compile("[" + re.escape("".join(VQA_PUNCTUATION)) + "]")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")
# Step 3 as one look-up: number word -> digit, article -> dropped (None), contraction -> standard
# form. The three key sets are disjoint and no number digit is an article or a contraction, so
# this equals mapping numbers, then dropping articles, then mapping contractions.
_WORD_MAP: dict[str, str | None] = {**CONTRACTIONS, **dict.fromkeys(ARTICLES), **NUMBER_WORDS}


def _strip_punctuation(text: str) -> str:
    """Step 1. Each character's fate is decided on the text as it was before the step, so the
    replacements commute and one `str.translate` does them all."""
    present = set(_PUNCTUATION.findall(text))
    if not present:
        return text
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    table = {}
    for char in present:
        delete = delete_all or (char + " ") in text or (" " + char) in text
        table[ord(char)] = None if delete else " "
    return text.translate(table)


def normalize_answer(text: str) -> str:
    """The LLaVA-Med/VQA answer normalization of SPEC §4 (lower-cases first, as its callers do)."""
    text = _strip_punctuation(text.lower())
    if "." in text:
        text = _PERIOD.sub("", text, count=PERIOD_CAP)
    words = []
    for word in text.split():
        word = _WORD_MAP.get(word, word)
        if word is not None:
            words.append(word)
    return " ".join(words).replace(",", "")


def normalize_open_answer(text: str) -> str:
    """Open questions are normalized twice in the original. A second pass changes nothing unless
    the 32-period cap left periods behind, so it only runs when a period survived the first."""
    text = normalize_answer(text)
    return normalize_answer(text) if "." in text else text


def token_recall(prediction: str, label: str) -> float:
    """Recall of normalized label words in normalized prediction words; tp counts the
    prediction's repeats (a quirk of the original, kept)."""
    predicted = Counter(prediction.split())
    expected = Counter(label.split())
    if not predicted or not expected:
        return 0.0
    tp = sum(count for word, count in predicted.items() if word in expected)
    if tp == 0:
        return 0.0
    fn = sum(count for word, count in expected.items() if word not in predicted)
    return tp / (tp + fn)


def vqa_open_recall(prediction: str, label: str) -> float:
    return token_recall(normalize_open_answer(prediction), normalize_open_answer(label))


def vqa_closed_hit(prediction: str, label: str) -> int:
    """1 if the prediction says yes/no at all and contains the label ("not" contains "no": kept)."""
    predicted = normalize_answer(prediction)
    return int(("yes" in predicted or "no" in predicted) and normalize_answer(label) in predicted)


# ---------------------------------------------------------------- multiple choice (PMC-VQA, Food101)

_MC_STRIP = (",", ".", "!", "?", ";", ":", "'")


class MultipleChoice:
    """A choice set with its option texts, its search patterns built once.

    `parse` follows SPEC §4. The end characters are stripped one after the other in the listed
    order, as the original does (so "A,." keeps its comma): this only matters for odd endings."""

    def __init__(self, choices: Sequence[str], option_texts: Sequence[str]):
        if len(choices) != len(option_texts):
            raise ValueError(f"{len(choices)} choices but {len(option_texts)} option texts")
        self.choices = list(choices)
        self.option_texts = list(option_texts)
        self._bracketed = [f"({c})" for c in self.choices]
        self._spaced = [f" {c} " for c in self.choices]
        self._texts = [t.lower() for t in self.option_texts]

    def parse(self, response: str, example_id: int | str) -> tuple[str, bool]:
        """Return (choice, guessed); guessed means no candidate was found and the choice was drawn
        with `random.Random(example_id)`."""
        for char in _MC_STRIP:
            response = response.strip(char)
        padded = f" {response} "
        text, patterns = padded, self._bracketed
        hits = [i for i, p in enumerate(patterns) if p in text] if "(" in text else []
        if not hits:
            patterns = self._spaced
            hits = [i for i, p in enumerate(patterns) if p in text]
        if not hits and len(padded) > 5:
            text, patterns = padded.lower(), self._texts
            hits = [i for i, p in enumerate(patterns) if p in text]
        if not hits:
            return random.Random(example_id).choice(self.choices), True
        if len(hits) == 1:
            return self.choices[hits[0]], False
        # the latest last occurrence wins; max() keeps the first of equals: the earlier choice
        return self.choices[max(hits, key=lambda i: text.rfind(patterns[i]))], False


PMC_VQA_CHOICES = ("A", "B", "C", "D")


def pmc_vqa_choice(response: str, options: Sequence[str], example_id: int | str) -> tuple[str, bool]:
    return MultipleChoice(PMC_VQA_CHOICES, options).parse(response, example_id)


def food101_choices(class_names: Sequence[str]) -> MultipleChoice:
    """Choices "0".."n-1"; option texts are the class names with `_` replaced by spaces."""
    names = [name.replace("_", " ") for name in class_names]
    return MultipleChoice([str(k) for k in range(len(names))], names)


# ---------------------------------------------------------------- Recipe1M

_ROUGE = Rouge()


def rouge_l_f(prediction: str, label: str) -> float:
    """ROUGE-L F of the `rouge` package (its own sentence split and LCS union; not a re-implementation)."""
    try:
        return _ROUGE.get_scores(prediction, label)[0]["rouge-l"]["f"]
    except Exception:  # the original scores anything the package rejects (e.g. empty text) as 0
        return 0.0


# ---------------------------------------------------------------- vocabulary matching (Nutrition5K, FoodSeg103)


class Vocabulary:
    """Phrases with ids = their positions; `match` finds the phrases a response names."""

    def __init__(self, phrases: Sequence[str]):
        self.phrases = list(phrases)
        self.ids = {phrase: i for i, phrase in enumerate(self.phrases)}  # a repeated phrase: last id, as the original
        # longest first, stable; so "egg tart" is taken (and deleted) before "egg" can match inside it
        order = sorted(range(len(self.phrases)), key=lambda i: len(self.phrases[i]), reverse=True)
        self._ordered = [(i, self.phrases[i].lower()) for i in order]

    def match(self, response: str) -> list[int]:
        """Ids of the phrases found, in matching order; each match is deleted from the response."""
        text = response.lower()
        found = []
        for i, phrase in self._ordered:
            if phrase in text:
                found.append(i)
                text = text.replace(phrase, "")
        return found


@lru_cache(maxsize=16)
def _cached_vocabulary(phrases: tuple[str, ...]) -> Vocabulary:
    return Vocabulary(phrases)


def vocabulary(phrases: Sequence[str]) -> Vocabulary:
    """A Vocabulary, built once per distinct phrase list (records usually share one)."""
    return _cached_vocabulary(tuple(phrases))


def multilabel_recall(predicted_ids: Iterable[int], label_ids: Iterable[int]) -> float:
    """scikit-learn's binary `recall_score(..., zero_division=1)` over the id range, from sets."""
    expected = set(label_ids)
    if not expected:
        return 1.0
    return len(expected.intersection(predicted_ids)) / len(expected)


def multilabel_f1(predicted_ids: Iterable[int], label_ids: Iterable[int]) -> float:
    """scikit-learn's binary `f1_score(..., zero_division=1)`: 2tp / (|labels| + |predicted|)."""
    expected, predicted = set(label_ids), set(predicted_ids)
    total = len(expected) + len(predicted)
    if total == 0:
        return 1.0
    return 2 * len(expected & predicted) / total


def percent_mean(values: Sequence[float]) -> float | None:
    """Mean x100; None when there is nothing to average (rather than a misleading 0)."""
    return sum(values) / len(values) * 100 if values else None
