"""Incremental parsing of a streamed ``{"rows": [{...}, {...}]}`` answer.

Feed text deltas as they arrive; each complete row object is returned as soon
as its closing brace is seen, so the page can show rows while the model is
still writing. Strings (with braces, quotes and escapes inside), whitespace,
Markdown code fences and a bare top-level array are handled. ``finish()``
reports a stream that ended before the JSON was complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


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

    # The row object is captured character by character between its braces.
    def feed(self, delta: str) -> list[dict]:
        out: list[dict] = []
        for ch in delta:
            if self._done:
                break
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
                    if not self.rows and (self._rows_depth is None or self._skipped_items):
                        self._restart()  # prose like "{note}" or "[1]" before the real JSON
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
            errors.append(f"the answer had no {self.rows_key!r} list" if self._saw_json
                          else "the answer contained no JSON object")
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
