"""The JSON side of the extraction plugin: estimate, runs API, evaluation-set
export and templates. Same permission checks as the pages (``service``)."""

from __future__ import annotations

import base64
import binascii
import json
import re

from datasette import Forbidden, NotFound, Response
from datasette.utils import tilde_decode

from datasette_llm_core import bodies, permissions
from datasette_llm_core.denied import denied_message
from datasette_llm_core.state import state_db

from . import runs, service
from .schema import SchemaError, validate_table_spec
from .service import StartRequest, UserError
from .views import (
    PREFIX,
    _columns_from_form,
    _do_action,
    _json_error,
    _json_limit,
    _read_form,
    _read_json,
    _spec_from_columns,
    may_extract_somewhere,
    run_url,
)


async def estimate_view(datasette, request, receive):
    """POST the start form (multipart or JSON): tokens and cost of the run, nothing written."""
    if request.method != "POST":
        return _json_error("POST the run's form or JSON here.", 405)
    actor = request.actor
    form = None
    try:
        await _check_may_extract(datasette, actor)  # before reading a byte of the body
        if bodies.media_type(request.headers.get("content-type")) == bodies.JSON_TYPE:
            data = await _read_json(request, receive, _json_limit(datasette))
            req = await _start_request_from_json(datasette, actor, data)
        else:
            form = await _read_form(datasette, request, receive)
            database = form.get("database")
            table = form.get("table")
            new_table = form.get("new_table") == "1"
            req = StartRequest(
                database=database, table=table, new_table=new_table,
                spec=_spec_from_columns(_columns_from_form(form)), text=form.get("text"),
                uploads=[(u.filename, u.content_type, u.data) for u in form.files.get("files", [])],
                instructions=form.get("instructions"), model_id=form.get("model") or None,
                use_examples=form.get("use_examples") == "on", read_as=form.get("read_as") or "auto",
            )
        return Response.json({"ok": True, **await service.estimate_for(datasette, actor, req)})
    except UserError as e:
        return _json_error(str(e), e.status)
    except Forbidden as e:  # the form's token
        return _json_error(str(e), 403)
    finally:
        if form is not None:
            form.close()


async def _check_may_extract(datasette, actor) -> None:
    """403 for an actor who may not extract anywhere: checked before a body is read."""
    if not await may_extract_somewhere(datasette, actor):
        raise UserError(denied_message(actor, "llm-extract"), 403)


# --- JSON API ------------------------------------------------------------------------------

async def _start_request_from_json(datasette, actor, data: dict) -> StartRequest:
    database = data.get("database")
    table = data.get("table")
    if not isinstance(database, str) or not isinstance(table, str):
        raise UserError('Give "database" and "table" as strings.')
    new_table = bool(data.get("create"))
    # Permission before existence: a refused actor gets the same answer for a
    # table (or database) that exists and one that does not.
    # A missing database answers like a private one, except to root, who sees every database.
    if (database not in datasette.databases and not permissions.is_root(actor)) or not await permissions.allowed(
        datasette, actor, "llm-extract", database, None if new_table else table
    ):
        raise UserError(denied_message(actor, "llm-extract", database, None if new_table else table), 403)
    spec = data.get("schema")
    if spec is None and not new_table:
        if database not in datasette.databases:
            raise UserError(f"There is no database called {database!r}.", 404)
        spec = service.spec_to_dict(await service.spec_for_table(datasette, database, table))
        columns = data.get("columns")
        if isinstance(columns, list):
            spec["columns"] = [c for c in spec["columns"] if c["name"] in columns]
            spec["key_columns"] = [k for k in spec["key_columns"] if k in columns]
    if spec is None:
        raise UserError('A new table needs a "schema": {"columns": [{"name": ..., "type": ...}]}.')
    text = data.get("text") or ""
    if not isinstance(text, str):
        raise UserError('"text" must be a string.')
    return StartRequest(
        database=database, table=table, new_table=new_table, spec=spec, text=text,
        uploads=_json_files(data.get("files")),
        instructions=str(data.get("instructions") or ""), model_id=data.get("model") or None,
        use_examples=bool(data.get("use_examples")), direct_insert=bool(data.get("direct_insert")),
        read_as=str(data.get("read_as") or "auto"),
    )


