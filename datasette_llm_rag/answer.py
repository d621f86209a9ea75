"""Ask: retrieve rows the actor may see, then stream a cited answer (or search only).

``ask_events`` yields plain dicts (one per server-sent event) so the same
code serves the streamed endpoint, the JSON endpoint and tests:

- ``sources``: the rows retrieved, numbered; ``mode`` is ``answer`` or ``search``
- ``delta``: a piece of answer text, forged citations already removed
- ``done``: the validated answer, its safe block structure and cited rows
- ``notice``: no model configured / nothing relevant (the model was not called)
- ``error``: retrieval or provider failure; ``partial`` holds text so far

Each model answer is recorded in ``rag_answers`` in the state database
(question, model, prompt version, cited rows) and is the ``ref`` that the
call log and feedback point at.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import sqlite3
import time
import uuid
from typing import AsyncIterator

from datasette_llm_core import limits
from datasette_llm_core.budget import Budget
from datasette_llm_core.errors import LLMSuiteError
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.state import register_migrations, state_db
from datasette_llm_core.types import StreamEnd, TextDelta

from . import answer_cache
from .citations import CitationStreamFilter, answer_structure, render_html, validate_citations
from .prompts import PROMPT_VERSION, Source, build_answer_request
from .retrieval import DEFAULT_K, RetrievalError, RowHit, rag_settings, retrieve

NO_MODEL_NOTE = (
    "No chat model is configured, so this shows the matching rows only. To get "
    "written answers with citations, set OPENAI_API_KEY or ANTHROPIC_API_KEY before "
    "starting Datasette, or add a model under plugins: datasette-llm-newsroom: models "
    "(any OpenAI-compatible server works, e.g. a local Ollama with provider: "
    "openai-compatible and base_url: http://127.0.0.1:11434/v1)."
)
UNCITED = (
    "This answer cites none of the rows it was given, so nothing in it is backed by your data: "
    "do not use it as it is. The rows the search found are listed below as search results; "
    "read them, or ask again in other words."
)
NOTHING_RELEVANT = (
    "None of the indexed rows you can see is relevant enough to answer this question, "
    "so no answer was generated. Try other words, or check that the table you expect "
    "is indexed."
)


def _migration_answers(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        create table if not exists rag_answers (
          id text primary key, -- answer id; the call log's ref for the model call
          database_name text not null, -- database the question was asked about
          actor_id text, -- who asked
          question text not null, -- the question as asked
          model_id text, -- chat model that answered
          prompt_version text, -- prompt template version (e.g. answer-v1)
          status text not null, -- streaming, ok, failed, cancelled (the reader left)
          answer text, -- validated answer text (forged citations removed)
          sources text, -- JSON list of rows given to the model: n, table, pk, url
          cited text, -- JSON list of cited source numbers
          dropped text, -- JSON list of citation numbers removed as forged
          error text, -- error message when status is failed
          call_id text, -- llm_calls.id of the successful model call
          created_at real not null, -- unix time the question was asked
          finished_at real -- unix time the answer ended
        )
        """
    )


register_migrations("rag", [("0002_rag_answers", _migration_answers)])
register_migrations("rag", answer_cache.MIGRATIONS)  # after the table they change


def new_answer_id() -> str:
    return "rag-" + uuid.uuid4().hex


def _source_json(hit: RowHit) -> dict:
    # the text too: an answer's permalink shows its rows as they were
    return {"n": hit.n, "table": hit.table, "pk": hit.pk, "pk_values": hit.pk_values,
            "url": hit.url, "title": hit.title, "text": hit.text}


def permalink_url(datasette, answer_id: str) -> str:
    return datasette.urls.path(f"/-/llm-rag/answers/{answer_id}")


async def _record_start(datasette, answer_id, database, actor, question, model_id, hits) -> None:
    db = await state_db(datasette)
    await db.execute_write(
        "insert into rag_answers (id, database_name, actor_id, question, model_id, "
        "prompt_version, status, sources, created_at) values (?, ?, ?, ?, ?, ?, 'streaming', ?, ?)",
        [
            answer_id, database, (actor or {}).get("id"), question, model_id,
            PROMPT_VERSION, json.dumps([_source_json(h) for h in hits]), time.time(),
        ],
        block=True,
    )


