"""Search hits checked against the live rows at query time.

The index is refreshed in batches, so between two refreshes it can hold text
a newsroom has since deleted or redacted (for legal reasons, say). Before a
hit is shown, sent to a model or offered as a similar row, its row is read
from the source database: a row that is gone (or whose text is now empty) is
dropped; a row whose indexed chunk or title no longer matches is returned with
its current chunk and title and marked stale. One query per table, keys bound
as parameters, on the connection Datasette already holds for the database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from datasette_llm_core.errors import ConfigError
from datasette_llm_core.sql import quote_identifier, quote_identifiers

from .ragconfig import TableConfig
from .textbuild import chunk_text, make_builder

#: Keys per query (SQLite's default limit on bound parameters is 32766).
BATCH = 200


@dataclass(frozen=True)
class LiveRow:
    chunks: tuple[str, ...]  # the row's text, split exactly as the indexer splits it
    title: str | None


def pk_key(values: Sequence) -> str:
    """The index's spelling of a primary key (a JSON list)."""
    return json.dumps(list(values), default=str)


def live_rows_fn(db_name: str, tables: dict[str, TableConfig], wanted: dict[str, list[list]]):
    """For ``execute_fn``: ``{(table, pk_key): LiveRow}`` for the rows of
    ``wanted`` (table -> primary-key value lists) that still exist with text."""

    def fn(conn):
        from .indexer import plan_table

        found: dict[tuple[str, str], LiveRow] = {}
        for table, pks in wanted.items():
            try:
                plan = plan_table(conn, db_name, table, tables[table])
            except (ConfigError, KeyError):
                continue  # table or a configured column gone: no row of it is live
            key_columns = plan.pk_columns or ["rowid"]
            value_columns = list(plan.text_columns)
            if plan.title_column and plan.title_column not in value_columns:
                value_columns.append(plan.title_column)
            title_at = value_columns.index(plan.title_column) if plan.title_column else None
            build = make_builder(plan.config, value_columns)
            nkey = len(key_columns)
            keys = [p for p in pks if len(p) == nkey]
            row_marks = "(" + ", ".join("?" for _ in range(nkey)) + ")"
            for start in range(0, len(keys), BATCH):
                batch = keys[start:start + BATCH]
                marks = ", ".join(row_marks for _ in batch)
                sql = (
                    f"select {quote_identifiers(key_columns)}, {quote_identifiers(value_columns)} "
                    f"from {quote_identifier(table)} where ({quote_identifiers(key_columns)}) in "
                    f"(values {marks})"
                )
                for row in conn.execute(sql, [v for pk in batch for v in pk]).fetchall():
                    values = tuple(row[nkey:])
                    text = build(values)
                    if not text:
                        continue  # not indexed when empty: nothing to show
                    chunk_chars = plan.config.chunk_chars
                    chunks = chunk_text(text, chunk_chars) if chunk_chars else [text]
                    title = values[title_at] if title_at is not None else None
                    found[(table, pk_key(row[:nkey]))] = LiveRow(
                        tuple(chunks), None if title is None else str(title)
                    )
        return found

    return fn


def reconcile(hit_text: str, hit_title: str | None, chunk: int, live: LiveRow | None):
    """``None`` (drop the hit) or ``(text, title, stale)`` to show for it."""
    if live is None:
        return None
    current = live.chunks[chunk] if chunk < len(live.chunks) else live.chunks[0]
    stale = current != hit_text or live.title != hit_title
    return current, live.title, stale
