"""Keeping the call log bounded: searches counted per day, old rows pruned.

Every search embeds the visitor's question, and ``llm-search`` is open to
anyone who may view a database, so one ``llm_calls`` row per search would let
anonymous visitors grow the state database without bound. Successful search
embeddings (purpose ``search``) are therefore added to one row per day, model
and outcome of ``llm_call_totals`` instead; failures still get their own row.

``call_log_retention_days`` (default 90; ``0`` keeps everything) deletes
``llm_calls`` rows and daily totals older than that many days: at startup and
then at most once an hour, inside a call-log write. Feedback and runs keep
their own tables and are not pruned.
"""

from __future__ import annotations

import sqlite3
import time

#: Purposes counted per day instead of logged one row per call.
AGGREGATED_PURPOSES = frozenset({"search"})
DEFAULT_RETENTION_DAYS = 90
PRUNE_EVERY_SECONDS = 3600


def migration_totals(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        create table if not exists llm_call_totals (
          day text not null, -- UTC date, YYYY-MM-DD
          purpose text not null, -- search, ...
          kind text not null, -- chat or embed
          provider text, -- provider of the model
          model_id text not null, -- configured model id
          outcome text not null, -- ok (failures are logged one row each in llm_calls)
          calls integer not null default 0, -- attempts counted
          items integer not null default 0, -- texts embedded
          input_tokens integer not null default 0, -- tokens sent
          cost_usd real, -- estimated cost in USD, null if unknown
          latency_ms integer not null default 0, -- summed wall time, milliseconds
          primary key (day, purpose, kind, model_id, outcome)
        )
        """
    )


def is_aggregated(purpose: str | None, outcome: str) -> bool:
    return purpose in AGGREGATED_PURPOSES and outcome == "ok"


UPSERT_TOTAL = (
    "insert into llm_call_totals (day, purpose, kind, provider, model_id, outcome, calls, items,"
    " input_tokens, cost_usd, latency_ms) values (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)"
    " on conflict (day, purpose, kind, model_id, outcome) do update set"
    " calls = calls + 1, items = items + excluded.items,"
    " input_tokens = input_tokens + excluded.input_tokens,"
    " cost_usd = case when excluded.cost_usd is null then cost_usd"
    " else coalesce(cost_usd, 0) + excluded.cost_usd end,"
    " latency_ms = latency_ms + excluded.latency_ms"
)


def total_params(record) -> list:
    return [record.started_at[:10], record.purpose, record.kind, record.provider,
            record.model_id or "", record.outcome, record.items or 0, record.input_tokens or 0,
            record.cost_usd, record.latency_ms or 0]


def prune(conn: sqlite3.Connection, retention_days: float | None, now: float | None = None) -> int:
    """Delete call rows and daily totals older than ``retention_days`` (call inside a transaction)."""
    if not retention_days:
        return 0
    import datetime as dt

    cutoff = dt.datetime.fromtimestamp((now or time.time()) - retention_days * 86400, dt.timezone.utc)
    stamp = cutoff.isoformat(timespec="milliseconds")
    deleted = conn.execute("delete from llm_calls where started_at < ?", [stamp]).rowcount
    deleted += conn.execute("delete from llm_call_totals where day < ?", [stamp[:10]]).rowcount
    return deleted


class PruneClock:
    """Says when the next prune is due (startup, then at most once an hour)."""

    def __init__(self) -> None:
        self.last = 0.0

    def due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if self.last and now - self.last < PRUNE_EVERY_SECONDS:
            return False
        self.last = now
        return True
