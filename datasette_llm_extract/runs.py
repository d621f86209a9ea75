"""Extraction runs in the state database: runs, documents, events, rows,
provenance, feedback examples, saved templates and stored table specs.

Tables are created by migrations registered at import time. Every function
here takes the state ``Database`` and does one read or one write transaction.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from typing import Any, Iterable

from datasette.utils.sqlite import sqlite3 as datasette_sqlite3

from datasette_llm_core.sql import quote_identifier, quote_identifiers
from datasette_llm_core.state import register_migrations

RUNNING = "running"
#: Statuses in which the model is still working.
ACTIVE = {"pending", RUNNING}
#: Statuses in which extracted rows can be reviewed and inserted.
REVIEWABLE = {"done", "failed", "cancelled", "interrupted"}
#: Statuses after the review was submitted (or while it is being written).
FINISHED = {"inserting", "inserted", "reviewed", "undoing", "undone", "discarded"}


def _m0001_runs(conn: sqlite3.Connection) -> None:
    conn.executescript(
        """
create table if not exists llm_extract_runs (
  id text primary key, -- random run id
  actor_id text, -- id of the actor who started the run
  created_at real not null, -- unix time the run was created
  updated_at real not null, -- unix time of the last change
  finished_at real, -- unix time the model work ended
  database_name text not null, -- target database
  table_name text not null, -- target table
  new_table integer not null default 0, -- 1 when the run creates the table
  model_id text, -- chat model used
  prompt_version text, -- prompt template version id
  instructions text, -- the journalist's instructions
  schema_json text not null, -- table spec as JSON
  options_json text not null default '{}', -- chunking, examples, caps
  status text not null, -- pending, running, done, failed, cancelled, interrupted, inserted, reviewed, undone, discarded
  error text, -- message shown when the run failed
  chunks_total integer not null default 0, -- chunks planned
  chunks_done integer not null default 0, -- chunks finished
  chunks_failed integer not null default 0, -- chunks that failed
  done_chunks_json text not null default '[]', -- [document, chunk] pairs finished (for resume)
  input_tokens integer not null default 0, -- tokens sent
  output_tokens integer not null default 0, -- tokens received
  cost real, -- USD, null when the model has no price
  inserted_count integer not null default 0, -- rows inserted into the table
  inserted_at real, -- unix time of the insert
  inserted_by text, -- actor id who inserted
  undone_at real, -- unix time the insert was undone
  undone_by text -- actor id who undid it
);
create index if not exists llm_extract_runs_actor on llm_extract_runs (actor_id, created_at);
create index if not exists llm_extract_runs_target on llm_extract_runs (database_name, table_name);

create table if not exists llm_extract_documents (
  run_id text not null, -- llm_extract_runs.id
  idx integer not null, -- order of the document in the run
  name text not null, -- file name or "pasted text"
  kind text not null, -- text, image or pdf
  media_type text, -- MIME type
  size integer not null, -- bytes
  sha256 text not null, -- hash of the bytes
  text text, -- full text for text documents; null for binary ones (hashed only)
  primary key (run_id, idx)
);

create table if not exists llm_extract_events (
  run_id text not null, -- llm_extract_runs.id
  seq integer not null, -- 1, 2, 3... per run
  type text not null, -- engine event class, e.g. RowExtracted
  data_json text not null, -- the event as JSON
  created_at real not null, -- unix time recorded
  primary key (run_id, seq)
);

create table if not exists llm_extract_rows (
  run_id text not null, -- llm_extract_runs.id
  idx integer not null, -- row number within the run
  values_json text not null, -- values as extracted
  edited_json text, -- values after the reviewer's edits, if any
  source_quote text, -- supporting quote the model gave
  quote_found integer, -- 1 if the quote is in the source text
  quote_start integer, -- character offset of the quote in its document
  quote_end integer, -- end offset of the quote
  document integer, -- document index
  chunk integer, -- chunk index
  valid integer not null, -- 1 if the values passed validation
  errors_json text not null default '[]', -- validation messages
  duplicate text, -- "run" or "table" when the key was seen before
  decision text not null default 'pending', -- pending, accepted, rejected
  inserted_pk text, -- JSON primary key of the inserted row
  primary key (run_id, idx)
);

create table if not exists llm_extract_provenance (
  database_name text not null, -- database of the inserted row
  table_name text not null, -- table of the inserted row
  row_pk text not null, -- JSON list: primary key values (or [rowid])
  run_id text not null, -- run that produced the row
  row_idx integer not null, -- row number within the run
  quote text, -- supporting quote
  created_at real not null, -- unix time inserted
  primary key (database_name, table_name, row_pk)
);
create index if not exists llm_extract_provenance_run on llm_extract_provenance (run_id);

