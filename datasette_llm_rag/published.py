"""Keeping a published search index private: no file download of a sidecar.

A newsroom ships the sidecar next to its database, often in a folder that
``datasette package|publish --static`` copies into the image and Datasette
then serves as static files. The sidecar holds the text of every indexed
row, including rows of tables some readers may not view, so it must never
be handed out whole. ``refuse_index_files`` wraps the ASGI app and answers
404 to any request whose path names a sidecar file (``*.llm-rag.db`` and its
``-wal``/``-shm``/``-journal``), however the name is escaped.

Pure ASGI: imports nothing from Datasette.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

from .sidecar import SIDECAR_SUFFIX

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]],
                   Awaitable[None]]

_TILDE = re.compile(r"~([0-9A-Fa-f]{2})")
_FILE_SUFFIXES = ("", "-wal", "-shm", "-journal")
NOT_FOUND = b"Not found: search index files are not served."


def _decoded(path: str) -> str:
    """``path`` with percent and Datasette's tilde escapes undone, lower-cased."""
    for _ in range(3):  # double escaping too
        before = path
        path = _TILDE.sub(lambda m: chr(int(m.group(1), 16)), unquote(path))
        if path == before:
            break
    return path.lower()


def names_index_file(path: str) -> bool:
    """True when the last part of a request path is a sidecar index file."""
    last = _decoded(path).rstrip("/").rsplit("/", 1)[-1]
    return any(last.endswith(SIDECAR_SUFFIX + suffix) for suffix in _FILE_SUFFIXES)


def refuse_index_files(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and names_index_file(scope.get("path") or ""):
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": NOT_FOUND})
            return
        await app(scope, receive, send)

    return wrapped
