"""Incremental parsing of a streamed ``{"rows": [{...}, {...}]}`` answer.

Feed text deltas as they arrive; each complete row object is returned as soon
as its closing brace is seen, so the page can show rows while the model is
still writing. Strings (with braces, quotes and escapes inside), whitespace,
Markdown code fences and a bare top-level array are handled. ``finish()``
reports a stream that ended before the JSON was complete.

Only the requested shape counts as an answer: an object with the rows list,
or a bare array of row objects. A fragment inside prose (``see ["a"]``, or
an empty ``[]`` after some words) is not an answer with no rows: the parser
keeps looking, and ``finish()`` reports that no JSON object was found. The
first ``HEAD_CHARS`` characters of the answer are kept (``head``) so the
caller can show what the model said instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

HEAD_CHARS = 2000
_FENCE = re.compile(r"```[A-Za-z]*")


@dataclass
class ParseResult:
    rows: list[dict] = field(default_factory=list)
    #: True when the stream ended inside the JSON (cut off by a length limit or a dropped connection).
    truncated: bool = False
    #: Problems found: malformed row objects, non-object items, nothing that looked like JSON.
    errors: list[str] = field(default_factory=list)


class RowStreamParser:
    """Push parser: ``feed(delta) -> new rows``; ``finish() -> ParseResult``."""

    def __init__(self, rows_key: str = "rows") -> None:
        self.rows_key = rows_key
        self._buf: list[str] = []  # text of the row object being read
        self._stack: list[str] = []  # open containers: "{" or "["
        self._in_string = False
        self._escape = False
        self._string_chars: list[str] = []
        self._last_key: str | None = None  # last string seen at top-object level
        self._expect_value = False  # a ":" was seen after _last_key
        self._rows_depth: int | None = None  # stack depth of the rows array
        self._done = False
        self._started = False
        self._capturing = False
        self.rows: list[dict] = []
        self.errors: list[str] = []
        self._skipped_items = 0
        self._saw_json = False  # a JSON value without rows was seen and skipped
        self._before: list[str] = []  # text before the current JSON value (prose, fences)
        self._head: list[str] = []
        self._head_len = 0

    @property
    def head(self) -> str:
        """The start of everything fed so far (up to ``HEAD_CHARS`` characters)."""
        return "".join(self._head)

    def _prose_before(self) -> bool:
        return bool(_FENCE.sub("", "".join(self._before)).strip())

    # The row object is captured character by character between its braces.
    def feed(self, delta: str) -> list[dict]:
        out: list[dict] = []
        if self._head_len < HEAD_CHARS:
            piece = delta[: HEAD_CHARS - self._head_len]
            self._head.append(piece)
            self._head_len += len(piece)
        for ch in delta:
            if self._done:
                break
            if not self._started and ch not in "{[" and len(self._before) < HEAD_CHARS:
                self._before.append(ch)
            if self._capturing:
                self._buf.append(ch)
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
                    if len(self._stack) == 1 and self._stack[0] == "{" and not self._expect_value:
                        self._last_key = "".join(self._string_chars)
                elif len(self._stack) == 1:
                    self._string_chars.append(ch)
                continue
            if ch == '"':
                if not self._started:
                    continue  # prose before the JSON
                if self._rows_depth is not None and len(self._stack) == self._rows_depth:
                    self._skipped_items += 1  # a string where a row object belongs
                self._in_string = True
                self._string_chars = []
                continue
            if ch in "{[":
                if not self._started:
                    self._started = True
                    self._stack.append(ch)
                    if ch == "[":  # bare array of rows
                        self._rows_depth = 1
                    continue
                if (
                    ch == "["
                    and self._rows_depth is None
                    and len(self._stack) == 1
                    and self._expect_value
                    and self._last_key == self.rows_key
                ):
                    self._stack.append(ch)
                    self._rows_depth = len(self._stack)
                    self._expect_value = False
                    continue
                if ch == "{" and self._rows_depth is not None and len(self._stack) == self._rows_depth:
                    self._capturing = True
                    self._buf = ["{"]
                self._stack.append(ch)
                self._expect_value = False
                continue
            if ch in "}]":
                if not self._stack:
                    continue
                self._stack.pop()
                if self._capturing and self._rows_depth is not None and len(self._stack) == self._rows_depth:
                    self._capturing = False
                    row = self._parse_row("".join(self._buf))
                    self._buf = []
                    if row is not None:
                        self.rows.append(row)
                        out.append(row)
                if not self._stack:
                    bare_in_prose = self._rows_depth == 1 and self._prose_before()
                    if not self.rows and (self._rows_depth is None or self._skipped_items or bare_in_prose):
                        # prose like "{note}", "[1]", 'see ["a"]' or "an empty [] list": not the answer
                        self._restart()
                    else:
                        self._done = True
                continue
            if not self._started:
                continue
            if ch == ":" and len(self._stack) == 1:
                self._expect_value = True
            elif ch == "," and len(self._stack) == 1:
                self._expect_value = False
                self._last_key = None
            elif (
                self._rows_depth is not None
                and len(self._stack) == self._rows_depth
                and not ch.isspace()
                and ch != ","
            ):
                self._skipped_items += 1
        return out

    def _restart(self) -> None:
        self._stack = []
        self._started = False
        self._rows_depth = None
        self._last_key = None
        self._expect_value = False
        self._skipped_items = 0
        self._saw_json = True
        self._before.append("x")  # what came before the next JSON value is prose

    def _parse_row(self, text: str) -> dict | None:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            self.errors.append(f"a row was not valid JSON ({e.msg}): {text[:200]}")
            return None
        if not isinstance(value, dict):
            self.errors.append("a row was not an object")
            return None
        return value

    @property
    def complete(self) -> bool:
        return self._done

    def finish(self) -> ParseResult:
        """Call at the end of the stream: the rows plus whether it was cut short."""
        errors = list(self.errors)
        truncated = False
        if not self._started:
            errors.append(f"the answer had no {self.rows_key!r} list (no JSON object of the requested shape)"
                          if self._saw_json else "the answer contained no JSON object")
        elif not self._done:
            truncated = True
            errors.append(
                f"the answer was cut off after {len(self.rows)} complete rows "
                "(the model hit its output limit or the connection dropped)"
            )
        if self._started and self._rows_depth is None and self._done:
            errors.append(f"the answer had no {self.rows_key!r} list")
        if self._skipped_items:
            errors.append(f"{self._skipped_items} characters in the rows list were not row objects")
        return ParseResult(rows=list(self.rows), truncated=truncated, errors=errors)


def parse_rows(text: str) -> ParseResult:
    """Parse a whole answer at once (same rules as streaming)."""
    parser = RowStreamParser()
    parser.feed(text)
    return parser.finish()
