"""Writing reviewed rows into the target table, and undoing a run's insert.

Each write to the target database is one transaction inside
``execute_write_fn``: the table is created (for a new-table run) with the
column types of the spec, every accepted row is inserted with its run id in
``_llm_run``, and any failure rolls back everything. Provenance and feedback
go to the state database only after the target transaction committed.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from datasette_llm_core.sql import quote_identifier, quote_identifiers

from .schema import TableSpec, sqlite_columns

RUN_COLUMN = "_llm_run"

try:  # Datasette may run on pysqlite3, whose errors do not subclass the stdlib's.
    from pysqlite3 import dbapi2 as _pysqlite3

    SQLITE_ERRORS: tuple = (sqlite3.Error, _pysqlite3.Error)
except ImportError:  # pragma: no cover - depends on the platform
    SQLITE_ERRORS = (sqlite3.Error,)


class WriteError(Exception):
    """Nothing was written; the message says why (``row`` is the failing row index)."""

    def __init__(self, message: str, row: int | None = None) -> None:
        super().__init__(message)
        self.row = row


def table_exists(conn: sqlite3.Connection, table: str) -> bool:
    return conn.execute(
        "select 1 from sqlite_master where type in ('table', 'view') and name = ?", [table]
    ).fetchone() is not None


def table_columns(conn: sqlite3.Connection, table: str) -> list[dict]:
    return [
        {"cid": r[0], "name": r[1], "type": r[2], "notnull": r[3], "dflt_value": r[4], "pk": r[5]}
        for r in conn.execute(f"pragma table_xinfo({quote_identifier(table)})").fetchall()
        if len(r) < 7 or r[6] == 0  # skip hidden/generated columns
    ]


def create_table_sql(table: str, spec: TableSpec) -> str:
    defs = []
    for name, sqltype in sqlite_columns(spec).items():
        column = spec.column(name)
        defs.append(
            f"{quote_identifier(name)} {sqltype}" + ("" if column.nullable else " NOT NULL")
        )
    defs.append(f"{quote_identifier(RUN_COLUMN)} TEXT")
    if spec.primary_key and spec.key_columns:
        defs.append(f"PRIMARY KEY ({quote_identifiers(spec.key_columns)})")
    return f"CREATE TABLE {quote_identifier(table)} (\n  " + ",\n  ".join(defs) + "\n)"


def _sql_value(value: Any) -> Any:
    if isinstance(value, bool):
        return 1 if value else 0
    return value


def insert_rows_fn(table: str, spec: TableSpec, new_table: bool, rows: list[tuple[int, dict]],
                   run_id: str, add_run_column: bool):
    """A function for ``execute_write_fn``: returns [(row index, pk list)] or raises WriteError."""

    def fn(conn: sqlite3.Connection):
        if not conn.in_transaction:  # Datasette 1.0 has begun one already
            conn.execute("begin immediate")
        try:
            result = _insert(conn, table, spec, new_table, rows, run_id, add_run_column)
            conn.execute("commit")
            return result
        except BaseException:
            conn.execute("rollback")
            raise

    return fn


def _insert(conn, table, spec, new_table, rows, run_id, add_run_column):
    exists = table_exists(conn, table)
    if new_table:
        if exists:
            raise WriteError(
                f"A table named {table!r} was created since this run started. "
                "Start a new run that extracts into the existing table instead."
            )
        conn.execute(create_table_sql(table, spec))
    elif not exists:
        raise WriteError(f"The table {table!r} no longer exists in this database.")
    columns = table_columns(conn, table)
    names = {c["name"] for c in columns}
    missing = [c for c in spec.column_names() if c not in names]
    if missing:
        raise WriteError(
            f"The table {table!r} has no column(s) {', '.join(map(repr, missing))} any more: "
            "start a new run with the current columns."
        )
    with_run = RUN_COLUMN in names
    if not with_run and add_run_column:
        conn.execute(f"alter table {quote_identifier(table)} add column {quote_identifier(RUN_COLUMN)} text")
        with_run = True
    pk_columns = [c["name"] for c in sorted((c for c in columns if c["pk"]), key=lambda c: c["pk"])]
    insert_columns = spec.column_names() + ([RUN_COLUMN] if with_run else [])
    sql = (
        f"insert into {quote_identifier(table)} ({quote_identifiers(insert_columns)}) "  # noqa: S608
        f"values ({', '.join('?' for _ in insert_columns)})"
    )
    out = []
    for idx, values in rows:
        params = [_sql_value(values.get(c)) for c in spec.column_names()]
        if with_run:
            params.append(run_id)
        try:
            cursor = conn.execute(sql, params)
        except SQLITE_ERRORS as e:
            raise WriteError(f"Row {idx + 1} could not be inserted: {e}. Nothing was inserted.", row=idx) from None
        if pk_columns and not (len(pk_columns) == 1 and values.get(pk_columns[0]) is None):
            pk = [_sql_value(values.get(c)) for c in pk_columns]
        else:
            pk = [cursor.lastrowid]
        out.append((idx, pk))
    return {"inserted": out, "pk_columns": pk_columns or ["rowid"], "run_column": with_run}


def pk_columns_of(conn: sqlite3.Connection, table: str) -> list[str]:
    columns = table_columns(conn, table)
    pks = [c["name"] for c in sorted((c for c in columns if c["pk"]), key=lambda c: c["pk"])]
    return pks or ["rowid"]


def _select_pks(conn, table: str, pk_columns: list[str], match: dict) -> list[list]:
    """Primary keys of the rows whose ``match`` columns hold these values (``is``), in rowid order."""
    names = [n for n in match]
    if not names:
        return []
    where = " and ".join(f"{quote_identifier(n)} is ?" for n in names)
    sql = f"select {quote_identifiers(pk_columns)} from {quote_identifier(table)} where {where}"  # noqa: S608
    params = [_sql_value(match[n]) for n in names]
    try:
        return [list(r) for r in conn.execute(sql + " order by rowid", params).fetchall()]
    except SQLITE_ERRORS:  # a WITHOUT ROWID table has no rowid to order by
        return [list(r) for r in conn.execute(sql, params).fetchall()]


def find_run_rows_fn(table: str, run_id: str, planned: list[dict]):
    """For ``execute_fn``: ``(pk_columns, [pk, ...])`` of the rows a run's insert
    left in ``table``, in insert order: the rows carrying ``run_id`` in
    ``_llm_run``; without that column, the newest row matching each planned
    row's values. ``None`` when the table is gone."""

    def fn(conn: sqlite3.Connection):
        if not table_exists(conn, table):
            return None
        names = {c["name"] for c in table_columns(conn, table)}
        pk_columns = pk_columns_of(conn, table)
        if RUN_COLUMN in names:
            return pk_columns, _select_pks(conn, table, pk_columns, {RUN_COLUMN: run_id})
        found = []
        for values in planned:
            rows = _select_pks(conn, table, pk_columns, {n: v for n, v in values.items() if n in names})
            if rows:
                found.append(rows[-1])
        return pk_columns, found

    return fn