create table if not exists llm_extract_examples (
  id integer primary key, -- example id
  database_name text not null, -- target database
  table_name text not null, -- target table
  run_id text not null, -- run the row came from
  row_idx integer not null, -- row number within the run
  label text not null, -- accepted, edited or rejected
  source_quote text, -- quote the row was extracted from
  before_json text not null, -- values the model extracted
  after_json text, -- values after review (null when rejected)
  actor_id text, -- reviewer
  created_at real not null -- unix time labelled
);
create index if not exists llm_extract_examples_target on llm_extract_examples (database_name, table_name, label);

create table if not exists llm_extract_templates (
  id integer primary key, -- template id
  name text not null, -- name shown in the picker
  owner_id text, -- actor id of the owner
  shared integer not null default 0, -- 1 if every extractor may use it
  schema_json text not null, -- table spec as JSON
  instructions text not null default '', -- instructions
  created_at real not null -- unix time saved
);

create table if not exists llm_extract_table_specs (
  database_name text not null, -- database
  table_name text not null, -- table created or filled by the suite
  schema_json text not null, -- column types, descriptions and choices
  updated_at real not null, -- unix time stored
  primary key (database_name, table_name)
);
"""
    )


def _m0002_run_leases(conn: sqlite3.Connection) -> None:
    # Block comments: SQLite copies them into the stored table definition.
    conn.execute(
        "alter table llm_extract_runs add column worker_id text"
        " /* server process executing the run (host:pid:random); null before leases */"
    )
    conn.execute(
        "alter table llm_extract_runs add column heartbeat_at real"
        " /* unix time that process last said it was still running the run */"
    )
    conn.execute(
        "alter table llm_extract_runs add column cancel_requested_at real"
        " /* unix time another process asked the owner to cancel; the owner stops at its next heartbeat */"
    )


def _m0003_review(conn: sqlite3.Connection) -> None:
    conn.execute(
        "alter table llm_extract_rows add column reask text"
        " /* null: not re-asked; pending: sent back to the model; corrected; uncorrected: no usable correction */"
    )
    conn.execute(
        "alter table llm_extract_rows add column first_values_json text"
        " /* values the model first gave, when a re-ask corrected them */"
    )
    conn.execute(
        "alter table llm_extract_rows add column reask_note text"
        " /* why a re-asked row kept the model's first values */"
    )
    conn.execute(
        "alter table llm_extract_table_specs add column instructions text"
        " /* instructions of the run that last inserted into the table */"
    )
    conn.execute(
        "alter table llm_extract_table_specs add column run_id text"
        " /* that run: where the remembered key columns and instructions came from */"
    )
    conn.execute(
        "alter table llm_extract_table_specs add column actor_id text /* who inserted that run's rows */"
    )


register_migrations("extract", [("0001_runs", _m0001_runs), ("0002_run_leases", _m0002_run_leases),
                                ("0003_review", _m0003_review)])


def new_run_id() -> str:
    return secrets.token_hex(8)


# Datasette's connections come from pysqlite3 when it is installed, whose
# exceptions are not the standard library's.
_OPERATIONAL_ERRORS = tuple({sqlite3.OperationalError, datasette_sqlite3.OperationalError})


async def _write(db, fn):
    # An in-memory state database is shared-cache: a concurrent reader can hold
    # a table lock for a moment, which SQLite reports instead of waiting.
    for attempt in range(8):
        try:
            return await db.execute_write_fn(fn, block=True)
        except _OPERATIONAL_ERRORS as e:
            if "locked" not in str(e) or attempt == 7:
                raise
            await asyncio.sleep(0.02 * (attempt + 1))


# --- runs -------------------------------------------------------------------

async def create_run(db, run: dict, documents: list[dict]) -> None:
    now = time.time()
    run = {**run, "created_at": now, "updated_at": now}

    def fn(conn):
        with conn:
            cols = list(run)
            conn.execute(
                f"insert into llm_extract_runs ({quote_identifiers(cols)}) "  # noqa: S608 - quoted names
                f"values ({', '.join('?' for _ in cols)})",
                [run[c] for c in cols],
            )
            for i, d in enumerate(documents):
                conn.execute(
                    "insert into llm_extract_documents (run_id, idx, name, kind, media_type, size, sha256, text)"
                    " values (?, ?, ?, ?, ?, ?, ?, ?)",
                    (run["id"], i, d["name"], d["kind"], d.get("media_type"), d["size"], d["sha256"], d.get("text")),
                )

    await _write(db, fn)


_RUN_FIELDS = {
    "status", "error", "finished_at", "model_id", "prompt_version", "chunks_total", "chunks_done",
    "chunks_failed", "done_chunks_json", "input_tokens", "output_tokens", "cost", "inserted_count",
    "inserted_at", "inserted_by", "undone_at", "undone_by", "options_json",
    "worker_id", "heartbeat_at", "cancel_requested_at",
}


async def update_run(db, run_id: str, **fields: Any) -> None:
    unknown = set(fields) - _RUN_FIELDS
    if unknown:
        raise ValueError(f"unknown run fields {unknown}")
    fields["updated_at"] = time.time()
    sets = ", ".join(f"{quote_identifier(k)} = ?" for k in fields)

    def fn(conn):
        with conn:
            conn.execute(
                f"update llm_extract_runs set {sets} where id = ?",  # noqa: S608 - quoted names
                [*fields.values(), run_id],
            )

    await _write(db, fn)


async def get_run(db, run_id: str) -> dict | None:
    rows = await db.execute("select * from llm_extract_runs where id = ?", [run_id])
    row = rows.first()
    if row is None:
        return None
    run = dict(row)
    run["schema"] = json.loads(run["schema_json"])
    run["options"] = json.loads(run["options_json"] or "{}")
    run["done_chunks"] = [tuple(x) for x in json.loads(run["done_chunks_json"] or "[]")]
    return run


async def list_runs(db, actor_id: str | None, *, all_actors: bool = False, limit: int = 50) -> list[dict]:
    if all_actors:
        rows = await db.execute(
            "select * from llm_extract_runs order by created_at desc limit ?", [limit]
        )
    else:
        rows = await db.execute(
            "select * from llm_extract_runs where actor_id = ? order by created_at desc limit ?",
            [actor_id, limit],
        )
    return [dict(r) for r in rows.rows]


async def get_documents(db, run_id: str) -> list[dict]:
    rows = await db.execute(
        "select * from llm_extract_documents where run_id = ? order by idx", [run_id]
    )
    return [dict(r) for r in rows.rows]


INTERRUPTED_ERROR = "The server stopped while this run was in progress."


async def mark_interrupted(db, exclude: set[str] = frozenset(), *, lease: float | None = None,
                           only: str | None = None) -> int:
    """Runs left running by a server that died: mark them interrupted.

    ``exclude``: runs executing in this process. With ``lease``, a run stamped by
    a worker whose heartbeat is younger than ``lease`` seconds is left alone (it
    runs in another live process); rows with no worker (from before leases)
    count as abandoned. ``only`` limits the check to one run.
    """
    now = time.time()
    cutoff = now - lease if lease is not None else None
    lapsed = "" if cutoff is None else " and (worker_id is null or heartbeat_at is null or heartbeat_at < ?)"

    def fn(conn):
        with conn:
            sql = "select id from llm_extract_runs where status in ('pending', 'running')" + lapsed
            params: list = [] if cutoff is None else [cutoff]
            if only is not None:
                sql += " and id = ?"
                params.append(only)
            ids = [r[0] for r in conn.execute(sql, params).fetchall() if r[0] not in exclude]
            marked = 0
            for run_id in ids:
                # the same conditions again: a heartbeat written since the select wins
                cur = conn.execute(
                    "update llm_extract_runs set status = 'interrupted', updated_at = ?, error = ?"
                    " where id = ? and status in ('pending', 'running')" + lapsed,
                    (now, INTERRUPTED_ERROR, run_id, *([] if cutoff is None else [cutoff])),
                )
                if cur.rowcount != 1:
                    continue
                marked += 1
                seq = conn.execute(
                    "select coalesce(max(seq), 0) + 1 from llm_extract_events where run_id = ?", [run_id]
                ).fetchone()[0]
                conn.execute(
                    "insert into llm_extract_events (run_id, seq, type, data_json, created_at) values (?, ?, ?, ?, ?)",
                    (run_id, seq, "RunStatus", json.dumps({"type": "RunStatus", "status": "interrupted",
                     "error": INTERRUPTED_ERROR}), now),
                )
            return marked

    return await _write(db, fn)


async def heartbeat(db, run_id: str, worker: str) -> bool:
    """Renew ``worker``'s lease on the run; return whether a cancel was requested."""

    def fn(conn):
        with conn:
            conn.execute(
                "update llm_extract_runs set heartbeat_at = ? where id = ? and worker_id = ?",
                (time.time(), run_id, worker),
            )
            row = conn.execute(
                "select cancel_requested_at from llm_extract_runs where id = ?", [run_id]
            ).fetchone()
            return bool(row and row[0] is not None)

    return await _write(db, fn)


