"""Index refreshes started from the web, run in the background.

A job is a row of ``rag_jobs`` in the state database: the page and its
progress endpoint read that row, so progress survives a page reload. The
running task is kept in a module-level registry (a strong reference, so it
is not garbage-collected mid-run), has a timeout, and embeds through the
gateway (``purpose="embed"``) so every embedding call is logged.

Several server processes may share the state database: a job records which
process runs it (``worker_id``) and that process renews ``heartbeat_at``
while it runs. A queued or running job is marked ``interrupted`` when its
task here has ended, or when no task here runs it and its owner's heartbeat
is older than the lease (``datasette_llm_core.workers``).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import asdict, is_dataclass
from typing import Any

from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.sql import quote_identifier
from datasette_llm_core.state import register_migrations, state_db
from datasette_llm_core.workers import (
    beat_until_stopped,
    heartbeat_seconds,
    lease_cutoff,
    lease_for,
    worker_id,
)

from .retrieval import extra_setting, rag_settings

DEFAULT_TIMEOUT = 3600.0
ACTIVE = ("queued", "running")
PROGRESS_INTERVAL = 0.25  # seconds between progress writes


def _migration_jobs(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        create table if not exists rag_jobs (
          id integer primary key, -- job id
          database_name text not null, -- database being indexed
          actor_id text, -- who started the job
          status text not null, -- queued, running, done, failed, timeout, interrupted
          rebuild integer not null default 0, -- 1: index rebuilt from scratch
          tables text, -- JSON list of tables asked for, null for all configured
          current_table text, -- table being indexed now
          done integer not null default 0, -- rows processed so far
          total integer, -- rows to process, when known
          message text, -- last progress note or the error message
          stats text, -- JSON summary returned by the indexer
          started_at real not null, -- unix time queued
          updated_at real not null, -- unix time of the last progress write
          finished_at real -- unix time it ended
        )
        """
    )
    conn.execute("create index if not exists rag_jobs_db on rag_jobs(database_name, id)")


def _migration_job_leases(conn: sqlite3.Connection) -> None:
    conn.execute(
        "alter table rag_jobs add column worker_id text"
        " /* server process running the job (host:pid:random); null before leases */"
    )
    conn.execute(
        "alter table rag_jobs add column heartbeat_at real"
        " /* unix time that process last said it was still running the job */"
    )


# 0002 is the answers table (answer.py)
register_migrations("rag", [("0001_rag_jobs", _migration_jobs), ("0003_rag_job_leases", _migration_job_leases)])

# (state database path or memory name, job id) -> running task.
_TASKS: dict[tuple[str, int], asyncio.Task] = {}


def _key(db, job_id: int) -> tuple[str, int]:
    return (db.path or db.memory_name or str(id(db)), int(job_id))


def _row(row) -> dict:
    out = dict(row)
    for name in ("tables", "stats"):
        if out.get(name):
            try:
                out[name] = json.loads(out[name])
            except ValueError:
                pass
    return out


async def get_job(datasette, job_id: int) -> dict | None:
    db = await state_db(datasette)
    row = (await db.execute("select * from rag_jobs where id = ?", [job_id])).first()
    if row is None:
        return None
    return await _check_alive(datasette, db, _row(row))


async def latest_job(datasette, database: str) -> dict | None:
    db = await state_db(datasette)
    row = (
        await db.execute(
            "select * from rag_jobs where database_name = ? order by id desc limit 1", [database]
        )
    ).first()
    if row is None:
        return None
    return await _check_alive(datasette, db, _row(row))


async def _check_alive(datasette, db, job: dict) -> dict:
    """A job row says queued or running: mark it interrupted if its task here
    has ended, or if no task here runs it and its owner's lease has lapsed (the
    server that ran it stopped). Another live process's job is left alone."""
    if job["status"] in ACTIVE:
        task = _TASKS.get(_key(db, job["id"]))
        if task is None or task.done():
            sql = ("update rag_jobs set status = 'interrupted', finished_at = ?, message = ? "
                   "where id = ? and status in ('queued', 'running')")
            params = [time.time(), "The server stopped before this job finished; start it again.",
                      job["id"]]
            if task is None:  # perhaps another process runs it: only once its heartbeat lapsed
                sql += " and (worker_id is null or heartbeat_at is null or heartbeat_at < ?)"
                params.append(lease_cutoff(lease_for(datasette)))
            await db.execute_write(sql, params, block=True)
            # Read it back: the job may have finished between our read and the
            # task check, in which case the update above changed nothing.
            row = (await db.execute("select * from rag_jobs where id = ?", [job["id"]])).first()
            if row is not None:
                return _row(row)
    return job


async def start_job(
    datasette, database: str, actor: dict | None, *, tables: list[str] | None = None,
    rebuild: bool = False,
) -> dict:
    """Start (or return the already running) index job for ``database``."""
    current = await latest_job(datasette, database)
    if current and current["status"] in ACTIVE:
        return current
    db = await state_db(datasette)
    now = time.time()

    def insert(conn):
        with conn:  # Datasette 0.65 does not commit execute_write_fn for us
            cursor = conn.execute(
                "insert into rag_jobs (database_name, actor_id, status, rebuild, tables, "
                "started_at, updated_at, worker_id, heartbeat_at) values (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                [database, (actor or {}).get("id"), int(rebuild),
                 json.dumps(tables) if tables else None, now, now, worker_id(), now],
            )
        return cursor.lastrowid

    job_id = await db.execute_write_fn(insert, block=True)
    key = _key(db, job_id)
    task = asyncio.create_task(_run(datasette, job_id, database, actor, tables, rebuild))
    _TASKS[key] = task
    task.add_done_callback(lambda t: _TASKS.pop(key, None) if _TASKS.get(key) is t else None)
    return await get_job(datasette, job_id)


