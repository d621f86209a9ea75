"""Page images of kept documents, and provenance cards for readers of extracted rows.

- ``/-/llm-extract/runs/<run>/documents/<d>/pages/<p>``: an image as uploaded, or a
  PDF page rendered server-side (pypdfium2), for those who may see the run (its
  owner or root).
- ``/-/llm-extract/provenance/<db>/<table>/<pk>[.json]``: where one inserted row
  came from, for anyone who may view the row, within ``public_provenance``
  (``off``: owner and root only; ``quote``: document name, page, quote, model,
  prompt version, dates, whether a reviewer changed it; ``document``: also the
  page image and the page's text). Actor ids only with ``public_provenance_actors``.
- Column descriptions typed in the column builder, on the table page (0.65: the
  ``get_metadata`` hook from a cache filled at startup and on insert; 1.0: the
  internal metadata tables).
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections import OrderedDict

from datasette import Forbidden, NotFound, Response
from datasette.utils import tilde_decode, tilde_encode

from datasette_llm_core import permissions
from datasette_llm_core.sql import quote_identifier
from datasette_llm_core.state import STATE_DB_NAME, state_db

from . import kept, runs, service
from .pages import PAGE_BREAK, render_pdf_page
from .settings import extract_settings

PREFIX = "/-/llm-extract"
_RENDERED: "OrderedDict[tuple, bytes]" = OrderedDict()
_RENDER_CACHE = 24
_IMAGE_HEADERS = {"cache-control": "private, max-age=300", "x-content-type-options": "nosniff"}


# --- page images ------------------------------------------------------------------

def page_url(datasette, run_id: str, document: int, page: int) -> str:
    return datasette.urls.path(f"{PREFIX}/runs/{run_id}/documents/{document}/pages/{page}")


async def _page_response(state, run_id: str, document: dict, page: int) -> Response:
    found = await kept.get_file(state, run_id, document["idx"])
    if found is None:
        raise NotFound("This file is no longer kept (see keep_documents_days), or was never kept.")
    media_type, data = found
    if document["kind"] == "image":
        if page != 0:
            raise NotFound("An image has one page.")
        return Response(data, content_type=media_type, headers=_IMAGE_HEADERS)
    if document["kind"] != "pdf":
        raise NotFound("Only images and PDFs have pages.")
    key = (run_id, document["idx"], page)
    png = _RENDERED.get(key)
    if png is None:
        try:
            png, _, _ = await asyncio.to_thread(render_pdf_page, data, page)
        except IndexError as e:
            raise NotFound(f"No such page: {e}.") from None
        except Exception:
            raise NotFound("This page could not be rendered.") from None
        _RENDERED[key] = png
        while len(_RENDERED) > _RENDER_CACHE:
            _RENDERED.popitem(last=False)
    else:
        _RENDERED.move_to_end(key)
    return Response(png, content_type="image/png", headers=_IMAGE_HEADERS)


async def run_page_image(datasette, request):
    """A page of a run's document, for those who may see the run."""
    try:
        run = await service.run_for(datasette, request.actor, request.url_vars["run_id"])
    except service.UserError as e:
        if e.status == 403:
            raise Forbidden(str(e)) from None
        raise NotFound(str(e)) from None
    state = await state_db(datasette)
    document = int(request.url_vars["document"])
    docs = {d["idx"]: d for d in await runs.get_documents(state, run["id"])}
    if document not in docs:
        raise NotFound("No such document in this run.")
    return await _page_response(state, run["id"], docs[document], int(request.url_vars["page"]))


async def pages_context(datasette, run: dict, documents: list[dict]) -> dict:
    """What the run page's page viewer needs: each document's pages and each row's place."""
    state = await state_db(datasette)
    files = await kept.files_of_run(state, run["id"])
    read = await kept.pages_of_run(state, run["id"])
    not_kept = run["options"].get("files_not_kept") or {}
    viewer_docs = []
    for d in documents:
        if d["kind"] not in ("image", "pdf"):
            continue
        if d["kind"] == "pdf":
            pages = len((d["text"] or "").split(PAGE_BREAK)) if d["text"] else 1
        else:
            pages = 1
        info = files.get(d["idx"])
        if info is None:
            why = not_kept.get(str(d["idx"])) or "it was uploaded before files were kept"
        elif info["expired"]:
            why = "it was deleted after the keep_documents_days period"
        else:
            why = None
        layouts = read.get(d["idx"], [])
        viewer_docs.append({
            "idx": d["idx"], "name": d["name"], "kind": d["kind"], "pages": pages,
            "kept": why is None, "why_not": why,
            "url": datasette.urls.path(f"{PREFIX}/runs/{run['id']}/documents/{d['idx']}/pages/"),
            "ocr_pages": [p.page for p in layouts if p.source == "ocr"],
        })
    places = await kept.row_places(state, run["id"])
    return {"page_documents": viewer_docs, "row_places": {str(k): v for k, v in places.items()},
            "kept_documents": {d["idx"] for d in viewer_docs if d["kept"]}}


