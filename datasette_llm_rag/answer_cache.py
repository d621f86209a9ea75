"""Serving an identical question again from an answer already written.

With ``rag: cache_answers: true`` (or a number of seconds: the longest age of
an answer served again), a question is answered from ``rag_answers`` without
calling the model when everything the model would be given is the same:

- the database, and the question (case and spacing aside);
- the chat model and the prompt version;
- the index generation (every refresh of the index bumps it, so a refresh
  invalidates every cached answer of that database);
- the rows retrieved for this reader, in order, with a hash of their text.

The rows are part of the key, so an answer is only ever served again to a
reader who retrieved exactly the rows it was written from: a reader who may
view fewer tables gets other rows, hence another key (or the same rows, and
then the answer came only from rows they may view). Cached answers cost
nothing, are marked ``cached: true`` and keep the original answer's id and
permalink.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time

from datasette_llm_core.state import state_db

from .citations import answer_structure, render_html
from .prompts import PROMPT_VERSION
from .retrieval import RowHit, extra_setting, open_index


def _migration_cache_key(conn: sqlite3.Connection) -> None:
    conn.execute(
        "alter table rag_answers add column cache_key text"
        " /* hash of what the model was given (answer_cache.py); set once the answer is ok */"
    )
    conn.execute("create index if not exists rag_answers_cache_key on rag_answers(cache_key)")


#: Registered by answer.py after the table they change.
MIGRATIONS = [("0004_rag_answers_cache_key", _migration_cache_key)]


def cache_setting(config) -> float | None:
    """``None``: no cache; else the longest age (seconds, ``inf`` for any) served again."""
    value = extra_setting(config, "cache_answers", False)
    if value is True:
        return float("inf")
    if value is False or value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


def normalise_question(question: str) -> str:
    return re.sub(r"\s+", " ", question).strip().casefold()


def index_generation(datasette, database: str, config) -> str:
    meta = open_index(datasette, database, config).meta
    return f"{meta.get('generation', '')}:{meta.get('updated', meta.get('created', ''))}"


def cache_key(database: str, question: str, model_id: str, generation: str,
              hits: list[RowHit], prompt_version: str = PROMPT_VERSION) -> str:
    rows = [[h.table, json.dumps(h.pk_values, default=str),
             hashlib.blake2b(h.text.encode(), digest_size=12).hexdigest()] for h in hits]
    payload = json.dumps([database, normalise_question(question), model_id, prompt_version,
                          generation, rows], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


async def key_for(datasette, config, database: str, question: str, model_id: str,
                  hits: list[RowHit]) -> str | None:
    """The cache key of this question, or ``None`` when caching is off."""
    if cache_setting(config) is None:
        return None
    try:
        generation = index_generation(datasette, database, config)
    except Exception:  # noqa: BLE001 - no cache rather than no answer
        return None
    return cache_key(database, question, model_id, generation, hits)


async def lookup(datasette, config, key: str | None) -> dict | None:
    """The newest finished answer with this key, young enough to serve again."""
    max_age = cache_setting(config)
    if key is None or max_age is None:
        return None
    db = await state_db(datasette)
    since = 0.0 if max_age == float("inf") else time.time() - max_age
    row = (await db.execute(
        "select * from rag_answers where cache_key = ? and status = 'ok' and created_at >= ? "
        "order by created_at desc limit 1", [key, since])).first()
    return dict(row) if row else None


async def remember(datasette, answer_id: str, key: str | None) -> None:
    """Make a finished answer findable by its key."""
    if key is None:
        return
    db = await state_db(datasette)
    await db.execute_write("update rag_answers set cache_key = ? where id = ?", [key, answer_id],
                           block=True)


def done_event(cached: dict, hits: list[RowHit], permalink: str) -> dict:
    """The ``done`` event of a cached answer, as the model's own would be."""
    allowed = {h.n for h in hits}
    by_n = {h.n: h for h in hits}
    text = cached.get("answer") or ""
    cited = [n for n in json.loads(cached.get("cited") or "[]") if n in by_n]
    blocks = answer_structure(text, allowed)
    return {
        "event": "done",
        "answer_id": cached["id"],
        "call_id": None,
        "answer": text,
        "blocks": blocks,
        "html": str(render_html(blocks, lambda n: by_n[n].url if n in by_n else None)),
        "cited": cited,
        "dropped": json.loads(cached.get("dropped") or "[]"),
        "cited_rows": [by_n[n].as_json() for n in cited],
        "model": cached.get("model_id"),
        "prompt_version": cached.get("prompt_version"),
        "finish_reason": "cached",
        "cached": True,
        "answered_at": cached.get("created_at"),
        "permalink": permalink,
    }