def progress_fields(*args: Any, **kwargs: Any) -> dict:
    """Normalise whatever the indexer reports into table / done / total / message."""
    info: dict = {}
    if args and len(args) == 1 and not kwargs:
        value = args[0]
        if is_dataclass(value):
            info = asdict(value)
        elif isinstance(value, dict):
            info = dict(value)
        else:
            info = {"message": str(value)}
    elif len(args) == 2:  # the indexer reports progress(done, total)
        info = {"done": args[0], "total": args[1]}
    elif args:
        info = dict(zip(("table", "done", "total"), args))
    info.update(kwargs)
    out = {
        "current_table": info.get("table") or info.get("current_table"),
        "done": info.get("done", info.get("rows_done", info.get("processed"))),
        "total": info.get("total", info.get("rows_total")),
        "message": info.get("message") or info.get("phase"),
    }
    return {k: v for k, v in out.items() if v is not None}


async def _run(datasette, job_id, database, actor, tables, rebuild) -> None:
    db = await state_db(datasette)
    config = rag_settings(datasette)
    timeout = float(extra_setting(config, "index_timeout", DEFAULT_TIMEOUT))
    last_write = [0.0]
    pending: set[asyncio.Task] = set()

    async def write(fields: dict) -> None:
        fields = dict(fields, updated_at=time.time())
        sets = ", ".join(f"{quote_identifier(name)} = ?" for name in fields)
        await db.execute_write(
            f"update rag_jobs set {sets} where id = ?", [*fields.values(), job_id], block=True
        )

    def progress(*args, **kwargs):
        # Called by the indexer on the event loop after each embedded batch.
        fields = progress_fields(*args, **kwargs)
        now = time.monotonic()
        final = fields.get("total") is not None and fields.get("done") == fields.get("total")
        if not fields or (now - last_write[0] < PROGRESS_INTERVAL and not final):
            return
        last_write[0] = now
        task = asyncio.get_running_loop().create_task(write(fields))
        pending.add(task)
        task.add_done_callback(pending.discard)

    async def finish(fields: dict) -> None:
        if pending:
            await asyncio.gather(*list(pending), return_exceptions=True)
        await write(dict(fields, finished_at=time.time()))

    async def heartbeat() -> bool:
        await db.execute_write(
            "update rag_jobs set heartbeat_at = ? where id = ? and worker_id = ?",
            [time.time(), job_id, worker_id()], block=True,
        )
        return False  # beat until the job ends

    await write({"status": "running", "message": "Reading the tables", "worker_id": worker_id(),
                 "heartbeat_at": time.time()})
    beat = asyncio.get_running_loop().create_task(beat_until_stopped(
        heartbeat_seconds(lease_for(datasette)), heartbeat, f"index job {job_id}"))
    try:
        stats = await asyncio.wait_for(
            _index(datasette, database, actor, config, tables, rebuild, progress), timeout
        )
    except asyncio.TimeoutError:
        await finish({"status": "timeout",
                      "message": f"Stopped after {timeout:g}s (rag: index_timeout). Start it "
                                 "again to continue: batches already written are kept."})
    except asyncio.CancelledError:
        await finish({"status": "interrupted", "message": "The job was cancelled."})
        raise
    except Exception as e:  # noqa: BLE001 - recorded for the page; the server keeps running
        await finish({"status": "failed", "message": f"{type(e).__name__}: {e}"})
    else:
        summary = _stats_json(stats)
        await finish({"status": "done", "message": "Finished",
                      "stats": json.dumps(summary, default=str)})
    finally:
        beat.cancel()


def _stats_json(stats: Any) -> dict:
    if stats is None:
        return {}
    if is_dataclass(stats):
        return asdict(stats)
    if isinstance(stats, dict):
        return stats
    return {"summary": str(stats)}


async def _index(datasette, database, actor, config, tables, rebuild, progress):
    """Run the same refresh as the CLI, embedding through the gateway (logged)."""
    from .indexer import refresh_index
    from .modelchoice import gateway_choice
    from .retrieval import sidecar_for

    gw = await llm_gateway(datasette)
    # An index built with the previous default model keeps it until rebuilt.
    embedder = gw.get_embedding_model(
        gateway_choice(gw, config, database, sidecar_for(datasette, database, config),
                       rebuild=rebuild))
    source_db = datasette.databases[database]

    async def embed(texts, kind="document"):
        return await gw.embed(list(texts), kind="document", purpose="embed", actor=actor,
                              model_id=embedder.model_id)

    return await refresh_index(
        source_db.path,
        database,
        config,
        embedder,
        embed=embed,
        model_id=embedder.model_id,
        tables=tables,
        progress=progress,
        rebuild=rebuild,
        immutable=not source_db.is_mutable,
    )
