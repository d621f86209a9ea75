"""Request bodies of the suite's POST routes: capped, typed, checked before use.

Every route reads its body through here, after its permission check:

- a JSON endpoint accepts only ``Content-Type: application/json`` (415
  otherwise). A page on another site cannot send that type without a CORS
  preflight, which Datasette does not grant, so JSON endpoints need no form
  token on either Datasette line;
- every body has a cap chosen by its route; a declared ``Content-Length``
  over the cap is refused before a byte is read, and a body that grows past
  it while streaming is refused at that point (413, the limit in the message);
- JSON must be UTF-8, an object, and free of lone surrogates (``"\\ud800"``
  escapes that SQLite and the model APIs cannot store or send): 400 otherwise.

Pure: no Datasette import (views pass ``receive`` and the headers).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import AsyncIterator, Iterable

JSON_TYPE = "application/json"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

#: Caps by kind of route (bytes). Uploads have their own, configured, caps.
SMALL_JSON = 256 * 1024  # a question, a rating, a cancel/undo/resume/discard
TEMPLATE_JSON = 256 * 1024  # a saved template (its own, smaller, limits apply after parsing)
REVIEW_JSON = 16 * 1024 * 1024  # decisions and edited values of a run's rows
SMALL_FORM = 256 * 1024  # an urlencoded form of a few fields

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class BodyError(Exception):
    """The body cannot be used; ``status`` is 400, 413 or 415 and the message says what to do."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def size_text(n: int) -> str:
    """``262144`` -> ``"256 KB"``; ``16777216`` -> ``"16 MB"`` (binary units, as uploads are measured)."""
    if n >= 1024 * 1024:
        value, unit = n / (1024 * 1024), "MB"
    elif n >= 1024:
        value, unit = n / 1024, "KB"
    else:
        return f"{n} bytes"
    return f"{value:.0f} {unit}" if value == int(value) or value >= 10 else f"{value:.1f} {unit}"


def too_large(limit: int, what: str = "The request body") -> BodyError:
    return BodyError(
        f"{what} is larger than {size_text(limit)}, the limit for this endpoint: "
        "send less (fewer or smaller files, shorter text) in one request.",
        413,
    )


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def header(headers: Iterable, name: str) -> str:
    """A header from ASGI ``[(b"name", b"value")]`` pairs or a mapping (last one wins)."""
    wanted = name.lower()
    if hasattr(headers, "get") and not isinstance(headers, (list, tuple)):
        return str(headers.get(wanted) or headers.get(name) or "")
    found = ""
    for key, value in headers:
        key = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if key.lower() == wanted:
            found = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return found


def declared_length(headers) -> int | None:
    value = header(headers, "content-length").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise BodyError("The Content-Length header is not a number.") from None
    if n < 0:
        raise BodyError("The Content-Length header is negative.")
    return n


def require_json(content_type: str | None) -> None:
    """415 unless the request says it is JSON."""
    if media_type(content_type) != JSON_TYPE:
        raise BodyError(
            "This endpoint accepts only JSON: send the body with the header "
            "Content-Type: application/json.",
            415,
        )


async def iter_body(receive, limit: int, declared: int | None = None) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; ``BodyError`` (413) as soon as it passes ``limit``."""
    if declared is not None and declared > limit:
        raise too_large(limit)
    total = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyError("The connection closed before the whole request was received.")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise too_large(limit)
        more = message.get("more_body", False)
        if chunk:
            yield chunk


async def read_limited(receive, limit: int, declared: int | None = None) -> bytes:
    chunks = [chunk async for chunk in iter_body(receive, limit, declared)]
    return b"".join(chunks)


def has_lone_surrogate(value) -> bool:
    """Does any string (key or value) inside ``value`` hold half a surrogate pair?"""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_json_object(body: bytes) -> dict:
    """A JSON object from ``body``; ``BodyError`` (400) with a message otherwise."""
    try:
        text = body.decode("utf-8-sig") if body else "{}"
    except UnicodeDecodeError:
        raise BodyError("The request body is not UTF-8: send JSON encoded as UTF-8.") from None
    try:
        data = json.loads(text or "{}")
    except ValueError:
        raise BodyError("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise BodyError("The request body must be an object: send a JSON object ({...}).")
    if _SURROGATE_ESCAPE.search(body) and has_lone_surrogate(data):
        raise BodyError(
            "The JSON holds a lone surrogate escape (such as \\ud800) that is not half of a "
            "valid pair, so it is not text: remove it or send the character itself."
        )
    return data


async def read_json(receive, headers, limit: int) -> dict:
    """Content type checked (415), size capped (413), parsed and checked (400)."""
    require_json(header(headers, "content-type"))
    body = await read_limited(receive, limit, declared_length(headers))
    return parse_json_object(body)


# --------------------------------------------------------------------- form tokens

def form_token_ok(headers, cookies: dict, given: str | None) -> bool:
    """Datasette 0.65's double-submit check for a form the suite reads itself.

    True when the request carries no cookie at all (no ambient credentials to
    abuse, as asgi-csrf decides too), or when the form's ``csrftoken`` field
    (or the ``x-csrftoken`` header) equals the ``ds_csrftoken`` cookie.
    """
    if not header(headers, "cookie"):
        return True
    expected = cookies.get("ds_csrftoken") or ""
    given = given or header(headers, "x-csrftoken")
    return bool(expected) and secrets.compare_digest(given.encode(), expected.encode())


FORM_TOKEN_MESSAGE = "The form's security token is missing or out of date: reload the page and try again."