async def request_cancel(db, run_id: str) -> bool:
    """Ask the process running the run to cancel it; False if it is no longer active."""

    def fn(conn):
        with conn:
            cur = conn.execute(
                "update llm_extract_runs set cancel_requested_at = ? where id = ?"
                " and status in ('pending', 'running')",
                (time.time(), run_id),
            )
            return cur.rowcount == 1

    return await _write(db, fn)


# --- events and rows ----------------------------------------------------------

def _reask_fields(row: dict) -> tuple:
    replaced = row.get("replaced")
    return (row.get("reask"), json.dumps(replaced, default=str) if replaced is not None else None,
            row.get("reask_note"))


async def record_event(db, run_id: str, etype: str, data: dict, row: dict | None = None,
                       run_fields: dict | None = None, correction: bool = False) -> int:
    """Append an event (and its row, and run progress) in one transaction; return its seq.

    With ``correction`` the row (number ``row["idx"]``) is updated in place: the
    re-ask's answer for a row stored before."""
    now = time.time()
    payload = json.dumps(data, default=str)

    def fn(conn):
        with conn:
            seq = conn.execute(
                "select coalesce(max(seq), 0) + 1 from llm_extract_events where run_id = ?", [run_id]
            ).fetchone()[0]
            conn.execute(
                "insert into llm_extract_events (run_id, seq, type, data_json, created_at) values (?, ?, ?, ?, ?)",
                (run_id, seq, etype, payload, now),
            )
            if row is not None and correction:
                idx = row["idx"]
                conn.execute(
                    "update llm_extract_rows set values_json = ?, source_quote = ?, quote_found = ?,"
                    " quote_start = ?, quote_end = ?, valid = ?, errors_json = ?, duplicate = ?,"
                    " reask = ?, first_values_json = ?, reask_note = ? where run_id = ? and idx = ?",
                    (
                        json.dumps(row["values"], default=str), row.get("source_quote"), row.get("quote_found"),
                        row.get("quote_start"), row.get("quote_end"), 1 if row.get("valid") else 0,
                        json.dumps(row.get("errors") or []), row.get("duplicate") or None,
                        *_reask_fields(row), run_id, idx,
                    ),
                )
                conn.execute(
                    "update llm_extract_events set data_json = ? where run_id = ? and seq = ?",
                    (json.dumps({**data, "row": idx}, default=str), run_id, seq),
                )
            elif row is not None:
                idx = conn.execute(
                    "select coalesce(max(idx), -1) + 1 from llm_extract_rows where run_id = ?", [run_id]
                ).fetchone()[0]
                # the engine's row number when it is free: a resumed run never reuses
                # the number of a row it removed
                idx = max(idx, row.get("idx") or 0)
                conn.execute(
                    "insert into llm_extract_rows (run_id, idx, values_json, source_quote, quote_found,"
                    " quote_start, quote_end, document, chunk, valid, errors_json, duplicate,"
                    " reask, first_values_json, reask_note)"
                    " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id, idx, json.dumps(row["values"], default=str), row.get("source_quote"),
                        row.get("quote_found"), row.get("quote_start"), row.get("quote_end"),
                        row.get("document"), row.get("chunk"), 1 if row.get("valid") else 0,
                        json.dumps(row.get("errors") or []), row.get("duplicate") or None,
                        *_reask_fields(row),
                    ),
                )
                if row.get("quote_page") is not None:  # kept.py's columns: the quote's page and boxes
                    conn.execute(
                        "update llm_extract_rows set quote_page = ?, quote_boxes_json = ? where run_id = ? and idx = ?",
                        (row["quote_page"], json.dumps(row["quote_boxes"]) if row.get("quote_boxes") else None, run_id, idx),
                    )
                # the stored event carries the row number used by review forms
                data_with_idx = {**data, "row": idx}
                conn.execute(
                    "update llm_extract_events set data_json = ? where run_id = ? and seq = ?",
                    (json.dumps(data_with_idx, default=str), run_id, seq),
                )
            if run_fields:
                sets = ", ".join(f"{quote_identifier(k)} = ?" for k in run_fields)
                conn.execute(
                    f"update llm_extract_runs set {sets}, updated_at = ? where id = ?",  # noqa: S608
                    [*run_fields.values(), now, run_id],
                )
            return seq

    return await _write(db, fn)


