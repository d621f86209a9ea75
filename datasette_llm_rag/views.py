"""Request handling for question answering, semantic search, similar rows and indexing.

Every route checks the suite's permissions before doing anything:
``llm-search`` to search or see similar rows, ``llm-ask`` for model answers
(they cost money), ``llm-index`` to see or start index jobs. Rows only ever
come from tables the actor may view (see ``retrieval``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Awaitable
from urllib.parse import parse_qs, urlencode

from datasette.utils import tilde_decode
from datasette.utils.asgi import AsgiStream, Response

from datasette_llm_core import bodies, permissions
from datasette_llm_core.config import PLUGIN_NAME
from datasette_llm_core.denied import denied_message
from datasette_llm_core.errors import ConfigError, LLMSuiteError
from datasette_llm_core.gateway import llm_gateway

from . import jobs, wording
from .answer import ask_events, ask_json, get_answer
from .display import Labeller, format_time, relative_time, split_strong_weak, table_titles
from .indexer import source_mtime
from .retrieval import (
    DEFAULT_K,
    MAX_K,
    RetrievalError,
    configured_databases,
    existing_tables,
    max_question_chars,
    pk_from_path,
    rag_settings,
    retrieve,
    searchable_tables,
    sidecar_for,
    similar_rows,
)

ASK_PREFIX = "/-/llm-ask"
RAG_PREFIX = "/-/llm-rag"


# ------------------------------------------------------------------ helpers
def static_url(datasette, name: str) -> str:
    return datasette.urls.static_plugins(PLUGIN_NAME, name)


def ask_url(datasette, database: str | None = None, **params) -> str:
    from datasette.utils import tilde_encode

    path = datasette.urls.path(ASK_PREFIX + (f"/{tilde_encode(database)}" if database else ""))
    params = {k: v for k, v in params.items() if v}
    return path + ("?" + urlencode(params, doseq=True) if params else "")


def rag_url(datasette, *parts: str) -> str:
    """``/-/llm-rag/<parts>``: names are tilde-encoded, endpoint file names
    (``ask.json``) are not."""
    from datasette.utils import tilde_encode

    endpoints = {"ask.json", "search.json", "feedback.json"}
    return datasette.urls.path(
        RAG_PREFIX + "".join("/" + (p if p in endpoints else tilde_encode(p)) for p in parts)
    )


def similar_url(datasette, database: str, table: str, pk_path: str) -> str:
    return rag_url(datasette, "similar", database, table) + "/" + pk_path


def json_error(message: str, status: int, kind: str = "error", **extra) -> Response:
    return Response.json({"ok": False, "error": message, "error_kind": kind, **extra}, status=status)


def _db_name(request) -> str:
    return tilde_decode(request.url_vars["database"])


def _csrftoken(request) -> str:
    token = request.scope.get("csrftoken")
    return token() if callable(token) else ""


async def _can(datasette, actor, action, database=None) -> bool:
    try:
        return await permissions.allowed(datasette, actor, action, database)
    except ConfigError:
        return False


async def _check(datasette, request, action, database, *, as_json: bool):
    """``None`` when allowed, else the response to send (403 JSON or Forbidden)."""
    if database is not None and database not in datasette.databases:
        if as_json:
            return json_error(f"Database {database!r} not found.", 404, "not_found")
        from datasette import NotFound

        raise NotFound(f"Database {database!r} not found")
    if await _can(datasette, request.actor, action, database):
        return None
    message = denied_message(request.actor, action, database)
    if as_json:
        return json_error(message, 403, "forbidden")
    from datasette import Forbidden

    raise Forbidden(message)


async def _read_json_body(request) -> dict:
    """A JSON object body: only ``application/json`` (415), at most 256 KB (413),
    valid UTF-8 JSON without lone surrogates (400). Read after the permission check."""
    try:
        return await bodies.read_json(request.receive, request.scope.get("headers") or [], bodies.SMALL_JSON)
    except bodies.BodyError as e:
        kind = {413: "too_large", 415: "unsupported_media_type"}.get(e.status, "bad_request")
        raise RetrievalError(str(e), kind, e.status) from None


async def _read_form_body(request) -> dict:
    """The index page's body: JSON, or an urlencoded form (repeated keys become
    lists) whose token is checked on 0.65."""
    if bodies.media_type(request.headers.get("content-type")) == bodies.JSON_TYPE:
        return await _read_json_body(request)
    try:
        body = await bodies.read_limited(request.receive, bodies.SMALL_FORM,
                                         bodies.declared_length(request.scope.get("headers") or []))
    except bodies.BodyError as e:
        raise RetrievalError(str(e), "bad_request", e.status) from None
    form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    data = {k: (v if len(v) > 1 or k in ("table", "tables") else v[0]) for k, v in form.items()}
    if not permissions.IS_V1 and not bodies.form_token_ok(
        request.scope.get("headers") or [], request.cookies, form.get("csrftoken", [""])[0]
    ):
        raise RetrievalError(bodies.FORM_TOKEN_MESSAGE, "forbidden", 403)
    return data


def _tables_param(value) -> list[str] | None:
    """A table filter: a list of names or a comma-separated string."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        return [t for t in value.split(",") if t] or None
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return [t for t in value if t] or None
    raise RetrievalError("tables must be a list of table names.", "bad_request")