async def _record_end(
    datasette, answer_id, status, answer, cited, dropped, error=None, call_id=None
) -> None:
    db = await state_db(datasette)
    await db.execute_write(
        "update rag_answers set status = ?, answer = ?, cited = ?, dropped = ?, error = ?, "
        "call_id = ?, finished_at = ? where id = ?",
        [status, answer, json.dumps(cited), json.dumps(dropped), error, call_id, time.time(),
         answer_id],
        block=True,
    )


async def get_answer(datasette, answer_id: str) -> dict | None:
    db = await state_db(datasette)
    row = (await db.execute("select * from rag_answers where id = ?", [answer_id])).first()
    return dict(row) if row else None


def _stream_kwargs(gw, answer_id: str, budget: Budget | None = None) -> dict:
    """``ref=`` (ties the call-log row to the answer) and ``budget=`` (measures
    the spend) for gateways that accept them."""
    try:
        params = inspect.signature(gw.stream).parameters
    except (TypeError, ValueError):
        return {}
    wanted = {"ref": answer_id, "budget": budget}
    return {k: v for k, v in wanted.items() if k in params and v is not None}


def renumber(hits: list[RowHit]) -> list[RowHit]:
    return [dataclasses.replace(h, n=i) for i, h in enumerate(hits, start=1)]