async def delete_rows_of_chunks(db, run_id: str, chunks: list[tuple[int, int]]) -> list[int]:
    """Before a resume re-runs these ``(document, chunk)`` units: drop the rows they had
    (a chunk cut off mid-answer may have left some); return the removed row numbers."""

    def fn(conn):
        with conn:
            removed = []
            for document, chunk in chunks:
                removed += [r[0] for r in conn.execute(
                    "select idx from llm_extract_rows where run_id = ? and document = ? and chunk = ?",
                    [run_id, document, chunk],
                ).fetchall()]
                conn.execute(
                    "delete from llm_extract_rows where run_id = ? and document = ? and chunk = ?",
                    [run_id, document, chunk],
                )
            return sorted(removed)

    return await _write(db, fn)


async def events_after(db, run_id: str, after: int, limit: int = 500) -> list[dict]:
    rows = await db.execute(
        "select seq, type, data_json from llm_extract_events where run_id = ? and seq > ?"
        " order by seq limit ?",
        [run_id, after, limit],
    )
    return [{"seq": r["seq"], "type": r["type"], "data": json.loads(r["data_json"])} for r in rows.rows]


def _row_out(r) -> dict:
    d = dict(r)
    d["values"] = json.loads(d.pop("values_json"))
    edited = d.pop("edited_json")
    d["edited"] = json.loads(edited) if edited else None
    d["errors"] = json.loads(d.pop("errors_json") or "[]")
    d["inserted_pk"] = json.loads(d["inserted_pk"]) if d["inserted_pk"] else None
    d["valid"] = bool(d["valid"])
    d["duplicate"] = d["duplicate"] or None
    d["quote_found"] = None if d["quote_found"] is None else bool(d["quote_found"])
    first = d.pop("first_values_json", None)
    d["replaced"] = json.loads(first) if first else None
    if "quote_boxes_json" in d:
        boxes = d.pop("quote_boxes_json")
        d["quote_boxes"] = json.loads(boxes) if boxes else None
    return d


