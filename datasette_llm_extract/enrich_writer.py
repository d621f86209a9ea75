"""Writes of enrichment jobs into the user's table (functions for ``execute_write_fn``).

New columns are added with ``alter table``; values go in by rowid. Undo puts
back each cell's previous value, but only where the cell still holds what the
job wrote (a value someone changed since is left alone and counted). One-to-many
records go to a linked table whose rows carry the source rowid and the job.
Every identifier passes through ``quote_identifier``. No Datasette imports.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from datasette_llm_core.sql import quote_identifier, quote_identifiers

from .schema import SQLITE_TYPES, TableSpec

SOURCE_COLUMN = "_llm_source_row"
JOB_COLUMN = "_llm_enrich_job"
QUOTE_COLUMN = "_llm_quote"


def _sql_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"pragma table_info({quote_identifier(table)})").fetchall()]


def add_columns(conn: sqlite3.Connection, table: str, spec: TableSpec) -> list[str]:
    """Add the spec's columns the table lacks (inside the caller's transaction); their names."""
    present = {c.casefold() for c in _columns(conn, table)}
    added = []
    for column in spec.columns:
        if column.name.casefold() not in present:
            conn.execute(f"alter table {quote_identifier(table)} add column "
                         f"{quote_identifier(column.name)} {SQLITE_TYPES[column.type]}")
            added.append(column.name)
    return added


def ensure_linked(conn: sqlite3.Connection, linked: str, spec: TableSpec) -> None:
    if _columns(conn, linked):
        return
    cols = [f"{quote_identifier(SOURCE_COLUMN)} INTEGER"]
    cols += [f"{quote_identifier(c.name)} {SQLITE_TYPES[c.type]}" for c in spec.columns]
    cols += [f"{quote_identifier(JOB_COLUMN)} TEXT", f"{quote_identifier(QUOTE_COLUMN)} TEXT"]
    conn.execute(f"create table {quote_identifier(linked)} ({', '.join(cols)})")
    conn.execute(f"create index {quote_identifier(linked + '_source')} on {quote_identifier(linked)}"
                 f" ({quote_identifier(SOURCE_COLUMN)})")


def write_values_fn(table: str, spec: TableSpec, rows: list[tuple[int, dict]]):
    """Set the new columns of each ``(rowid, values)`` row, in one transaction."""
    names = spec.column_names()

    def fn(conn):
        with conn:
            add_columns(conn, table, spec)
            sets = ", ".join(f"{quote_identifier(n)} = ?" for n in names)
            for rowid, values in rows:
                conn.execute(f"update {quote_identifier(table)} set {sets} where rowid = ?",  # noqa: S608
                             [*(_sql_value(values.get(n)) for n in names), rowid])
        return len(rows)

    return fn


def write_linked_fn(linked: str, spec: TableSpec, job_id: str, rows: list[tuple[int, list[dict]]]):
    """Replace the job's records of each source row in the linked table (so a rewrite is idempotent)."""
    names = spec.column_names()
    cols = [SOURCE_COLUMN, *names, JOB_COLUMN, QUOTE_COLUMN]

    def fn(conn):
        with conn:
            ensure_linked(conn, linked, spec)
            for rowid, records in rows:
                conn.execute(f"delete from {quote_identifier(linked)} where {quote_identifier(SOURCE_COLUMN)} = ?"
                             f" and {quote_identifier(JOB_COLUMN)} = ?", [rowid, job_id])  # noqa: S608
                for record in records:
                    values = record.get("values") or {}
                    conn.execute(
                        f"insert into {quote_identifier(linked)} ({quote_identifiers(cols)})"  # noqa: S608
                        f" values ({', '.join('?' for _ in cols)})",
                        [rowid, *(_sql_value(values.get(n)) for n in names), job_id, record.get("quote")])
        return len(rows)

    return fn


def current_values(conn: sqlite3.Connection, table: str, names: list[str], rowid: int) -> dict | None:
    present = [n for n in names if n in set(_columns(conn, table))]
    if not present:
        return {n: None for n in names}
    row = conn.execute(f"select {quote_identifiers(present)} from {quote_identifier(table)} where rowid = ?",  # noqa: S608
                       [rowid]).fetchone()
    if row is None:
        return None
    out = {n: None for n in names}
    out.update(dict(zip(present, row)))
    return out


def undo_values_fn(table: str, spec: TableSpec, rows: list[tuple[int, dict, dict | None]]):
    """Restore ``previous`` for each ``(rowid, written, previous)`` whose cells still hold ``written``:
    ``{"restored": n, "skipped": [rowid...]}`` (skipped: changed since, or deleted)."""
    names = spec.column_names()

    def fn(conn):
        restored, skipped = 0, []
        with conn:
            sets = ", ".join(f"{quote_identifier(n)} = ?" for n in names)
            for rowid, written, previous in rows:
                now = current_values(conn, table, names, rowid)
                if now is None or any(now.get(n) != _sql_value(written.get(n)) for n in names):
                    skipped.append(rowid)
                    continue
                before = previous or {}
                conn.execute(f"update {quote_identifier(table)} set {sets} where rowid = ?",  # noqa: S608
                             [*(before.get(n) for n in names), rowid])
                restored += 1
        return {"restored": restored, "skipped": skipped}

    return fn


def undo_linked_fn(linked: str, job_id: str):
    def fn(conn):
        with conn:
            if not _columns(conn, linked):
                return {"restored": 0, "skipped": []}
            cur = conn.execute(f"delete from {quote_identifier(linked)} where {quote_identifier(JOB_COLUMN)} = ?",  # noqa: S608
                               [job_id])
            return {"restored": cur.rowcount, "skipped": []}

    return fn
