"""Spending limits per visitor: rolling windows checked before a model is called.

A public question box must not be drained by one visitor (or everyone
together). Each question that would call a model is first admitted here:

- per visitor (the signed-in actor's id, else the client address) and per
  database: questions in the last minute and the last hour, dollars in the
  last 24 hours and the last 30 days;
- for the whole instance: dollars in the last 24 hours.

Limits come from the plugin configuration (``limits:``; a database's own
values under ``limits: databases: <name>:`` replace the top-level ones key by
key). Costs are estimated offline, from the suite's price table
(``providers/pricing.py``) or the model's configured prices, before the call,
and replaced by what the call really cost afterwards. A model without a known
price counts as free.

Usage is kept in ``llm_limit_usage`` in the state database (it works with
``state_database: ":memory:"``, then counts restart with the server). The
check and the reservation of the estimate run in one write transaction, so
concurrent questions cannot slip past a limit together.

The client address is the connection's peer address. Behind a reverse proxy
(Cloud Run, Fly, nginx) every visitor seems to come from the proxy, so set
``trusted_proxies`` to the number of proxies in front of Datasette that
append to ``X-Forwarded-For``; the header is ignored otherwise, because any
visitor can send one.
"""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .state import register_migrations

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
MONTH = 30 * DAY
#: Rows older than this are deleted as new questions come in.
KEEP_SECONDS = MONTH + DAY
SECTION = "plugins: datasette-llm-newsroom: limits"


class LimitValues(BaseModel):
    """Limits for one visitor on one database (``None``: no limit)."""

    model_config = ConfigDict(extra="forbid")

    questions_per_minute: int | None = Field(None, ge=0)
    questions_per_hour: int | None = Field(None, ge=0)
    dollars_per_day: float | None = Field(None, ge=0)
    dollars_per_month: float | None = Field(None, ge=0)


class LimitsConfig(LimitValues):
    """The whole ``limits`` section."""

    instance_dollars_per_day: float | None = Field(
        None, ge=0, description="Dollars all visitors together may spend in 24 hours")
    trusted_proxies: int = Field(
        0, ge=0, le=10,
        description="Reverse proxies in front of Datasette that append to X-Forwarded-For")
    databases: dict[str, LimitValues] = {}

    def for_database(self, database: str | None) -> LimitValues:
        values = {name: getattr(self, name) for name in LimitValues.model_fields}
        own = self.databases.get(database or "")
        if own is not None:
            values.update({name: getattr(own, name) for name in own.model_fields_set})
        return LimitValues(**values)

    @property
    def active(self) -> bool:
        if self.instance_dollars_per_day is not None:
            return True
        return any(
            v is not None
            for values in [self, *self.databases.values()]
            for v in (getattr(values, n) for n in LimitValues.model_fields)
        )


def parse_limits(raw: dict | LimitsConfig | None) -> LimitsConfig:
    if isinstance(raw, LimitsConfig):
        return raw
    try:
        return LimitsConfig.model_validate(raw or {})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"Invalid configuration under {SECTION}: {problems}") from None


def limits_for(datasette) -> LimitsConfig:
    from .config import plugin_settings

    return parse_limits(plugin_settings(datasette).limits)


# ---------------------------------------------------------------- visitors
def client_address(scope: dict, headers: dict | None, trusted_proxies: int) -> str:
    """The visitor's address: the peer, or with ``trusted_proxies`` = n the
    n-th address from the right of ``X-Forwarded-For`` (each trusted proxy
    appends the address it saw, so the ones left of that may be forged)."""
    peer = (scope.get("client") or ("unknown",))[0] or "unknown"
    if trusted_proxies <= 0:
        return str(peer)
    header = (headers or {}).get("x-forwarded-for") or ""
    hops = [h.strip() for h in header.split(",") if h.strip()]
    if not hops:
        return str(peer)
    return hops[-trusted_proxies] if len(hops) >= trusted_proxies else hops[0]


def visitor_key(actor: dict | None, address: str | None) -> str:
    """``actor:<id>`` for a signed-in actor, else ``address:<client address>``."""
    if actor and actor.get("id") is not None:
        return f"actor:{actor['id']}"
    return f"address:{address or 'unknown'}"