async def get_rows(db, run_id: str) -> list[dict]:
    rows = await db.execute("select * from llm_extract_rows where run_id = ? order by idx", [run_id])
    return [_row_out(r) for r in rows.rows]


async def row_counts(db, run_ids: list[str]) -> dict[str, dict]:
    """Per run: ``{"rows", "pending", "inserted", "rejected"}`` (for saying where it stands)."""
    out: dict[str, dict] = {}
    for start in range(0, len(run_ids), 500):
        batch = run_ids[start:start + 500]
        rows = await db.execute(
            "select run_id, count(*) as rows, sum(decision = 'pending') as pending,"  # noqa: S608
            " sum(inserted_pk is not null) as inserted, sum(decision = 'rejected') as rejected"
            f" from llm_extract_rows where run_id in ({', '.join('?' for _ in batch)}) group by run_id",
            batch,
        )
        for r in rows.rows:
            out[r["run_id"]] = {k: r[k] or 0 for k in ("rows", "pending", "inserted", "rejected")}
    return out


async def last_seq(db, run_id: str) -> int:
    rows = await db.execute(
        "select coalesce(max(seq), 0) from llm_extract_events where run_id = ?", [run_id]
    )
    return rows.first()[0]


# --- review outcome -------------------------------------------------------------

async def record_review(db, run: dict, decisions: list[dict], provenance: list[dict],
                        actor_id: str | None, status: str = "inserted",
                        pk_columns: list[str] | None = None) -> None:
    """After a successful insert: decisions, provenance, examples, run status, and
    the pending-write plan removed (see ``begin_write``), in one transaction."""
    now = time.time()

    def fn(conn):
        with conn:
            for d in decisions:
                conn.execute(
                    "update llm_extract_rows set decision = ?, edited_json = ?, inserted_pk = ?"
                    " where run_id = ? and idx = ?",
                    (
                        d["decision"],
                        json.dumps(d["after"], default=str) if d.get("edited") else None,
                        json.dumps(d["pk"]) if d.get("pk") is not None else None,
                        run["id"], d["idx"],
                    ),
                )
                label = "rejected" if d["decision"] == "rejected" else ("edited" if d.get("edited") else "accepted")
                # a row reviewed again (after an undo) keeps one label: the latest
                conn.execute("delete from llm_extract_examples where run_id = ? and row_idx = ?",
                             (run["id"], d["idx"]))
                conn.execute(
                    "insert into llm_extract_examples (database_name, table_name, run_id, row_idx, label,"
                    " source_quote, before_json, after_json, actor_id, created_at)"
                    " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run["database_name"], run["table_name"], run["id"], d["idx"], label,
                        d.get("quote"), json.dumps(d["before"], default=str),
                        None if d["decision"] == "rejected" else json.dumps(d["after"], default=str),
                        actor_id, now,
                    ),
                )
            for p in provenance:
                conn.execute(
                    "insert or replace into llm_extract_provenance (database_name, table_name, row_pk,"
                    " run_id, row_idx, quote, created_at) values (?, ?, ?, ?, ?, ?, ?)",
                    (run["database_name"], run["table_name"], json.dumps(p["pk"]), run["id"],
                     p["idx"], p.get("quote"), now),
                )
            # every row of the run now in the table (a run may be inserted in several goes)
            inserted = conn.execute(
                "select count(*) from llm_extract_provenance where run_id = ?", [run["id"]]
            ).fetchone()[0]
            conn.execute(
                "update llm_extract_runs set status = ?, inserted_count = ?, inserted_at = ?,"
                " inserted_by = ?, updated_at = ?,"
                " options_json = json_set(json_remove(coalesce(options_json, '{}'), '$.pending_write'),"
                " '$.pk_columns', json(?)) where id = ?",
                ("inserted" if inserted else status, inserted, now, actor_id, now,
                 json.dumps(pk_columns or ["rowid"]), run["id"]),
            )

    await _write(db, fn)


