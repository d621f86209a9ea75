"""The persistent call log and feedback tables, and secret redaction.

Every attempt the gateway makes (chat or embedding) becomes one row of
``llm_calls`` in the state database; thumbs up/down from journalists go to
``llm_feedback``. Nothing is written here that has not been through
``redact()`` first.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import sqlite3
import uuid
import weakref
from dataclasses import asdict, dataclass, field
from typing import Iterable

from . import calltotals
from .state import register_migrations, state_db

#: Environment variables that always count as secrets when set.
SECRET_ENV_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DATASETTE_LLM_API_KEY")

# Key-shaped strings scrubbed even when they are not configured values
# (a key pasted into a prompt or echoed by a proxy, for instance).
_KEY_PATTERNS = [
    re.compile(r"\bsk-[A-Za-z0-9_\-]{12,}"),
    re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9_\-\.=]{12,}"),
    re.compile(r"(?i)(x-api-key['\"]?\s*[:=]\s*['\"]?)[A-Za-z0-9_\-]{12,}"),
]
REDACTED = "[REDACTED]"

# Credentials inside URLs: ``scheme://user:pass@host`` and secret-looking
# query parameters (``?api_key=``, ``&token=``, ``&sig=``...).
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/\s@?#\"'<>]+)@")
_URL_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:api[_-]?key|key|apikey|token|access[_-]?token|auth|authorization|password|passwd|pass|pwd|"
    r"secret|client[_-]?secret|sig|signature|x-amz-signature|code)=)[^&#\s\"'<>]+"
)


def redact_url(url: str | None) -> str | None:
    """``url`` without its userinfo (``user:pass@``) or secret query values: what
    may be shown or logged of a model's ``base_url``."""
    if url is None:
        return None
    url = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", str(url))
    return _URL_SECRET_PARAM.sub(lambda m: f"{m.group(1)}{REDACTED}", url)


def url_secrets(url: str | None) -> list[str]:
    """The userinfo and secret query values of ``url``, to redact wherever they appear."""
    if not url:
        return []
    # The password (a user name alone may be a token); user names stay readable.
    found = [m.group(2).partition(":")[2] or m.group(2) for m in _URL_USERINFO.finditer(url)]
    found += [m.group(0)[len(m.group(1)):] for m in _URL_SECRET_PARAM.finditer(url)]
    return found


def _migration_calls(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        create table if not exists llm_calls (
          id text primary key, -- call id: one row per attempt
          call_group text, -- shared by every attempt of one gateway call (retries, fallbacks)
          ref text, -- caller's reference, e.g. an extraction run id
          kind text not null, -- chat or embed
          purpose text, -- extract, answer, embed, ...
          provider text, -- openai, anthropic, openai-compatible, ...
          model_id text, -- configured model id
          actor_id text, -- id of the actor who caused the call
          prompt_version text, -- version id of the prompt template used
          attempt integer, -- 1-based attempt number within the call group
          streamed integer, -- 1 when the call was a stream
          input_tokens integer, -- tokens sent (provider count, else estimate)
          output_tokens integer, -- tokens received (provider count, else estimate)
          tokens_estimated integer, -- 1 when token counts are chars/4 estimates
          cost_usd real, -- estimated cost in USD from model prices, null if unknown
          latency_ms integer, -- wall time of the attempt in milliseconds
          first_token_ms integer, -- time to the first streamed delta in milliseconds
          outcome text not null, -- ok, retry, fallback, error, cancelled, refused
          finish_reason text, -- stop, length, ... as reported by the model
          error_class text, -- short error class (rate_limit, timeout, auth, ...)
          error_message text, -- redacted error message
          items integer, -- number of texts embedded (embedding calls)
          started_at text not null, -- ISO 8601 UTC start time
          finished_at text -- ISO 8601 UTC end time
        )
        """
    )
    conn.execute("create index if not exists llm_calls_ref on llm_calls(ref)")
    conn.execute("create index if not exists llm_calls_started on llm_calls(started_at)")


def _migration_feedback(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        create table if not exists llm_feedback (
          id integer primary key, -- feedback id
          call_id text, -- the llm_calls.id rated, if one call
          ref text, -- the caller's reference rated (e.g. an extraction run id)
          actor_id text, -- who gave the feedback
          rating integer not null check (rating in (-1, 1)), -- +1 thumbs up, -1 thumbs down
          comment text, -- optional free text
          created_at text not null -- ISO 8601 UTC
        )
        """
    )
    conn.execute("create index if not exists llm_feedback_ref on llm_feedback(ref)")
    conn.execute("create index if not exists llm_feedback_call on llm_feedback(call_id)")