def delete_run_rows_fn(table: str, run_id: str, pk_columns: list[str], expected: list[tuple[list, dict | None]]):
    """For ``execute_write_fn``: undo a run's insert in one transaction, deleting
    only rows that are still that run's. With an ``_llm_run`` column: the rows
    carrying ``run_id`` (wherever VACUUM moved them). Without one: a stored
    primary key whose row still holds exactly the inserted values. Returns
    ``{"deleted": n, "skipped": m}``: ``skipped`` rows of the run were deleted
    or changed by someone else and were left alone."""

    def fn(conn: sqlite3.Connection):
        if not table_exists(conn, table):
            raise WriteError(f"The table {table!r} no longer exists.")
        names = {c["name"] for c in table_columns(conn, table)}
        if not conn.in_transaction:  # Datasette 1.0 has begun one already
            conn.execute("begin immediate")
        try:
            if RUN_COLUMN in names:
                sql = f"delete from {quote_identifier(table)} where {quote_identifier(RUN_COLUMN)} = ?"  # noqa: S608
                deleted = conn.execute(sql, [run_id]).rowcount
            else:
                deleted = 0
                where = " and ".join(f"{quote_identifier(c)} = ?" for c in pk_columns)
                for pk, values in expected:
                    same = [n for n in (values or {}) if n in names]
                    extra = "".join(f" and {quote_identifier(n)} is ?" for n in same)
                    sql = f"delete from {quote_identifier(table)} where {where}" + extra  # noqa: S608
                    deleted += conn.execute(sql, [*pk, *(_sql_value(values[n]) for n in same)]).rowcount
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise
        return {"deleted": deleted, "skipped": max(0, len(expected) - deleted)}

    return fn