async def claim(db, run_id: str, from_status: str, to_status: str) -> bool:
    """Move a run from ``from_status`` to ``to_status`` only if it is still there
    (so two concurrent inserts or undos of one run cannot both proceed)."""

    def fn(conn):
        with conn:
            cur = conn.execute(
                "update llm_extract_runs set status = ?, updated_at = ? where id = ? and status = ?",
                (to_status, time.time(), run_id, from_status),
            )
            return cur.rowcount == 1

    return await _write(db, fn)


async def begin_write(db, run_id: str, from_status: str, to_status: str, plan: dict, worker: str) -> bool:
    """Claim the run for an insert or undo (``claim``) and, in the same
    transaction, store ``plan`` (what is about to be written to the target
    table) under ``options.pending_write`` with this worker's heartbeat. Written
    before the target table is touched, so a crash or a failed state write
    after it leaves a run that ``settle`` can finish or roll back."""
    now = time.time()

    def fn(conn):
        with conn:
            cur = conn.execute(
                "update llm_extract_runs set status = ?, updated_at = ?, worker_id = ?, heartbeat_at = ?,"
                " options_json = json_set(coalesce(options_json, '{}'), '$.pending_write', json(?))"
                " where id = ? and status = ?",
                (to_status, now, worker, now, json.dumps(plan, default=str), run_id, from_status),
            )
            return cur.rowcount == 1

    return await _write(db, fn)


async def end_write(db, run_id: str, from_status: str, to_status: str) -> bool:
    """Give a claimed run back (nothing reached the target table): ``to_status``, plan removed."""

    def fn(conn):
        with conn:
            cur = conn.execute(
                "update llm_extract_runs set status = ?, updated_at = ?,"
                " options_json = json_remove(coalesce(options_json, '{}'), '$.pending_write')"
                " where id = ? and status = ?",
                (to_status, time.time(), run_id, from_status),
            )
            return cur.rowcount == 1

    return await _write(db, fn)


async def take_over(db, run: dict, worker: str) -> bool:
    """Become the worker settling a stranded insert/undo, unless someone else did first."""
    now = time.time()

    def fn(conn):
        with conn:
            cur = conn.execute(
                "update llm_extract_runs set worker_id = ?, heartbeat_at = ?, updated_at = ?"
                " where id = ? and status = ? and worker_id is ? and heartbeat_at is ?",
                (worker, now, now, run["id"], run["status"], run.get("worker_id"), run.get("heartbeat_at")),
            )
            return cur.rowcount == 1

    return await _write(db, fn)


async def inserted_values(db, run_id: str) -> dict[int, dict]:
    """Row index -> the values that were inserted (accepted or edited rows)."""
    rows = await db.execute(
        "select row_idx, after_json from llm_extract_examples"
        " where run_id = ? and after_json is not null order by id",
        [run_id],
    )
    return {r["row_idx"]: json.loads(r["after_json"]) for r in rows.rows}


async def provenance_for_run(db, run_id: str) -> list[dict]:
    rows = await db.execute(
        "select * from llm_extract_provenance where run_id = ? order by row_idx", [run_id]
    )
    out = []
    for r in rows.rows:
        d = dict(r)
        d["pk"] = json.loads(d["row_pk"])
        out.append(d)
    return out


async def record_undo(db, run_id: str, actor_id: str | None) -> None:
    now = time.time()

    def fn(conn):
        with conn:
            conn.execute("delete from llm_extract_provenance where run_id = ?", [run_id])
            conn.execute("update llm_extract_rows set inserted_pk = null where run_id = ?", [run_id])
            conn.execute(
                "update llm_extract_runs set status = 'undone', undone_at = ?, undone_by = ?,"
                " updated_at = ?, options_json = json_remove(coalesce(options_json, '{}'),"
                " '$.pending_write') where id = ?",
                (now, actor_id, now, run_id),
            )

    await _write(db, fn)


