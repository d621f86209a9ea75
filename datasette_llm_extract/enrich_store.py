"""Enrichment jobs in the state database: the job rows and one row per selected source row.

Tables come from migrations registered at import time. Each function takes
the state ``Database`` and does one read or one write transaction. A result
and the job's counters change in one transaction, and only while the item is
still pending, so a row is never counted (or done) twice, even when a
restarted server takes over a job whose first owner is still finishing a call.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from typing import Any

from datasette_llm_core.sql import quote_identifier, quote_identifiers
from datasette_llm_core.state import register_migrations

from .runs import _write

#: Statuses in which a process works on the job.
ACTIVE = {"pending", "running"}
#: Statuses a job can be resumed (or its rest run) from.
RESUMABLE = {"paused", "failed", "interrupted", "cancelled", "batch"}


def _m0001_enrich(conn: sqlite3.Connection) -> None:
    conn.executescript(
        """
create table if not exists llm_enrich_jobs (
  id text primary key, -- random job id
  actor_id text, -- who started the job
  created_at real not null, -- unix time created
  updated_at real not null, -- unix time of the last change
  finished_at real, -- unix time the model work last ended
  database_name text not null, -- database of the source table
  table_name text not null, -- source table: its rows are read, its new columns written
  source_columns_json text not null, -- JSON list: the columns the model reads
  schema_json text not null, -- the new columns (typed table spec, as extraction)
  instructions text not null default '', -- the journalist's instructions
  model_id text not null, -- chat model
  prompt_version text not null, -- prompt template version
  template text, -- template name (the high-water mark of --since-last is per template and table)
  selection_json text not null, -- {"args": table filter, "where": _where SQL, "limit": rows, "after": rowid}
  linked_table text, -- one-to-many: the new table the records go to; null: new columns
  status text not null, -- pending, running, paused, batch (a provider batch is out), review, done, failed, cancelled, undone
  phase text not null, -- sample (rows to review first) or rest (every selected row)
  write_mode text not null, -- review (held for review) or direct (written as they come)
  sample_size integer not null, -- rows of the sample
  rows_total integer not null default 0, -- rows selected
  rows_done integer not null default 0, -- rows the model answered
  rows_failed integer not null default 0, -- rows whose call failed
  rows_written integer not null default 0, -- rows written into the table
  input_tokens integer not null default 0, -- tokens sent
  output_tokens integer not null default 0, -- tokens received
  cost real, -- USD so far (null: no prices for the model)
  max_cost real, -- per-job budget in USD (null: none)
  high_water integer, -- largest rowid selected
  error text, -- why the job stopped
  worker_id text, -- process running the job (host:pid:random)
  heartbeat_at real, -- unix time that process last said it runs the job
  pause_requested integer not null default 0, -- 1: stop taking rows (the owner reads it at its heartbeat)
  cancel_requested integer not null default 0, -- 1: stop and end "cancelled"
  batch_json text, -- a provider batch handle while a batch is out
  session_started_at real, -- unix time the current attempt started (for time left)
  session_rows_start integer not null default 0, -- rows done when it started
  first_result_at real, -- unix time the first row result was recorded
  undone_at real, -- unix time the writes were undone
  undone_by text -- actor id who undid them
);
create index if not exists llm_enrich_jobs_target on llm_enrich_jobs (database_name, table_name, template);