def _json_files(files) -> list[tuple[str, str, bytes]]:
    """``files: [{name, content_type?, data_base64}]`` -> uploads (checked like form uploads)."""
    if files is None:
        return []
    if not isinstance(files, list):
        raise UserError('"files" must be a list of {"name", "content_type", "data_base64"} objects.')
    out = []
    for i, f in enumerate(files, 1):
        if not isinstance(f, dict) or not isinstance(f.get("data_base64"), str):
            raise UserError(f'File {i}: give "name" and the file\'s bytes as "data_base64".')
        try:
            data = base64.b64decode(f["data_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise UserError(f"File {i}: data_base64 is not valid base64.") from None
        out.append((str(f.get("name") or f"file-{i}"), str(f.get("content_type") or ""), data))
    return out


def _run_json(datasette, run: dict, rows: list[dict] | None = None) -> dict:
    keep = ("id", "actor_id", "created_at", "finished_at", "database_name", "table_name", "new_table",
            "model_id", "prompt_version", "instructions", "status", "error", "chunks_total", "chunks_done",
            "chunks_failed", "input_tokens", "output_tokens", "cost", "inserted_count", "inserted_at",
            "undone_at")
    out = {k: run.get(k) for k in keep}
    out["new_table"] = bool(out["new_table"])
    out["schema"] = run["schema"]
    out["urls"] = {"page": run_url(datasette, run["id"]), "events": run_url(datasette, run["id"], "/events"),
                   "api": datasette.urls.path(f"{PREFIX}/api/runs/{run['id']}")}
    if rows is not None:
        out["rows"] = [
            {"idx": r["idx"], "values": r["values"], "edited": r["edited"], "source_quote": r["source_quote"],
             "quote_found": r["quote_found"], "valid": r["valid"], "errors": r["errors"],
             "duplicate": r["duplicate"], "decision": r["decision"], "inserted_pk": r["inserted_pk"],
             "document": r["document"], "reask": r.get("reask"), "replaced": r.get("replaced"),
             "reask_note": r.get("reask_note"), "quote_page": r.get("quote_page"),
             "quote_boxes": r.get("quote_boxes")}
            for r in rows
        ]
    return out


async def api_start(datasette, request, receive):
    if request.method != "POST":
        return _json_error("POST a JSON object to start a run.", 405)
    try:
        await _check_may_extract(datasette, request.actor)  # before reading a byte of the body
        data = await _read_json(request, receive, _json_limit(datasette))
        req = await _start_request_from_json(datasette, request.actor, data)
        run_id = await service.start_run(datasette, request.actor, req)
    except UserError as e:
        return _json_error(str(e), e.status)
    state = await state_db(datasette)
    return Response.json({"ok": True, **_run_json(datasette, await runs.get_run(state, run_id))}, status=201)


async def api_run(datasette, request):
    try:
        run = await service.run_for(datasette, request.actor, request.url_vars["run_id"])
    except UserError as e:
        return _json_error(str(e), e.status)
    state = await state_db(datasette)
    return Response.json({"ok": True, **_run_json(datasette, run, await runs.get_rows(state, run["id"]))})


def _decisions_from_json(data: dict, rows: list[dict]) -> dict[int, dict]:
    if data.get("accept") == "all_valid":
        return {r["idx"]: {"decision": "accept" if r["valid"] and not r["duplicate"] else "reject",
                           "values": None} for r in rows}
    given = data.get("rows")
    if not isinstance(given, dict):
        raise UserError('Give "rows": {"<row idx>": {"decision": "accept"|"reject", "values": {...}}} '
                        'or "accept": "all_valid".')
    decisions = {}
    for key, value in given.items():
        try:
            idx = int(key)
        except ValueError:
            raise UserError(f"Row key {key!r} is not a row number.") from None
        if isinstance(value, str):
            value = {"decision": value}
        if not isinstance(value, dict):
            raise UserError(f"Row {key}: give an object with a decision.")
        values = value.get("values")
        if values is not None and not isinstance(values, dict):
            raise UserError(f"Row {key}: values must be an object.")
        decisions[idx] = {"decision": value.get("decision"), "values": values}
    return decisions


async def api_run_action(datasette, request, receive):
    if request.method != "POST":
        return _json_error("POST to perform this action.", 405)
    action = request.url_vars["action"]
    try:
        run = await service.run_for(datasette, request.actor, request.url_vars["run_id"],
                                    write=action in ("insert", "resume", "undo"))
        limit = bodies.REVIEW_JSON if action == "insert" else bodies.SMALL_JSON
        data = await _read_json(request, receive, limit)
        decisions = None
        if action == "insert":
            state = await state_db(datasette)
            decisions = _decisions_from_json(data, await runs.get_rows(state, run["id"]))
        result = await _do_action(datasette, request, run, action, decisions,
                                  share_examples=data.get("share_examples") is True)
    except UserError as e:
        return _json_error(str(e), e.status, row_errors={str(k): v for k, v in (e.row_errors or {}).items()})
    except (Forbidden, NotFound) as e:
        return _json_error(str(e), 403 if isinstance(e, Forbidden) else 404)
    return Response.json({"ok": True, **result})


# --- examples export and templates ------------------------------------------------------------

async def examples_export(datasette, request):
    """Reviewed rows as JSONL in the evaluate command's gold format (one line per source document)."""
    database = tilde_decode(request.url_vars["database"])
    table = tilde_decode(request.url_vars["table"])
    if database not in datasette.databases:
        raise NotFound("No such database.")
    if not await permissions.allowed(datasette, request.actor, "llm-extract", database, table):
        raise Forbidden(denied_message(request.actor, "llm-extract", database, table))
    state = await state_db(datasette)
    actor = request.actor
    # The actor's own reviewed rows and those whose owners shared them; root gets all.
    documents = await runs.gold_documents(state, database, table,
                                          actor_id=str(actor.get("id")) if actor else None,
                                          everyone=permissions.is_root(actor))
    body = "".join(json.dumps(d, ensure_ascii=False, default=str) + "\n" for d in documents)
    filename = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{database}-{table}-examples.jsonl")
    return Response(body, content_type="application/x-ndjson; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{filename}"'})


async def save_template(datasette, request, receive):
    if request.method != "POST":
        return _json_error("POST a template.", 405)
    actor = request.actor
    try:
        if not actor:
            raise UserError("Sign in to save templates.", 403)
        await _check_may_extract(datasette, actor)
        data = await _read_json(request, receive, bodies.TEMPLATE_JSON)
        name = str(data.get("name") or "").strip()
        if not name:
            raise UserError("Give the template a name.")
        try:
            spec = validate_table_spec(data.get("schema"))
        except SchemaError as e:
            raise UserError(str(e)) from None
        state = await state_db(datasette)
        try:
            template_id = await runs.save_template(
                state, name[:100], str(actor.get("id")), bool(data.get("shared")),
                spec.model_dump(), str(data.get("instructions") or ""))
        except runs.TemplateLimitError as e:
            raise UserError(str(e), e.status) from None
    except UserError as e:
        return _json_error(str(e), e.status)
    return Response.json({"ok": True, "id": template_id}, status=201)


async def delete_template(datasette, request, receive):
    """``POST /-/llm-extract/templates/<id>/delete``: its owner, or root."""
    if request.method != "POST":
        return _json_error("POST to delete the template.", 405)
    actor = request.actor
    try:
        if not actor:
            raise UserError("Sign in to delete templates.", 403)
        await _read_json(request, receive, bodies.SMALL_JSON)
        state = await state_db(datasette)
        template = await runs.get_template(state, int(request.url_vars["template_id"]))
        visible = template is not None and (
            template["shared"] or template["owner_id"] == str(actor.get("id")) or permissions.is_root(actor))
        if not visible:
            raise UserError("No such template.", 404)
        if template["owner_id"] != str(actor.get("id")) and not permissions.is_root(actor):
            raise UserError("Only the template's owner (or root) can delete it.", 403)
        await runs.delete_template(state, template["id"])
    except UserError as e:
        return _json_error(str(e), e.status)
    return Response.json({"ok": True, "deleted": template["id"]})