# --- examples -------------------------------------------------------------------

async def examples_for_table(db, database: str, table: str, *, labels: Iterable[str] = ("accepted", "edited"),
                             limit: int = 1000, actor_id: str | None = None, everyone: bool = True) -> list[dict]:
    labels = list(labels)
    clause, params = _sharing_clause(actor_id, everyone)
    rows = await db.execute(
        "select e.* from llm_extract_examples e join llm_extract_runs run on run.id = e.run_id"  # noqa: S608
        " where e.database_name = ? and e.table_name = ?"
        f" and e.label in ({', '.join('?' for _ in labels)})" + clause + " order by e.id desc limit ?",
        [database, table, *labels, *params, limit],
    )
    out = []
    for r in rows.rows:
        d = dict(r)
        d["before"] = json.loads(d.pop("before_json"))
        after = d.pop("after_json")
        d["after"] = json.loads(after) if after else None
        out.append(d)
    return out


def _sharing_clause(actor_id: str | None, everyone: bool) -> tuple[str, list]:
    """SQL (on ``e`` examples joined to ``run`` runs) keeping the actor's own
    reviewed rows and those whose run's owner shared them."""
    if everyone:
        return "", []
    return (" and (e.actor_id = ? or run.actor_id = ? or run.share_examples = 1)", [actor_id, actor_id])


async def gold_documents(db, database: str, table: str, limit: int = 10_000, *,
                         actor_id: str | None = None, everyone: bool = False) -> list[dict]:
    """Reviewed rows grouped by source document, in the evaluate command's gold
    format: ``{"id", "text", "records": [...], "rejected": [...]}``, plus
    ``reviews``: for every reviewed row the model's values, the reviewer's final
    values (null when rejected) and the columns the reviewer changed, so that
    corrections are labelled data. Documents kept only as a hash (images) have no
    text to evaluate on and are left out. Only rows ``actor_id`` reviewed or whose
    owner shared them, unless ``everyone``."""
    clause, params = _sharing_clause(actor_id, everyone)
    rows = await db.execute(
        "select e.run_id, e.row_idx, e.label, e.before_json, e.after_json, r.document,"
        " d.name as document_name, d.text as document_text"
        " from llm_extract_examples e"
        " join llm_extract_runs run on run.id = e.run_id"
        " join llm_extract_rows r on r.run_id = e.run_id and r.idx = e.row_idx"
        " join llm_extract_documents d on d.run_id = r.run_id and d.idx = r.document"
        " where e.database_name = ? and e.table_name = ? and d.text is not null" + clause +
        " order by e.run_id, r.document, e.row_idx limit ?",
        [database, table, *params, limit],
    )
    docs: dict[tuple[str, int], dict] = {}
    for r in rows.rows:
        key = (r["run_id"], r["document"])
        doc = docs.setdefault(key, {
            "id": f"{r['run_id']}-{r['document']}", "text": r["document_text"], "records": [],
            "rejected": [], "run_id": r["run_id"], "document": r["document_name"], "reviews": [],
        })
        before = json.loads(r["before_json"])
        after = json.loads(r["after_json"]) if r["after_json"] else None
        if r["label"] == "rejected":
            doc["rejected"].append(before)
        else:
            doc["records"].append(after)
        doc["reviews"].append({
            "row": r["row_idx"], "label": r["label"], "model": before, "reviewer": after,
            "changed": [k for k in before if after is not None and after.get(k) != before.get(k)],
        })
    return list(docs.values())


async def set_share_examples(db, run_id: str, shared: bool) -> None:
    """Share (or stop sharing) a run's reviewed rows with others who extract into its table."""
    def fn(conn):
        with conn:
            conn.execute("update llm_extract_runs set share_examples = ? where id = ?", [1 if shared else 0, run_id])

    await _write(db, fn)


def _m0004_shared_examples(conn: sqlite3.Connection) -> None:
    if any(r[1] == "share_examples" for r in conn.execute("pragma table_info(llm_extract_runs)")):
        return  # (a development database that ran this under an earlier name)
    conn.execute(
        "alter table llm_extract_runs add column share_examples integer not null default 0"
        " /* 1: the owner shares this run's reviewed rows (and their documents) as examples */"
    )


register_migrations("extract", [("0004_shared_examples", _m0004_shared_examples)])


