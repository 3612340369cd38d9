"""JSONL files are split on "\\n" only: U+2028, U+2029 and U+0085 are legal inside a JSON string
(json.dumps(ensure_ascii=False) writes them raw) and must not split a record in two."""

import json

from adamllm_ray import sources
from adamllm_ray.evaluation import run, score
from adamllm_ray.evaluation.tasks import get_task

ODD = "left\u2028lung\u0085base\u2029end\r"


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")  # written raw, as the evaluation writes predictions


def test_prediction_records_with_line_separators(tmp_path):
    path = tmp_path / "slake.jsonl"
    records = [{"id": 0, "prediction": ODD, "label": "left lung", "answer_type": "OPEN"},
               {"id": 1, "prediction": "yes", "label": "yes", "answer_type": "CLOSED"}]
    write_jsonl(path, records)
    assert run._read_jsonl(str(path)) == records
    assert score.read_predictions(get_task("slake"), path) == records


def test_sharegpt_jsonl_caption_with_line_separators(tmp_path):
    path = tmp_path / "pairs.jsonl"
    entries = [{"images": ["a.png"], "messages": [{"role": "user", "content": "<image>Describe the image."},
                                                   {"role": "assistant", "content": ODD}]},
               {"images": ["b.png"], "messages": [{"role": "assistant", "content": "Two."}]}]
    write_jsonl(path, entries)
    assert sources.load_sharegpt(str(path)) == entries
    index = sources.sharegpt_index(str(path), str(tmp_path), 0, None, sources.CaptionRules())
    assert [(r["loc"], r["caption"]) for r in index] == [("pairs.jsonl line 1", ODD), ("pairs.jsonl line 2", "Two.")]