register_migrations(
    "core",
    [("0001_llm_calls", _migration_calls), ("0002_llm_feedback", _migration_feedback),
     ("0003_llm_call_totals", calltotals.migration_totals)],
)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def new_id() -> str:
    return uuid.uuid4().hex


# ---------------------------------------------------------------- redaction
#: Keys read at run time (datasette-secrets, llm's key store): redacted too,
#: including earlier values of a rotated secret. Bounded, newest kept.
_REMEMBERED: dict[str, None] = {}
_REMEMBER_MAX = 256


def remember_secret(value: str | None) -> None:
    """Treat ``value`` as a secret in every later redaction of this process."""
    if value and len(value) >= 6:
        _REMEMBERED.pop(value, None)
        _REMEMBERED[value] = None
        while len(_REMEMBERED) > _REMEMBER_MAX:
            _REMEMBERED.pop(next(iter(_REMEMBERED)))


def secret_values(settings=None, environ=None) -> list[str]:
    """Every secret value the suite knows of: configured keys, key env vars, keys read at run time."""
    environ = os.environ if environ is None else environ
    found: set[str] = set(_REMEMBERED)
    for name in SECRET_ENV_VARS:
        if environ.get(name):
            found.add(environ[name])
    found.update(url_secrets(environ.get("DATASETTE_LLM_BASE_URL")))
    if settings is not None:
        for model in list(settings.models) + list(settings.embedding_models):
            if isinstance(model.api_key, str) and model.api_key:
                found.add(model.api_key)
            secret = getattr(model.api_key, "secret", None)  # api_key: {secret: NAME}
            if secret and environ.get(secret):
                found.add(environ[secret])
            if model.api_key_env and environ.get(model.api_key_env):
                found.add(environ[model.api_key_env])
            found.update(url_secrets(getattr(model, "base_url", None)))
    # Very short values would redact ordinary words; keys are long.
    return sorted((s for s in found if len(s) >= 6), key=len, reverse=True)


def redact(text: str | None, secrets: Iterable[str] | None = None) -> str | None:
    """``text`` with every secret value and key-shaped string replaced."""
    if text is None:
        return None
    text = str(text)
    for secret in secrets if secrets is not None else secret_values():
        if secret:
            text = text.replace(secret, REDACTED)
    text = _KEY_PATTERNS[0].sub(REDACTED, text)
    text = _KEY_PATTERNS[1].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _KEY_PATTERNS[2].sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return redact_url(text)


# ---------------------------------------------------------------- call rows
@dataclass
class CallRecord:
    kind: str
    outcome: str
    id: str = field(default_factory=new_id)
    call_group: str | None = None
    ref: str | None = None
    purpose: str | None = None
    provider: str | None = None
    model_id: str | None = None
    actor_id: str | None = None
    prompt_version: str | None = None
    attempt: int = 1
    streamed: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    tokens_estimated: int = 0
    cost_usd: float | None = None
    latency_ms: int | None = None
    first_token_ms: int | None = None
    finish_reason: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    items: int | None = None
    started_at: str = field(default_factory=now_iso)
    finished_at: str | None = None


_COLUMNS = [f for f in CallRecord.__dataclass_fields__]
# Spelled out (not formatted) so the SQL is static; a test checks it matches _COLUMNS.
_INSERT = (
    "insert into llm_calls (kind, outcome, id, call_group, ref, purpose, provider, model_id, "
    "actor_id, prompt_version, attempt, streamed, input_tokens, output_tokens, tokens_estimated, "
    "cost_usd, latency_ms, first_token_ms, finish_reason, error_class, error_message, items, "
    "started_at, finished_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?, ?, ?)"
)

# Writes scheduled without waiting (cancelled streams) keep a reference here.
_pending: set[asyncio.Task] = set()


def _params(record: CallRecord) -> list:
    values = asdict(record)
    return [values[c] for c in _COLUMNS]


class _GroupWriter:
    """Writes queued call rows in one transaction per turn of the write thread.

    A commit on a file database costs an fsync (~10-20 ms here); calls that
    finish while a write is in flight share the next commit instead of
    queueing one each.
    """

    def __init__(self) -> None:
        self.queue: list[tuple[str, list, asyncio.Future]] = []
        self.task: asyncio.Task | None = None
        self.prune_clock = calltotals.PruneClock()

    async def write(self, datasette, params: list, sql: str = _INSERT) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queue.append((sql, params, future))
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.task = loop.create_task(self._drain(datasette))
            _pending.add(self.task)
            self.task.add_done_callback(_pending.discard)
        # Shielded: a caller cancelled while waiting still gets its row written.
        await asyncio.shield(future)

    async def _drain(self, datasette) -> None:
        db = await state_db(datasette)
        while self.queue:
            batch, self.queue = self.queue, []
            writes = [(sql, params) for sql, params, _ in batch]
            retention = retention_days(datasette) if self.prune_clock.due() else None

            def fn(conn, writes=writes, retention=retention):
                with conn:  # Datasette 0.65 does not commit for us
                    for sql, params in writes:
                        conn.execute(sql, params)
                    calltotals.prune(conn, retention)

            try:
                await db.execute_write_fn(fn, block=True)
            except Exception as e:  # noqa: BLE001 - handed to every waiting caller
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
            else:
                for _, _, future in batch:
                    if not future.done():
                        future.set_result(None)


