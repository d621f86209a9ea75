"""Pages and JSON of "Extract into new columns" (enrichment jobs).

Routes (under ``/-/llm-extract/enrich``): the start page of a table (it keeps
the table page's filter from its query string), the job page (progress,
review of the sample, actions), the job as JSON, job actions, and a JSON API
to start a job. Permission: ``llm-extract`` on the table plus Datasette's
update-row (and create-table for a linked table); ``_where`` SQL in the filter
needs execute-sql, as on the table page. A job is seen by its owner and root.
"""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlencode

from datasette import Forbidden, NotFound, Response
from datasette.utils import tilde_decode, tilde_encode

from datasette_llm_core import bodies, permissions
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.state import STATE_DB_NAME, state_db

from . import enrich_jobs as jobs
from . import enrich_review, review
from . import enrich_store as store
from .enrich_jobs import JobError, JobRequest
from .schema import COLUMN_TYPES, TableSpec
from .service import can_write
from .views import _csrf

PREFIX = "/-/llm-extract/enrich"
JOB_ID = r"(?P<job_id>[0-9a-f]{16})"
ACTIONS = "pause|resume|cancel|rest|review|write|undo"
BUILDER_ROWS = 6
MAX_JSON = 1_000_000


def routes():
    return [
        (rf"^{PREFIX}/new/(?P<database>[^/]+)/(?P<table>[^/]+)$", start_page),
        (rf"^{PREFIX}/jobs/{JOB_ID}$", job_page),
        (rf"^{PREFIX}/jobs/{JOB_ID}\.json$", job_json),
        (rf"^{PREFIX}/jobs/{JOB_ID}/(?P<action>{ACTIONS})$", job_action),
        (rf"^{PREFIX}/api/jobs$", api_create),
        (rf"^{PREFIX}/banner/(?P<database>[^/]+)/(?P<table>[^/]+)$", banner_view),
    ]


def start_url(datasette, database: str, table: str, query: str = "") -> str:
    url = datasette.urls.path(f"{PREFIX}/new/{tilde_encode(database)}/{tilde_encode(table)}")
    return url + (f"?{query}" if query else "")


def job_url(datasette, job_id: str, suffix: str = "") -> str:
    return datasette.urls.path(f"{PREFIX}/jobs/{job_id}{suffix}")


# --- permissions -----------------------------------------------------------------------

async def check_may_enrich(datasette, actor, database: str, table: str, *, linked: bool = False,
                           where: bool = False) -> None:
    db = datasette.databases.get(database)
    if db is None or database == STATE_DB_NAME or not db.is_mutable:
        raise JobError(f"There is no writable database called {database!r}.", 404)
    if not await permissions.allowed(datasette, actor, "llm-extract", database, table):
        raise JobError("You do not have permission to run LLM extraction on this table. Ask an "
                       "administrator to grant you llm-extract.", 403)
    if not await can_write(datasette, actor, "update-row", database, table):
        raise JobError("You do not have permission to change rows of this table (update-row).", 403)
    if linked and not await can_write(datasette, actor, "create-table", database):
        raise JobError("You do not have permission to create the linked table (create-table).", 403)
    if where and not await can_write(datasette, actor, "execute-sql", database):
        raise JobError("The filter uses _where SQL, which needs permission to run SQL (execute-sql): "
                       "remove it or ask an administrator.", 403)


def _owner_or_root(actor, job: dict) -> bool:
    if permissions.is_root(actor):
        return True
    return bool(actor) and actor.get("id") is not None and str(actor["id"]) == job["actor_id"]


async def job_for(datasette, actor, job_id: str) -> dict:
    state = await state_db(datasette)
    job = await store.get_job(state, job_id)
    if job is None or not _owner_or_root(actor, job):
        raise JobError("No such enrichment job.", 404)
    if job["status"] == "running" and job_id not in jobs.REGISTRY:
        await jobs.take_over_abandoned(datasette)  # its server died: resume it here once the lease lapsed
        job = await store.get_job(state, job_id)
    if job["database_name"] not in datasette.databases:
        raise JobError(f"The database {job['database_name']!r} of this job is no longer attached.", 404)
    if not await permissions.allowed(datasette, actor, "llm-extract", job["database_name"], job["table_name"]):
        raise JobError("You no longer have permission to run LLM extraction on this table.", 403)
    return job


def _raise(e: JobError):
    if e.status == 404:
        raise NotFound(str(e))
    if e.status == 403:
        raise Forbidden(str(e))


# --- the job as data -------------------------------------------------------------------

