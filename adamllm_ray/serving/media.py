"""Images in chat messages: the service fetches nothing on a caller's behalf. A data URL is decoded and
passes the project's image checks (size, pixel cap, aspect ratio, decompression bomb) off the event loop
before any model sees it; an http(s) URL is refused unless its host is one the operator listed
(ingress.image_url_domains), and then fetched with the same limits, only from public addresses (or an
IP address the operator listed), without following redirects; file:// and every other scheme are
refused. Parts other than text and image_url are refused too (vLLM would load audio, video or
embeddings from them)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import functools
import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from typing import Any

from adamllm_ray.config import ImageLimits
from adamllm_ray.serving.requests import RequestError, check_image

TEXT_PARTS = ("text", "input_text")
FETCH_TIMEOUT_S = 10.0
FETCH_THREADS = 64  # beyond it chat requests with images wait for a thread; admission bounds them anyway


def data_url(image: bytes) -> str:
    mime = "image/jpeg" if image[:3] == b"\xff\xd8\xff" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


def host_allowed(host: str, domains: list[str]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == d.lower() or host.endswith("." + d.lower().lstrip(".")) for d in domains)


def _listed_ips(domains: list[str]) -> set:
    listed = set()
    for d in domains:
        with contextlib.suppress(ValueError):
            listed.add(ipaddress.ip_address(d.strip("[]")))
    return listed


NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _public(address) -> bool:
    """Public, and so is any IPv4 address it carries (mapped, 6to4, NAT64: each can reach an IPv4 host)."""
    if address.version == 6:
        embedded = address.ipv4_mapped or address.sixtofour or (
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in NAT64 else None)
        if embedded is not None and not _public(embedded):
            return False
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_link_local)


def resolve(host: str, port: int, domains: list[str], field: str) -> str:
    """The address to connect to: every address the host resolves to must be public, or an IP literal
    the operator listed, so a name on an allowed domain cannot point the service at itself or its network
    (loopback, private, link-local, multicast, reserved). The connection goes to the address checked here."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise RequestError(field, "the image could not be fetched from that URL") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    listed = _listed_ips(domains)
    if not addresses or any(not _public(a) and a not in listed for a in addresses):
        raise RequestError(field, "the host of that URL resolves to a loopback, private or otherwise non-public "
                                  "address; the service fetches only from public addresses (or an IP address "
                                  "listed in ingress.image_url_domains)")
    return str(addresses[0])


class _Pinned(http.client.HTTPConnection):
    """Connects to the checked address, whatever the host name resolves to by now."""

    def __init__(self, host, address, port, timeout):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedTLS(http.client.HTTPSConnection):
    def __init__(self, host, address, port, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout)
        try:
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:  # a failed handshake: the plain socket is not ours to leak
            sock.close()
            raise


def fetch(url: str, domains: list[str], max_bytes: int, field: str) -> bytes:
    """An allowed remote image: the host's addresses checked (`resolve`), no redirects (http.client
    follows none: a 3xx is a failed fetch), FETCH_TIMEOUT_S in all, at most max_bytes read. Its error says
    only that the fetch failed, not how (a status or reason would map the remote side)."""
    parts = urllib.parse.urlsplit(url)
    tls = parts.scheme.lower() == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        raise RequestError(field, "not a valid URL (bad port)") from None
    address = resolve(parts.hostname or "", port, domains, field)
    failed = RequestError(field, "the image could not be fetched from that URL")
    deadline = time.monotonic() + FETCH_TIMEOUT_S

    def left() -> None:  # the socket's timeout is per operation: each one gets what is left of the whole
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise failed
        sock.settimeout(remaining)

    conn = None
    try:
        conn = (_PinnedTLS if tls else _Pinned)(parts.hostname, address, port, FETCH_TIMEOUT_S)
        conn.connect()
        sock = conn.sock  # kept: http.client lets go of it once a response will close the connection
        left()
        conn.request("GET", urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")),
                     headers={"User-Agent": "adamllm-ray", "Accept": "image/*"})
        left()
        response = conn.getresponse()
        if response.status != 200:
            raise failed
        chunks, size = [], 0
        while size <= max_bytes:
            left()
            chunk = response.read1(min(65536, max_bytes + 1 - size))  # what has come, not a full count
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (OSError, http.client.HTTPException, ValueError):
        raise failed from None
    finally:
        if conn is not None:
            conn.close()
    if size > max_bytes:
        raise RequestError(field, f"the image at that URL is over {max_bytes:,} bytes", 413)
    return b"".join(chunks)


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
        if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in host):  # a NUL would cut the name the resolver sees
            raise RequestError(field, "not a valid URL (control characters in the host)")
        if not domains or not host_allowed(host, domains):
            raise RequestError(field, "remote image URLs are not fetched by this service; send the image inline "
                                      "as a data URL (data:image/png;base64,...)"
                               + ("" if not domains else f", or use a host under {', '.join(domains)}"))
        return fetch(url, domains, max_bytes, field)
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
    """`_check_messages` off the event loop when there is an image to decode; with an allowed domain in
    its own threads, so slow remote servers cannot hold the threads every other request decodes in."""
    if not isinstance(messages, list) or not any(isinstance(m, dict) and isinstance(m.get("content"), list)
                                                 for m in messages):
        return _check_messages(messages, limits, domains, max_bytes)
    if domains and _remote(messages):
        return await asyncio.get_running_loop().run_in_executor(
            _fetchers(), _check_messages, messages, limits, domains, max_bytes)
    return await asyncio.to_thread(_check_messages, messages, limits, domains, max_bytes)


def _remote(messages: list) -> bool:
    """Whether any image part names an http(s) URL (inline images never wait behind remote fetches)."""
    for m in messages:
        for part in m.get("content") if isinstance(m, dict) and isinstance(m.get("content"), list) else ():
            image = part.get("image_url") if isinstance(part, dict) else None
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str) and url.strip().lower().startswith(("http:", "https:")):
                return True
    return False


@functools.cache
def _fetchers() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="image-fetch")