async def count_examples(db, database: str, table: str, *, actor_id: str | None = None,
                         everyone: bool = True) -> int:
    clause, params = _sharing_clause(actor_id, everyone)
    rows = await db.execute(
        "select count(*) from llm_extract_examples e join llm_extract_runs run on run.id = e.run_id"
        " where e.database_name = ? and e.table_name = ? and e.label in ('accepted', 'edited')" + clause,
        [database, table, *params],
    )
    return rows.first()[0]


# --- templates and stored specs ---------------------------------------------------

#: A saved template (columns + instructions as JSON) may hold this many bytes.
MAX_TEMPLATE_BYTES = 32 * 1024
#: Saved templates per owner.
MAX_TEMPLATES_PER_OWNER = 50
#: Shared templates of other people offered on a start page (newest first).
MAX_SHARED_TEMPLATES_SHOWN = 50


class TemplateLimitError(ValueError):
    """A template over the size (status 413) or count (409) limits; the message says what to do."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


async def save_template(db, name: str, owner_id: str | None, shared: bool, schema: dict,
                        instructions: str) -> int:
    """Store a template; ``TemplateLimitError`` when it is too large or its owner has too many."""
    schema_json = json.dumps(schema)
    size = len(schema_json.encode("utf-8")) + len(instructions.encode("utf-8", "replace"))
    if size > MAX_TEMPLATE_BYTES:
        raise TemplateLimitError(
            f"The template is {size:,} bytes; the limit is {MAX_TEMPLATE_BYTES:,}: "
            "shorten its instructions or column descriptions.", 413
        )

    def fn(conn):
        with conn:
            count = conn.execute(
                "select count(*) from llm_extract_templates where owner_id is ?", [owner_id]
            ).fetchone()[0]
            if count >= MAX_TEMPLATES_PER_OWNER:
                raise TemplateLimitError(
                    f"You have {count} saved templates, the limit: delete one you no longer use first.", 409
                )
            cur = conn.execute(
                "insert into llm_extract_templates (name, owner_id, shared, schema_json, instructions, created_at)"
                " values (?, ?, ?, ?, ?, ?)",
                (name, owner_id, 1 if shared else 0, schema_json, instructions, time.time()),
            )
            return cur.lastrowid

    return await _write(db, fn)


async def get_template(db, template_id: int) -> dict | None:
    rows = await db.execute("select id, name, owner_id, shared from llm_extract_templates where id = ?",
                            [template_id])
    row = rows.first()
    return dict(row) if row else None


async def delete_template(db, template_id: int) -> bool:
    def fn(conn):
        with conn:
            return conn.execute("delete from llm_extract_templates where id = ?", [template_id]).rowcount == 1

    return await _write(db, fn)


async def templates_for(db, actor_id: str | None) -> list[dict]:
    """The actor's own templates and the newest shared ones of other people."""
    rows = await db.execute(
        "select * from (select * from llm_extract_templates where owner_id = ?"
        " union all select * from (select * from llm_extract_templates where shared = 1"
        " and owner_id is not ? order by created_at desc limit ?)) order by name",
        [actor_id, actor_id, MAX_SHARED_TEMPLATES_SHOWN],
    )
    out = []
    for r in rows.rows:
        d = dict(r)
        d["schema"] = json.loads(d.pop("schema_json"))
        out.append(d)
    return out


async def store_table_spec(db, database: str, table: str, schema: dict, *, instructions: str | None = None,
                           run_id: str | None = None, actor_id: str | None = None) -> None:
    """Remember a table's column types and key columns, and the instructions and run that
    last inserted into it (offered again by "Extract data into this table")."""
    def fn(conn):
        with conn:
            conn.execute(
                "insert or replace into llm_extract_table_specs (database_name, table_name, schema_json,"
                " updated_at, instructions, run_id, actor_id) values (?, ?, ?, ?, ?, ?, ?)",
                (database, table, json.dumps(schema), time.time(), instructions, run_id, actor_id),
            )

    await _write(db, fn)


async def remembered_for_table(db, database: str, table: str) -> dict | None:
    """``{schema, instructions, run_id, actor_id, updated_at}`` stored for the table, or None."""
    rows = await db.execute(
        "select schema_json, instructions, run_id, actor_id, updated_at from llm_extract_table_specs"
        " where database_name = ? and table_name = ?",
        [database, table],
    )
    row = rows.first()
    if row is None:
        return None
    return {"schema": json.loads(row["schema_json"]), "instructions": row["instructions"],
            "run_id": row["run_id"], "actor_id": row["actor_id"], "updated_at": row["updated_at"]}


async def stored_table_spec(db, database: str, table: str) -> dict | None:
    rows = await db.execute(
        "select schema_json from llm_extract_table_specs where database_name = ? and table_name = ?",
        [database, table],
    )
    row = rows.first()
    return json.loads(row[0]) if row else None