def _k_param(value) -> int:
    try:
        return max(1, min(int(value), MAX_K))
    except (TypeError, ValueError):
        return DEFAULT_K


def _client_address(datasette, request) -> str:
    """The visitor's address for spending limits (X-Forwarded-For only when trusted)."""
    from datasette_llm_core import limits

    try:
        hops = limits.limits_for(datasette).trusted_proxies
    except ConfigError:
        hops = 0
    return limits.client_address(request.scope, request.headers, hops)
def _rerank_param(datasette, database: str, value) -> bool:
    """``?rerank=1/0`` for search.json, else the database's ``rerank: search`` setting."""
    if value not in (None, ""):
        return _truthy(value)
    try:
        return rag_settings(datasette).rerank_for(database).search
    except ConfigError:
        return False


def _truthy(value) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on") if value is not None else False


async def _model_state(datasette, actor, database) -> dict:
    """What the ask box can offer this actor: answers, or search only (and why)."""
    can_ask = await _can(datasette, actor, "llm-ask", database)
    model = None
    try:
        gw = await llm_gateway(datasette)
        model = gw.default_chat_model("answer")
    except ConfigError:
        model = None
    can_configure = await _can_configure(datasette, actor, database)
    return {
        "can_ask": can_ask,
        "model_id": model.model_id if model else None,
        "answers": bool(can_ask and model),
        "note": None if model else wording.no_model_note(can_configure),
        "search_only_note": wording.search_only_note(actor, can_configure),
    }


async def _can_configure(datasette, actor, database) -> bool:
    """May ``actor`` fix the question box's setup (root, or ``llm-index`` here)?"""
    return permissions.is_root(actor) or await _can(datasette, actor, "llm-index", database)


async def _searchable_databases(datasette, actor) -> list[str]:
    try:
        names = configured_databases(datasette)
    except ConfigError:
        return []
    return [n for n in names if await _can(datasette, actor, "llm-search", n)]


def _labeller(datasette, database: str, config=None) -> Labeller:
    """Row labels and table titles for hits of ``database`` (see display.py)."""
    try:
        config = config or rag_settings(datasette)
        db_config = config.databases.get(database)
    except ConfigError:
        db_config = None
    title_columns = {t: c.title_column for t, c in db_config.tables.items()} if db_config else {}
    return Labeller(datasette, database, title_columns)


async def _describe(labeller: Labeller, rows: list[dict]) -> list[dict]:
    return [await labeller.describe(row) for row in rows]


async def _described_event(labeller: Labeller, event: dict) -> dict:
    """A server-sent event with its rows described for people (labels, titles)."""
    if event.get("event") == "sources" and event.get("rows"):
        return {**event, "rows": await _describe(labeller, event["rows"])}
    if event.get("event") == "done":
        for key in ("cited_rows", "search_rows"):
            if event.get(key):
                event = {**event, key: await _describe(labeller, event[key])}
    return event


