"""Turning a source row into the text that is embedded and full-text indexed."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Callable, Sequence

from .ragconfig import TableConfig

_BREAKS = [re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"(?<=[.!?])\s+"), re.compile(r"\s+")]


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return ""  # binary columns carry no searchable text
    return str(value)


def build_text(
    table: TableConfig, columns: Sequence[str], row: Sequence[Any]
) -> str:
    """The text of one row: the template filled in, or the columns joined by newlines.

    ``columns`` names the values of ``row`` in order; missing values count as "".
    """
    values = {name: _as_text(value) for name, value in zip(columns, row)}
    if table.template is not None:
        return table.template.format_map(values).strip()
    wanted = table.columns if table.columns is not None else list(columns)
    return "\n".join(values[c] for c in wanted if values.get(c)).strip()


def make_builder(table: TableConfig, columns: Sequence[str]) -> Callable[[Sequence[Any]], str]:
    """A fast ``build_text`` for rows whose values come in ``columns`` order."""
    if table.template is not None:
        template = table.template

        def from_template(row: Sequence[Any]) -> str:
            return template.format_map({n: _as_text(v) for n, v in zip(columns, row)}).strip()

        return from_template
    wanted = table.columns if table.columns is not None else list(columns)
    at = [list(columns).index(c) for c in wanted]

    def from_columns(row: Sequence[Any]) -> str:
        parts = []
        for i in at:
            value = row[i]
            if value is None or value == "" or isinstance(value, bytes):
                continue
            parts.append(value if isinstance(value, str) else str(value))
        return "\n".join(parts).strip()

    return from_columns


def chunk_text(text: str, max_chars: int | None) -> list[str]:
    """Split ``text`` into pieces of at most ``max_chars``, preferring paragraph,
    line, sentence and word boundaries, in that order. Short text is one chunk."""
    if not max_chars or len(text) <= max_chars:
        return [text]
    chunks: list[str] = []
    rest = text
    while len(rest) > max_chars:
        window = rest[: max_chars + 1]
        cut = -1
        for pattern in _BREAKS:
            ends = [m for m in pattern.finditer(window) if m.start() >= max_chars // 3]
            if ends:
                cut_match = ends[-1]
                cut = cut_match.start()
                nxt = cut_match.end()
                break
        if cut <= 0:  # one long word: hard cut
            cut = nxt = max_chars
        piece = rest[:cut].strip()
        if piece:
            chunks.append(piece)
        rest = rest[nxt:]
    rest = rest.strip()
    if rest:
        chunks.append(rest)
    return chunks or [""]


def text_hash(text: str) -> str:
    """Content hash stored with each entry: a changed row hashes differently."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
