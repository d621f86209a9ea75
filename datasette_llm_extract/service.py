"""What the pages and the JSON API do, in one place: start a run, estimate
it, check access to a run, insert reviewed rows, undo, resume, discard.

Views parse requests and turn ``UserError`` into messages; everything here
validates completely before writing anything, so bad input writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from datasette_llm_core import calllog, permissions, testpoints
from datasette_llm_core.errors import BudgetError, CapabilityError, ConfigError, LLMSuiteError
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.sql import quote_identifier, quote_identifiers
from datasette_llm_core.state import state_db
from datasette_llm_core.workers import abandoned, lease_for, worker_id

from . import kept, runs, tasks
from .documents import Document, InputError, load_upload
from .engine import ExtractionJob, check_budget, estimate, plan_units, unit_key
from .pages import PageLayout
from .prompts import PROMPT_VERSION
from .reading import READ_MODES, OcrLimits, mode_for, pages_to_ocr
from .schema import (
    QUOTE_FIELD,
    SchemaError,
    TableSpec,
    row_model,
    spec_from_table,
    validate_row,
    validate_table_spec,
)
from .settings import ExtractSettings, extract_settings
from .writer import SQLITE_ERRORS, WriteError, delete_run_rows_fn, find_run_rows_fn, insert_rows_fn

MAX_EXISTING_KEYS = 200_000


class UserError(Exception):
    """Bad input or a state that forbids the action; nothing was written."""

    def __init__(self, message: str, status: int = 400, row_errors: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.row_errors = row_errors or {}


class NotFoundError(UserError):
    def __init__(self, message: str = "No such extraction run.") -> None:
        super().__init__(message, status=404)


class ForbiddenError(UserError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status=403)


# --- permissions ------------------------------------------------------------------

async def can_write(datasette, actor, action: str, database: str, table: str | None = None) -> bool:
    """Datasette's own create-table / insert-row check on either line.

    Datasette 1.0 has these actions natively. 0.65 has no write API and so no
    such permissions: a plugin may still answer them through
    ``permission_allowed``; when none does, the llm-extract grant (checked
    separately) is what decides.
    """
    if permissions.IS_V1:
        from datasette.resources import DatabaseResource, TableResource

        resource = TableResource(database, table) if table else DatabaseResource(database)
        return bool(await datasette.allowed(action=action, resource=resource, actor=actor))
    resource = (database, table) if table else database
    return bool(await datasette.permission_allowed(actor, action, resource=resource, default=True))


async def check_extract(datasette, actor, database: str, table: str | None, new_table: bool) -> None:
    """llm-extract plus create-table (new table) or insert-row (existing table)."""
    if not await permissions.allowed(datasette, actor, "llm-extract", database, None if new_table else table):
        raise ForbiddenError(
            "You do not have permission to run LLM extraction here. Ask an administrator "
            "to grant you llm-extract."
        )
    if new_table:
        if not await can_write(datasette, actor, "create-table", database):
            raise ForbiddenError("You do not have permission to create tables in this database.")
    elif not await can_write(datasette, actor, "insert-row", database, table):
        raise ForbiddenError("You do not have permission to insert rows into this table.")


def is_owner_or_root(actor, run: dict) -> bool:
    if permissions.is_root(actor):
        return True
    return bool(actor) and actor.get("id") is not None and str(actor.get("id")) == run["actor_id"]


async def run_for(datasette, actor, run_id: str, *, write: bool = False) -> dict:
    """The run, if ``actor`` may see it (404 for other users' runs, unless root)."""
    db = await state_db(datasette)
    run = await runs.get_run(db, run_id)
    if run is None or not is_owner_or_root(actor, run):
        raise NotFoundError()
    run = await tasks.check_alive(datasette, db, run)
    try:
        run = await settle(datasette, db, run)
    except STATE_WRITE_ERRORS:
        pass  # the state database is still unwritable: shown as it is, settled on a later visit
    database, table = run["database_name"], run["table_name"]
    if database not in datasette.databases:
        raise UserError(f"The database {database!r} of this run is no longer attached.", status=404)
    if write:
        creates = bool(run["new_table"]) and run["status"] not in ("inserted", "undone")
        await check_extract(datasette, actor, database, table, creates)
    elif not await permissions.allowed(
        datasette, actor, "llm-extract", database, None if run["new_table"] else table
    ):
        raise ForbiddenError("You no longer have permission to run LLM extraction on this table.")
    return run


# --- targets and specs ----------------------------------------------------------------

def _check_database(datasette, database: str):
    if database not in datasette.databases or database == runs_db_name():
        raise UserError(f"There is no database called {database!r}.", status=404)
    db = datasette.databases[database]
    if not db.is_mutable:
        raise UserError(
            f"The database {database!r} is read-only (immutable), so rows cannot be inserted into it. "
            "Open it without -i/--immutable, or extract into another database."
        )
    return db


def runs_db_name() -> str:
    from datasette_llm_core.state import STATE_DB_NAME

    return STATE_DB_NAME


def check_new_table_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise UserError("Give the new table a name.")
    if len(name) > 64:
        raise UserError("The table name is longer than 64 characters: shorten it.")
    if any(ord(ch) < 32 for ch in name):
        raise UserError("The table name contains control characters: use letters, digits, spaces or _.")
    lowered = name.lower()
    if lowered.startswith("sqlite_") or lowered.startswith("_llm"):
        raise UserError(f"Table names starting with {name[:7]!r} are reserved: pick another name.")
    return name


async def table_columns(db, table: str) -> list[dict]:
    result = await db.execute(f"pragma table_info({quote_identifier(table)})")
    return [dict(zip(["cid", "name", "type", "notnull", "dflt_value", "pk"], tuple(r), strict=False)) for r in result.rows]


def _metadata_descriptions(datasette, database: str, table: str) -> dict:
    try:
        meta = datasette.table_metadata(database, table) or {}
        return dict(meta.get("columns") or {})
    except Exception:
        return {}


async def spec_for_table(datasette, database: str, table: str) -> TableSpec:
    """Prefill for "extract into this table": columns, types, stored descriptions."""
    db = datasette.databases[database]
    if not await db.table_exists(table):
        raise UserError(f"There is no table called {table!r} in {database!r}.", status=404)
    columns = await table_columns(db, table)
    descriptions: dict[str, Any] = _metadata_descriptions(datasette, database, table)
    if permissions.IS_V1:
        for c in columns:
            try:
                meta = await datasette.get_column_metadata(database, table, c["name"])
            except Exception:
                meta = None
            if meta and meta.get("description"):
                descriptions[c["name"]] = meta["description"]
    stored = await runs.stored_table_spec(await state_db(datasette), database, table)
    for col in (stored or {}).get("columns", []):
        descriptions[col["name"]] = col
    try:
        spec = spec_from_table(columns, descriptions)
    except SchemaError as e:
        raise UserError(f"This table's columns cannot be used for extraction: {e}") from None
    remembered = [k for k in (stored or {}).get("key_columns", []) if k in spec.column_names()]
    if not spec.key_columns and remembered:
        # no primary key: the key columns an earlier run used keep duplicate detection on
        spec.key_columns = remembered
    return spec


def spec_to_dict(spec: TableSpec) -> dict:
    return spec.model_dump()


# --- starting a run ---------------------------------------------------------------

@dataclass
class StartRequest:
    database: str
    table: str
    new_table: bool
    spec: Any  # dict or TableSpec before validation
    text: str = ""
    uploads: list[tuple[str, str, bytes]] = field(default_factory=list)
    instructions: str = ""
    model_id: str | None = None
    use_examples: bool = False
    direct_insert: bool = False
    #: How images and PDFs reach the model: auto, vision, ocr or both (reading.py).
    read_as: str = "auto"


@dataclass
class Prepared:
    request: StartRequest
    spec: TableSpec
    job: ExtractionJob
    model: Any
    estimate: dict
    settings: ExtractSettings
    documents: list[Document]


def _documents(req: StartRequest, settings: ExtractSettings) -> list[Document]:
    docs: list[Document] = []
    text = req.text or ""
    if len(text) > settings.max_text_chars:
        raise UserError(
            f"The pasted text is {len(text):,} characters; the limit is {settings.max_text_chars:,}. "
            "Split it into several runs."
        )
    if text.strip():
        docs.append(Document.from_text(text))
    uploads = [u for u in req.uploads if u[0] or u[2]]
    if len(uploads) + len(docs) > settings.max_documents:
        raise UserError(f"At most {settings.max_documents} documents per run: remove some files.")
    for filename, content_type, data in uploads:
        try:
            docs.append(load_upload(filename, content_type, data, max_bytes=settings.max_upload_bytes,
                                    pdf_timeout=settings.pdf_timeout,
                                    pdf_max_decompressed=settings.pdf_max_decompressed_bytes))
        except InputError as e:
            raise UserError(str(e)) from None
    if not docs:
        raise UserError("Nothing to extract from: paste some text or add a file.")
    return docs


async def _documents_off_loop(req: StartRequest, settings: ExtractSettings) -> list[Document]:
    """``_documents`` in a thread: images are sniffed and PDFs read (in a child
    process, see ``documents.pdf_text``) without blocking other requests."""
    return await asyncio.to_thread(_documents, req, settings)


async def _existing_keys(datasette, database: str, table: str, spec: TableSpec) -> list:
    names = spec.key_columns or spec.column_names()
    db = datasette.databases[database]
    result = await db.execute(
        f"select {quote_identifiers(names)} from {quote_identifier(table)} limit {MAX_EXISTING_KEYS}",  # noqa: S608
        custom_time_limit=5000,
    )
    return [tuple(r) for r in result.rows]


async def _examples(datasette, database: str, table: str, spec: TableSpec, limit: int, actor=None) -> list[dict]:
    if limit <= 0:
        return []
    db = await state_db(datasette)
    # only the actor's own reviewed rows and those their owners shared (see README)
    found = await runs.examples_for_table(db, database, table, limit=limit, actor_id=_actor_id(actor),
                                          everyone=permissions.is_root(actor))
    names = spec.column_names()
    out = []
    for ex in found:
        after = ex["after"] or {}
        row = {n: after.get(n) for n in names}
        row[QUOTE_FIELD] = ex.get("source_quote") or ""
        out.append({"text": ex.get("source_quote") or "", "rows": [row]})
    return out


async def prepare(datasette, actor, req: StartRequest) -> Prepared:
    """Validate everything about a run without writing anything."""
    settings = extract_settings(datasette)
    db = _check_database(datasette, req.database)
    if req.new_table:
        req.table = check_new_table_name(req.table)
    await check_extract(datasette, actor, req.database, req.table, req.new_table)
    exists = await db.table_exists(req.table)
    if req.new_table and exists:
        raise UserError(
            f"A table called {req.table!r} already exists in {req.database!r}: pick another name, "
            "or use \"Extract data into this table\" from that table's menu."
        )
    if not req.new_table and not exists:
        raise UserError(f"There is no table called {req.table!r} in {req.database!r}.", status=404)
    try:
        spec = validate_table_spec(req.spec)
    except SchemaError as e:
        raise UserError(str(e)) from None
    if not req.new_table:
        present = {c["name"] for c in await table_columns(db, req.table)}
        missing = [c for c in spec.column_names() if c not in present]
        if missing:
            raise UserError(
                f"The table {req.table!r} has no column(s) {', '.join(map(repr, missing))}: "
                "extract only into columns the table has."
            )
    if req.direct_insert and not settings.direct_insert:
        raise UserError(
            "Inserting without review is switched off on this instance "
            "(extract: direct_insert: true enables it for trusted pipelines)."
        )
    documents = await _documents_off_loop(req, settings)
    if req.read_as not in READ_MODES:
        raise UserError(f"Choose how scans are read: one of {', '.join(READ_MODES)}.")
    try:
        model = (await llm_gateway(datasette)).chosen_chat_model("extract", req.model_id)
    except ConfigError as e:
        raise UserError(str(e)) from None
    existing = [] if req.new_table else await _existing_keys(datasette, req.database, req.table, spec)
    examples = (
        await _examples(datasette, req.database, req.table, spec, settings.max_examples, actor)
        if req.use_examples else []
    )
    job = ExtractionJob(
        spec=spec, instructions=req.instructions or "", documents=documents, model_id=model.model_id,
        examples=examples, concurrency=settings.concurrency, chunk_chars=settings.chunk_chars,
        overlap=settings.overlap, existing_keys=existing, max_cost=settings.max_cost_per_run,
        max_tokens=settings.max_tokens_per_run, stream_invalid=True,
        read_as=req.read_as, ocr_limits=_ocr_limits(settings),
    )
    try:
        est = estimate(job, model)
        check_budget(job, est)
    except (CapabilityError, BudgetError, ValueError) as e:
        raise UserError(str(e)) from None
    return Prepared(req, spec, job, model, est, settings, documents)


def _ocr_limits(settings: ExtractSettings) -> OcrLimits:
    return settings.ocr.limits()


def _document_record(doc: Document) -> dict:
    size = len(doc.data) if doc.data else len(doc.text.encode("utf-8"))
    return {
        "name": doc.name, "kind": doc.kind, "media_type": doc.media_type, "size": size,
        "sha256": doc.sha256,
        # text documents are kept whole; binary ones only hashed (PDFs keep their text layer
        # so quotes can be highlighted)
        "text": doc.text if doc.kind in ("text", "pdf") else None,
    }


async def start_run(datasette, actor, req: StartRequest) -> str:
    prepared = await prepare(datasette, actor, req)
    db = await state_db(datasette)
    run_id = runs.new_run_id()
    options = {
        "use_examples": req.use_examples, "examples": len(prepared.job.examples),
        "direct_insert": req.direct_insert, "estimate": prepared.estimate,
        "chunk_chars": prepared.job.chunk_chars, "overlap": prepared.job.overlap,
        "max_cost": prepared.job.max_cost, "max_tokens": prepared.job.max_tokens,
        "read_as": req.read_as,
    }
    await runs.create_run(
        db,
        {
            "id": run_id, "actor_id": str(actor["id"]) if actor and actor.get("id") is not None else None,
            "database_name": req.database, "table_name": req.table, "new_table": 1 if req.new_table else 0,
            "model_id": prepared.model.model_id, "prompt_version": PROMPT_VERSION,
            "instructions": req.instructions or "", "schema_json": json.dumps(spec_to_dict(prepared.spec)),
            "options_json": json.dumps(options), "status": "pending",
            "chunks_total": prepared.estimate.get("chunks", 0),
            "worker_id": worker_id(), "heartbeat_at": time.time(),
        },
        [_document_record(d) for d in prepared.documents],
    )
    settings = prepared.settings
    not_kept = await kept.keep_files(
        db, run_id, [(i, d.media_type, d.data) for i, d in enumerate(prepared.documents) if d.data],
        days=settings.keep_documents_days, max_bytes=settings.keep_documents_max_bytes,
        folder=settings.documents_folder)
    if not_kept:
        options["files_not_kept"] = {str(i): why for i, why in not_kept.items()}
        await runs.update_run(db, run_id, options_json=json.dumps(options))
    after = None
    if req.direct_insert:
        async def after():
            await insert_all_valid(datasette, actor, run_id)
    tasks.start(datasette, run_id, prepared.job, actor, timeout=prepared.settings.run_timeout, after=after)
    return run_id


async def estimate_for(datasette, actor, req: StartRequest) -> dict:
    prepared = await prepare(datasette, actor, req)
    settings = prepared.settings
    modes = [mode_for(d, req.read_as, prepared.model) for d in prepared.documents]
    return {
        **prepared.estimate,
        "documents": [{**d.summary(), "read_as": m, "ocr_pages": len(pages_to_ocr(d, m))}
                      for d, m in zip(prepared.documents, modes, strict=True)],
        "ocr_pages": sum(len(pages_to_ocr(d, m)) for d, m in zip(prepared.documents, modes, strict=True)),
        "max_cost_per_run": settings.max_cost_per_run,
        "max_tokens_per_run": settings.max_tokens_per_run,
        "examples": len(prepared.job.examples),
    }


# --- review and insert -----------------------------------------------------------------

def _clean_form_values(spec: TableSpec, values: dict) -> dict:
    out = {}
    for name in spec.column_names():
        value = values.get(name)
        if isinstance(value, str) and not value.strip():
            value = None
        out[name] = value
    return out


def can_review(run: dict, rows) -> bool:
    """Rows of this run can be decided and inserted now: it finished extracting and was
    not discarded, or its insert was undone, or some rows were left undecided at insert."""
    if run["status"] in runs.REVIEWABLE or run["status"] == "undone":
        return True
    return run["status"] == "inserted" and any(r["decision"] == "pending" for r in rows)


def _same(a: dict, b: dict, names: list[str]) -> bool:
    return all(a.get(n) == b.get(n) for n in names)


async def insert_reviewed(datasette, actor, run: dict, decisions: dict[int, dict]) -> dict:
    """Insert accepted rows in one transaction; record provenance and feedback.

    ``decisions`` maps row index to ``{"decision": "accept"|"reject"|"pending",
    "values": {...edited values...} | None}``. Raises ``UserError`` with
    ``row_errors`` when any accepted row fails validation: nothing is written.
    """
    if run["status"] in runs.ACTIVE:
        raise UserError("The run is still extracting: wait for it to finish (or cancel it) before inserting.", 409)
    state = await state_db(datasette)
    stored = {r["idx"]: r for r in await runs.get_rows(state, run["id"])}
    if not can_review(run, stored.values()):
        raise UserError(f"This run was already {run['status']}: nothing more can be inserted from it.", 409)
    db = _check_database(datasette, run["database_name"])
    spec = validate_table_spec(run["schema"])
    model = row_model(spec)
    names = spec.column_names()
    unknown = [i for i in decisions if i not in stored]
    if unknown:
        raise UserError(f"Unknown row number(s): {', '.join(str(i + 1) for i in unknown)}.")
    if run["status"] == "inserted":
        # partly inserted: only the rows still undecided can be decided now
        decisions = {i: d for i, d in decisions.items() if stored[i]["decision"] == "pending"}
    row_errors: dict[int, list[str]] = {}
    accepted: list[tuple[int, dict]] = []
    records: list[dict] = []
    for idx, decision in sorted(decisions.items()):
        choice = decision.get("decision")
        if choice not in ("accept", "reject", "pending"):
            raise UserError(f"Row {idx + 1}: decision must be accept, reject or pending.")
        if choice == "pending":
            continue
        row = stored[idx]
        before = {n: row["values"].get(n) for n in names}
        if choice == "reject":
            records.append({"idx": idx, "decision": "rejected", "before": before, "after": None,
                            "quote": row["source_quote"], "edited": False})
            continue
        submitted = decision.get("values")
        after_raw = _clean_form_values(spec, {**before, **submitted}) if submitted is not None else before
        cleaned, errors = validate_row(model, after_raw)
        if errors:
            row_errors[idx] = errors
            continue
        edited = not _same(cleaned, before, names)
        accepted.append((idx, cleaned))
        records.append({"idx": idx, "decision": "accepted", "before": before, "after": cleaned,
                        "quote": row["source_quote"], "edited": edited})
    if row_errors:
        raise UserError(
            f"{len(row_errors)} accepted row(s) have invalid values: fix them or reject them. Nothing was inserted.",
            row_errors=row_errors,
        )
    if not records:
        raise UserError("Accept or reject at least one row first.")
    settings = extract_settings(datasette)
    creates = bool(run["new_table"])
    if run["status"] in ("inserted", "undone"):
        # the run created the table when it first inserted (unless it was dropped since)
        creates = creates and not await db.table_exists(run["table_name"])
    plan = {"op": "insert", "from": run["status"], "records": records,
            "accepted": [idx for idx, _ in accepted], "actor_id": _actor_id(actor)}
    await _begin(state, run, "inserting", plan,
                 "This run is being inserted or was changed meanwhile: reload the page.")
    _WRITING.add(run["id"])
    try:
        result = {"inserted": [], "pk_columns": []}
        try:
            if accepted:
                result = await db.execute_write_fn(
                    insert_rows_fn(run["table_name"], spec, creates, accepted, run["id"],
                                   settings.add_run_column),
                    block=True,
                )
        except WriteError as e:
            await runs.end_write(state, run["id"], "inserting", run["status"])
            errors = {e.row: [str(e)]} if e.row is not None else {}
            raise UserError(str(e), status=409, row_errors=errors) from None
        except BaseException:
            # Nothing committed: give the run back (or leave it to settle() if even that fails).
            await runs.end_write(state, run["id"], "inserting", run["status"])
            raise
        await testpoints.reached("after-target-insert")
        pks = dict(result["inserted"])
        try:
            await _record_insert(datasette, state, run, records, pks, plan["actor_id"], bool(accepted),
                                 result["pk_columns"], spec_to_dict(spec))
        except STATE_WRITE_ERRORS as e:
            raise UserError(
                f"The rows were inserted, but recording the insert in the state database failed ({e}). "
                "Nothing needs to be inserted again: once the state database can be written, reload "
                "this run and it finishes recording it (it can then be undone).", status=503,
            ) from None
    finally:
        _WRITING.discard(run["id"])
    return {"inserted": len(accepted), "rejected": sum(1 for r in records if r["decision"] == "rejected"),
            "pk_columns": result["pk_columns"], "pks": [pks[i] for i, _ in accepted]}


#: Runs whose insert or undo this process is writing right now (settle() leaves them alone).
_WRITING: set[str] = set()
STATE_WRITE_ERRORS = (*SQLITE_ERRORS, OSError)


async def _begin(state, run: dict, to_status: str, plan: dict, busy: str) -> None:
    """Claim the run and store the plan before the target table is touched."""
    try:
        claimed = await runs.begin_write(state, run["id"], run["status"], to_status, plan, worker_id())
    except STATE_WRITE_ERRORS as e:
        raise UserError(
            f"The state database could not be written ({e}), so nothing was changed: "
            "free space for it (or fix its file) and try again.", status=503,
        ) from None
    if not claimed:
        raise UserError(busy, 409)


async def _record_insert(datasette, state, run, records, pks, actor_id, any_accepted, pk_columns, spec) -> None:
    for r in records:
        r["pk"] = pks.get(r["idx"])
    provenance = [
        {"idx": r["idx"], "pk": r["pk"], "quote": r["quote"]} for r in records if r["pk"] is not None
    ]
    await runs.record_review(state, run, records, provenance, actor_id,
                             status="inserted" if any_accepted else "reviewed", pk_columns=pk_columns)
    if any_accepted:
        await runs.store_table_spec(state, run["database_name"], run["table_name"], spec,
                                    instructions=run["instructions"] or "", run_id=run["id"],
                                    actor_id=actor_id)
        from .pageviews import publish_descriptions

        await publish_descriptions(datasette, run["database_name"], run["table_name"], spec)


async def settle(datasette, state, run: dict) -> dict:
    """A run left ``inserting`` or ``undoing`` by a crash or a failed state write:
    look at the target table and finish or roll back what the plan says, so it
    can be used again. Left alone while this or another live process writes it."""
    if run["status"] not in ("inserting", "undoing") or run["id"] in _WRITING:
        return run
    if run.get("worker_id") != worker_id() and not abandoned(
        run.get("worker_id"), run.get("heartbeat_at"), lease_for(datasette)
    ):
        return run
    if not await runs.take_over(state, run, worker_id()):
        return await runs.get_run(state, run["id"])
    plan = run["options"].get("pending_write") or {}
    db = datasette.databases.get(run["database_name"])
    records = plan.get("records") or []
    planned = [r["after"] for r in records if r.get("decision") == "accepted" and r.get("after") is not None]
    planned += plan.get("values") or []
    found = None
    if db is not None:
        found = await db.execute_fn(find_run_rows_fn(run["table_name"], run["id"], planned))
    pk_columns, pks = found if found else (["rowid"], [])
    if run["status"] == "undoing":
        if pks:  # the delete never committed: the rows are still there
            await runs.end_write(state, run["id"], "undoing", "inserted")
        else:
            await runs.record_undo(state, run["id"], plan.get("actor_id"))
    elif pks and records:  # the insert committed; its record did not
        by_idx = dict(zip(plan.get("accepted") or [], pks))
        spec = run["schema"]
        await _record_insert(datasette, state, run, records, by_idx, plan.get("actor_id"), True,
                             pk_columns, spec)
    elif pks:  # stranded before plans were recorded: the rows carry the run, so undo works
        await runs.record_review(state, run, [], [], plan.get("actor_id"), pk_columns=pk_columns)
    else:  # nothing reached the table
        await runs.end_write(state, run["id"], "inserting", plan.get("from") or "done")
    return await runs.get_run(state, run["id"])


def _actor_id(actor) -> str | None:
    return str(actor["id"]) if actor and actor.get("id") is not None else None


async def insert_all_valid(datasette, actor, run_id: str) -> dict:
    """Direct insert (trusted pipelines): accept every valid, non-duplicate row."""
    state = await state_db(datasette)
    run = await runs.get_run(state, run_id)
    rows = await runs.get_rows(state, run_id)
    decisions = {
        r["idx"]: {"decision": "accept" if r["valid"] and not r["duplicate"] else "reject", "values": None}
        for r in rows
    }
    if not decisions:
        return {"inserted": 0}
    return await insert_reviewed(datasette, actor, run, decisions)


async def undo(datasette, actor, run: dict) -> dict:
    """Delete the rows this run inserted that are still its own, in one transaction:
    ``{"deleted": n, "skipped": m}`` (``skipped``: rows someone else deleted or changed)."""
    if run["status"] != "inserted":
        raise UserError("Only a run whose rows were inserted can be undone.", 409)
    if not await can_write(datasette, actor, "delete-row", run["database_name"], run["table_name"]):
        raise ForbiddenError("You do not have permission to delete rows from this table, so the insert "
                             "cannot be undone: ask an administrator for delete-row.")
    state = await state_db(datasette)
    db = _check_database(datasette, run["database_name"])
    provenance = await runs.provenance_for_run(state, run["id"])
    values = await runs.inserted_values(state, run["id"])
    expected = [(p["pk"], values.get(p["row_idx"])) for p in provenance]
    pk_columns = run["options"].get("pk_columns") or ["rowid"]
    # "values": how settle() finds the rows again in a table without _llm_run
    await _begin(state, run, "undoing", {"op": "undo", "actor_id": _actor_id(actor),
                                         "values": [v for _, v in expected if v]},
                 "This run is being undone already: reload the page.")
    _WRITING.add(run["id"])
    try:
        try:
            result = await db.execute_write_fn(
                delete_run_rows_fn(run["table_name"], run["id"], pk_columns, expected), block=True
            )
        except WriteError as e:
            await runs.end_write(state, run["id"], "undoing", "inserted")
            raise UserError(str(e), status=409) from None
        except BaseException:
            await runs.end_write(state, run["id"], "undoing", "inserted")
            raise
        await testpoints.reached("after-target-delete")
        try:
            await runs.record_undo(state, run["id"], _actor_id(actor))
        except STATE_WRITE_ERRORS as e:
            raise UserError(
                f"The rows were deleted, but recording the undo in the state database failed ({e}). "
                "Once it can be written, reload this run and it finishes recording it.", status=503,
            ) from None
    finally:
        _WRITING.discard(run["id"])
    return result


async def discard(datasette, actor, run: dict) -> None:
    if run["status"] not in runs.REVIEWABLE:
        raise UserError(f"A {run['status']} run cannot be discarded.", 409)
    state = await state_db(datasette)
    await runs.update_run(state, run["id"], status="discarded")
    await runs.record_event(state, run["id"], "RunStatus", {"type": "RunStatus", "status": "discarded", "error": None})


async def cancel(datasette, actor, run: dict) -> bool:
    if run["status"] not in runs.ACTIVE:
        raise UserError("The run is not running.", 409)
    if tasks.cancel(run["id"]):
        return True
    state = await state_db(datasette)
    if tasks.owned_elsewhere(run, lease_for(datasette)):
        # Another live server process runs it: only it can stop the task. It
        # reads the request at its next heartbeat and ends the run "cancelled".
        if await runs.request_cancel(state, run["id"]):
            return True
        raise UserError("The run is not running.", 409)
    # Not running anywhere (its server died): mark it.
    await tasks.finish(state, run["id"], "cancelled", "The run was cancelled.")
    return True


async def _spent_so_far(datasette, run: dict) -> tuple[int, int, float | None]:
    """Tokens in, tokens out and USD the run's earlier attempts spent: the call log's
    totals for the run (an interrupted attempt never recorded its own), or the run's
    recorded totals when those are larger."""
    logged = await calllog.usage_for_ref(datasette, run["id"])
    costs = [c for c in (run["cost"], logged["cost_usd"]) if c is not None]
    return (max(run["input_tokens"] or 0, logged["input_tokens"] or 0),
            max(run["output_tokens"] or 0, logged["output_tokens"] or 0),
            max(costs) if costs else None)


async def resume(datasette, actor, run: dict) -> None:
    """Run again only the parts of an interrupted, failed or cancelled run that did not finish.

    The documents are planned exactly as the first attempt planned them (same model,
    chunk size and overlap, so the same chunk boundaries); chunks recorded as done keep
    their rows, the others lose any rows they left and are sent again.
    """
    if run["status"] not in ("interrupted", "failed", "cancelled"):
        raise UserError("Only an interrupted, failed or cancelled run can be resumed.", 409)
    settings = extract_settings(datasette)
    state = await state_db(datasette)
    stored_docs = await runs.get_documents(state, run["id"])
    spec = validate_table_spec(run["schema"])
    gateway = await llm_gateway(datasette)
    try:
        model = gateway.get_chat_model(run["model_id"])
    except ConfigError as e:
        raise UserError(str(e)) from None
    done = {(d[0], d[1]) for d in run["done_chunks"]}
    documents: list[Document] = []
    read_pages = await kept.pages_of_run(state, run["id"])
    for i, d in enumerate(stored_docs):
        restored = await _restored_document(state, run, i, d, read_pages.get(i))
        if restored is not None:
            documents.append(restored)
        elif d["text"] is not None:
            # exactly as stored: the first attempt planned its chunks on this text
            documents.append(Document.from_text(d["text"], name=d["name"], canonical=False))
        elif (i, None) in done:  # read whole and finished: a stand-in that is never sent
            documents.append(Document(name=d["name"], kind=d["kind"], media_type=d["media_type"] or ""))
        else:
            raise UserError(
                f"{d['name']} was not finished and only its hash was kept: start a new run with that file."
            )
    spent_in, spent_out, spent_cost = await _spent_so_far(datasette, run)
    job = ExtractionJob(
        spec=spec, instructions=run["instructions"] or "", documents=documents,
        model_id=model.model_id, concurrency=settings.concurrency,
        chunk_chars=run["options"].get("chunk_chars"), overlap=run["options"].get("overlap", 300),
        max_cost=settings.max_cost_per_run, max_tokens=settings.max_tokens_per_run,
        done_units=done, spent_tokens=spent_in + spent_out, spent_cost=spent_cost or 0.0,
        stream_invalid=True,
        read_as=run["options"].get("read_as") or "auto", ocr_limits=_ocr_limits(settings),
    )
    try:
        units = plan_units(job, model)
    except (LLMSuiteError, ValueError) as e:
        raise UserError(str(e)) from None
    planned = {unit_key(u) for u in units}
    unmatched = sorted(document for document, _ in done - planned)
    if unmatched:
        name = stored_docs[unmatched[0]]["name"] if unmatched[0] < len(stored_docs) else "A document"
        raise UserError(
            f"{name} can no longer be split into the same parts as when this run started "
            "(the model or the chunk settings changed): start a new run with it."
        )
    pending = [u for u in units if unit_key(u) not in done]
    if not pending:
        raise UserError("Every part of this run finished already: review its rows instead.", 409)
    if run["options"].get("use_examples"):
        job.examples = await _examples(datasette, run["database_name"], run["table_name"], spec,
                                       settings.max_examples)
    try:
        check_budget(job, estimate(job, model))
    except BudgetError as e:
        raise UserError(str(e)) from None
    job.existing_keys = [] if run["new_table"] else await _existing_keys(
        datasette, run["database_name"], run["table_name"], spec)
    rows = await runs.get_rows(state, run["id"])
    job.first_row_index = max((r["idx"] for r in rows), default=-1) + 1
    removed = await runs.delete_rows_of_chunks(state, run["id"], [(u.document, u.index) for u in pending])
    gone = set(removed)
    job.kept_rows = [(r["idx"], r["edited"] or r["values"]) for r in rows if r["idx"] not in gone and r["valid"]]
    progress = tasks._Progress(
        chunks_done=len(run["done_chunks"]), done_chunks=[list(d) for d in run["done_chunks"]],
        spent_input_tokens=spent_in, spent_output_tokens=spent_out, spent_cost=spent_cost,
    )
    await runs.update_run(state, run["id"], status="pending", error=None, chunks_failed=0,
                          worker_id=worker_id(), heartbeat_at=time.time(), cancel_requested_at=None,
                          chunks_done=progress.chunks_done, chunks_total=len(units),
                          input_tokens=spent_in, output_tokens=spent_out, cost=spent_cost)
    await runs.record_event(state, run["id"], "RunResumed", {
        "type": "RunResumed", "chunks_kept": progress.chunks_done, "chunks_to_run": len(pending),
        "rows_kept": len(rows) - len(removed), "rows_removed": removed,
    })
    tasks.start(datasette, run["id"], job, actor, timeout=settings.run_timeout, progress=progress)


async def _restored_document(state, run: dict, idx: int, stored: dict,
                             layouts: list[PageLayout] | None) -> Document | None:
    """An image or PDF of the run as it was read, from its kept file (None when not kept)."""
    if stored["kind"] not in ("image", "pdf"):
        return None
    found = await kept.get_file(state, run["id"], idx)
    if found is None:
        return None
    media_type, data = found
    pages = len(stored["text"].split("\n\f\n")) if stored["kind"] == "pdf" and stored["text"] else 1
    if stored["kind"] == "pdf":
        from .pages import pdf_page_count

        try:
            # in a thread: PDFium's lock may be held by a page render or OCR for seconds,
            # and taking it here would stop the event loop (every request) meanwhile
            pages = await asyncio.to_thread(pdf_page_count, data)
        except Exception:
            pass
    return Document(name=stored["name"], kind=stored["kind"], text=stored["text"] or "", data=data,
                    media_type=media_type, sha256=stored["sha256"], pages=pages, layout=layouts)