async def ask_events(
    datasette,
    actor,
    database: str,
    question: str,
    *,
    tables: list[str] | None = None,
    k: int = DEFAULT_K,
    want_answer: bool = True,
    client: str | None = None,
) -> AsyncIterator[dict]:
    """Events for one question (see the module docstring). ``client`` is the
    visitor's address, for the spending limits of signed-out visitors."""
    config = rag_settings(datasette)
    try:
        retrieval = await retrieve(
            datasette, actor, database, question, tables=tables, k=k, config=config
        )
    except RetrievalError as e:
        yield {"event": "error", "kind": e.kind, "message": str(e), "status": e.status}
        return
    except LLMSuiteError as e:  # embedding provider down, bad config
        yield {"event": "error", "kind": "retrieval_failed", "message": str(e), "status": 502}
        return

    gw = await llm_gateway(datasette)
    model = gw.default_chat_model("answer") if want_answer else None
    mode = "answer" if model is not None else "search"
    hits = retrieval.hits if mode == "search" else renumber(retrieval.relevant)
    yield {
        "event": "sources",
        "mode": mode,
        "question": retrieval.question,
        "database": database,
        "tables": retrieval.tables,
        "rows": [h.as_json() for h in hits],
    }
    if model is None:
        if want_answer:
            yield {"event": "notice", "kind": "no_model", "message": NO_MODEL_NOTE}
        return
    if not hits:
        yield {"event": "notice", "kind": "nothing_relevant", "message": NOTHING_RELEVANT}
        return

    key = await answer_cache.key_for(datasette, config, database, retrieval.question,
                                     model.model_id, hits)
    cached = await answer_cache.lookup(datasette, config, key)
    if cached is not None:  # the same question, rows, index and model: no new spend
        yield answer_cache.done_event(cached, hits, permalink_url(datasette, cached["id"]))
        return
    answer_id = new_answer_id()
    allowed = {h.n for h in hits}
    sources = [Source(h.n, h.table, h.pk, h.title, h.text) for h in hits]
    request = build_answer_request(retrieval.question, sources)
    gate = await limits.admit_request(datasette, actor=actor, client=client, database=database,
                                      request=request, model=model, ref=answer_id)
    if not gate.allowed:  # the search results above still stand
        yield {"event": "notice", "kind": "limit", "limit": gate.kind, "message": gate.message,
               "retry_after": gate.retry_after}
        return
    await _record_start(datasette, answer_id, database, actor, retrieval.question, model.model_id, hits)
    spend = Budget()  # no cap: what the call costs, retries and fallbacks included
    stream_filter = CitationStreamFilter(allowed)
    pieces: list[str] = []
    finish_reason = None
    call_id = None
    stream = gw.stream(
        request,
        purpose="answer",
        prompt_version=PROMPT_VERSION,
        actor=actor,
        model_id=model.model_id,
        **_stream_kwargs(gw, answer_id, spend),
    )
    try:
        # aclosing: when our reader closes us mid-answer, the model stream is
        # closed at once (and logged "cancelled"), not whenever it is collected.
        async with contextlib.aclosing(stream):
            async for event in stream:
                if isinstance(event, TextDelta):
                    pieces.append(event.text)
                    safe = stream_filter.feed(event.text)
                    if safe:
                        yield {"event": "delta", "text": safe}
                elif isinstance(event, StreamEnd):
                    finish_reason = event.finish_reason
                    call_id = getattr(event, "call_id", None)
    except (GeneratorExit, asyncio.CancelledError):
        # The reader went away mid-answer: keep what was said, marked cancelled.
        partial = validate_citations("".join(pieces), allowed)
        await asyncio.shield(_record_end(
            datasette, answer_id, "cancelled", partial.text, partial.cited, partial.dropped,
            "The reader left before the answer finished.",
        ))
        raise
    except (LLMSuiteError, TimeoutError) as e:
        partial = validate_citations("".join(pieces), allowed)
        await _record_end(
            datasette, answer_id, "failed", partial.text, partial.cited, partial.dropped, str(e)
        )
        yield {
            "event": "error",
            "kind": "model_failed",
            "message": f"The model stopped before finishing the answer: {e}",
            "partial": partial.text,
            "answer_id": answer_id,
            "status": 502,
        }
        return
    finally:
        await asyncio.shield(limits.settle(datasette, gate, spend.spent_cost))
    tail = stream_filter.flush()
    if tail:
        yield {"event": "delta", "text": tail}
    check = validate_citations("".join(pieces), allowed)
    blocks = answer_structure(check.text, allowed)
    by_n = {h.n: h for h in hits}
    uncited = not check.cited
    # status "uncited": an answer that cites no row is recorded (and shown) as unsupported
    await _record_end(
        datasette, answer_id, "uncited" if uncited else "ok", check.text, check.cited, check.dropped,
        call_id=call_id,
    )
    if not uncited:  # an answer backed by no row is not served again from the cache
        await answer_cache.remember(datasette, answer_id, key)
    extra: dict = {}
    if uncited:
        extra = {"notice": {"kind": "uncited", "message": UNCITED},
                 "search_rows": [h.as_json() for h in hits]}
    yield {
        "event": "done",
        "answer_id": answer_id,
        "call_id": call_id,
        "answer": check.text,
        "blocks": blocks,
        "html": str(render_html(blocks, lambda n: by_n[n].url if n in by_n else None)),
        "cited": check.cited,
        "dropped": check.dropped,
        "cited_rows": [by_n[n].as_json() for n in check.cited],
        "model": model.model_id,
        "prompt_version": PROMPT_VERSION,
        "finish_reason": finish_reason,
        "cached": False,
        "permalink": permalink_url(datasette, answer_id),
        "uncited": uncited,
        **extra,
    }


async def ask_json(datasette, actor, database, question, **kwargs) -> tuple[dict, int]:
    """The whole ask as one JSON document (non-streamed API) and its HTTP status."""
    out: dict = {"ok": True, "database": database, "mode": None, "rows": [], "answer": None}
    status = 200
    async for event in ask_events(datasette, actor, database, question, **kwargs):
        kind = event["event"]
        if kind == "sources":
            out.update(mode=event["mode"], rows=event["rows"], tables=event["tables"],
                       question=event["question"])
        elif kind == "notice":
            out["notice"] = {k: v for k, v in event.items() if k != "event"}  # kind, message, ...
        elif kind == "done":
            out.update({k: v for k, v in event.items() if k != "event"})
        elif kind == "error":
            out.update(ok=False, error=event["message"], error_kind=event["kind"])
            if "partial" in event:
                out["partial"] = event["partial"]
                out["answer_id"] = event.get("answer_id")
            status = event.get("status", 500)
    return out, status
