"""The one place SQL identifiers are quoted."""

from __future__ import annotations


def quote_identifier(name: str) -> str:
    """Quote a table or column name for SQLite: ``"na""me"``.

    Every identifier the suite puts into SQL passes through here; values are
    always bound as parameters, never formatted in.
    """
    if not isinstance(name, str):
        raise TypeError(f"identifier must be a string, not {type(name).__name__}")
    if "\x00" in name:
        raise ValueError("identifier may not contain a NUL character")
    return '"' + name.replace('"', '""') + '"'


def quote_identifiers(names) -> str:
    return ", ".join(quote_identifier(n) for n in names)