# ---------------------------------------------------------------- storage
def _migration_usage(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        create table if not exists llm_limit_usage (
          id integer primary key, -- one row per question let through to a model
          visitor text not null, -- actor:<id> when signed in, else address:<client address>
          database_name text, -- database the question was asked of
          ref text, -- the answer id (rag_answers.id)
          cost_usd real not null default 0, -- estimate while the call runs, then its real cost
          settled integer not null default 0, -- 1 once cost_usd is what the call cost
          created_at real not null -- unix time the question was let through
        )
        """
    )
    conn.execute("create index if not exists llm_limit_usage_visitor "
                 "on llm_limit_usage(visitor, database_name, created_at)")
    conn.execute("create index if not exists llm_limit_usage_time on llm_limit_usage(created_at)")


register_migrations("core", [("0003_llm_limit_usage", _migration_usage)])


@dataclass
class Decision:
    """The outcome of ``admit``: let through (with the usage row) or refused."""

    allowed: bool
    usage_id: int | None = None
    kind: str | None = None  #: questions_per_minute, ..., instance_dollars_per_day
    message: str | None = None
    retry_after: int | None = None  #: seconds until the limit lets a question through


def _wait_words(seconds: float) -> str:
    seconds = max(1, math.ceil(seconds))
    if seconds < 90:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    if seconds < 90 * 60:
        minutes = round(seconds / 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours = round(seconds / 3600)
    if hours < 36:
        return f"{hours} hour{'s' if hours != 1 else ''}"
    days = round(seconds / 86400)
    return f"{days} day{'s' if days != 1 else ''}"


SEARCH_STILL = "The matching rows below come from the search, which still works."


def refusal_message(kind: str, count: int | None, retry_after: float) -> str:
    """What a visitor over a limit reads: what happened and when answers resume."""
    wait = _wait_words(retry_after)
    if kind == "questions_per_minute":
        said = f"You have asked {count} questions in the last minute, the most this site answers"
    elif kind == "questions_per_hour":
        said = f"You have asked {count} questions in the last hour, the most this site answers"
    elif kind == "dollars_per_day":
        said = "Written answers for you have reached this site's spending limit for a day"
    elif kind == "dollars_per_month":
        said = "Written answers for you have reached this site's spending limit for a month"
    else:
        said = "This site has reached its spending limit for written answers for today"
    return f"{said}. Written answers resume in about {wait}. {SEARCH_STILL}"


def _count_wait(times: list[float], limit: int, window: float, now: float) -> float:
    """Seconds until fewer than ``limit`` of ``times`` (ascending) are in the window."""
    if limit <= 0 or not times:
        return window
    return times[len(times) - limit] + window - now


def _spend_wait(rows: list[tuple[float, float]], limit: float, extra: float, window: float,
                now: float) -> float:
    """Seconds until the spend in the window (``rows`` ascending) plus ``extra``
    fits under ``limit``: the oldest spend leaves the window first."""
    total = sum(c for _, c in rows)
    for created, cost in rows:
        total -= cost
        if total + extra <= limit:
            return created + window - now
    return window  # this question alone costs more than the limit


def admit_sync(conn: sqlite3.Connection, *, visitor: str, database: str | None,
               limits: LimitsConfig, estimate: float, ref: str | None,
               now: float | None = None) -> Decision:
    """Check every limit and, if all allow, record the question (one transaction).

    Runs inside the state database's write thread (``execute_write_fn``).
    """
    now = time.time() if now is None else now
    values = limits.for_database(database)
    estimate = max(0.0, float(estimate or 0.0))
    conn.execute("delete from llm_limit_usage where created_at < ?", [now - KEEP_SECONDS])
    rows = conn.execute(
        "select created_at, cost_usd from llm_limit_usage where visitor = ? "
        "and database_name is ? and created_at > ? order by created_at",
        [visitor, database, now - MONTH],
    ).fetchall()

    def refuse(kind: str, count: int | None, wait: float) -> Decision:
        return Decision(False, kind=kind, message=refusal_message(kind, count, wait),
                        retry_after=max(1, math.ceil(wait)))

    for kind, limit, window in (("questions_per_minute", values.questions_per_minute, MINUTE),
                                ("questions_per_hour", values.questions_per_hour, HOUR)):
        if limit is None:
            continue
        times = [t for t, _ in rows if t > now - window]
        if len(times) >= limit:
            return refuse(kind, len(times), _count_wait(times, limit, window, now))
    for kind, limit, window in (("dollars_per_day", values.dollars_per_day, DAY),
                                ("dollars_per_month", values.dollars_per_month, MONTH)):
        if limit is None:
            continue
        spent = [(t, c) for t, c in rows if t > now - window]
        if sum(c for _, c in spent) + estimate > limit:
            return refuse(kind, None, _spend_wait(spent, limit, estimate, window, now))
    cap = limits.instance_dollars_per_day
    if cap is not None:
        spent = conn.execute(
            "select created_at, cost_usd from llm_limit_usage where created_at > ? "
            "and cost_usd > 0 order by created_at", [now - DAY]).fetchall()
        if sum(c for _, c in spent) + estimate > cap:
            return refuse("instance_dollars_per_day", None,
                          _spend_wait(spent, cap, estimate, DAY, now))
    cursor = conn.execute(
        "insert into llm_limit_usage (visitor, database_name, ref, cost_usd, created_at) "
        "values (?, ?, ?, ?, ?)", [visitor, database, ref, estimate, now])
    return Decision(True, usage_id=cursor.lastrowid)


async def admit(datasette, *, visitor: str, database: str | None, estimate: float | None,
                ref: str | None) -> Decision:
    """``admit_sync`` in the state database's write thread."""
    from .state import state_db

    limits = limits_for(datasette)
    db = await state_db(datasette)

    def write(conn: sqlite3.Connection) -> Decision:
        with conn:  # one transaction: check and reserve together (0.65 opens none itself)
            return admit_sync(conn, visitor=visitor, database=database, limits=limits,
                              estimate=estimate or 0.0, ref=ref)

    return await db.execute_write_fn(write, block=True)


async def settle(datasette, decision: Decision | None, cost: float | None) -> None:
    """Replace the reserved estimate with what the call really cost."""
    if decision is None or decision.usage_id is None:
        return
    from .state import state_db

    db = await state_db(datasette)
    await db.execute_write(
        "update llm_limit_usage set cost_usd = ?, settled = 1 where id = ?",
        [max(0.0, float(cost or 0.0)), decision.usage_id], block=True)


# ---------------------------------------------------------------- the usage page
def usage_rows(conn: sqlite3.Connection, limits: LimitsConfig,
               now: float | None = None) -> dict[str, Any]:
    """Current use per visitor and database, and the instance's total (pure SQL reads)."""
    now = time.time() if now is None else now
    visitors = []
    for visitor, database, minute, hour, day, month, last in conn.execute(
        "select visitor, database_name, "
        " sum(created_at > ?), sum(created_at > ?), "
        " coalesce(sum(case when created_at > ? then cost_usd end), 0), "
        " coalesce(sum(cost_usd), 0), max(created_at) "
        "from llm_limit_usage where created_at > ? group by visitor, database_name "
        "order by max(created_at) desc limit 500",
        [now - MINUTE, now - HOUR, now - DAY, now - MONTH],
    ):
        values = limits.for_database(database)
        over = [name for name, used, limit in (
            ("questions_per_minute", minute, values.questions_per_minute),
            ("questions_per_hour", hour, values.questions_per_hour),
            ("dollars_per_day", day, values.dollars_per_day),
            ("dollars_per_month", month, values.dollars_per_month),
        ) if limit is not None and used >= limit]
        visitors.append({"visitor": visitor, "database": database, "questions_minute": minute,
                         "questions_hour": hour, "dollars_day": round(day, 6),
                         "dollars_month": round(month, 6), "last_question": last,
                         "at_limit": over, "limits": values.model_dump()})
    day_total = conn.execute(
        "select coalesce(sum(cost_usd), 0), count(*) from llm_limit_usage where created_at > ?",
        [now - DAY]).fetchone()
    return {"visitors": visitors, "instance_dollars_day": round(day_total[0], 6),
            "instance_questions_day": day_total[1],
            "instance_dollars_per_day": limits.instance_dollars_per_day,
            "limits": limits.model_dump(), "now": now}


async def admit_request(datasette, *, actor: dict | None, client: str | None,
                        database: str | None, request, model, ref: str | None) -> Decision:
    """Admit a chat request about to be sent to ``model`` (its cost estimated offline)."""
    from .budget import estimate

    _in, _out, cost = estimate(request, model)
    return await admit(datasette, visitor=visitor_key(actor, client), database=database,
                       estimate=cost or 0.0, ref=ref)