async def prune_old_calls(datasette) -> None:
    """Apply ``call_log_retention_days`` now (startup)."""
    days = retention_days(datasette)
    if not days:
        return
    db = await state_db(datasette)

    def fn(conn):
        with conn:
            calltotals.prune(conn, days)

    await db.execute_write_fn(fn, block=True)


def retention_days(datasette) -> float | None:
    """The ``call_log_retention_days`` setting (default 90; 0 keeps everything)."""
    from .config import plugin_settings

    return plugin_settings(datasette).call_log_retention_days


_writers: "weakref.WeakKeyDictionary[object, _GroupWriter]" = weakref.WeakKeyDictionary()


async def write_call(datasette, record: CallRecord, secrets: Iterable[str] | None = None) -> str:
    """Insert one call row (its error message redacted); returns the call id."""
    record.error_message = redact(record.error_message, secrets)
    if record.finished_at is None:
        record.finished_at = now_iso()
    writer = _writers.get(datasette)
    if writer is None:
        writer = _writers[datasette] = _GroupWriter()
    if calltotals.is_aggregated(record.purpose, record.outcome):
        await writer.write(datasette, calltotals.total_params(record), calltotals.UPSERT_TOTAL)
    else:
        await writer.write(datasette, _params(record))
    return record.id


def write_call_soon(datasette, record: CallRecord, secrets: Iterable[str] | None = None) -> str:
    """Schedule ``write_call`` without waiting (for cancelled or closing streams)."""
    task = asyncio.get_running_loop().create_task(write_call(datasette, record, secrets))
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return record.id


async def flush_pending() -> None:
    """Wait for writes scheduled with ``write_call_soon`` (tests, shutdown)."""
    if _pending:
        await asyncio.gather(*list(_pending), return_exceptions=True)


async def calls_for_ref(datasette, ref: str) -> list[dict]:
    """Every logged attempt carrying caller reference ``ref``, oldest first."""
    db = await state_db(datasette)
    result = await db.execute(
        "select * from llm_calls where ref = ? order by started_at, attempt", [ref]
    )
    return [dict(r) for r in result.rows]


async def usage_for_ref(datasette, ref: str) -> dict:
    """Totals over every attempt logged with ``ref``: calls, tokens, cost, failures."""
    db = await state_db(datasette)
    result = await db.execute(
        "select count(*) as calls, coalesce(sum(input_tokens), 0) as input_tokens,"
        " coalesce(sum(output_tokens), 0) as output_tokens, sum(cost_usd) as cost_usd,"
        " sum(outcome != 'ok') as failed_attempts, group_concat(distinct model_id) as models"
        " from llm_calls where ref = ?",
        [ref],
    )
    row = dict(result.first())
    row["failed_attempts"] = row["failed_attempts"] or 0
    row["models"] = sorted((row["models"] or "").split(",")) if row["models"] else []
    return row


async def get_call(datasette, call_id: str) -> dict | None:
    db = await state_db(datasette)
    result = await db.execute("select * from llm_calls where id = ?", [call_id])
    rows = result.rows
    return dict(rows[0]) if rows else None


# ---------------------------------------------------------------- feedback
async def record_feedback(
    datasette,
    *,
    actor: dict | None,
    rating: int,
    ref: str | None = None,
    call_id: str | None = None,
    comment: str | None = None,
) -> int:
    """Store a thumbs up (+1) or down (-1) on a call or a caller reference."""
    if rating not in (1, -1):
        raise ValueError("rating must be +1 (thumbs up) or -1 (thumbs down)")
    if not ref and not call_id:
        raise ValueError("feedback needs a call_id or a ref to point at")
    actor_id = str(actor.get("id")) if actor and actor.get("id") is not None else None
    comment = redact(comment.strip()[:4000], None) if comment else None
    params = [call_id, ref, actor_id, rating, comment, now_iso()]

    def fn(conn):
        with conn:
            cursor = conn.execute(
                "insert into llm_feedback (call_id, ref, actor_id, rating, comment, created_at)"
                " values (?, ?, ?, ?, ?, ?)",
                params,
            )
        return cursor.lastrowid

    db = await state_db(datasette)
    return await db.execute_write_fn(fn, block=True)
