"""De-duplicate extracted rows across overlapping chunks and against the table.

Rows are the same record when their key columns (or, without a key, all
their values) are equal after normalisation: case, whitespace and
punctuation-insensitive text, numbers compared as numbers, dates as ISO.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterable

from .schema import TableSpec, parse_date, parse_number


def normalise_value(value: Any, ctype: str = "text") -> Any:
    """A comparable form of one value (for duplicate checks and evaluation)."""
    if value is None:
        return None
    if isinstance(value, str) and not value.strip():
        return None
    if ctype in ("integer", "number") or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        try:
            number = parse_number(value)
            return round(number, 6)
        except (ValueError, OverflowError):
            pass
    if ctype == "date":
        try:
            return parse_date(value)
        except ValueError:
            pass
    if ctype == "boolean" and isinstance(value, (bool, int)):
        return bool(value)
    text = unicodedata.normalize("NFKC", str(value)).casefold()
    text = re.sub(r"[^\w]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def row_key(spec: TableSpec, values: dict) -> tuple | None:
    """Identity of a row: normalised key columns, else all columns; None if all empty."""
    names = spec.key_columns or spec.column_names()
    types = {c.name: c.type for c in spec.columns}
    key = tuple(normalise_value(values.get(n), types.get(n, "text")) for n in names)
    if all(k is None for k in key):
        return None
    return key


class Deduplicator:
    """Remembers keys seen in this run (and those already in the table)."""

    def __init__(self, spec: TableSpec, existing_keys: Iterable[Any] = ()) -> None:
        self.spec = spec
        self.seen: dict[tuple, int] = {}
        self.existing: set[tuple] = set()
        names = spec.key_columns or spec.column_names()
        for existing in existing_keys:
            if isinstance(existing, dict):
                key = row_key(spec, existing)
            else:
                if not isinstance(existing, (tuple, list)):
                    existing = (existing,)
                key = row_key(spec, dict(zip(names, existing)))
            if key is not None:
                self.existing.add(key)

    def check(self, values: dict, index: int) -> str | None:
        """None for a new row; "run" if seen earlier in this run (then the first row's
        index is in ``self.seen``); "table" if already in the target table."""
        key = row_key(self.spec, values)
        if key is None:
            return None
        if key in self.existing:
            return "table"
        if key in self.seen and self.seen[key] != index:
            return "run"
        self.seen.setdefault(key, index)
        return None

    def first_index(self, values: dict) -> int | None:
        key = row_key(self.spec, values)
        return self.seen.get(key) if key is not None else None


def merge_rows(spec: TableSpec, rows: list[dict], existing_keys: Iterable[Any] = ()) -> list[dict]:
    """Rows without duplicates (first occurrence wins), dropping those already in the table."""
    dedup = Deduplicator(spec, existing_keys)
    return [row for i, row in enumerate(rows) if dedup.check(row, i) is None]