def job_summary(datasette, job: dict) -> dict:
    left = jobs.time_left(job)
    return {
        "id": job["id"], "status": job["status"], "phase": job["phase"], "write_mode": job["write_mode"],
        "database": job["database_name"], "table": job["table_name"], "linked_table": job["linked_table"],
        "source_columns": job["source_columns"], "columns": job["schema"]["columns"],
        "model_id": job["model_id"], "prompt_version": job["prompt_version"], "template": job["template"],
        "rows_total": job["rows_total"], "sample_size": job["sample_size"], "rows_done": job["rows_done"],
        "rows_failed": job["rows_failed"], "rows_written": job["rows_written"],
        "input_tokens": job["input_tokens"], "output_tokens": job["output_tokens"], "cost": job["cost"],
        "max_cost": job["max_cost"], "time_left_seconds": None if left is None else round(left, 1),
        "error": job["error"], "selection": job["selection"], "created_at": job["created_at"],
        "first_result_at": job["first_result_at"], "url": job_url(datasette, job["id"]),
        "batch_id": (job["batch"] or {}).get("batch_id") if job["batch"] is not None else None,
        "batch_mode": job["batch"] is not None,
    }


def _item_view(item: dict) -> dict:
    records = item["records"]
    first = records[0] if records else {}
    return {"row_id": item["row_id"], "pk": item["pk"], "status": item["status"], "error": item["error"],
            "records": records, "values": item["edited"] or first.get("values") or {},
            "quote": first.get("quote"), "quote_found": first.get("quote_found"),
            "valid": bool(item["valid"]), "errors": first.get("errors") or [], "decision": item["decision"],
            "edited": item["edited"] is not None, "written": bool(item["written"]), "model_id": item["model_id"],
            "previous": item["previous"], "review": item.get("review")}


# --- start page ------------------------------------------------------------------------

def _filter_args(query: str) -> dict:
    args = parse_qs(query or "", keep_blank_values=False)
    return {k: (v if len(v) > 1 else v[0]) for k, v in args.items() if k not in jobs.FILTER_IGNORED}


def _columns_from_form(form: dict) -> list[dict]:
    out = []
    for i in range(50):
        name = (form.get(f"col-{i}-name") or [""])[0].strip()
        if f"col-{i}-name" not in form:
            break
        if not name:
            continue
        column = {"name": name, "type": (form.get(f"col-{i}-type") or ["text"])[0],
                  "description": (form.get(f"col-{i}-description") or [""])[0].strip()}
        choices = (form.get(f"col-{i}-choices") or [""])[0].strip()
        if column["type"] == "choice":
            column["choices"] = [c.strip() for c in choices.split(",") if c.strip()]
        out.append(column)
    return out


def _number(value: str | None, kind=int, default=None):
    value = (value or "").strip()
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        raise JobError(f"{value!r} is not a number.") from None


def _request_from_form(database: str, table: str, form: dict) -> JobRequest:
    one = lambda k, d="": (form.get(k) or [d])[0]  # noqa: E731
    return JobRequest(
        database=database, table=table, source_columns=form.get("source") or [],
        spec={"columns": _columns_from_form(form)}, instructions=one("instructions"),
        model_id=one("model") or None, selection={"args": _filter_args(one("filter"))},
        row_limit=_number(one("row_limit"), int), sample_size=_number(one("sample_size"), int, 20),
        write_mode=one("write_mode", "review") or "review", max_cost=_number(one("max_cost"), float),
        linked_table=one("linked_table") or None, url_columns=_url_columns_from_form(form),
    )


def _url_columns_from_form(form: dict) -> dict | None:
    """The source columns the journalist marked as holding image or PDF URLs
    (``url-<column>``: ``image`` / ``pdf``; blank: text, file URLs found by their ending)."""
    marked = {}
    for name in form.get("source") or []:
        kind = (form.get(f"url-{name}") or [""])[0]
        if kind:
            marked[name] = kind  # an unknown kind is refused by jobs.prepare, with what to pick
    return marked or None


