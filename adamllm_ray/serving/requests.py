"""The task routes' request bodies, checked field by field before any model is asked: a bad request
gets a 4xx whose message starts with the field it is about. Pure Python, so every case is testable
without Ray.

Both routes take JSON (the image as base64, optionally a data URL) or multipart/form-data (the image
as a file part; list fields as JSON text)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

from adamllm_ray import images
from adamllm_ray.config import ImageLimits
from adamllm_ray.evaluation.prompts import prompt_text
from adamllm_ray.evaluation.tasks import RecordError, get_task
from adamllm_ray.families import FAMILIES
from adamllm_ray.records import DEFAULT_CAPTION_PROMPT

SYNTHESIZE_FIELDS = {"image", "caption", "caption_prompt", "id", "family", "judge", "compose"}
MAX_ASPECT_RATIO = 200  # Qwen2-VL's image processor refuses more (long side over short side)
EVALUATE_FIELDS = {"task", "image", "input", "question", "options", "vocabulary", "label", "answer_type", "id",
                   "index", "model", "max_tokens"}


class RequestError(ValueError):
    """A request the service refuses or could not answer: HTTP status, the field at fault (None: the
    whole body or the model), message."""

    def __init__(self, field: str | None, message: str, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.status = status
        self.kind = kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.field, "code": self.status}}


@dataclass
class SynthesizeRequest:
    id: str
    image: bytes  # validated: RGB PNG/JPEG within the pixel cap
    caption: str
    caption_prompt: str
    family: str
    judge: bool
    compose: bool


@dataclass
class EvaluateRequest:
    task: str
    image: bytes
    prompt: str  # the task's user text for this example
    record: dict | None  # the fields scoring needs (prediction left out), None when no label was given
    model: str | None
    max_tokens: int


# ---------------------------------------------------------------- reading bodies


async def read_body(request) -> dict[str, Any]:
    """The request's fields: a JSON object, or a multipart form (file parts as bytes)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form()
        except Exception as err:  # malformed multipart
            raise RequestError(None, f"body: not a valid multipart form ({err})") from None
        fields = {}
        for key, value in form.multi_items():
            fields[key] = await value.read() if hasattr(value, "read") else value
        return fields
    raw = await request.body()
    if not raw:
        raise RequestError(None, "body: empty; send a JSON object (Content-Type: application/json)")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(None, f"body: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise RequestError(None, f"body: expected a JSON object, got {type(data).__name__}")
    return data


def _unknown(data: dict, known: set[str]) -> None:
    extra = sorted(set(data) - known)
    if extra:
        raise RequestError(extra[0], f"unknown field; known fields: {', '.join(sorted(known))}")


def _image(data: dict, limits: ImageLimits) -> bytes:
    value = data.get("image")
    if value is None:
        raise RequestError("image", "missing; send the image as base64 text or as a file part")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("data:"):
            head, _, text = text.partition(",")
            if ";base64" not in head:
                raise RequestError("image", "a data URL must be base64-encoded (data:image/png;base64,...)")
        try:
            value = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError("image", f"not valid base64 ({err})") from None
    elif not isinstance(value, bytes):
        raise RequestError("image", f"must be base64 text or a file part, got {type(value).__name__}")
    return check_image(value, limits, "image")


def check_image(data: bytes, limits: ImageLimits, field: str) -> bytes:
    """The project's image checks, as the service's refusal: 413 over a size limit, else 400."""
    try:
        checked = images.validate(data, limits)
    except images.ImageError as err:
        status = 413 if "too large" in str(err) else 400
        raise RequestError(field, str(err).replace("source.images.", "images."), status) from None
    from PIL import Image

    w, h = Image.open(io.BytesIO(checked)).size
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise RequestError(field, f"aspect ratio of {w}x{h} is over {MAX_ASPECT_RATIO}:1, more than the "
                                  f"models' image processor takes; crop or pad the image")
    return checked


def _text(data: dict, field: str, required: bool = True, default: str | None = None) -> str | None:
    value = data.get(field)
    if value is None:
        if required:
            raise RequestError(field, "missing")
        return default
    if not isinstance(value, str):
        raise RequestError(field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RequestError(field, "empty")
    return value


def _flag(data: dict, field: str, default: bool) -> bool:
    value = data.get(field, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise RequestError(field, f"must be true or false, got {value!r}")


def _id(data: dict, *parts: bytes) -> str:
    """Rows carry string ids (an int is taken as its decimal text); none given: a digest of the
    inputs, so the same request gives the same id-seeded choices."""
    value = data.get("id")
    if value is None:
        return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise RequestError("id", f"must be a string or an integer, got {value!r}")
    if isinstance(value, str) and not value.strip():
        raise RequestError("id", "empty")
    return str(value)


def _str_list(data: dict, field: str) -> list[str]:
    value = data.get(field)
    if value is None:
        raise RequestError(field, "missing")
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise RequestError(field, f"must be a list of non-empty strings, got {str(value)[:60]}")
    if not value:
        raise RequestError(field, "empty")
    return value


def _json_list(data: dict, field: str) -> None:
    """Multipart sends list fields as JSON text: decode them in place."""
    value = data.get(field)
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            data[field] = json.loads(value)
        except json.JSONDecodeError as err:
            raise RequestError(field, f"not a valid JSON list ({err})") from None


# ---------------------------------------------------------------- the two routes


def parse_synthesize(data: dict, limits: ImageLimits, default_family: str, judge_available: bool) -> SynthesizeRequest:
    _unknown(data, SYNTHESIZE_FIELDS)
    caption = _text(data, "caption")
    caption_prompt = _text(data, "caption_prompt", required=False, default=DEFAULT_CAPTION_PROMPT)
    family = _text(data, "family", required=False, default=default_family)
    if family not in FAMILIES:
        raise RequestError("family", f"unknown model family {family!r}; known families: {', '.join(sorted(FAMILIES))}")
    if family != default_family:
        raise RequestError("family", f"this service's synthesizer is a {default_family} model; {family!r} prompts "
                                     f"would not match it (leave family out, or send {default_family!r})")
    judge = _flag(data, "judge", judge_available)
    if judge and not judge_available:
        raise RequestError("judge", "no judge model is configured on this service; send judge: false")
    compose = _flag(data, "compose", True)
    image = _image(data, limits)
    row_id = _id(data, image, caption.encode())
    return SynthesizeRequest(row_id, image, caption, caption_prompt, family, judge, compose)


def parse_evaluate(data: dict, limits: ImageLimits) -> EvaluateRequest:
    _unknown(data, EVALUATE_FIELDS)
    name = _text(data, "task")
    try:
        task = get_task(name)
    except RecordError as err:
        raise RequestError("task", str(err)) from None
    for field in ("options", "vocabulary", "label"):
        _json_list(data, field)
    # the prompt text as batch evaluation builds it: `input` verbatim, else the task's table
    fields = ("input",) if _text(data, "input", required=False) is not None else task.prompt_fields
    for field in fields:
        _text(data, field) if field in ("question", "input") else _str_list(data, field)
    try:
        prompt = prompt_text(name, {k: data[k] for k in fields})
    except RecordError as err:  # a list of the wrong length
        raise RequestError(_field_of(err, task.prompt_fields) or task.prompt_fields[-1], str(err)) from None
    image = _image(data, limits)
    index = _index(data)
    record = None
    if data.get("label") is not None:
        record = {k: data[k] for k in task.record_fields if k in data and k != "prediction"}
        record["id"] = _id(data, image, prompt.encode())
        record["index"] = index
        try:
            task.check_record({**record, "prediction": ""})
        except RecordError as err:
            raise RequestError(_field_of(err, task.record_fields), str(err)) from None
    model = _text(data, "model", required=False)
    max_tokens = data.get("max_tokens", task.max_new_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= task.max_new_tokens:
        raise RequestError("max_tokens", f"must be an integer from 1 to {task.max_new_tokens} ({name}'s budget), "
                                         f"got {max_tokens!r}")
    return EvaluateRequest(name, image, prompt, record, model, max_tokens)


def _index(data: dict) -> int:
    """The example's 0-based position in its benchmark split: it seeds a multiple-choice guess, as in
    batch evaluation and `adamllm score` (0 when not given)."""
    value = data.get("index", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError("index", f"must be the example's 0-based position in its benchmark split (an integer "
                                    f">= 0), got {value!r}")
    return value


def _field_of(err: Exception, fields: tuple[str, ...]) -> str | None:
    """The field a task's own error message names (it quotes it), for the error's `param`."""
    text = str(err)
    for field in fields:
        if f"'{field}'" in text:
            return field
    return None