# --- provenance cards ----------------------------------------------------------------

async def _row_and_record(datasette, request):
    """(db name, table, row dict, pk values, provenance record) or NotFound; checks the actor may view the row."""
    database = tilde_decode(request.url_vars["database"])
    table = tilde_decode(request.url_vars["table"])
    pk_path = request.url_vars["pks"]
    if database not in datasette.databases or database == STATE_DB_NAME:
        raise NotFound("No such row.")
    if not await permissions.can_view(datasette, request.actor, database, table):
        # the same answer as for a row that does not exist: nothing is revealed
        raise NotFound("No such row.")
    db = datasette.databases[database]
    if not await db.table_exists(table):
        raise NotFound("No such row.")
    pks = await db.primary_keys(table) or ["rowid"]
    values = [tilde_decode(v) for v in pk_path.split(",")]
    if len(values) != len(pks):
        raise NotFound("No such row.")
    where = " and ".join(f"{quote_identifier(pk)} = ?" for pk in pks)
    select = ", ".join(quote_identifier(pk) for pk in pks)
    result = await db.execute(
        f"select {select} from {quote_identifier(table)} where {where} limit 1", values  # noqa: S608
    )
    row = result.first()
    if row is None:
        raise NotFound("No such row.")
    pk = list(row)
    state = await state_db(datasette)
    found = await state.execute(
        "select * from llm_extract_provenance where database_name = ? and table_name = ? and row_pk = ?",
        [database, table, json.dumps(pk)],
    )
    record = found.first()
    if record is None:
        raise NotFound("This row was not inserted by an extraction run, or its run was undone.")
    return database, table, pk, dict(record)


def _level(datasette, actor, run: dict) -> str:
    """What this actor may see of a row's provenance: "run" (owner/root), else the setting."""
    if service.is_owner_or_root(actor, run):
        return "run"
    return extract_settings(datasette).public_provenance


async def card_data(datasette, request) -> dict:
    database, table, pk, record = await _row_and_record(datasette, request)
    state = await state_db(datasette)
    run = await runs.get_run(state, record["run_id"])
    if run is None:
        raise NotFound("This row's extraction run was deleted.")
    level = _level(datasette, request.actor, run)
    if level == "off":
        raise NotFound("The provenance of this row is not published on this instance "
                       "(public_provenance: off).")
    found = (await state.execute(
        "select * from llm_extract_rows where run_id = ? and idx = ?", [run["id"], record["row_idx"]])).first()
    row = runs._row_out(found) if found is not None else None  # this row only: the others stay private
    docs = {d["idx"]: d for d in await runs.get_documents(state, run["id"])}
    document = docs.get(row["document"]) if row else None
    settings = extract_settings(datasette)
    show_actors = level == "run" or settings.public_provenance_actors
    names = [c["name"] for c in run["schema"]["columns"]]
    changes = []
    if row and row["edited"]:
        for name in names:
            before, after = row["values"].get(name), row["edited"].get(name)
            if before != after:
                changes.append({"column": name, "model": before, "reviewer": after})
    page = row.get("quote_page") if row else None
    card = {
        "ok": True, "database": database, "table": table, "pk": pk,
        "document": document["name"] if document else None,
        "document_kind": document["kind"] if document else None,
        "page": None if page is None else page + 1,
        "quote": record["quote"], "quote_found": row["quote_found"] if row else None,
        "model": run["model_id"], "prompt_version": run["prompt_version"],
        "extracted_at": run["created_at"], "reviewed_at": run["inserted_at"],
        "extracted_by": run["actor_id"] if show_actors else None,
        "reviewed_by": run["inserted_by"] if show_actors else None,
        "changed_by_reviewer": bool(changes), "changes": changes,
        "level": level,
    }
    if level in ("run", "document") and document is not None:
        text = document["text"] or ""
        if page is not None and text:
            pages = text.split(PAGE_BREAK)
            text = pages[page] if page < len(pages) else text
        card["page_text"] = text or None
        card["quote_boxes"] = row.get("quote_boxes") if row else None
        files = await kept.files_of_run(state, run["id"])
        info = files.get(document["idx"])
        if document["kind"] in ("image", "pdf") and info and not info["expired"]:
            card["page_image"] = datasette.urls.path(
                f"{PREFIX}/provenance/{request.url_vars['database']}/{request.url_vars['table']}/"
                f"{request.url_vars['pks']}/page")
    if level == "run":
        card["run"] = {"id": run["id"], "url": datasette.urls.path(f"{PREFIX}/runs/{run['id']}"),
                       "status": run["status"], "cost": run["cost"],
                       "input_tokens": run["input_tokens"], "output_tokens": run["output_tokens"]}
    card["row_url"] = datasette.urls.row(database, table, ",".join(tilde_encode(str(v)) for v in pk))
    card["table_url"] = datasette.urls.table(database, table)
    return card