async def start_page(datasette, request):
    database = tilde_decode(request.url_vars["database"])
    table = tilde_decode(request.url_vars["table"])
    actor = request.actor
    form: dict = {}
    if request.method == "POST":
        form = parse_qs((await request.post_body()).decode("utf-8", "replace"), keep_blank_values=True)
        query = (form.get("filter") or [""])[0]
    else:
        query = request.query_string
    args = _filter_args(query)
    linked = bool((form.get("linked_table") or [""])[0].strip())
    try:
        await check_may_enrich(datasette, actor, database, table, linked=linked, where="_where" in args)
    except JobError as e:
        _raise(e)
        return Response.html(str(e), status=e.status)
    db = datasette.databases[database]
    if not await db.table_exists(table):
        raise NotFound(f"There is no table called {table!r} in {database!r}.")
    columns = await jobs.table_columns(db, table)
    error = estimate = None
    if request.method == "POST":
        try:
            req = _request_from_form(database, table, form)
            if (form.get("action") or ["estimate"])[0] == "start":
                job_id = await jobs.create(datasette, actor, req)
                return Response.redirect(job_url(datasette, job_id))
            estimate = await jobs.estimate(datasette, req)
        except JobError as e:
            error = str(e)
    gateway = await llm_gateway(datasette)
    context = {
        "database": database, "table": table, "columns": columns, "filter": query,
        "filter_text": urlencode(sorted(args.items()), doseq=True),
        "form": {k: v for k, v in form.items()}, "chosen_sources": form.get("source") or [],
        "url_kinds": [("", "text"), ("image", "image URLs"), ("pdf", "PDF URLs")],
        "builder": _columns_from_form(form) + [{}] * BUILDER_ROWS, "builder_rows": BUILDER_ROWS,
        "types": COLUMN_TYPES, "models": [m.model_id for m in gateway.chat_models()],
        "estimate": estimate, "error": error, "table_url": datasette.urls.table(database, table),
        "action_url": start_url(datasette, database, table),
    }
    context["builder"] = context["builder"][:max(BUILDER_ROWS, len(_columns_from_form(form)) + 2)]
    return Response.html(await datasette.render_template("llm_extract_enrich_start.html", context, request=request),
                         status=400 if error else 200)


# --- job page, JSON, actions ------------------------------------------------------------

#: Items shown in the review grid at once (undecided ones first).
REVIEW_ITEMS = 200


async def review_grid(datasette, job: dict) -> dict:
    """The review grid of a job (``enrich_review.grid``): the same list when the page is shown
    and when its form comes back, so the form's row numbers map to the same items."""
    state = await state_db(datasette)
    reviewing = job["status"] == "review" or (job["write_mode"] == "review" and job["rows_done"])
    if not reviewing:
        return {"rows": [], "documents": [], "more_items": False}
    shown = await store.review_items(state, job["id"], sample_only=job["phase"] == "sample",
                                     limit=REVIEW_ITEMS + 1)
    more, shown = len(shown) > REVIEW_ITEMS, shown[:REVIEW_ITEMS]
    db = datasette.databases[job["database_name"]]
    texts = await jobs.source_documents(db, job["table_name"], job["source_columns"], [i["row_id"] for i in shown])

    def row_href(item):
        pk = item["pk"] if item["pk"] else [item["row_id"]]
        return datasette.urls.row(job["database_name"], job["table_name"],
                                  ",".join(tilde_encode(str(v)) for v in pk))

    editable = job["status"] in jobs.WRITABLE
    rows, documents = enrich_review.grid(shown, texts, job["schema"]["columns"], linked=bool(job["linked_table"]),
                                         editable=editable, row_href=row_href, model_id=job["model_id"])
    return {"rows": rows, "documents": documents, "more_items": more}