create table if not exists llm_enrich_items (
  job_id text not null, -- llm_enrich_jobs.id
  row_id integer not null, -- rowid of the source row
  pk_json text, -- JSON list: the source row's primary key values
  sample integer not null default 0, -- 1: part of the sample reviewed first
  status text not null default 'pending', -- pending, done, failed
  records_json text, -- JSON list of {values, quote, quote_found, valid, errors}
  valid integer, -- 1 if every record passed validation
  error text, -- why the call failed
  model_id text, -- model that answered (after any fallback)
  input_tokens integer not null default 0, -- tokens sent for this row
  output_tokens integer not null default 0, -- tokens received
  cost real, -- USD for this row
  decision text not null default 'pending', -- pending, accepted, rejected (review)
  edited_json text, -- values after the reviewer's edits
  previous_json text, -- the row's values in the new columns before the write (undo restores them)
  written integer not null default 0, -- 1 once written into the table
  written_at real, -- unix time written
  finished_at real, -- unix time the model answered
  primary key (job_id, row_id)
);
"""
    )


def _m0002_url_columns(conn: sqlite3.Connection) -> None:
    columns = {r[1] for r in conn.execute("pragma table_info(llm_enrich_jobs)")}
    if "url_columns_json" not in columns:
        # a block comment: a "--" one would swallow the ")" SQLite appends after the column
        conn.execute("alter table llm_enrich_jobs add column url_columns_json text /* JSON object: source "
                     "column -> image | pdf, its https URLs sent as files by URL (null: none marked) */")


def _m0003_record_review(conn: sqlite3.Connection) -> None:
    columns = {r[1] for r in conn.execute("pragma table_info(llm_enrich_items)")}
    if "review_json" not in columns:
        # Block comment: SQLite copies it into the stored table definition.
        conn.execute(
            "alter table llm_enrich_items add column review_json text"
            " /* one-to-many: JSON list, per record, of {decision, values: the reviewer's edit or null} */"
        )


register_migrations("enrich", [("0001_enrich", _m0001_enrich), ("0002_url_columns", _m0002_url_columns),
                               ("0003_record_review", _m0003_record_review)])


def new_job_id() -> str:
    return secrets.token_hex(8)


_JSON_FIELDS = {"source_columns_json": "source_columns", "schema_json": "schema",
                "selection_json": "selection", "batch_json": "batch", "url_columns_json": "url_columns"}


def _job(row) -> dict:
    job = dict(row)
    for column, key in _JSON_FIELDS.items():
        job[key] = json.loads(job[column]) if job[column] else None
    return job


async def create_job(db, job: dict, items: list[tuple[int, list, bool]]) -> None:
    """The job and its items (``(rowid, pk values, in sample)``) in one transaction."""
    now = time.time()
    job = {**job, "created_at": now, "updated_at": now, "rows_total": len(items)}

    def fn(conn):
        with conn:
            cols = list(job)
            conn.execute(
                f"insert into llm_enrich_jobs ({quote_identifiers(cols)}) "  # noqa: S608 - quoted names
                f"values ({', '.join('?' for _ in cols)})", [job[c] for c in cols])
            conn.executemany(
                "insert into llm_enrich_items (job_id, row_id, pk_json, sample) values (?, ?, ?, ?)",
                [(job["id"], rowid, json.dumps(pk), 1 if sample else 0) for rowid, pk, sample in items])

    await _write(db, fn)


_FIELDS = {"status", "phase", "write_mode", "error", "finished_at", "worker_id", "heartbeat_at",
           "pause_requested", "cancel_requested", "batch_json", "session_started_at", "session_rows_start",
           "undone_at", "undone_by", "max_cost", "rows_written"}


async def update_job(db, job_id: str, *, only_status: set[str] | None = None, **fields: Any) -> bool:
    unknown = set(fields) - _FIELDS
    if unknown:
        raise ValueError(f"unknown job fields {unknown}")
    fields["updated_at"] = time.time()
    sets = ", ".join(f"{quote_identifier(k)} = ?" for k in fields)
    where = "id = ?" + (f" and status in ({', '.join('?' for _ in only_status)})" if only_status else "")
    params = [job_id, *sorted(only_status or ())]

    def fn(conn):
        with conn:
            return conn.execute(f"update llm_enrich_jobs set {sets} where {where}",  # noqa: S608
                                [*fields.values(), *params]).rowcount == 1

    return await _write(db, fn)


async def get_job(db, job_id: str) -> dict | None:
    row = (await db.execute("select * from llm_enrich_jobs where id = ?", [job_id])).first()
    return _job(row) if row else None


async def list_jobs(db, *, database: str | None = None, table: str | None = None,
                    actor_id: str | None = None, everyone: bool = False, limit: int = 50) -> list[dict]:
    sql, params = "select * from llm_enrich_jobs where 1 = 1", []
    if database is not None:
        sql += " and database_name = ?"
        params.append(database)
    if table is not None:
        sql += " and table_name = ?"
        params.append(table)
    if not everyone:
        sql += " and actor_id is ?"
        params.append(actor_id)
    rows = await db.execute(sql + " order by created_at desc limit ?", [*params, limit])
    return [_job(r) for r in rows.rows]


async def claim(db, job_id: str, worker: str, *, from_status: set[str], lease: float | None) -> bool:
    """Become the process running the job: from one of ``from_status``; a job another
    process runs only once its heartbeat is older than ``lease``."""
    now = time.time()
    lapsed = ""
    params: list = [worker, now, now, now, job_id, *sorted(from_status)]
    if lease is not None:
        lapsed = " and (status != 'running' or worker_id is null or heartbeat_at is null or heartbeat_at < ?)"
        params.append(now - lease)

    def fn(conn):
        with conn:
            done = conn.execute("select rows_done + rows_failed from llm_enrich_jobs where id = ?",
                                [job_id]).fetchone()
            cur = conn.execute(
                "update llm_enrich_jobs set status = 'running', worker_id = ?, heartbeat_at = ?, updated_at = ?,"
                " session_started_at = ?, pause_requested = 0, error = null"
                f" where id = ? and status in ({', '.join('?' for _ in from_status)})" + lapsed,  # noqa: S608
                params)
            if cur.rowcount == 1 and done:
                conn.execute("update llm_enrich_jobs set session_rows_start = ? where id = ?", [done[0], job_id])
            return cur.rowcount == 1

    return await _write(db, fn)


async def heartbeat(db, job_id: str, worker: str) -> dict | None:
    """Renew the lease; the pause/cancel requests (None: the job is no longer ours)."""

    def fn(conn):
        with conn:
            cur = conn.execute("update llm_enrich_jobs set heartbeat_at = ? where id = ? and worker_id = ?"
                               " and status = 'running'", (time.time(), job_id, worker))
            if cur.rowcount != 1:
                return None
            row = conn.execute("select pause_requested, cancel_requested from llm_enrich_jobs where id = ?",
                               [job_id]).fetchone()
            return {"pause": bool(row[0]), "cancel": bool(row[1])}

    return await _write(db, fn)


async def abandoned_jobs(db, lease: float, exclude: set[str]) -> tuple[list[str], list[tuple[str, float]]]:
    """Running jobs: (lapsed ones, [(fresh one, seconds until it lapses)]), minus ``exclude``."""
    now = time.time()
    rows = await db.execute("select id, worker_id, heartbeat_at from llm_enrich_jobs where status = 'running'")
    lapsed, fresh = [], []
    for r in rows.rows:
        if r["id"] in exclude:
            continue
        if r["worker_id"] is None or r["heartbeat_at"] is None or r["heartbeat_at"] < now - lease:
            lapsed.append(r["id"])
        else:
            fresh.append((r["id"], r["heartbeat_at"] + lease - now))
    return lapsed, fresh


async def pending_items(db, job_id: str, *, sample_only: bool, after: int, limit: int) -> list[dict]:
    sql = "select * from llm_enrich_items where job_id = ? and status = 'pending' and row_id > ?"
    if sample_only:
        sql += " and sample = 1"
    rows = await db.execute(sql + " order by row_id limit ?", [job_id, after, limit])
    return [dict(r) for r in rows.rows]


async def unwritten_items(db, job_id: str, *, limit: int = 100_000) -> list[dict]:
    """Answered, valid, not rejected and not yet written: what a direct write still owes."""
    rows = await db.execute(
        "select * from llm_enrich_items where job_id = ? and status = 'done' and valid = 1 and written = 0"
        " and decision != 'rejected' order by row_id limit ?", [job_id, limit])
    return [dict(r) for r in rows.rows]


async def record_result(db, job_id: str, row_id: int, *, records: list[dict] | None, valid: bool,
                        error: str | None, model_id: str | None, input_tokens: int, output_tokens: int,
                        cost: float | None, previous: dict | None) -> bool:
    """Store one row's answer and add it to the job's totals, only if the row is still pending."""
    now = time.time()

    def fn(conn):
        with conn:
            cur = conn.execute(
                "update llm_enrich_items set status = ?, records_json = ?, valid = ?, error = ?, model_id = ?,"
                " input_tokens = ?, output_tokens = ?, cost = ?, previous_json = ?, finished_at = ?"
                " where job_id = ? and row_id = ? and status = 'pending'",
                ("failed" if error else "done", json.dumps(records, default=str) if records is not None else None,
                 1 if valid else 0, error, model_id, input_tokens, output_tokens, cost,
                 json.dumps(previous, default=str) if previous is not None else None, now, job_id, row_id))
            if cur.rowcount != 1:
                return False
            conn.execute(
                "update llm_enrich_jobs set rows_done = rows_done + ?, rows_failed = rows_failed + ?,"
                " input_tokens = input_tokens + ?, output_tokens = output_tokens + ?,"
                " cost = case when ? is null then cost else coalesce(cost, 0) + ? end,"
                " first_result_at = coalesce(first_result_at, ?), updated_at = ? where id = ?",
                (0 if error else 1, 1 if error else 0, input_tokens, output_tokens, cost, cost, now, now, job_id))
            return True

    return await _write(db, fn)


async def mark_written(db, job_id: str, row_ids: list[int]) -> None:
    now = time.time()

    def fn(conn):
        with conn:
            n = 0
            for row_id in row_ids:
                n += conn.execute("update llm_enrich_items set written = 1, written_at = ? where job_id = ?"
                                  " and row_id = ? and written = 0", (now, job_id, row_id)).rowcount
            conn.execute("update llm_enrich_jobs set rows_written = rows_written + ?, updated_at = ? where id = ?",
                         (n, now, job_id))

    await _write(db, fn)


async def items(db, job_id: str, *, sample_only: bool = False, limit: int = 500, offset: int = 0,
                status: str | None = None) -> list[dict]:
    sql = "select * from llm_enrich_items where job_id = ?"
    params: list = [job_id]
    if sample_only:
        sql += " and sample = 1"
    if status:
        sql += " and status = ?"
        params.append(status)
    rows = await db.execute(sql + " order by row_id limit ? offset ?", [*params, limit, offset])
    return [_item(r) for r in rows.rows]


async def review_items(db, job_id: str, *, sample_only: bool, limit: int = 200) -> list[dict]:
    """Answered items to review: undecided ones first, then decided and written ones, by rowid."""
    sql = "select * from llm_enrich_items where job_id = ? and status != 'pending'"
    if sample_only:
        sql += " and sample = 1"
    rows = await db.execute(sql + " order by (written = 1 or decision != 'pending'), row_id limit ?", [job_id, limit])
    return [_item(r) for r in rows.rows]


async def items_by_id(db, job_id: str, row_ids: set[int]) -> list[dict]:
    ids = sorted(row_ids)
    if not ids:
        return []
    rows = await db.execute(f"select * from llm_enrich_items where job_id = ? and row_id in ({', '.join('?' for _ in ids)})",  # noqa: S608
                            [job_id, *ids])
    return [_item(r) for r in rows.rows]


def _item(row) -> dict:
    d = dict(row)
    for column, key in (("records_json", "records"), ("edited_json", "edited"), ("previous_json", "previous"),
                        ("pk_json", "pk"), ("review_json", "review")):
        d[key] = json.loads(d[column]) if d.get(column) else ([] if key == "records" else None)
    return d


async def set_decisions(db, job_id: str, decisions: dict[int, tuple[str, dict | None]],
                        reviews: dict[int, list[dict]] | None = None) -> None:
    """Decisions (and edited values) of unwritten items; ``reviews``: per-record decisions of
    one-to-many items."""
    reviews = reviews or {}

    def fn(conn):
        with conn:
            for row_id, (decision, edited) in decisions.items():
                review = reviews.get(row_id)
                conn.execute("update llm_enrich_items set decision = ?, edited_json = ?, review_json = ?"
                             " where job_id = ? and row_id = ? and written = 0",
                             (decision, json.dumps(edited) if edited is not None else None,
                              json.dumps(review) if review is not None else None, job_id, row_id))

    await _write(db, fn)


async def written_items(db, job_id: str) -> list[dict]:
    rows = await db.execute("select * from llm_enrich_items where job_id = ? and written = 1 order by row_id",
                            [job_id])
    return [dict(r) for r in rows.rows]


async def record_undo(db, job_id: str, actor_id: str | None) -> None:
    now = time.time()

    def fn(conn):
        with conn:
            conn.execute("update llm_enrich_items set written = 0, written_at = null where job_id = ?", [job_id])
            conn.execute("update llm_enrich_jobs set status = 'undone', rows_written = 0, undone_at = ?,"
                         " undone_by = ?, updated_at = ? where id = ?", (now, actor_id, now, job_id))

    await _write(db, fn)


async def high_water(db, database: str, table: str, template: str | None) -> int | None:
    """The largest rowid an earlier finished job of ``template`` on the table selected."""
    row = (await db.execute(
        "select max(high_water) from llm_enrich_jobs where database_name = ? and table_name = ?"
        " and template is ? and status in ('done', 'review')", [database, table, template])).first()
    return row[0] if row else None


async def unfinished_job(db, database: str, table: str, template: str | None, selection: dict) -> dict | None:
    """The newest job of the same template, table and selection that did not finish (CLI resume)."""
    rows = await db.execute(
        "select * from llm_enrich_jobs where database_name = ? and table_name = ? and template is ?"
        " and selection_json = ? and status in ('pending', 'running', 'paused', 'failed', 'interrupted', 'batch')"
        " order by created_at desc limit 1", [database, table, template, json.dumps(selection, sort_keys=True)])
    row = rows.first()
    return _job(row) if row else None


async def provenance(db, database: str, table: str, row_id: int) -> list[dict]:
    """Every job that wrote values into this row: values, quote, model, prompt version."""
    rows = await db.execute(
        "select i.*, j.prompt_version, j.schema_json, j.linked_table from llm_enrich_items i"
        " join llm_enrich_jobs j on j.id = i.job_id where j.database_name = ? and j.table_name = ?"
        " and i.row_id = ? and i.written = 1 order by i.written_at", [database, table, row_id])
    out = []
    for r in rows.rows:
        d = dict(r)
        d["records"] = json.loads(d["records_json"]) if d["records_json"] else []
        out.append(d)
    return out


async def filled_columns(db, database: str, table: str) -> set[str]:
    """Names of the columns earlier jobs filled in this table (a later job may fill them again)."""
    rows = await db.execute("select schema_json from llm_enrich_jobs where database_name = ? and table_name = ?"
                            " and linked_table is null", [database, table])
    return {c["name"] for r in rows.rows for c in json.loads(r[0]).get("columns", [])}