# ------------------------------------------------------------------ ask page
async def ask_page(datasette, request):
    """``/-/llm-ask`` and ``/-/llm-ask/<database>``: the question box (and search results)."""
    actor = request.actor
    database = _db_name(request) if "database" in request.url_vars else None
    try:
        config = rag_settings(datasette)
    except ConfigError as e:
        return await _render_error(datasette, request, str(e), 500)
    databases = await _searchable_databases(datasette, actor)
    if database is None:
        if len(databases) == 1 and not request.args.get("q"):
            database = databases[0]
        elif request.args.get("database") in databases:
            database = request.args["database"]
    if database is not None:
        await _check(datasette, request, "llm-search", database, as_json=False)
    question = (request.args.get("q") or "").strip()
    requested = request.args.getlist("table") or None
    context = {
        "databases": databases,
        "database": database,
        "question": question,
        "selected_tables": requested or [],
        "tables": [],
        "retrieval": None,
        "strong": [],
        "weak": [],
        "table_titles": {},
        "error": None,
        "max_chars": max_question_chars(config),
        "csrftoken_value": _csrftoken(request),
        "can_configure_any": permissions.is_root(actor),
    }
    if database is not None:
        try:
            context["tables"] = await searchable_tables(datasette, actor, database, config)
        except RetrievalError as e:
            context["error"] = str(e)
        context.update(await _model_state(datasette, actor, database))
        context.update(
            ask_action=ask_url(datasette, database),
            urls_ask=rag_url(datasette, database, "ask.json"),
            urls_search=rag_url(datasette, database, "search.json"),
            urls_feedback=rag_url(datasette, "feedback.json"),
            urls_index=rag_url(datasette, "index", database),
        )
        context["can_index"] = await _can(datasette, actor, "llm-index", database)
        # Answer at once when arriving from a question box on this site (the
        # browser says so with Sec-Fetch-Site); a link from elsewhere only searches.
        context["autostart"] = bool(
            context["answers"] and question and request.args.get("ask") == "1"
            and request.headers.get("sec-fetch-site") == "same-origin"
        )
        context["table_titles"] = await table_titles(datasette, database, context["tables"])
        context["database_title"] = await _database_title(datasette, database)
        if question and context["error"] is None:
            try:
                context["retrieval"] = await retrieve(
                    datasette, actor, database, question, tables=requested, config=config
                )
            except RetrievalError as e:
                context["error"] = str(e)
            except LLMSuiteError as e:
                context["error"] = f"Search failed: {e}"
            else:
                rows = await _describe(_labeller(datasette, database, config),
                                       [h.as_json() for h in context["retrieval"].hits])
                context["strong"], context["weak"] = split_strong_weak(rows)
    status = 200
    return Response.html(
        await datasette.render_template("llm_rag_ask.html", context, request=request), status=status
    )


async def _render_error(datasette, request, message: str, status: int) -> Response:
    return Response.html(
        await datasette.render_template(
            "llm_rag_ask.html",
            {"databases": [], "database": None, "error": message, "question": "",
             "tables": [], "selected_tables": [], "retrieval": None, "max_chars": 0},
            request=request,
        ),
        status=status,
    )


# ------------------------------------------------------------------ JSON APIs
async def search_json(datasette, request):
    """``GET /-/llm-rag/<db>/search.json?q=...&table=...&k=...``"""
    database = _db_name(request)
    denied = await _check(datasette, request, "llm-search", database, as_json=True)
    if denied:
        return denied
    try:
        retrieval = await retrieve(
            datasette,
            request.actor,
            database,
            request.args.get("q", ""),
            tables=request.args.getlist("table") or None,
            k=_k_param(request.args.get("k")),
            rerank=_rerank_param(datasette, database, request.args.get("rerank")),
        )
    except RetrievalError as e:
        return json_error(str(e), e.status, e.kind)
    except LLMSuiteError as e:
        return json_error(str(e), 502, "retrieval_failed")
    return Response.json(
        {
            "ok": True,
            "database": database,
            "question": retrieval.question,
            "tables": retrieval.tables,
            "rows": await _describe(_labeller(datasette, database),
                                    [h.as_json() for h in retrieval.hits]),
        }
    )


def _sse(event: dict) -> str:
    return f"event: {event['event']}\ndata: {json.dumps(event, default=str)}\n\n"


