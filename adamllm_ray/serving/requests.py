"""The task routes' request bodies as pydantic models (SynthesizeBody, EvaluateBody), then the checks a
type cannot say (the image, the family, the task's own fields), before any model is asked: a bad request
gets a 4xx whose message starts with the field it is about. Pure Python, so every case is testable
without Ray.

Both routes take JSON (the image as base64, optionally a data URL) or multipart/form-data (the image
as a file part; list fields as JSON text), so the route validates the model itself over either rather
than as a FastAPI JSON body parameter."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from adamllm_ray import images
from adamllm_ray.config import ImageLimits
from adamllm_ray.evaluation.prompts import prompt_text
from adamllm_ray.evaluation.tasks import RecordError, get_task
from adamllm_ray.families import FAMILIES
from adamllm_ray.records import DEFAULT_CAPTION_PROMPT

MAX_ASPECT_RATIO = 200  # Qwen2-VL's image processor refuses more (long side over short side)


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


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("empty")
    return value


Text = Annotated[StrictStr, AfterValidator(_not_blank)]
Id = StrictStr | StrictInt  # rows carry string ids; an int is taken as its decimal text


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SynthesizeBody(_Body):
    """/v1/synthesize's fields (JSON, or multipart with the image as a file part and flags as text)."""

    image: StrictStr | bytes
    caption: Text
    caption_prompt: Text = DEFAULT_CAPTION_PROMPT
    id: Id | None = None
    family: Text | None = None  # default: the served synthesizer's
    judge: bool | None = None  # default: whether a judge is served
    compose: bool = True


class EvaluateBody(_Body):
    """/v1/evaluate's fields; which of question/options/vocabulary/label are needed is the task's to say."""

    task: Text
    image: StrictStr | bytes
    input: Text | None = None  # the benchmark's prompt text, sent verbatim
    question: Text | None = None
    options: list[Text] | None = None
    vocabulary: list[Text] | None = None
    label: StrictStr | list[StrictStr] | None = None
    answer_type: StrictStr | None = None
    id: Id | None = None
    index: StrictInt = Field(0, ge=0)  # the example's 0-based position in its split: seeds a guess
    model: Text | None = None
    max_tokens: StrictInt | None = None


TYPE_ERRORS = {"string_type": "must be a string", "int_type": "must be an integer", "list_type": "must be a list",
               "bool_parsing": "must be true or false", "bool_type": "must be true or false",
               "bytes_type": "must be base64 text or a file part"}
UNION_FIELDS = {"image": "must be base64 text or a file part", "id": "must be a string or an integer",
                "label": "must be a string or a list of strings"}


def validated(model: type[BaseModel], data: dict) -> Any:
    """The body as `model`, or a RequestError naming the first field at fault (with its list index). A
    JSON null is a field not given."""
    try:
        return model.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
    name = str(first["loc"][0]) if first["loc"] else "body"
    field = name + "".join(f"[{p}]" for p in first["loc"][1:] if isinstance(p, int))
    kind, got = first["type"], first.get("input")
    if kind == "missing":
        message = "missing"
    elif kind == "extra_forbidden":
        message = f"unknown field; known fields: {', '.join(model.model_fields)}"
    elif kind == "value_error":
        message = str(first["ctx"]["error"])
    elif kind in TYPE_ERRORS:
        message = f"{UNION_FIELDS.get(name, TYPE_ERRORS[kind])}, got {type(got).__name__} {str(got)[:40]!r}"
    else:
        message = first["msg"]
    raise RequestError(field, message)


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


def _image(value: str | bytes, limits: ImageLimits) -> bytes:
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


def _id(value: str | int | None, *parts: bytes) -> str:
    """Rows carry string ids (an int is taken as its decimal text); none given: a digest of the
    inputs, so the same request gives the same id-seeded choices."""
    if value is None:
        return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    if isinstance(value, str) and not value.strip():
        raise RequestError("id", "empty")
    return str(value)


def _json_lists(data: dict, fields: tuple[str, ...]) -> dict:
    """Multipart sends list fields as JSON text: decoded before validation."""
    data = dict(data)
    for field in fields:
        value = data.get(field)
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                data[field] = json.loads(value)
            except json.JSONDecodeError as err:
                raise RequestError(field, f"not a valid JSON list ({err})") from None
    return data


# ---------------------------------------------------------------- the two routes


def parse_synthesize(data: dict, limits: ImageLimits, default_family: str, judge_available: bool) -> SynthesizeRequest:
    body: SynthesizeBody = validated(SynthesizeBody, data)
    family = body.family or default_family
    if family not in FAMILIES:
        raise RequestError("family", f"unknown model family {family!r}; known families: {', '.join(sorted(FAMILIES))}")
    if family != default_family:
        raise RequestError("family", f"this service's synthesizer is a {default_family} model; {family!r} prompts "
                                     f"would not match it (leave family out, or send {default_family!r})")
    judge = judge_available if body.judge is None else body.judge
    if judge and not judge_available:
        raise RequestError("judge", "no judge model is configured on this service; send judge: false")
    image = _image(body.image, limits)
    row_id = _id(body.id, image, body.caption.encode())
    return SynthesizeRequest(row_id, image, body.caption, body.caption_prompt, family, judge, body.compose)


def parse_evaluate(data: dict, limits: ImageLimits) -> EvaluateRequest:
    body: EvaluateBody = validated(EvaluateBody, _json_lists(data, ("options", "vocabulary", "label")))
    try:
        task = get_task(body.task)
    except RecordError as err:
        raise RequestError("task", str(err)) from None
    # the prompt text as batch evaluation builds it: `input` verbatim, else the task's table
    fields = ("input",) if body.input is not None else task.prompt_fields
    given = body.model_dump()
    for field in fields:
        if given[field] is None:
            raise RequestError(field, "missing")
        if given[field] == []:
            raise RequestError(field, "empty")
    try:
        prompt = prompt_text(body.task, {k: given[k] for k in fields})
    except RecordError as err:  # a list of the wrong length
        raise RequestError(_field_of(err, task.prompt_fields) or task.prompt_fields[-1], str(err)) from None
    image = _image(body.image, limits)
    record = None
    if body.label is not None:
        record = {k: given[k] for k in task.record_fields if given.get(k) is not None and k != "prediction"}
        record["id"] = _id(body.id, image, prompt.encode())
        record["index"] = body.index
        try:
            task.check_record({**record, "prediction": ""})
        except RecordError as err:
            raise RequestError(_field_of(err, task.record_fields), str(err)) from None
    max_tokens = task.max_new_tokens if body.max_tokens is None else body.max_tokens
    if not 1 <= max_tokens <= task.max_new_tokens:
        raise RequestError("max_tokens", f"must be an integer from 1 to {task.max_new_tokens} ({body.task}'s budget), "
                                         f"got {max_tokens!r}")
    return EvaluateRequest(body.task, image, prompt, record, body.model, max_tokens)


def _field_of(err: Exception, fields: tuple[str, ...]) -> str | None:
    """The field a task's own error message names (it quotes it), for the error's `param`."""
    text = str(err)
    for field in fields:
        if f"'{field}'" in text:
            return field
    return None