async def _job_context(datasette, request, job: dict) -> dict:
    grid = await review_grid(datasette, job)
    rows = grid["rows"]
    return {
        "job": job_summary(datasette, job), **grid, "columns": job["schema"]["columns"],
        "spec": TableSpec(**job["schema"]), "active": job["status"] in store.ACTIVE,
        "reviewable": any(r["editable"] for r in rows), "decisions": review.DECISIONS,
        "undecided": sum(1 for r in rows if r["editable"] and r["default_decision"] == "pending"),
        "row_errors": {}, "error": None, "csrf": _csrf(request),
        "action_url": lambda a: job_url(datasette, job["id"], f"/{a}"),
        "table_url": datasette.urls.table(job["database_name"], job["table_name"]),
        "linked_url": datasette.urls.table(job["database_name"], job["linked_table"]) if job["linked_table"] else None,
        "message": request.args.get("message"), "fmt_time": lambda t: time.strftime(
            "%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "",
    }


async def _render_job(datasette, request, context: dict, status: int = 200) -> Response:
    return Response.html(await datasette.render_template("llm_extract_enrich_job.html", context, request=request),
                         status=status)


async def job_page(datasette, request):
    try:
        job = await job_for(datasette, request.actor, request.url_vars["job_id"])
    except JobError as e:
        _raise(e)
    return await _render_job(datasette, request, await _job_context(datasette, request, job))


def _keep_submitted(context: dict, form: dict) -> None:
    """The page shown again after a refused form keeps the reviewer's decisions and values."""
    for row in context["rows"]:
        idx = row["idx"]
        decision = (form.get(f"row-{idx}-decision") or [None])[0]
        if decision and row["editable"]:
            row["default_decision"] = decision
        for cell in row["cells"]:
            key = f"row-{idx}-col-{cell['n']}"
            if key in form and row["editable"]:
                cell["text"] = form[key][0]
                cell["control"] = review.control(context["columns"][cell["n"]], form[key][0])
    context["undecided"] = sum(1 for r in context["rows"] if r["editable"] and r["default_decision"] == "pending")


async def job_json(datasette, request):
    try:
        job = await job_for(datasette, request.actor, request.url_vars["job_id"])
    except JobError as e:
        return Response.json({"ok": False, "error": str(e)}, status=e.status)
    state = await state_db(datasette)
    data = job_summary(datasette, job)
    if request.args.get("_items"):
        data["items"] = [_item_view(i) for i in await store.items(
            state, job["id"], limit=min(int(request.args.get("_size") or 200), 2000),
            offset=int(request.args.get("_offset") or 0))]
    return Response.json({"ok": True, **data})


async def _read_body(request) -> tuple[dict, bool]:
    """(fields, is_json): a JSON object or an urlencoded form (lists of values)."""
    raw = await request.post_body()
    if len(raw) > MAX_JSON:
        raise JobError("The request is too large.", 413)
    if bodies.media_type(request.headers.get("content-type")) == bodies.JSON_TYPE:
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise JobError("The body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise JobError("Send a JSON object.")
        return data, True
    form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    # 0.65: these routes skip asgi-csrf (permissions.BODY_ROUTES), so the form's token is checked here
    if not permissions.IS_V1 and not bodies.form_token_ok(request.scope.get("headers") or [], request.cookies,
                                                          (form.get("csrftoken") or [""])[0]):
        raise JobError(bodies.FORM_TOKEN_MESSAGE, 403)
    return form, False


async def job_action(datasette, request):
    if request.method != "POST":
        return Response.json({"ok": False, "error": "POST to this address."}, status=405)
    action = request.url_vars["action"]
    actor = request.actor
    is_json = False
    job = None
    data: dict = {}
    try:
        data, is_json = await _read_body(request)
        job = await job_for(datasette, actor, request.url_vars["job_id"])
        one = (lambda k, d=None: data.get(k, d)) if is_json else (lambda k, d=None: (data.get(k) or [d])[0])
        await check_may_enrich(datasette, actor, job["database_name"], job["table_name"])
        result: dict = {}
        if action == "pause":
            await jobs.pause(datasette, job)
        elif action == "cancel":
            await jobs.cancel(datasette, job)
        elif action == "resume":
            await jobs.resume(datasette, actor, job, max_cost=_number(str(one("max_cost") or ""), float))
        elif action == "rest":
            await jobs.run_rest(datasette, actor, job, one("write_mode", "review") or "review")
        elif action in ("review", "write"):
            spec = TableSpec(**job["schema"])
            if is_json:
                decisions = {int(k): (v.get("decision", "accepted"), v.get("values"))
                             for k, v in (data.get("decisions") or {}).items()}
                result = await jobs.review(datasette, job, decisions)
            else:
                grid = await review_grid(datasette, job)
                try:
                    posted = enrich_review.form_decisions(data, grid["rows"], spec.column_names())
                except enrich_review.ReviewError as e:
                    raise JobError(str(e), e.status) from None
                result = await jobs.review_grid(datasette, job, grid["rows"], posted)
            if action == "write":
                result.update(await jobs.write_accepted(datasette, await store.get_job(await state_db(datasette),
                                                                                        job["id"])))
        elif action == "undo":
            result = await jobs.undo(datasette, actor, job)
        message = {"pause": "Pausing: rows in flight finish first.", "cancel": "Cancelled.",
                   "resume": "Resumed.", "rest": "Running the rest.", "review": "Decisions saved.",
                   "write": f"{result.get('written', 0)} row(s) written.",
                   "undo": f"Undone: {result.get('restored', 0)} row(s) restored"
                           + (f", {len(result.get('skipped') or [])} changed since and left alone."
                              if result.get("skipped") else ".")}[action]
    except JobError as e:
        if is_json or bodies.media_type(request.headers.get("content-type")) == bodies.JSON_TYPE:
            return Response.json({"ok": False, "error": str(e)}, status=e.status)
        _raise(e)
        if action in ("review", "write") and job is not None:
            # the review is shown again with the reason, the reviewer's choices kept
            context = await _job_context(datasette, request, await store.get_job(await state_db(datasette), job["id"]))
            context.update(error=str(e), row_errors=e.row_errors)
            if e.row_errors:  # the rows are the ones the form showed: its choices go back on them
                _keep_submitted(context, data)
            return await _render_job(datasette, request, context, status=e.status)
        return Response.redirect(job_url(datasette, request.url_vars["job_id"]) + "?" + urlencode({"message": str(e)}))
    if is_json:
        return Response.json({"ok": True, "message": message, **result})
    return Response.redirect(job_url(datasette, job["id"]) + "?" + urlencode({"message": message}))


async def api_create(datasette, request):
    """POST JSON: {database, table, source_columns, columns | schema, instructions, model, filter,
    where, row_limit, sample_size, write_mode, max_cost, linked_table, estimate_only}."""
    if request.method != "POST":
        return Response.json({"ok": False, "error": "POST a JSON job here."}, status=405)
    actor = request.actor
    try:
        data, is_json = await _read_body(request)
        if not is_json:
            raise JobError("Send the job as JSON (content-type: application/json).", 415)
        database, table = data.get("database"), data.get("table")
        if not isinstance(database, str) or not isinstance(table, str):
            raise JobError('Give "database" and "table" as strings.')
        selection = {"args": data.get("filter") or {}, "where": data.get("where")}
        await check_may_enrich(datasette, actor, database, table, linked=bool(data.get("linked_table")),
                               where=bool(data.get("where")) or "_where" in selection["args"])
        req = JobRequest(
            database=database, table=table, source_columns=list(data.get("source_columns") or []),
            spec=data.get("schema") or {"columns": data.get("columns") or []},
            instructions=data.get("instructions") or "", model_id=data.get("model"), selection=selection,
            row_limit=data.get("row_limit"), sample_size=int(data.get("sample_size", 20)),
            write_mode=data.get("write_mode") or "review", max_cost=data.get("max_cost"),
            linked_table=data.get("linked_table"), template=data.get("template"), batch=bool(data.get("batch")),
            url_columns=data.get("url_columns") or None,
        )
        if data.get("estimate_only"):
            return Response.json({"ok": True, **await jobs.estimate(datasette, req)})
        job_id = await jobs.create(datasette, actor, req)
    except JobError as e:
        return Response.json({"ok": False, "error": str(e)}, status=e.status)
    except (TypeError, ValueError) as e:
        return Response.json({"ok": False, "error": f"Bad value in the job: {e}"}, status=400)
    return Response.json({"ok": True, "id": job_id, "url": job_url(datasette, job_id)}, status=201)


# --- table banner ----------------------------------------------------------------------

async def _banner_jobs(datasette, actor, database: str, table: str) -> list[dict]:
    if not actor or database == STATE_DB_NAME or database not in datasette.databases:
        return []
    if not await permissions.allowed(datasette, actor, "llm-extract", database, table):
        return []
    state = await state_db(datasette)
    found = await store.list_jobs(state, database=database, table=table, actor_id=str(actor.get("id")),
                                  everyone=permissions.is_root(actor), limit=5)
    return [job_summary(datasette, j) for j in found if j["status"] in ("pending", "running", "paused", "review",
                                                                          "batch")]


async def banner_html(datasette, actor, database: str, table: str, request=None) -> str:
    """The table page's banner: the viewer's unfinished jobs on this table, with progress."""
    shown = await _banner_jobs(datasette, actor, database, table)
    if not shown:
        return ""
    return await datasette.render_template("llm_extract_enrich_banner.html", {"jobs": shown}, request=request)


async def banner_url(datasette, actor, database: str, table: str) -> str | None:
    """Where 0.65's banner script fetches the banner, when there is one to show."""
    if not await _banner_jobs(datasette, actor, database, table):
        return None
    return datasette.urls.path(f"{PREFIX}/banner/{tilde_encode(database)}/{tilde_encode(table)}")


async def banner_view(datasette, request):
    database = tilde_decode(request.url_vars["database"])
    table = tilde_decode(request.url_vars["table"])
    if not request.actor or not await permissions.allowed(datasette, request.actor, "llm-extract", database, table):
        raise Forbidden("You do not have permission to run LLM extraction on this table.")
    return Response.html(await banner_html(datasette, request.actor, database, table, request))
