"""Split long text into overlapping chunks on paragraph or sentence boundaries.

Chunks keep their character offsets into the source so a quote found in a
chunk can be highlighted in the whole document. Sizes are in characters,
derived from the model's context window (about 4 characters per token).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CHARS_PER_TOKEN = 4
DEFAULT_CHUNK_CHARS = 12_000
MIN_CHUNK_CHARS = 500


@dataclass
class Chunk:
    index: int
    text: str
    start: int  # offset of text[0] in the source
    end: int  # offset just past the chunk
    document: int = 0  # index of the document in the job

    def to_dict(self) -> dict:
        return {"index": self.index, "start": self.start, "end": self.end,
                "document": self.document, "chars": len(self.text)}


def chunk_chars_for_model(context_tokens: int, *, output_tokens: int = 4096,
                          prompt_tokens: int = 1500, cap: int = 24_000) -> int:
    """Characters of document per chunk that leave room for prompt and output.

    Capped so one chunk's answer stays well inside the output budget: a dense
    chunk can produce many rows.
    """
    room = max(0, context_tokens - output_tokens - prompt_tokens)
    return max(MIN_CHUNK_CHARS, min(cap, room * CHARS_PER_TOKEN * 3 // 4))


_BOUNDARIES = [
    re.compile(r"\n\s*\n"),  # paragraph
    re.compile(r"\n"),  # line
    re.compile(r"(?<=[.!?;])\s+"),  # sentence
    re.compile(r"\s+"),  # word
]


def _best_cut(text: str, lo: int, hi: int) -> int:
    """A cut position in (lo, hi] at the strongest boundary, preferring late ones."""
    window = text[lo:hi]
    for pattern in _BOUNDARIES:
        last = None
        for m in pattern.finditer(window):
            last = m
        if last is not None and last.end() > 0:
            return lo + last.end()
    return hi


def chunk_text(text: str, chunk_chars: int = DEFAULT_CHUNK_CHARS, overlap: int = 200,
               *, document: int = 0) -> list[Chunk]:
    """Chunks of at most ``chunk_chars`` characters overlapping by about ``overlap``.

    Cuts fall on paragraph, line, sentence or word boundaries in the last half
    of each window when possible. Short texts give a single chunk.
    """
    chunk_chars = max(50, int(chunk_chars))
    overlap = max(0, min(int(overlap), chunk_chars // 2))
    n = len(text)
    if n <= chunk_chars:
        return [Chunk(0, text, 0, n, document)]
    chunks: list[Chunk] = []
    start = 0
    while start < n:
        hard_end = min(n, start + chunk_chars)
        if hard_end >= n:
            end = n
        else:
            end = _best_cut(text, start + chunk_chars // 2, hard_end)
        chunks.append(Chunk(len(chunks), text[start:end], start, end, document))
        if end >= n:
            break
        next_start = end - overlap
        if overlap:
            # begin the overlap at a word boundary so quotes are not split mid-word
            m = re.search(r"\s", text[next_start:end])
            if m and next_start + m.end() < end:
                next_start += m.end()
        start = max(next_start, start + 1)
    return chunks


_QUOTE_CHARS = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                              "\u2013": "-", "\u2014": "-", "\u00a0": " "})


def _normalise_with_map(text: str, fold: bool) -> tuple[str, list[int]]:
    """Whitespace runs collapsed to one space; returns the text and, per char, its source offset."""
    out: list[str] = []
    mapping: list[int] = []
    previous_space = True
    for i, ch in enumerate(text.translate(_QUOTE_CHARS)):
        if ch.isspace():
            if previous_space:
                continue
            out.append(" ")
            mapping.append(i)
            previous_space = True
            continue
        previous_space = False
        piece = ch.casefold() if fold else ch
        for c in piece:
            out.append(c)
            mapping.append(i)
    return "".join(out), mapping


def locate_quote(source: str, quote: str | None) -> tuple[int, int] | None:
    """Offsets ``(start, end)`` of ``quote`` in ``source``, matching whitespace-insensitively
    (then also case-insensitively); None if the quote is not in the source."""
    if not quote or not quote.strip() or not source:
        return None
    index = source.find(quote)
    if index >= 0:
        return index, index + len(quote)
    for fold in (False, True):
        norm_source, mapping = _normalise_with_map(source, fold)
        norm_quote, _ = _normalise_with_map(quote.strip(), fold)
        norm_quote = norm_quote.strip()
        if not norm_quote:
            return None
        index = norm_source.find(norm_quote)
        if index >= 0:
            return mapping[index], mapping[index + len(norm_quote) - 1] + 1
    return None
