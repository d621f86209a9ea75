"""Pages and server-sent events of the extraction plugin (JSON endpoints: api.py).

Views parse the request, check permissions (every route: pages, SSE, API)
and call ``service``; ``UserError`` becomes a message on the page or a JSON
error, and nothing is written when a request is refused.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

from datasette import Forbidden, NotFound, Response
from datasette.utils import tilde_decode, tilde_encode

from datasette_llm_core import bodies, permissions
from datasette_llm_core.denied import denied_message
from datasette_llm_core.errors import ConfigError
from datasette_llm_core.gateway import llm_gateway, no_model_message
from datasette_llm_core.state import STATE_DB_NAME, state_db

from . import review, runs, service, tasks
from .documents import canonical_offset, canonical_text
from .forms import FormLimits, read_form
from .prompts import PROMPT_VERSION
from .reading import READ_MODE_LABELS
from .schema import COLUMN_TYPES, QUOTE_FIELD, validate_table_spec
from .service import StartRequest, UserError
from .settings import extract_settings

PREFIX = "/-/llm-extract"
RUN_ID = r"(?P<run_id>[0-9a-f]{16})"
SEGMENT = r"[^/]+"
SSE_KEEPALIVE = 15.0
TYPE_LABELS = {
    "text": "Text", "integer": "Whole number", "number": "Number", "date": "Date",
    "boolean": "Yes / no", "choice": "One of a list",
}


def routes():
    from . import api, enrich_views, pageviews

    return [*enrich_views.routes(),
        (rf"^{PREFIX}/?$", index),
        (rf"^{PREFIX}/new/(?P<database>{SEGMENT})$", start_new_table),
        (rf"^{PREFIX}/into/(?P<database>{SEGMENT})/(?P<table>{SEGMENT})$", start_existing_table),
        (rf"^{PREFIX}/estimate$", api.estimate_view),
        (rf"^{PREFIX}/runs/{RUN_ID}$", run_page_view),
        (rf"^{PREFIX}/runs/{RUN_ID}/events$", run_events),
        (rf"^{PREFIX}/runs/{RUN_ID}/(?P<action>insert|cancel|undo|resume|discard)$", run_action),
        (rf"^{PREFIX}/api/runs$", api.api_start),
        (rf"^{PREFIX}/api/runs/{RUN_ID}$", api.api_run),
        (rf"^{PREFIX}/api/runs/{RUN_ID}/(?P<action>insert|cancel|undo|resume|discard)$", api.api_run_action),
        (rf"^{PREFIX}/examples/(?P<database>{SEGMENT})/(?P<table>{SEGMENT})\.jsonl$", api.examples_export),
        (rf"^{PREFIX}/templates$", api.save_template),
        (rf"^{PREFIX}/templates/(?P<template_id>[0-9]{{1,18}})/delete$", api.delete_template),
        (rf"^{PREFIX}/runs/{RUN_ID}/documents/(?P<document>\d+)/pages/(?P<page>\d+)$", pageviews.run_page_image),
        (rf"^{PREFIX}/provenance/(?P<database>{SEGMENT})/(?P<table>{SEGMENT})/(?P<pks>[^/]+?)(\.(?P<format>json))?$",
         pageviews.provenance_card),
        (rf"^{PREFIX}/provenance/(?P<database>{SEGMENT})/(?P<table>{SEGMENT})/(?P<pks>[^/]+)/page$",
         pageviews.provenance_page_image),
    ]


# --- helpers -------------------------------------------------------------------------

def run_url(datasette, run_id: str, suffix: str = "") -> str:
    return datasette.urls.path(f"{PREFIX}/runs/{run_id}{suffix}")


async def extract_targets(datasette, actor, *, first_only: bool = False) -> tuple[list[str], list[tuple[str, str]]]:
    """Where ``actor`` may extract: writable databases granted as a whole, and
    tables granted on their own (a table-level ``llm-extract`` grant, in the
    plugin's ``permissions:`` on both lines or natively on 1.0)."""
    databases: list[str] = []
    tables: list[tuple[str, str]] = []

    def usable(name: str) -> bool:
        db = datasette.databases.get(name)
        return db is not None and name != STATE_DB_NAME and not name.startswith("_") and db.is_mutable

    for name in list(datasette.databases):
        if usable(name) and await permissions.allowed(datasette, actor, "llm-extract", name):
            databases.append(name)
            if first_only:
                return databases, tables
    candidates = [
        (db, table) for db, table in permissions.granted_resources(
            permissions.grants_for(datasette), actor, "llm-extract")
        if db is not None and table is not None
    ]
    if permissions.IS_V1 and actor is not None:
        page = await datasette.allowed_resources("llm-extract", actor, limit=1000)
        async for resource in page.all():
            if resource.parent and resource.child:
                candidates.append((resource.parent, resource.child))
    seen = set()
    for db, table in candidates:
        if (db, table) in seen or db in databases or not usable(db):
            continue
        seen.add((db, table))
        if await datasette.databases[db].table_exists(table) and await permissions.allowed(
            datasette, actor, "llm-extract", db, table
        ):
            tables.append((db, table))
            if first_only:
                break
    return databases, tables


async def may_extract_somewhere(datasette, actor) -> bool:
    databases, tables = await extract_targets(datasette, actor, first_only=True)
    return bool(databases or tables)


def _json_error(message: str, status: int, **extra) -> Response:
    return Response.json({"ok": False, "error": message, **extra}, status=status)


def _raise_for(e: UserError):
    if e.status == 404:
        raise NotFound(str(e))
    if e.status == 403:
        raise Forbidden(str(e))


def _form_limits(datasette) -> FormLimits:
    """Caps of the start and review forms: files as configured, fields (pasted text
    and the review grid's values) far below them."""
    settings = extract_settings(datasette)
    fields = settings.max_text_chars * 4 + bodies.REVIEW_JSON
    return FormLimits(
        total=settings.max_upload_bytes * settings.max_documents + fields,
        fields=fields, file=settings.max_upload_bytes, files=settings.max_documents,
    )


def _json_limit(datasette) -> int:
    """Cap of a JSON run request (``api/runs``, ``estimate``): text plus base64 files."""
    return extract_settings(datasette).max_json_bytes


async def _read_form(datasette, request, receive):
    """The form of a request whose permission was already checked (forms carry a token)."""
    try:
        form = await read_form(receive, request.scope.get("headers") or [], _form_limits(datasette))
    except bodies.BodyError as e:
        raise UserError(str(e), status=e.status) from None
    try:
        check_form_token(request, form)
    except Forbidden:
        form.close()
        raise
    return form


def check_form_token(request, form) -> None:
    """0.65: the suite's form routes skip asgi-csrf (``permissions.skip_csrf``:
    asgi-csrf would read the whole body before any permission check), so the
    form's token is compared with the CSRF cookie here, exactly as asgi-csrf
    would. 1.0 checks Sec-Fetch-Site/Origin itself before the view runs."""
    if permissions.IS_V1:
        return
    if not bodies.form_token_ok(request.scope.get("headers") or [], request.cookies, form.get("csrftoken")):
        raise Forbidden(bodies.FORM_TOKEN_MESSAGE)


async def _read_json(request, receive, limit: int) -> dict:
    """A JSON object body (only ``application/json``: 415 otherwise; 413 over ``limit``)."""
    try:
        return await bodies.read_json(receive, request.scope.get("headers") or [], limit)
    except bodies.BodyError as e:
        raise UserError(str(e), status=e.status) from None


def _csrf(request) -> str:
    token = request.scope.get("csrftoken")
    return token() if callable(token) else ""


async def _chat_models(datasette):
    """(models usable for extraction, message when none is configured)."""
    try:
        gateway = await llm_gateway(datasette)
    except ConfigError as e:
        return [], None, str(e)
    models = gateway.chat_models()
    if not models:
        return [], None, no_model_message("extract")
    default = gateway.default_chat_model("extract")
    return models, default.model_id if default else None, None


def _model_options(models) -> list[dict]:
    return [
        {
            "id": m.model_id, "label": m.label or m.model_id,
            "images": bool(m.supports_images), "pdfs": bool(m.supports_pdfs),
            "priced": m.input_cost_per_mtok is not None,
        }
        for m in models
    ]


def _columns_from_form(form) -> list[dict]:
    """Builder rows ``col-<i>-<field>`` -> column dicts (rows without a name are
    skipped; unticked columns of an existing table come back with include=False)."""
    indexes = sorted({int(m.group(1)) for k in form.fields for m in [re.match(r"^col-(\d+)-name$", k)] if m})
    columns = []
    for i in indexes:
        name = form.get(f"col-{i}-name").strip()
        if not name:
            continue
        include = f"col-{i}-include-present" not in form.fields or form.get(f"col-{i}-include") == "on"
        columns.append({
            "include": include,
            "name": name,
            "type": form.get(f"col-{i}-type", "text") or "text",
            "nullable": form.get(f"col-{i}-required") != "on",
            "description": form.get(f"col-{i}-description"),
            "choices": [c.strip() for c in form.get(f"col-{i}-choices").split(",") if c.strip()],
            "key": form.get(f"col-{i}-key") == "on",
        })
    return columns


def _spec_from_columns(columns: list[dict]) -> dict:
    chosen = [c for c in columns if c.get("include", True)]
    return {
        "columns": [{k: v for k, v in c.items() if k not in ("key", "include")} for c in chosen],
        "key_columns": [c["name"] for c in chosen if c.get("key")],
    }


def _columns_for_form(spec: dict, key_columns: list[str] | None = None, include_all=True) -> list[dict]:
    keys = set(key_columns if key_columns is not None else spec.get("key_columns", []))
    out = []
    for c in spec.get("columns", []):
        out.append({
            "name": c.get("name", ""), "type": c.get("type", "text"),
            "required": not c.get("nullable", True), "description": c.get("description", ""),
            "choices": ", ".join(c.get("choices") or []), "key": c.get("name") in keys,
            "include": c.get("include", include_all),
        })
    return out


# --- index -----------------------------------------------------------------------------

async def index(datasette, request):
    actor = request.actor
    if not actor:
        raise Forbidden("Sign in to see your extraction runs.")
    state = await state_db(datasette)
    everyone = permissions.is_root(actor)
    my_runs = await runs.list_runs(state, str(actor.get("id")), all_actors=everyone)
    visible = []
    for run in my_runs:
        if run["database_name"] in datasette.databases and await permissions.allowed(
            datasette, actor, "llm-extract", run["database_name"], None if run["new_table"] else run["table_name"]
        ):
            visible.append(run)
    targets, target_tables = await extract_targets(datasette, actor)
    if not visible and not targets and not target_tables:
        raise Forbidden(denied_message(actor, "llm-extract"))
    from . import enrich_store, enrich_views

    enrich_jobs = [enrich_views.job_summary(datasette, j) for j in await enrich_store.list_jobs(
        state, actor_id=str(actor.get("id")), everyone=everyone) if j["database_name"] in datasette.databases]
    counts = await runs.row_counts(state, [r["id"] for r in visible])
    for run in visible:
        run["state"], run["state_text"] = review.run_state(run, counts.get(run["id"]))
        run["in_table"] = (counts.get(run["id"]) or {}).get("inserted", 0)  # 0 once undone
    return Response.html(await datasette.render_template(
        "llm_extract_index.html",
        {"runs": visible, "targets": targets, "target_tables": target_tables, "enrich_jobs": enrich_jobs,
         "run_url": lambda r: run_url(datasette, r),
         "new_url": lambda db: datasette.urls.path(f"{PREFIX}/new/{tilde_encode(db)}"),
         "into_url": lambda db, t: datasette.urls.path(f"{PREFIX}/into/{tilde_encode(db)}/{tilde_encode(t)}"),
         "fmt_time": _fmt_time},
        request=request,
    ))


def _fmt_time(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts else ""


# --- start pages -------------------------------------------------------------------------

async def start_new_table(datasette, request, receive):
    database = tilde_decode(request.url_vars["database"])
    return await _start_page(datasette, request, receive, database, None)


async def start_existing_table(datasette, request, receive):
    database = tilde_decode(request.url_vars["database"])
    table = tilde_decode(request.url_vars["table"])
    return await _start_page(datasette, request, receive, database, table)


async def _templates_for(datasette, actor) -> list[dict]:
    settings = extract_settings(datasette)
    out = [
        {"id": f"config-{i}", "name": t.name, "instructions": t.instructions,
         "schema": {"columns": t.columns, "key_columns": t.key_columns}, "shared": True, "source": "config"}
        for i, t in enumerate(settings.templates)
    ]
    state = await state_db(datasette)
    actor_id = str(actor.get("id")) if actor else None
    for t in await runs.templates_for(state, actor_id):
        mine = actor_id is not None and (t["owner_id"] == actor_id or permissions.is_root(actor))
        out.append({"id": str(t["id"]), "name": t["name"], "instructions": t["instructions"],
                    "schema": t["schema"], "shared": bool(t["shared"]), "source": "saved",
                    "delete_url": datasette.urls.path(f"{PREFIX}/templates/{t['id']}/delete") if mine else None})
    return out


async def _start_page(datasette, request, receive, database: str, table: str | None):
    actor = request.actor
    new_table = table is None
    try:
        # Permission before existence: a refused visitor gets the same 403 for a
        # table that exists and one that does not (no existence oracle).
        # (a missing database answers like a private one, except to root, who sees them all)
        if (database not in datasette.databases and not permissions.is_root(actor)) or not await permissions.allowed(
            datasette, actor, "llm-extract", database, table
        ):
            raise Forbidden(denied_message(actor, "llm-extract", database, table))
        service._check_database(datasette, database)
        if not new_table and not await datasette.databases[database].table_exists(table):
            raise UserError(f"There is no table called {table!r} in {database!r}.", status=404)
        await service.check_extract(datasette, actor, database, table, new_table)
    except UserError as e:
        _raise_for(e)
        return Response.html(await datasette.render_template(
            "llm_extract_message.html", {"title": "Cannot extract here", "message": str(e)}, request=request
        ), status=e.status)
    settings = extract_settings(datasette)
    templates = await _templates_for(datasette, actor)
    state = await state_db(datasette)
    values = {"table": "", "instructions": "", "text": "", "model": "", "use_examples": False, "read_as": "auto"}
    columns: list[dict]
    remembered = None
    if new_table:
        columns = []
    else:
        spec = await service.spec_for_table(datasette, database, table)
        columns = _columns_for_form(service.spec_to_dict(spec))
        remembered = await _remembered(datasette, state, database, table, spec, values)
    chosen = request.args.get("template")
    if chosen:
        for t in templates:
            if t["id"] == chosen:
                remembered = None
                values["instructions"] = t["instructions"]
                if new_table:
                    columns = _columns_for_form(t["schema"])
                else:
                    wanted = {c.get("name"): c for c in t["schema"].get("columns", [])}
                    for c in columns:
                        c["include"] = c["name"] in wanted
                        if c["name"] in wanted and wanted[c["name"]].get("description"):
                            c["description"] = wanted[c["name"]]["description"]
    error = None
    row_errors = None
    if request.method == "POST":
        try:
            form = await _read_form(datasette, request, receive)
            columns = _columns_from_form(form)
            values.update(
                table=form.get("table") if new_table else table,
                instructions=form.get("instructions"), text=form.get("text"), model=form.get("model"),
                use_examples=form.get("use_examples") == "on", read_as=form.get("read_as") or "auto",
            )
            uploads = [(u.filename, u.content_type, u.data) for u in form.files.get("files", [])]
            form.close()  # the temporary files
            req = StartRequest(
                database=database, table=values["table"], new_table=new_table,
                spec=_spec_from_columns(columns), text=values["text"], uploads=uploads,
                instructions=values["instructions"], model_id=values["model"] or None,
                use_examples=values["use_examples"], direct_insert=form.get("direct_insert") == "on",
                read_as=values["read_as"],
            )
            run_id = await service.start_run(datasette, actor, req)
            if form.get("save_template") == "on" and form.get("template_name").strip():
                # the spec passed validation when the run started
                spec_obj = validate_table_spec(req.spec)
                try:
                    await runs.save_template(state, form.get("template_name").strip()[:100],
                                             str(actor.get("id")) if actor else None,
                                             form.get("template_shared") == "on", spec_obj.model_dump(),
                                             req.instructions)
                except runs.TemplateLimitError as e:
                    return Response.redirect(run_url(datasette, run_id) + "?" + message_query(
                        datasette, run_id, f"The run started, but the template was not saved: {e}"))
            return Response.redirect(run_url(datasette, run_id))
        except UserError as e:
            _raise_for(e)
            error = str(e)
            row_errors = e.row_errors
        columns = [
            {**c, "required": not c["nullable"], "choices": ", ".join(c["choices"])} for c in columns
        ]
    models, default_model, model_message = await _chat_models(datasette)
    if not columns or (new_table and len(columns) < 3):
        columns = columns + [
            {"name": "", "type": "text", "required": False, "description": "", "choices": "", "key": False,
             "include": True}
            for _ in range(3 - len(columns) if new_table else 0)
        ]
    examples_available = 0 if new_table else await runs.count_examples(
        state, database, table, actor_id=str(actor.get("id")) if actor else None,
        everyone=permissions.is_root(actor))
    context = {
        "database": database, "table": table, "new_table": new_table, "columns": columns,
        "column_types": [(t, TYPE_LABELS[t]) for t in COLUMN_TYPES], "values": values,
        "models": _model_options(models), "default_model": values["model"] or default_model,
        "model_message": model_message, "error": error, "templates": templates,
        "settings": settings, "examples_available": examples_available,
        "max_examples": settings.max_examples, "csrf": _csrf(request),
        "estimate_url": datasette.urls.path(f"{PREFIX}/estimate"),
        "database_url": datasette.urls.database(database),
        "table_url": datasette.urls.table(database, table) if table else None,
        "accept": "text/*,.txt,.md,.csv,.json,.html,image/jpeg,image/png,image/webp,image/gif,application/pdf,.pdf",
        "row_errors": row_errors, "remembered": remembered if request.method != "POST" else None,
        "read_modes": list(READ_MODE_LABELS.items()),
    }
    return Response.html(
        await datasette.render_template("llm_extract_start.html", context, request=request),
        status=400 if error else 200,
    )


async def _remembered(datasette, state, database: str, table: str, spec, values: dict) -> dict | None:
    """Key columns and instructions of the run that last inserted into the table: filled in
    (``values``) and described, with a link to that run, for the form to show."""
    found = await runs.remembered_for_table(state, database, table)
    if not found or not found.get("run_id"):
        return None
    keys = [k for k in found["schema"].get("key_columns", []) if k in spec.column_names()]
    if found.get("instructions"):
        values["instructions"] = found["instructions"]
    if not keys and not found.get("instructions"):
        return None
    return {"key_columns": keys, "instructions": bool(found.get("instructions")), "run_id": found["run_id"],
            "run_url": run_url(datasette, found["run_id"]), "actor_id": found.get("actor_id"),
            "when": _fmt_time(found.get("updated_at"))}


# --- run page and live events -----------------------------------------------------------

async def _run_or_raise(datasette, request, run_id: str, write: bool = False) -> dict:
    try:
        return await service.run_for(datasette, request.actor, run_id, write=write)
    except UserError as e:
        _raise_for(e)
        raise


def _canonical_documents(documents: list[dict], rows: list[dict]) -> None:
    """Show runs stored before text was made canonical (CRLF kept) as canonical text, with
    their rows' quote offsets moved to match: the page's text must be the offsets' text."""
    for d in documents:
        text = d.get("text")
        if not text or "\r" not in text:
            continue
        for row in rows:
            if row["document"] == d["idx"] and row["quote_start"] is not None:
                row["quote_start"] = canonical_offset(text, row["quote_start"])
                row["quote_end"] = canonical_offset(text, row["quote_end"])
        d["text"] = canonical_text(text)


async def run_page(datasette, request):
    run = await _run_or_raise(datasette, request, request.url_vars["run_id"])
    state = await state_db(datasette)
    # read before the rows: an event stored in between is then sent again (the page
    # ignores a row it has), never lost between the rendered rows and the stream
    seen_seq = await runs.last_seq(state, run["id"])
    rows = await runs.get_rows(state, run["id"])
    columns = run["schema"]["columns"]
    names = [c["name"] for c in columns]
    documents = await runs.get_documents(state, run["id"])
    _canonical_documents(documents, rows)
    settings = extract_settings(datasette)
    provenance = await runs.provenance_for_run(state, run["id"]) if run["status"] == "inserted" else []
    reviewable = service.can_review(run, rows)
    counts = (await runs.row_counts(state, [run["id"]])).get(run["id"])
    state_key, state_text = review.run_state(run, counts)
    # rows shown while the run is still extracting are reviewed as they arrive
    open_for_review = reviewable or run["status"] in runs.ACTIVE
    views = [review.row_view(r, columns, editable=open_for_review and (run["status"] != "inserted"
                                                                       or r["decision"] == "pending"))
             for r in rows]
    changed_by_row = {v["idx"]: v["changed_by_reviewer"] for v in views}
    for p in provenance:
        p["href"] = datasette.urls.row(
            run["database_name"], run["table_name"], ",".join(tilde_encode(str(v)) for v in p["pk"]))
        p["changed"] = changed_by_row.get(p["row_idx"], [])
    can_undo = run["status"] == "inserted" and service.is_owner_or_root(request.actor, run)
    context = {
        "run": run, "rows": views, "columns": columns, "names": names, "documents": documents,
        "csrf": _csrf(request), "state_key": state_key, "state_text": state_text,
        "last_seq": seen_seq, "active": run["status"] in runs.ACTIVE,
        "reviewable": reviewable, "display": review.display, "decisions": review.DECISIONS,
        "undecided": sum(1 for v in views if v["editable"] and v["default_decision"] == "pending"),
        "reviewer_changes": sum(len(v["changed_by_reviewer"]) for v in views if v["decision"] == "accepted"),
        "confirm_undo": False,
        "run_url": run_url(datasette, run["id"]), "events_url": run_url(datasette, run["id"], "/events"),
        "action_url": lambda a: run_url(datasette, run["id"], f"/{a}"),
        "database_url": datasette.urls.database(run["database_name"]),
        "table_url": datasette.urls.table(run["database_name"], run["table_name"]),
        "provenance": provenance, "can_undo": can_undo, "fmt_time": _fmt_time,
        "message": message_from(datasette, request, run["id"]), "error": None, "row_errors": {},
        "examples_url": datasette.urls.path(
            f"{PREFIX}/examples/{tilde_encode(run['database_name'])}/{tilde_encode(run['table_name'])}.jsonl"),
        "index_url": datasette.urls.path(PREFIX), "direct_insert_allowed": settings.direct_insert,
        "prompt_version": run["prompt_version"] or PROMPT_VERSION, "quote_field": QUOTE_FIELD,
    }
    from .pageviews import pages_context

    context.update(await pages_context(datasette, run, documents))
    return context


async def _render_run(datasette, request, context, status=200):
    return Response.html(
        await datasette.render_template("llm_extract_run.html", context, request=request), status=status
    )


async def run_page_view(datasette, request):
    return await _render_run(datasette, request, await run_page(datasette, request))


async def run_events(datasette, request, send, receive):
    """Server-sent events: every stored event after ``after`` (or Last-Event-ID), then live ones."""
    run = await _run_or_raise(datasette, request, request.url_vars["run_id"])
    run_id = run["id"]
    try:
        after = int(request.headers.get("last-event-id") or request.args.get("after") or 0)
    except ValueError:
        after = 0
    state = await state_db(datasette)
    disconnected = asyncio.Event()

    async def watch():
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
                return

    watcher = asyncio.create_task(watch())
    await send({
        "type": "http.response.start", "status": 200,
        "headers": [
            [b"content-type", b"text/event-stream; charset=utf-8"],
            [b"cache-control", b"no-cache"],
            [b"x-accel-buffering", b"no"],
        ],
    })
    deadline = time.monotonic() + extract_settings(datasette).run_timeout + 120
    try:
        await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
        finished = False
        while not finished and not disconnected.is_set() and time.monotonic() < deadline:
            handle = tasks.handle_for(run_id)
            changed = handle.changed() if handle is not None else None
            events = await runs.events_after(state, run_id, after)
            for event in events:
                after = event["seq"]
                payload = json.dumps(event["data"], default=str)
                body = f"id: {event['seq']}\nevent: {event['type']}\ndata: {payload}\n\n".encode("utf-8")
                await send({"type": "http.response.body", "body": body, "more_body": True})
                if event["type"] == "RunStatus" and event["data"].get("status") not in runs.ACTIVE:
                    finished = True
            if finished or events:
                continue
            current = await tasks.check_alive(datasette, state, await runs.get_run(state, run_id))
            if handle is None and current["status"] not in runs.ACTIVE:
                # nothing more will come: everything stored has been sent
                if not await runs.events_after(state, run_id, after):
                    finished = True
                continue
            if handle is None:  # stuck "running" without a task here: poll slowly
                await asyncio.sleep(1.0)
            else:
                await handle.wait(changed, SSE_KEEPALIVE)
            if not await runs.events_after(state, run_id, after, limit=1):
                await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        watcher.cancel()


# --- actions -----------------------------------------------------------------------------

def _decisions_from_form(form, names: list[str]) -> dict[int, dict]:
    decisions: dict[int, dict] = {}
    for key in form.fields:
        m = re.match(r"^row-(\d+)-decision$", key)
        if not m:
            continue
        idx = int(m.group(1))
        values = {}
        for n, name in enumerate(names):
            field_name = f"row-{idx}-col-{n}"
            if field_name in form.fields:
                values[name] = form.get(field_name)
        decisions[idx] = {"decision": form.get(key), "values": values or None}
    return decisions


async def _do_action(datasette, request, run: dict, action: str, decisions=None, share_examples=False) -> dict:
    actor = request.actor
    if action == "insert":
        result = await service.insert_reviewed(datasette, actor, run, decisions or {})
        if share_examples:
            await runs.set_share_examples(await state_db(datasette), run["id"], True)
        return result
    if action == "cancel":
        await service.cancel(datasette, actor, run)
        return {"cancelled": True}
    if action == "undo":
        if not service.is_owner_or_root(actor, run):
            raise UserError("Only the person who ran this extraction (or root) can undo it.", 403)
        return await service.undo(datasette, actor, run)
    if action == "resume":
        await service.resume(datasette, actor, run)
        return {"resumed": True}
    if action == "discard":
        await service.discard(datasette, actor, run)
        return {"discarded": True}
    raise UserError("Unknown action.", 404)


_DONE_MESSAGES = {
    "insert": "Inserted {inserted} row(s).", "cancel": "Cancelling the run.",
    "undo": "Undone: {deleted} row(s) deleted.", "resume": "Resuming the run.", "discard": "Run discarded.",
}


async def run_action(datasette, request, receive):
    if request.method != "POST":
        return Response.redirect(run_url(datasette, request.url_vars["run_id"]))
    action = request.url_vars["action"]
    write = action in ("insert", "resume", "undo")
    run = await _run_or_raise(datasette, request, request.url_vars["run_id"], write=write)
    form = None
    try:
        form = await _read_form(datasette, request, receive)
        names = [c["name"] for c in run["schema"]["columns"]]
        if action == "undo" and form.get("confirm") != "yes":
            # deleting rows from a table is asked about first, on a page that works without JavaScript
            if run["status"] != "inserted":
                raise UserError("Only a run whose rows were inserted can be undone.", 409)
            context = await run_page(datasette, request)
            context["confirm_undo"] = True
            return await _render_run(datasette, request, context)
        decisions = _decisions_from_form(form, names) if action == "insert" else None
        result = await _do_action(datasette, request, run, action, decisions,
                                  share_examples=form.get("share_examples") == "on")
    except UserError as e:
        _raise_for(e)
        context = await run_page(datasette, request)
        context["error"] = str(e)
        context["row_errors"] = {int(k): v for k, v in (e.row_errors or {}).items()}
        if form is not None and action == "insert":
            _apply_submitted(context, form)
        return await _render_run(datasette, request, context, status=e.status)
    message = _DONE_MESSAGES[action].format(**result) if action in _DONE_MESSAGES else ""
    if action == "undo" and result.get("skipped"):
        message += f" {result['skipped']} row(s) of this run were left alone: deleted or changed since."
    return Response.redirect(run_url(datasette, run["id"]) + "?" + message_query(datasette, run["id"], message))


MESSAGE_NAMESPACE = "llm-extract-message"


def message_query(datasette, run_id: str, text: str) -> str:
    """``message=...`` for a run page URL: the text signed with the instance's
    secret and bound to the run, so a link made elsewhere cannot put words on the page."""
    from urllib.parse import quote

    return "message=" + quote(datasette.sign({"r": run_id, "m": text}, MESSAGE_NAMESPACE))


def message_from(datasette, request, run_id: str) -> str | None:
    """The status notice of a run page: only a message this server signed for this run."""
    value = request.args.get("message")
    if not value:
        return None
    try:
        data = datasette.unsign(value, MESSAGE_NAMESPACE)
    except Exception:  # noqa: BLE001 - itsdangerous.BadSignature and malformed values
        return None
    if not isinstance(data, dict) or data.get("r") != run_id or not isinstance(data.get("m"), str):
        return None
    return data["m"]


def _apply_submitted(context: dict, form) -> None:
    """Keep the reviewer's edits and decisions when the page is shown again with errors."""
    columns = context["columns"]
    for row in context["rows"]:
        idx = row["idx"]
        decision = form.get(f"row-{idx}-decision")
        if decision:
            row["default_decision"] = decision
        for cell in row["cells"]:
            key = f"row-{idx}-col-{cell['n']}"
            if key in form.fields:
                cell["text"] = form.get(key)
                cell["control"] = review.control(columns[cell["n"]], form.get(key))
    context["undecided"] = sum(1 for r in context["rows"] if r["editable"] and r["default_decision"] == "pending")