async def provenance_card(datasette, request):
    card = await card_data(datasette, request)
    if request.url_vars.get("format") == "json":
        return Response.json(card)
    card["json_url"] = request.path + ".json"
    return Response.html(await datasette.render_template(
        "llm_extract_provenance.html", {"card": card, "fmt_time": _fmt_time}, request=request))


async def provenance_page_image(datasette, request):
    """The quote's page, for readers when public_provenance is "document" (and the run's owner)."""
    card = await card_data(datasette, request)
    if not card.get("page_image"):
        raise NotFound("The source page of this row is not published, or its file is no longer kept.")
    database, table, pk, record = await _row_and_record(datasette, request)
    state = await state_db(datasette)
    docs = await runs.get_documents(state, record["run_id"])
    found = await state.execute(
        "select document, quote_page from llm_extract_rows where run_id = ? and idx = ?",
        [record["run_id"], record["row_idx"]])
    row = found.first()
    document = next(d for d in docs if d["idx"] == row["document"])
    return await _page_response(state, record["run_id"], document, row["quote_page"] or 0)


def _fmt_time(ts) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts else ""


def card_url(datasette, database: str, table: str, pk_path: str) -> str:
    return datasette.urls.path(f"{PREFIX}/provenance/{tilde_encode(database)}/{tilde_encode(table)}/{pk_path}")


# --- column descriptions on table pages ------------------------------------------------

#: datasette -> {(database, table): {column: description}} (0.65's get_metadata is synchronous).
_DESCRIPTIONS: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def _described(spec: dict) -> dict:
    return {c["name"]: c["description"] for c in spec.get("columns", [])
            if c.get("name") and (c.get("description") or "").strip()}


async def publish_descriptions(datasette, database: str, table: str, spec: dict) -> None:
    """Show the spec's column descriptions on the table page (operator metadata wins)."""
    described = _described(spec)
    _DESCRIPTIONS.setdefault(datasette, {})[(database, table)] = described
    if permissions.IS_V1 and described:
        for column, text in described.items():
            try:
                current = await datasette.get_column_metadata(database, table, column)
                if not (current or {}).get("description"):
                    await datasette.set_column_metadata(database, table, column, "description", text)
            except Exception:  # pragma: no cover - an older alpha without these methods
                return


async def load_descriptions(datasette) -> None:
    """Startup: descriptions of every table the suite created or filled."""
    state = await state_db(datasette)
    rows = await state.execute("select database_name, table_name, schema_json from llm_extract_table_specs")
    for r in rows.rows:
        await publish_descriptions(datasette, r["database_name"], r["table_name"], json.loads(r["schema_json"]))


def get_metadata(datasette, database, table) -> dict:
    """0.65: descriptions as metadata (asked for with or without a database and table),
    for columns the operator's own metadata does not describe."""
    cached = _DESCRIPTIONS.get(datasette) or {}
    own = (getattr(datasette, "_metadata_local", None) or {}).get("databases") or {}
    out: dict = {}
    for (db_name, table_name), described in cached.items():
        if (database and db_name != database) or (table and table_name != table) or not described:
            continue
        own_columns = (((own.get(db_name) or {}).get("tables") or {}).get(table_name) or {}).get("columns") or {}
        columns = {k: v for k, v in described.items() if k not in own_columns}
        if columns:
            tables = out.setdefault("databases", {}).setdefault(db_name, {}).setdefault("tables", {})
            tables[table_name] = {"columns": columns}
    return out
