"""Images in chat messages: the service fetches nothing on a caller's behalf. A data URL is decoded and
passes the project's image checks (size, pixel cap, aspect ratio, decompression bomb) off the event loop
before any model sees it; an http(s) URL is refused unless its host is one the operator listed
(ingress.image_url_domains), and then fetched with the same limits; file:// and every other scheme are
refused. Parts other than text and image_url are refused too (vLLM would load audio, video or
embeddings from them)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from adamllm_ray.config import ImageLimits
from adamllm_ray.serving.requests import RequestError, check_image

TEXT_PARTS = ("text", "input_text")
FETCH_TIMEOUT_S = 10.0


def data_url(image: bytes) -> str:
    mime = "image/jpeg" if image[:3] == b"\xff\xd8\xff" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


def host_allowed(host: str, domains: list[str]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == d.lower() or host.endswith("." + d.lower().lstrip(".")) for d in domains)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect could lead anywhere: not followed


def fetch(url: str, max_bytes: int, field: str) -> bytes:
    """An allowed remote image: no redirects, a time limit, at most max_bytes read. Its error says only
    that the fetch failed, not how (a status or reason would map the remote side)."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "adamllm-ray"}),
                         timeout=FETCH_TIMEOUT_S) as r:
            data = r.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError):
        raise RequestError(field, "the image could not be fetched from that URL") from None
    if len(data) > max_bytes:
        raise RequestError(field, f"the image at that URL is over {max_bytes:,} bytes", 413)
    return data


def image_bytes(url: Any, field: str, domains: list[str], max_bytes: int) -> bytes:
    """The raw bytes an image_url names, or a RequestError (400) saying why it is refused."""
    if not isinstance(url, str) or not url.strip():
        raise RequestError(field, "must be a data URL (data:image/png;base64,...)")
    url = url.strip()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        head, _, text = url.partition(",")
        if ";base64" not in head:
            raise RequestError(field, "a data URL must be base64-encoded (data:image/png;base64,...)")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError(field, f"not valid base64 ({err})") from None
    if scheme in ("http", "https"):
        host = urllib.parse.urlsplit(url).hostname or ""
        if not domains or not host_allowed(host, domains):
            raise RequestError(field, "remote image URLs are not fetched by this service; send the image inline "
                                      "as a data URL (data:image/png;base64,...)"
                               + ("" if not domains else f", or use a host under {', '.join(domains)}"))
        return fetch(url, max_bytes, field)
    raise RequestError(field, f"{scheme or 'this'} URLs are not accepted; send the image inline as a data URL "
                              f"(data:image/png;base64,...)")


def _check_messages(messages: Any, limits: ImageLimits, domains: list[str], max_bytes: int) -> list:
    """The messages with every image replaced by its checked bytes as a data URL."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages", "must be a non-empty list of messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"messages[{i}]", "must be an object with role and content")
        content = message.get("content")
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in TEXT_PARTS:
                parts.append(part)
                continue
            if kind != "image_url":
                raise RequestError(f"{where}.type", f"only text and image_url parts are accepted, got {kind!r}")
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            data = image_bytes(url, f"{where}.image_url.url", domains, max_bytes)
            checked = check_image(data, limits, f"{where}.image_url")
            parts.append({"type": "image_url", "image_url": {"url": data_url(checked)}})
        out.append({**message, "content": parts})
    return out


async def checked_messages(messages: Any, limits: ImageLimits, domains: list[str], max_bytes: int) -> list:
    """`_check_messages` off the event loop when there is an image to decode."""
    if not isinstance(messages, list) or not any(isinstance(m, dict) and isinstance(m.get("content"), list)
                                                 for m in messages):
        return _check_messages(messages, limits, domains, max_bytes)
    return await asyncio.to_thread(_check_messages, messages, limits, domains, max_bytes)