async def _until_disconnect(receive, work: Awaitable[None]) -> None:
    """Run ``work``, cancelling it if the client disconnects first.

    Servers such as uvicorn drop what is written after the client has gone
    instead of raising, so a streamed answer would otherwise run (and be paid
    for) to its end. Cancelled, the model stream closes and its call-log row
    says ``cancelled``. Call after the request body has been read.
    """

    async def hung_up() -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                await asyncio.sleep(0.05)  # body already read: should not happen; never spin
        except Exception:  # noqa: BLE001 - cannot tell whether the client left: never cut it off
            await asyncio.Event().wait()

    job = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait([job, watcher], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
    if not job.cancelled():
        job.result()  # an error of the work itself


async def ask_api(datasette, request):
    """``POST /-/llm-rag/<db>/ask.json``: body ``{q, tables?, k?, stream?}``.

    ``stream`` (or ``Accept: text/event-stream``) returns server-sent events
    (``sources``, ``delta``..., then ``done``, ``notice`` or ``error``);
    otherwise one JSON document. Without ``llm-ask`` (or without a chat
    model) the answer is semantic search only.
    """
    database = _db_name(request)
    if request.method != "POST":
        return json_error("Use POST with a JSON body {\"q\": \"...\"}.", 405, "method")
    denied = await _check(datasette, request, "llm-search", database, as_json=True)
    if denied:
        return denied
    try:
        body = await _read_json_body(request)
    except RetrievalError as e:
        return json_error(str(e), e.status or 400, e.kind)
    question = body.get("q") or body.get("question") or ""
    if not isinstance(question, str):
        return json_error("q must be a string.", 400, "bad_request")
    want_answer = await _can(datasette, request.actor, "llm-ask", database)
    try:
        tables = _tables_param(body.get("tables", body.get("table")))
    except RetrievalError as e:
        return json_error(str(e), 400, e.kind)
    kwargs = dict(tables=tables, k=_k_param(body.get("k")), want_answer=want_answer,
                  client=_client_address(datasette, request))
    stream = _truthy(body.get("stream")) or "text/event-stream" in (
        request.headers.get("accept") or ""
    )
    labeller = _labeller(datasette, database)
    can_configure = await _can_configure(datasette, request.actor, database)
    search_only = {"kind": "no_permission",
                   "message": wording.search_only_note(request.actor, can_configure)}
    if not stream:
        out, status = await ask_json(datasette, request.actor, database, question, **kwargs)
        for key in ("rows", "cited_rows", "search_rows"):
            if out.get(key):
                out[key] = await _describe(labeller, out[key])
        if not want_answer:
            out["notice"] = search_only
        elif out.get("notice"):
            out["notice"] = wording.for_reader(out["notice"], can_configure)
        return Response.json(out, status=status)

    events = ask_events(datasette, request.actor, database, question, **kwargs)
    # Retrieval runs before the first event: its errors (empty question, no
    # index, wrong model) still get a real HTTP status.
    first = await events.__anext__()
    if first["event"] == "error":
        await events.aclose()
        return json_error(first["message"], first.get("status", 500), first["kind"])

    async def pump(writer):
        try:
            if not want_answer:
                await writer.write(_sse({"event": "notice", **search_only}))
            await writer.write(_sse(await _described_event(labeller, first)))
            async for event in events:
                event = wording.for_reader(event, can_configure)
                await writer.write(_sse(await _described_event(labeller, event)))
        except Exception as e:  # noqa: BLE001 - the stream has started; report in-band
            await writer.write(_sse({"event": "error", "kind": "server_error",
                                     "message": f"The answer failed: {type(e).__name__}"}))
        finally:
            await events.aclose()  # closes the model stream too: logged "cancelled" if unfinished

    async def stream_fn(writer):
        await _until_disconnect(request.receive, pump(writer))

    return AsgiStream(
        stream_fn,
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        content_type="text/event-stream; charset=utf-8",
    )


async def feedback_api(datasette, request):
    """``POST /-/llm-rag/feedback.json``: ``{answer_id, rating: "up"|"down"|1|-1, comment?}``."""
    if request.method != "POST":
        return json_error("Use POST.", 405, "method")
    try:
        body = await _read_json_body(request)
    except RetrievalError as e:
        return json_error(str(e), e.status or 400, e.kind)
    answer_id = str(body.get("answer_id") or "")
    raw_rating = body.get("rating")
    rating = (
        {"up": 1, "down": -1, "1": 1, "-1": -1, 1: 1, -1: -1}.get(raw_rating)
        if isinstance(raw_rating, (str, int)) else None
    )
    if rating is None:
        return json_error('rating must be "up" or "down".', 400, "bad_request")
    answer = await get_answer(datasette, answer_id) if answer_id else None
    if answer is None:
        return json_error("Unknown answer_id.", 404, "not_found")
    database = answer["database_name"]
    denied = await _check(datasette, request, "llm-search", database, as_json=True)
    if denied:
        return denied
    if answer["actor_id"] != (request.actor or {}).get("id") and not await _can(
        datasette, request.actor, "llm-ask", database
    ):
        return json_error("You can only rate answers you asked for.", 403, "forbidden")
    comment = body.get("comment")
    if comment is not None and not isinstance(comment, str):
        return json_error("comment must be a string.", 400, "bad_request")
    from datasette_llm_core.calllog import record_feedback

    feedback_id = await record_feedback(
        datasette, actor=request.actor, rating=rating, ref=answer_id,
        call_id=answer.get("call_id"),
        comment=(comment or "")[:4000] or None,
    )
    return Response.json({"ok": True, "feedback_id": feedback_id, "answer_id": answer_id,
                          "rating": rating})


# ------------------------------------------------------------------ similar rows
async def similar_view(datasette, request):
    """``/-/llm-rag/similar/<db>/<table>/<pk path>[.json]``"""
    database = _db_name(request)
    as_json = request.url_vars.get("format") == "json"
    denied = await _check(datasette, request, "llm-search", database, as_json=as_json)
    if denied:
        return denied
    pk_path = request.url_vars["pks"]
    try:
        table = tilde_decode(request.url_vars["table"])
        pk = pk_from_path(pk_path)
    except ValueError:
        return json_error("Malformed row path.", 400, "bad_request") if as_json else \
            Response.text("Malformed row path.", status=400)
    k = _k_param(request.args.get("k"))
    error = None
    status = 200
    rows = []
    try:
        rows, _allowed = await similar_rows(datasette, request.actor, database, table, pk, k=k)
    except RetrievalError as e:
        if as_json:
            return json_error(str(e), e.status, e.kind)
        error, status = str(e), e.status
    labeller = _labeller(datasette, database)
    described = []
    for r in rows:
        row = await labeller.describe({**r.as_json(), "score": None})
        described.append({**row, "score": r.score})
    if as_json:
        return Response.json({"ok": True, "database": database, "table": table,
                              "pk": pk, "rows": described})
    from .retrieval import pk_label

    # The row itself, named as Datasette names it (label_column), its key secondary.
    source_label = await labeller.found_label(table, pk) if error is None else None
    return Response.html(
        await datasette.render_template(
            "llm_rag_similar.html",
            {"database": database, "table": table, "pk": pk_label(pk), "rows": described,
             "error": error, "label": source_label,
             "table_title": await labeller.table_title(table),
             "row_url": datasette.urls.row(database, table, pk_path)},
            request=request,
        ),
        status=status,
    )


# ------------------------------------------------------------------ index page
def _table_state_text(state: str, rows, indexed: int) -> str:
    """What a table's index state means, in words."""
    if state == "missing table":
        return "Table not found in the database"
    if state == "not indexed":
        return "Not indexed yet"
    if state == "stale":
        diff = (rows or 0) - indexed
        if diff > 0:
            return f"Out of date: {diff:,} row{'s' if diff != 1 else ''} not indexed yet"
        return f"Out of date: {-diff:,} indexed row{'s' if diff != -1 else ''} no longer in the table"
    if state == "changed":
        return ("The database was written to after the last refresh: rows may have been edited "
                "(Check for changed rows to see which)")
    return "Up to date"


async def _table_status(datasette, database: str, config) -> tuple[list[dict], dict]:
    """Configured tables with source rows and index entries; and index-level facts.

    ``info["sidecar"]`` is the index file's full path (only ever shown to
    root, see ``_for_viewer``); ``info["refreshed"]`` the last write's unix time.
    """
    import os
    import sqlite3

    from .sidecar import connect_readonly, read_meta, read_only_location

    db = datasette.databases[database]
    db_config = config.databases.get(database)
    configured = list(db_config.tables) if db_config else []
    present = set(await db.table_names())
    indexed: dict[str, tuple[int, int]] = {}
    info: dict = {"sidecar": None, "exists": False, "model": None, "error": None,
                  "refreshed": None, "read_only": False}
    try:
        path = sidecar_for(datasette, database, config)
        info["sidecar"] = path
        info["read_only"] = read_only_location(path)
        if os.path.exists(path):
            info["exists"] = True
            conn = connect_readonly(path)
            try:
                meta = read_meta(conn)
                info["model"] = meta.get("embedding_model")
                try:
                    seen = float(meta["source_mtime"])
                except (KeyError, TypeError, ValueError):
                    seen = None
                now = source_mtime(datasette.databases[database].path)
                # written to after the last full refresh began: rows may have changed
                info["source_changed"] = bool(seen and now and now > seen)
                for key in ("updated", "created"):
                    try:
                        info["refreshed"] = float(meta[key])
                        break
                    except (KeyError, TypeError, ValueError):
                        continue
                for tbl, rows, entries in conn.execute(
                    "select tbl, count(distinct pk), count(*) from entries group by tbl"
                ):
                    indexed[tbl] = (rows, entries)
            finally:
                conn.close()
            if info["refreshed"] is None:
                info["refreshed"] = os.path.getmtime(path)
    except (ConfigError, sqlite3.DatabaseError, OSError) as e:
        info["error"] = str(e)
    from datasette_llm_core.sql import quote_identifier

    titles = await table_titles(datasette, database, configured)
    out = []
    for table in configured:
        exists = table in present
        count = None
        if exists:
            count = (
                await db.execute(f"select count(*) from {quote_identifier(table)}")
            ).single_value()
        rows, entries = indexed.get(table, (0, 0))
        if not exists:
            state = "missing table"
        elif not rows and count:
            state = "not indexed"
        elif count != rows:
            state = "stale"
        elif info.get("source_changed"):
            state = "changed"
        else:
            state = "indexed"
        out.append({"table": table, "title": titles.get(table, table), "exists": exists,
                    "rows": count, "indexed_rows": rows, "entries": entries, "state": state,
                    "state_text": _table_state_text(state, count, rows),
                    "url": datasette.urls.table(database, table) if exists else None})
    return out, info


def _job_for_viewer(job: dict | None, visible: set[str], partial: bool) -> dict | None:
    """The latest job as an actor who may not view every configured table sees it:
    no counts, progress or messages of a job that covered a hidden table."""
    if not job or not partial:
        return job
    asked = job.get("tables") if isinstance(job.get("tables"), list) else None
    if asked is not None and set(asked) <= visible:
        return job
    return {**job, "tables": [t for t in asked or [] if t in visible] or None,
            "current_table": job.get("current_table") if job.get("current_table") in visible else None,
            "done": None, "total": None, "stats": None, "message": None}


async def _verify(datasette, database: str, config, tables: list[str] | None = None) -> dict:
    """Compare index and source row by row (the CLI's ``--verify``), off the event loop;
    ``tables`` limits the comparison (and its counts) to those tables."""
    import asyncio
    import dataclasses
    import sqlite3

    from .indexer import verify

    db = datasette.databases[database]
    from .modelchoice import gateway_choice

    gw = await llm_gateway(datasette)
    model_id = gateway_choice(gw, config, database, sidecar_for(datasette, database, config))

    def run():
        return asyncio.run(verify(db.path, database, config, model_id=model_id,
                                  immutable=not db.is_mutable, tables=tables))

    try:
        report = await asyncio.to_thread(run)
    except (ConfigError, sqlite3.DatabaseError) as e:
        return {"error": str(e)}
    return {**dataclasses.asdict(report), "ok": report.ok, "error": None}


def _hide_paths(value, paths: list[str]):
    """``value`` (text, or dicts/lists of text) with each absolute path replaced
    by its file name: only root sees where files live on the server."""
    import os

    if isinstance(value, str):
        for path in sorted({p for p in paths if p}, key=len, reverse=True):
            value = value.replace(path, os.path.basename(path.rstrip(os.sep)) or "(path)")
        return value
    if isinstance(value, dict):
        return {k: _hide_paths(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide_paths(v, paths) for v in value]
    return value


def _for_viewer(context: dict, actor, database: str, datasette) -> dict:
    """The index context as ``actor`` may see it: full paths for root only."""
    import os

    info = context.get("info") or {}
    sidecar = info.get("sidecar")
    context["sidecar_name"] = os.path.basename(sidecar) if sidecar else None
    if permissions.is_root(actor):
        return context
    db = datasette.databases.get(database)
    paths = [sidecar, os.path.dirname(sidecar) if sidecar else None,
             getattr(db, "path", None)]
    paths += [os.path.dirname(p) for p in paths[2:] if p]
    hidden = {k: _hide_paths(v, paths) for k, v in context.items()}
    if hidden.get("info"):
        hidden["info"] = {**hidden["info"], "sidecar": context["sidecar_name"]}
    return hidden


def _overall(tables: list[dict], info: dict, configured_model, job) -> tuple[str, str]:
    """(css state, words) for a whole index: up to date, needs a refresh, ..."""
    if job and job.get("status") in jobs.ACTIVE:
        return "running", "Refresh in progress"
    if info.get("error"):
        return "problem", "The index cannot be read"
    if not info.get("exists"):
        return "missing", "Not built yet"
    if info.get("model") and configured_model and info["model"] != configured_model:
        return "problem", "Built with another embedding model: rebuild it"
    if any(t["state"] in ("stale", "not indexed") for t in tables):
        return "stale", "Needs a refresh"
    if any(t["state"] == "changed" for t in tables):
        return "stale", "The database changed after the last refresh"
    return "ok", "Up to date (row counts match, no writes since the last refresh)"


READ_ONLY_NOTE = (
    "Read-only: this index sits on a read-only file system (a published image or a read-only "
    "volume), so it cannot be refreshed here. Refresh it where the database is built with "
    "`datasette llm-rag index DB_PATH`, then publish the database and its index again."
)


def _read_only_refusal(datasette, database: str) -> str | None:
    """Why a refresh of ``database``'s index cannot run here, or None."""
    from .sidecar import read_only_location

    try:
        path = sidecar_for(datasette, database, rag_settings(datasette))
    except (ConfigError, KeyError):
        return None
    return READ_ONLY_NOTE if read_only_location(path) else None


async def _index_context(datasette, request, database: str) -> dict:
    config = rag_settings(datasette)
    if database not in config.databases:
        return {"database": database, "error": (
            f"Database {database!r} is not configured for question answering: add it under "
            "plugins: datasette-llm-newsroom: rag: databases:"), "tables": [], "info": {},
            "job": None}
    tables, info = await _table_status(datasette, database, config)
    # Only tables the actor may view are listed or counted (llm-index is not view-table).
    visible = set(await permissions.viewable_tables(
        datasette, request.actor, database, [t["table"] for t in tables]))
    partial = len(visible) < len(tables)
    tables = [t for t in tables if t["table"] in visible]
    job = _job_for_viewer(await jobs.latest_job(datasette, database), visible, partial)
    verified = None
    if request.args.get("verify") and info.get("exists") and not (job and job["status"] in jobs.ACTIVE):
        if not partial:
            verified = await _verify(datasette, database, config)
        elif visible:
            verified = await _verify(datasette, database, config, sorted(visible))
    configured_model = config.model_for(database)
    overall, overall_text = _overall(tables, info, configured_model, job)
    refreshed = info.get("refreshed")
    db_title = await _database_title(datasette, database)
    return {"database": database, "database_title": db_title, "tables": tables, "info": info,
            "job": job, "error": None, "configured_model": configured_model,
            "default_model": await _default_embedding_model(datasette),
            "verify": verified, "overall": overall, "overall_text": overall_text,
            "read_only_note": READ_ONLY_NOTE if info.get("read_only") else None,
            "refreshed_relative": relative_time(refreshed) if refreshed else None,
            "refreshed_absolute": format_time(refreshed) if refreshed else None,
            "refreshed_iso": format_time(refreshed, iso=True) if refreshed else None,
            "rows_indexed": sum(t["indexed_rows"] for t in tables),
            "job_when": relative_time(job.get("finished_at") or job["started_at"])
            if job and (job.get("finished_at") or job.get("started_at")) else None,
            "page_url": rag_url(datasette, "index", database),
            "ask_url": ask_url(datasette, database),
            "database_url": datasette.urls.database(database)}


async def _default_embedding_model(datasette) -> str | None:
    """The model a rebuilt index would use when none is configured."""
    try:
        return (await llm_gateway(datasette)).get_embedding_model(None).model_id
    except ConfigError:
        return None


async def _database_title(datasette, database: str) -> str:
    getter = getattr(datasette, "get_database_metadata", None)  # Datasette 1.0
    try:
        if getter is not None:
            title = (await getter(database) or {}).get("title")
        else:  # 0.65; without fallback=False this would be the instance's title
            title = datasette.metadata("title", database=database, fallback=False)
    except Exception:  # noqa: BLE001 - a title is decoration
        title = None
    return str(title) if title else database


async def index_list(datasette, request):
    """``/-/llm-rag/index``: every index the actor may see, one table each."""
    try:
        names = configured_databases(datasette)
    except ConfigError as e:
        names, error = [], str(e)
    else:
        error = None
    allowed = [n for n in names if await _can(datasette, request.actor, "llm-index", n)]
    if not allowed and error is None:
        from datasette import Forbidden

        raise Forbidden(denied_message(request.actor, "llm-index"))
    indexes = [_for_viewer(await _index_context(datasette, request, name), request.actor,
                           name, datasette) for name in allowed]
    return Response.html(
        await datasette.render_template(
            "llm_rag_index.html",
            {"indexes": indexes, "database": None, "error": error,
             "csrftoken_value": _csrftoken(request)},
            request=request,
        )
    )


async def index_page(datasette, request):
    """``GET /-/llm-rag/index/<db>``: status; ``POST``: start a refresh."""
    database = _db_name(request)
    await _check(datasette, request, "llm-index", database, as_json=False)
    if request.method == "POST":
        try:
            body = await _read_form_body(request)
        except RetrievalError as e:
            from datasette import Forbidden

            if e.status == 403:
                raise Forbidden(str(e)) from None
            datasette.add_message(request, str(e), datasette.ERROR)
            return Response.redirect(rag_url(datasette, "index", database))
        refused = _read_only_refusal(datasette, database)
        if refused:
            if (request.headers.get("accept") or "").startswith("application/json"):
                return json_error(refused, 409, "read_only")
            datasette.add_message(request, refused, datasette.ERROR)
            return Response.redirect(rag_url(datasette, "index", database))
        tables = _tables_param(body.get("table"))
        try:
            config = rag_settings(datasette)
            known = await existing_tables(datasette, database, config)
        except (RetrievalError, ConfigError) as e:
            datasette.add_message(request, str(e), datasette.ERROR)
            return Response.redirect(rag_url(datasette, "index", database))
        if tables and any(t not in known for t in tables):
            datasette.add_message(request, "Unknown table in the request.", datasette.ERROR)
            return Response.redirect(rag_url(datasette, "index", database))
        if tables is None and set(known) != set(config.databases[database].tables):
            tables = known  # skip configured tables missing from the database
        if not (tables or known):
            datasette.add_message(request, "None of the configured tables exists in this "
                                  "database.", datasette.ERROR)
            return Response.redirect(rag_url(datasette, "index", database))
        job = await jobs.start_job(datasette, database, request.actor, tables=tables,
                                   rebuild=_truthy(body.get("rebuild")))
        if (request.headers.get("accept") or "").startswith("application/json"):
            return Response.json({"ok": True, "job": job})
        return Response.redirect(rag_url(datasette, "index", database))
    context = await _index_context(datasette, request, database)
    context["status_url"] = rag_url(datasette, "index", database) + ".json"
    context["csrftoken_value"] = _csrftoken(request)
    context = _for_viewer(context, request.actor, database, datasette)
    return Response.html(
        await datasette.render_template(
            "llm_rag_index.html", {**context, "indexes": [context]}, request=request
        )
    )


async def index_status_json(datasette, request):
    """``GET /-/llm-rag/index/<db>.json``: tables, counts and the latest job."""
    database = _db_name(request)
    denied = await _check(datasette, request, "llm-index", database, as_json=True)
    if denied:
        return denied
    context = _for_viewer(await _index_context(datasette, request, database), request.actor,
                          database, datasette)
    return Response.json({"ok": context["error"] is None, **context}, default=str)


# ------------------------------------------------------------------ page boxes
async def box_html(datasette, request, database: str | None = None, table: str | None = None):
    """The small question box for the top of the home, database and table pages."""
    actor = request.actor if request else None
    try:
        databases = configured_databases(datasette)
    except ConfigError:
        return ""
    if database is not None:
        if database not in databases:
            return ""
        if table is not None:
            db_config = rag_settings(datasette).databases[database]
            if table not in db_config.tables:
                return ""
        if not await _can(datasette, actor, "llm-search", database):
            return ""
        if table is not None and not await permissions.can_view(datasette, actor, database, table):
            return ""
        choices = [database]
    else:
        choices = await _searchable_databases(datasette, actor)
        if not choices:
            return ""
    title = await table_titles(datasette, database, [table]) if table else {}
    return await datasette.render_template(
        "llm_rag_box.html",
        {"choices": choices, "database": database, "table": table,
         "table_title": title.get(table, table),
         "action": ask_url(datasette, database) if database else ask_url(datasette)},
        request=request,
    )


async def similar_link(datasette, actor, database: str, table: str, pk_path: str) -> str | None:
    """URL of the similar-rows page for a row, if the table is indexed and searchable."""
    try:
        config = rag_settings(datasette)
    except ConfigError:
        return None
    db_config = config.databases.get(database)
    if db_config is None or table not in db_config.tables:
        return None
    if not await _can(datasette, actor, "llm-search", database):
        return None
    return similar_url(datasette, database, table, pk_path)


async def box_script_url(datasette, request, database, table, view_name) -> str | None:
    """Datasette 0.65 has no top_* hooks: a script builds the box (and the
    similar-rows link on row pages) from parameters in its own URL."""
    if request is None:
        return None
    actor = request.actor
    params: dict = {}
    if view_name == "index":
        choices = await _searchable_databases(datasette, actor)
        if choices:
            params["ask"] = ask_url(datasette)
            params["db"] = choices
    elif view_name in ("database", "table") and database:
        if await box_html(datasette, request, database, table if view_name == "table" else None):
            params["ask"] = ask_url(datasette, database)
            if view_name == "table":
                params["table"] = table
                params["title"] = (await table_titles(datasette, database, [table]))[table]
    elif view_name == "row" and database and table:
        link = await similar_link(datasette, actor, database, table, request.url_vars.get("pks", ""))
        if link:
            params["similar"] = link
    if not params:
        return None
    return static_url(datasette, "llm_rag_box.js") + "?" + urlencode(params, doseq=True)


# ------------------------------------------------------------------ menus
async def menu_links(datasette, actor) -> list[dict]:
    links = []
    if await _searchable_databases(datasette, actor):
        links.append({"href": ask_url(datasette), "label": "Ask your data"})
    try:
        names = configured_databases(datasette)
    except ConfigError:
        names = []
    for name in names:
        if await _can(datasette, actor, "llm-index", name):
            links.append({"href": rag_url(datasette, "index"), "label": "Search index"})
            break
    return links


async def database_action_links(datasette, actor, database: str) -> list[dict]:
    try:
        names = configured_databases(datasette)
    except ConfigError:
        return []
    if database not in names:
        return []
    links = []
    if await _can(datasette, actor, "llm-search", database):
        links.append({"href": ask_url(datasette, database), "label": "Ask a question"})
    if await _can(datasette, actor, "llm-index", database):
        links.append({"href": rag_url(datasette, "index", database),
                      "label": "Search index: status and refresh"})
    return links


async def table_action_links(datasette, actor, database: str, table: str) -> list[dict]:
    try:
        config = rag_settings(datasette)
    except ConfigError:
        return []
    db_config = config.databases.get(database)
    if db_config is None or table not in db_config.tables:
        return []
    if not await _can(datasette, actor, "llm-search", database):
        return []
    return [{"href": ask_url(datasette, database, table=table),
             "label": "Ask a question about this table"}]
