"""Enrichment jobs: select rows, run them in the background, review, write, undo.

A job is created with every selected rowid as a pending item (so the
selection is fixed at the start and nothing is lost or done twice after a
restart). It runs as an asyncio task kept in ``REGISTRY`` (strong
references), stamped with this process's worker id and a heartbeat
(``datasette_llm_core.workers``). A job still "running" whose owner's
heartbeat lapsed (its server was killed) is taken over by a restarted
server: at startup, after the lease, and whenever the job is read.

By default a job first runs a sample (``sample_size`` rows) and stops in
"review"; the journalist accepts, rejects or corrects those rows, writes the
accepted ones, and runs the rest, written directly or held for review.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from datasette_llm_core.budget import Budget
from datasette_llm_core.errors import ConfigError, LLMSuiteError
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.sql import quote_identifier, quote_identifiers
from datasette_llm_core.state import state_db
from datasette_llm_core.workers import beat_until_stopped, heartbeat_seconds, lease_for, worker_id

from . import enrich_store as store
from .engine import IMAGE_TOKENS, PDF_PAGE_TOKENS
from .enrich import (
    ENRICH_PROMPT_VERSION,
    URL_KINDS,
    EnrichError,
    check_columns,
    enrich_row,
    estimate_rows,
    row_document,
    row_files,
)
from .enrich_writer import undo_linked_fn, undo_values_fn, write_linked_fn, write_values_fn
from .schema import SchemaError, TableSpec, row_model, validate_row, validate_table_spec
from .settings import extract_settings

log = logging.getLogger(__name__)

#: job id -> handle of a job running in this process.
REGISTRY: dict[str, "JobHandle"] = {}
#: Delayed take-over checks (strong references).
_WATCHERS: set[asyncio.Task] = set()
#: Largest number of rows one job may select (the run's row limit caps it further).
MAX_ROWS = 1_000_000
#: How long a background job waits for its provider batch.
BATCH_TIMEOUT = 26 * 3600.0
#: Rows of the filter's preview used to estimate a job (the rest is extrapolated).
ESTIMATE_ROWS = 200


class JobError(Exception):
    """Bad input or a state that forbids the action; nothing was written."""

    def __init__(self, message: str, status: int = 400, row_errors: dict[int, list[str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        #: Review grid row (idx) -> why its values cannot be written.
        self.row_errors = row_errors or {}


@dataclass
class JobHandle:
    job_id: str
    task: asyncio.Task | None = None
    pause: bool = False
    cancel: bool = False
    progress: Callable[[dict], None] | None = None
    #: Why the job stopped, when it is not obvious from its status.
    message: str | None = None


# --- selection -------------------------------------------------------------------------

FILTER_IGNORED = {"_sort", "_sort_desc", "_size", "_next", "_facet", "_col", "_nocol", "_labels", "_nofacet",
                  "_nocount", "_trace", "_shape", "_json", "_extra", "_stream", "_dl", "_nl"}


def selection_sql(columns: list[str], selection: dict) -> tuple[str, dict]:
    """``where`` SQL and parameters for the table page's filter (Datasette's own ``Filters``),
    plus ``_where`` SQL and the rowid high-water mark of ``--since-last``."""
    from datasette.filters import Filters

    args = selection.get("args") or {}
    pairs = []
    for key, value in sorted(args.items()):
        if key.startswith("_"):
            if key in FILTER_IGNORED or key == "_where":
                continue
            raise JobError(f"The filter {key}= cannot be used to select rows to enrich: remove it.")
        column = key.rsplit("__", 1)[0] if "__" in key else key
        if column not in columns:
            raise JobError(f"The filter names a column the table does not have: {column!r}.")
        for v in value if isinstance(value, list) else [value]:
            pairs.append((key, v))
    clauses, params = Filters(pairs).build_where_clauses("t")
    wheres = args.get("_where") or []
    wheres = [wheres] if isinstance(wheres, str) else list(wheres)
    if selection.get("where"):
        wheres.append(selection["where"])
    clauses += [f"({w})" for w in wheres if w and w.strip()]
    if selection.get("after") is not None:
        clauses.append("rowid > :_llm_after")
        params["_llm_after"] = int(selection["after"])
    return (" where " + " and ".join(clauses)) if clauses else "", params


async def table_columns(db, table: str) -> list[str]:
    rows = await db.execute(f"pragma table_info({quote_identifier(table)})")
    return [r[1] for r in rows.rows]


async def select_rows(db, table: str, selection: dict, limit: int) -> list[tuple[int, list]]:
    """``(rowid, primary key values)`` of the selected rows, in rowid order."""
    columns = await table_columns(db, table)
    where, params = selection_sql(columns, selection)
    pks = await db.primary_keys(table)
    pk_sql = (", " + quote_identifiers(pks)) if pks else ""
    sql = f"select rowid{pk_sql} from {quote_identifier(table)}{where} order by rowid limit {int(limit)}"  # noqa: S608
    try:
        result = await db.execute(sql, params, custom_time_limit=30_000)
    except Exception as e:  # bad _where SQL, a WITHOUT ROWID table...
        raise JobError(f"The rows could not be selected: {e}. Check the filter (and any _where SQL).") from None
    return [(r[0], list(r[1:]) if pks else [r[0]]) for r in result.rows]


# --- creating --------------------------------------------------------------------------

@dataclass
class JobRequest:
    database: str
    table: str
    source_columns: list[str]
    spec: Any
    instructions: str = ""
    model_id: str | None = None
    selection: dict = field(default_factory=dict)
    row_limit: int | None = None
    sample_size: int = 20
    write_mode: str = "review"
    max_cost: float | None = None
    linked_table: str | None = None
    template: str | None = None
    since_last: bool = False
    #: Send the rows through the provider's batch API (enrich_batch) instead of one call each.
    batch: bool = False
    #: Source columns whose https URLs are files to send by URL: {column: "image" | "pdf"}
    #: (URLs whose path ends like an image or a PDF are sent so without it).
    url_columns: dict | None = None


async def prepare(datasette, req: JobRequest) -> dict:
    """Validate a job request and select its rows; nothing written. Returns the parts of the job."""
    if req.database not in datasette.databases:
        raise JobError(f"There is no database called {req.database!r}.", 404)
    db = datasette.databases[req.database]
    if not db.is_mutable:
        raise JobError(f"The database {req.database!r} is read-only: open it without -i/--immutable.")
    if not await db.table_exists(req.table):
        raise JobError(f"There is no table called {req.table!r} in {req.database!r}.", 404)
    try:
        spec = validate_table_spec(req.spec)
    except SchemaError as e:
        raise JobError(str(e)) from None
    columns = await table_columns(db, req.table)
    linked = (req.linked_table or "").strip() or None
    if linked:
        from .service import UserError, check_new_table_name

        try:
            linked = check_new_table_name(linked)
        except UserError as e:
            raise JobError(str(e)) from None
        if await db.table_exists(linked):
            raise JobError(f"A table called {linked!r} already exists: name the linked table differently.")
    try:
        earlier = await store.filled_columns(await state_db(datasette), req.database, req.table)
        check_columns(columns, list(req.source_columns or []), spec, linked=bool(linked), refillable=earlier)
    except EnrichError as e:
        raise JobError(str(e)) from None
    if req.url_columns is not None and not isinstance(req.url_columns, dict):
        raise JobError('url_columns is an object: {"column": "image" or "pdf"}.')
    for name, kind in (req.url_columns or {}).items():
        if name not in (req.source_columns or []) or kind not in URL_KINDS:
            raise JobError(f"url_columns marks {name!r} as {kind!r}: mark source columns only, as "
                           f"{' or '.join(URL_KINDS)}.")
    if req.write_mode not in ("review", "direct"):
        raise JobError("write_mode is review or direct.")
    if req.sample_size < 0 or (req.row_limit is not None and req.row_limit < 1):
        raise JobError("The sample size must be 0 or more and the row limit at least 1.")
    try:
        model = (await llm_gateway(datasette)).chosen_chat_model("extract", req.model_id)
    except ConfigError as e:
        raise JobError(str(e)) from None
    selection = {k: v for k, v in (req.selection or {}).items() if v not in (None, "", {}, [])}
    if req.since_last:
        mark = await store.high_water(await state_db(datasette), req.database, req.table, req.template)
        if mark is not None:
            selection["after"] = mark
    limit = min(req.row_limit or MAX_ROWS, MAX_ROWS)
    rows = await select_rows(db, req.table, selection, limit)
    await _check_files(db, req, model, rows[:ESTIMATE_ROWS])
    settings = extract_settings(datasette)
    max_cost = req.max_cost if req.max_cost is not None else settings.max_cost_per_run
    return {"db": db, "spec": spec, "model": model, "rows": rows, "selection": selection,
            "linked": linked, "max_cost": max_cost, "columns": columns}


async def _check_files(db, req: JobRequest, model, rows: list) -> None:
    """Images or PDFs in the source columns need a model that reads them (and no batch)."""
    kinds = set()
    for rowid, _ in rows:
        row = await _read_row(db, req.table, req.source_columns, [], rowid)
        kinds |= {type(f).__name__ for f in row_files(row or {}, req.source_columns, req.url_columns)}
    if "ImagePart" in kinds and not model.supports_images:
        raise JobError(f"The source columns hold images and model {model.model_id!r} cannot read images: "
                       "pick a model with image input, or other source columns.")
    if "PdfPart" in kinds and not model.supports_pdfs:
        raise JobError(f"The source columns hold PDFs and model {model.model_id!r} cannot read PDFs: "
                       "pick a model that reads PDFs, or other source columns.")
    never = "The suite never fetches a URL itself: the model's provider must."
    if "ImageUrlPart" in kinds and "image_urls" not in model.capabilities():
        raise JobError(f"The source columns hold image URLs and model {model.model_id!r} cannot read URL "
                       f"columns. {never} Pick a model that reads images by URL (OpenAI, Anthropic; a server "
                       "that fetches them itself: accepts_urls: true in its model config), or leave those "
                       "columns out of the sources.")
    if "PdfUrlPart" in kinds and "pdf_urls" not in model.capabilities():
        why = (" (OpenAI's Chat Completions takes PDFs as file data, not by URL)"
               if model.provider == "openai" else "")
        raise JobError(f"The source columns hold PDF URLs and model {model.model_id!r} cannot read PDF URL "
                       f"columns{why}. {never} Pick a model that reads PDFs by URL (Anthropic), or leave "
                       "those columns out of the sources.")
    if kinds and req.batch:
        raise JobError("Batch mode sends text only: run rows with images or PDFs (or their URLs) "
                       "without --batch.")


async def estimate(datasette, req: JobRequest) -> dict:
    """Rows selected, tokens and cost (from up to ``ESTIMATE_ROWS`` rows, extrapolated)."""
    parts = await prepare(datasette, req)
    rows = parts["rows"]
    sample = rows[:ESTIMATE_ROWS]
    docs = []
    files_seen = []
    for rowid, _ in sample:
        row = await _read_row(parts["db"], req.table, req.source_columns, [], rowid)
        docs.append(row_document(row or {}, req.source_columns, req.url_columns))
        files_seen += row_files(row or {}, req.source_columns, req.url_columns)
    est = estimate_rows(parts["spec"], req.instructions, docs, linked=bool(parts["linked"]))
    # a URL's file is not fetched to count it: an image by URL as an image, a PDF by URL as one page
    est["input_tokens"] += sum(IMAGE_TOKENS for f in files_seen
                               if type(f).__name__ in ("ImagePart", "ImageUrlPart"))
    est["input_tokens"] += sum(PDF_PAGE_TOKENS for f in files_seen
                               if type(f).__name__ in ("PdfPart", "PdfUrlPart"))
    scale = len(rows) / len(sample) if sample else 0
    input_tokens, output_tokens = int(est["input_tokens"] * scale), int(est["output_tokens"] * scale)
    cost = parts["model"].estimate_cost(input_tokens, output_tokens)
    first = min(len(rows), req.sample_size) if req.sample_size else len(rows)
    return {"rows": len(rows), "sample_rows": first, "input_tokens": input_tokens,
            "output_tokens": output_tokens, "cost": None if cost is None else round(cost, 4),
            "model_id": parts["model"].model_id, "max_cost": parts["max_cost"],
            "over_budget": bool(parts["max_cost"] is not None and cost is not None and cost > parts["max_cost"])}


async def create(datasette, actor, req: JobRequest, *, start: bool = True) -> str:
    parts = await prepare(datasette, req)
    if not parts["rows"]:
        raise JobError("No rows match this selection: change the filter" +
                       (" (every row was enriched by the last run already)." if req.since_last else "."))
    state = await state_db(datasette)
    job_id = store.new_job_id()
    sample = req.sample_size
    phase = "sample" if sample else "rest"
    items = [(rowid, pk, i < sample) for i, (rowid, pk) in enumerate(parts["rows"])]
    await store.create_job(state, {
        "id": job_id, "actor_id": str(actor["id"]) if actor and actor.get("id") is not None else None,
        "database_name": req.database, "table_name": req.table,
        "source_columns_json": json.dumps(list(req.source_columns)),
        "schema_json": json.dumps(parts["spec"].model_dump()), "instructions": req.instructions or "",
        "model_id": parts["model"].model_id, "prompt_version": ENRICH_PROMPT_VERSION,
        "template": req.template, "selection_json": json.dumps(parts["selection"], sort_keys=True),
        "linked_table": parts["linked"], "status": "pending", "phase": phase, "write_mode": req.write_mode,
        "sample_size": sample, "max_cost": parts["max_cost"],
        "high_water": max(r for r, _ in parts["rows"]),
        "batch_json": "{}" if req.batch else None,
        "url_columns_json": json.dumps(req.url_columns) if req.url_columns else None,
    }, items)
    if start:
        await start_job(datasette, job_id, actor, from_status={"pending"})
    return job_id


# --- running ---------------------------------------------------------------------------

async def _read_row(db, table: str, source: list[str], targets: list[str], rowid: int,
                    present: set[str] | None = None) -> dict | None:
    present = present if present is not None else set(await table_columns(db, table))
    cols = list(dict.fromkeys([*source, *[t for t in targets if t in present]]))
    result = await db.execute(
        f"select {quote_identifiers(cols)} from {quote_identifier(table)} where rowid = ?", [rowid])  # noqa: S608
    row = result.first()
    if row is None:
        return None
    out = dict(zip(cols, tuple(row)))
    for t in targets:
        out.setdefault(t, None)
    return out


def _values_of(item: dict, records: list[dict]) -> dict:
    if item.get("edited"):
        return item["edited"]
    return (records[0].get("values") if records else None) or {}


def _linked_records(item: dict) -> list[dict]:
    """The records of a one-to-many item to write: those the reviewer accepted (with their
    edits) when it was reviewed record by record, else every valid one."""
    review = item.get("review")
    if not review:
        return [r for r in item["records"] if r.get("valid")]
    return [{**r, "values": d.get("values") or r.get("values")}
            for r, d in zip(item["records"], review) if d.get("decision") == "accepted"]


async def _write_items(datasette, job: dict, items: list[dict]) -> int:
    """Write answered items into the table (new columns or linked table), then mark them written."""
    if not items:
        return 0
    db = datasette.databases[job["database_name"]]
    spec = TableSpec(**job["schema"])
    for item in items:
        item.setdefault("records", json.loads(item["records_json"]) if item.get("records_json") else [])
        item.setdefault("edited", json.loads(item["edited_json"]) if item.get("edited_json") else None)
        item.setdefault("review", json.loads(item["review_json"]) if item.get("review_json") else None)
    if job["linked_table"]:
        fn = write_linked_fn(job["linked_table"], spec, job["id"], [(i["row_id"], _linked_records(i)) for i in items])
    else:
        fn = write_values_fn(job["table_name"], spec, [(i["row_id"], _values_of(i, i["records"])) for i in items])
    await db.execute_write_fn(fn, block=True)
    await store.mark_written(await state_db(datasette), job["id"], [i["row_id"] for i in items])
    return len(items)


def _concurrency(datasette, model) -> int:
    return max(1, int(getattr(model, "concurrency", None) or extract_settings(datasette).concurrency))


async def run(datasette, job_id: str, actor: dict | None = None, handle: JobHandle | None = None) -> str:
    """Work on a job this process has claimed until its rows (of the phase) are done,
    or it is paused, cancelled or over budget. Returns the status it ends in."""
    state = await state_db(datasette)
    handle = handle or REGISTRY.get(job_id) or JobHandle(job_id)
    job = await store.get_job(state, job_id)
    if job["batch"] is not None:
        from . import enrich_batch

        return await enrich_batch.run_in_job(datasette, job_id, handle, actor)
    spec = TableSpec(**job["schema"])
    gateway = await llm_gateway(datasette)
    model = gateway.get_chat_model(job["model_id"])
    db = datasette.databases[job["database_name"]]
    names = spec.column_names()
    direct = job["write_mode"] == "direct" and job["phase"] == "rest"
    spent = job["cost"] or 0.0
    budget = Budget(max_cost=None if job["max_cost"] is None else max(0.0, job["max_cost"] - spent))
    over_budget = False
    # twice the model's concurrency: while one worker stores an answer, another already waits
    # for the freed place at the gateway's limiter, so the model is never left idle
    workers = 2 * _concurrency(datasette, model)
    queue: asyncio.Queue = asyncio.Queue(maxsize=workers * 2)
    present = set(await table_columns(db, job["table_name"]))
    write_lock = asyncio.Lock()
    pending_writes: list[dict] = []

    if direct:  # answers recorded before a crash but never written
        leftovers = await store.unwritten_items(state, job_id)
        await _write_items(datasette, job, [dict(i) for i in leftovers])

    async def flush() -> None:
        async with write_lock:
            batch, pending_writes[:] = list(pending_writes), []
            await _write_items(datasette, job, batch)
            if batch and not names_present():
                present.update(await table_columns(db, job["table_name"]))

    def names_present() -> bool:
        return all(n in present for n in names)

    async def work() -> None:
        nonlocal over_budget
        while True:
            item = await queue.get()
            if item is None:
                return
            if handle.pause or handle.cancel or over_budget:
                continue
            row = await _read_row(db, job["table_name"], job["source_columns"], [] if job["linked_table"] else names,
                                  item["row_id"], present)
            if row is None:
                await store.record_result(state, job_id, item["row_id"], records=None, valid=False,
                                          error="The row was deleted before it was read.", model_id=None,
                                          input_tokens=0, output_tokens=0, cost=None, previous=None)
                continue
            previous = None if job["linked_table"] else {n: row.get(n) for n in names}
            urls = job.get("url_columns")
            result = await enrich_row(gateway, spec, job["instructions"],
                                      row_document(row, job["source_columns"], urls),
                                      model_id=job["model_id"], linked=bool(job["linked_table"]), actor=actor,
                                      ref=f"enrich:{job_id}", budget=budget,
                                      files=row_files(row, job["source_columns"], urls))
            if result.error and "budget" in result.error.lower() and "exceeded" in result.error.lower():
                over_budget = True  # not this row's fault: it stays pending for a resume with more budget
                continue
            cost = model.estimate_cost(result.usage.input_tokens, result.usage.output_tokens)
            stored = await store.record_result(
                state, job_id, item["row_id"], records=result.records, valid=result.valid, error=result.error,
                model_id=result.model_id, input_tokens=result.usage.input_tokens,
                output_tokens=result.usage.output_tokens, cost=None if cost is None else round(cost, 8),
                previous=previous)
            if stored and direct and result.valid:
                pending_writes.append({"row_id": item["row_id"], "records": result.records, "edited": None})
                if len(pending_writes) >= 20:
                    await flush()
            if handle.progress is not None:
                handle.progress({"row_id": item["row_id"], "ok": result.error is None})

    tasks = [asyncio.create_task(work(), name=f"llm-enrich-{job_id}-{i}") for i in range(workers)]
    try:
        after = -1
        while not (handle.pause or handle.cancel or over_budget):
            batch = await store.pending_items(state, job_id, sample_only=job["phase"] == "sample", after=after,
                                              limit=200)
            if not batch:
                break
            for item in batch:
                if handle.pause or handle.cancel or over_budget:
                    break
                await queue.put(item)
            after = batch[-1]["row_id"]
        for _ in tasks:
            await queue.put(None)
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
    await flush()
    if handle.cancel:
        return "cancelled"
    if over_budget:
        handle.message = (f"The job reached its budget of ${job['max_cost']:.2f}; raise it and resume "
                          "to run the rows left.")
        return "paused"
    if handle.pause:
        return "paused"
    left = await store.pending_items(state, job_id, sample_only=job["phase"] == "sample", after=-1, limit=1)
    if left:  # another process took some rows over meanwhile; they finish there
        return "running"
    if job["phase"] == "sample" or job["write_mode"] == "review":
        return "review"
    return "done"


async def _execute(datasette, job_id: str, actor, handle: JobHandle, timeout: float) -> None:
    state = await state_db(datasette)
    beat = asyncio.get_running_loop().create_task(
        _heartbeat(state, job_id, handle, heartbeat_seconds(lease_for(datasette))), name=f"llm-enrich-beat-{job_id}")
    status, error = "failed", None
    job = await store.get_job(state, job_id)
    if job is not None and job["batch"] is not None:
        timeout = max(timeout, BATCH_TIMEOUT)  # a provider batch answers within 24 hours
    try:
        status = await asyncio.wait_for(run(datasette, job_id, actor, handle), timeout)
        error = handle.message
    except asyncio.CancelledError:
        status, error = ("cancelled" if handle.cancel else "paused"), None
    except asyncio.TimeoutError:
        status, error = "paused", (f"The job stopped after {timeout:.0f} seconds (the run timeout); "
                                   "resume it to run the rows left.")
    except (LLMSuiteError, JobError) as e:
        error = str(e)
    except Exception as e:  # a bug: keep the server alive, say so
        log.exception("enrichment job %s crashed", job_id)
        error = f"The job stopped because of an internal error ({type(e).__name__}): resume it to try again."
    finally:
        beat.cancel()
        try:
            if status != "running":
                await store.update_job(state, job_id, only_status={"running"}, status=status, error=error,
                                       finished_at=time.time(), pause_requested=0, cancel_requested=0)
        except Exception:  # pragma: no cover - state database trouble
            log.exception("could not record the end of enrichment job %s", job_id)
        REGISTRY.pop(job_id, None)


async def _heartbeat(state, job_id: str, handle: JobHandle, interval: float) -> None:
    async def beat() -> bool:
        flags = await store.heartbeat(state, job_id, worker_id())
        if flags is None:  # taken over or ended elsewhere
            handle.pause = True
            return True
        handle.pause = handle.pause or flags["pause"]
        handle.cancel = handle.cancel or flags["cancel"]
        return False

    await beat_until_stopped(interval, beat, f"enrichment job {job_id}")


async def start_job(datasette, job_id: str, actor, *, from_status: set[str], lease: float | None = None) -> bool:
    """Claim the job for this process and run it in the background; False if another process has it."""
    state = await state_db(datasette)
    if job_id in REGISTRY:
        return False
    if not await store.claim(state, job_id, worker_id(), from_status=from_status, lease=lease):
        return False
    handle = JobHandle(job_id)
    REGISTRY[job_id] = handle
    timeout = extract_settings(datasette).run_timeout
    handle.task = asyncio.get_running_loop().create_task(
        _execute(datasette, job_id, actor, handle, timeout), name=f"llm-enrich-{job_id}")
    return True


async def take_over_abandoned(datasette) -> int:
    """Resume jobs whose server died (their lease lapsed); check again later for fresh ones."""
    state = await state_db(datasette)
    lease = lease_for(datasette)
    lapsed, fresh = await store.abandoned_jobs(state, lease, set(REGISTRY))
    started = 0
    for job_id in lapsed:
        job = await store.get_job(state, job_id)
        if job is None or job["database_name"] not in datasette.databases:
            continue
        if await start_job(datasette, job_id, {"id": job["actor_id"]} if job["actor_id"] else None,
                           from_status={"running"}, lease=lease):
            started += 1
    if fresh:
        wait = max(s for _, s in fresh) + 0.2

        async def later():
            await asyncio.sleep(wait)
            await take_over_abandoned(datasette)

        task = asyncio.get_running_loop().create_task(later(), name="llm-enrich-takeover")
        _WATCHERS.add(task)
        task.add_done_callback(_WATCHERS.discard)
    return started


async def run_in_foreground(datasette, job_id: str, actor, *, from_status: set[str],
                            progress: Callable[[dict], None] | None = None, wait: float = 0.0) -> dict:
    """Claim the job and run it in this task (the command line), with a progress callback.
    A job another process holds is waited for up to ``wait`` seconds (its lease lapsing)."""
    state = await state_db(datasette)
    lease = lease_for(datasette)
    deadline = time.monotonic() + wait
    while not await store.claim(state, job_id, worker_id(), from_status=from_status, lease=lease):
        if time.monotonic() > deadline:
            raise JobError("Another process is running this job (its heartbeat is fresh): wait for it, "
                           f"or try again after {lease:.0f} seconds if that process was killed.", 409)
        await asyncio.sleep(0.5)
    handle = JobHandle(job_id, progress=progress)
    REGISTRY[job_id] = handle
    await _execute(datasette, job_id, actor, handle, extract_settings(datasette).run_timeout)
    return await store.get_job(state, job_id)


# --- actions -------------------------------------------------------------------------

async def pause(datasette, job: dict) -> None:
    if job["status"] not in store.ACTIVE:
        raise JobError("The job is not running.", 409)
    handle = REGISTRY.get(job["id"])
    if handle is not None:
        handle.pause = True
    await store.update_job(await state_db(datasette), job["id"], pause_requested=1)


async def cancel(datasette, job: dict) -> None:
    state = await state_db(datasette)
    if job["status"] in store.ACTIVE:
        handle = REGISTRY.get(job["id"])
        if handle is not None:
            handle.cancel = True
        await store.update_job(state, job["id"], cancel_requested=1)
        return
    if job["status"] in ("paused", "review", "failed", "interrupted"):
        await store.update_job(state, job["id"], status="cancelled", finished_at=time.time())
        return
    raise JobError(f"A {job['status']} job cannot be cancelled.", 409)


async def resume(datasette, actor, job: dict, *, max_cost: float | None = None) -> None:
    if job["status"] not in store.RESUMABLE:
        raise JobError("Only a paused, failed or cancelled job can be resumed.", 409)
    state = await state_db(datasette)
    if max_cost is not None:
        await store.update_job(state, job["id"], max_cost=max_cost)
    mark = job["batch"]
    if mark and "submitting" in mark and "batch_id" not in mark and not mark.get("submission_id"):
        # a mark from before submissions carried an id: the journalist checked by hand, submit again
        # (a mark with one stays: the next step looks the batch up by it)
        await store.update_job(state, job["id"], batch_json="{}")
    if not await start_job(datasette, job["id"], actor, from_status=store.RESUMABLE):
        raise JobError("The job is already running.", 409)


async def run_rest(datasette, actor, job: dict, write_mode: str) -> None:
    """After the sample's review: every selected row, written directly or held for review."""
    if job["status"] != "review" or job["phase"] != "sample":
        raise JobError("Run the rest once the sample is ready for review.", 409)
    if write_mode not in ("review", "direct"):
        raise JobError("Choose how the rest is written: review or direct.")
    state = await state_db(datasette)
    await store.update_job(state, job["id"], only_status={"review"}, phase="rest", write_mode=write_mode,
                           status="paused")
    await start_job(datasette, job["id"], actor, from_status={"paused"})


def check_edit(spec: TableSpec, values: dict) -> tuple[dict, list[str]]:
    return validate_row(row_model(spec), values)


async def review(datasette, job: dict, decisions: dict[int, tuple[str, dict | None]]) -> dict:
    """Record accept/reject/correct decisions; corrected values are validated first."""
    spec = TableSpec(**job["schema"])
    problems: dict[int, list[str]] = {}
    clean: dict[int, tuple[str, dict | None]] = {}
    for row_id, (decision, edited) in decisions.items():
        if decision not in ("accepted", "rejected", "pending"):
            raise JobError(f"Unknown decision {decision!r} for row {row_id}.")
        if edited is not None:
            values, errors = check_edit(spec, edited)
            if errors:
                problems[row_id] = errors
                continue
            edited = values
        clean[row_id] = (decision, edited)
    if problems:
        first = next(iter(problems.items()))
        raise JobError(f"Row {first[0]}: {'; '.join(first[1])}. Fix the corrected values; nothing was saved.")
    await store.set_decisions(await state_db(datasette), job["id"], clean)
    return {"saved": len(clean)}


#: Job statuses in which reviewed rows can be decided and written.
WRITABLE = ("review", "done", "paused", "cancelled")


async def review_grid(datasette, job: dict, rows: list[dict], posted: dict[int, dict]) -> dict:
    """Record the review grid's decisions (``enrich_review.form_decisions``) for the rows the page
    showed (``enrich_review.grid``). An accepted row must validate (``check_edit``) with the
    reviewer's values: otherwise nothing is saved and ``JobError.row_errors`` says why, per row."""
    from .enrich_review import item_decision, submitted

    if job["status"] not in WRITABLE:
        raise JobError(f"A {job['status']} job cannot be reviewed now: wait for it to stop.", 409)
    spec = TableSpec(**job["schema"])
    names = spec.column_names()
    by_idx = {r["idx"]: r for r in rows}
    row_errors: dict[int, list[str]] = {}
    decisions: dict[int, tuple[str, dict | None]] = {}
    reviews: dict[int, list[dict]] = {}
    state = await state_db(datasette)
    stored = {i["row_id"]: i for i in await store.items_by_id(state, job["id"], {r["row_id"] for r in rows})}
    for idx, choice in sorted(posted.items()):
        row = by_idx[idx]
        item = stored.get(row["row_id"])
        if item is None or item["written"]:
            raise JobError(f"{row['label']} was written or changed meanwhile: reload the page. Nothing was saved.", 409)
        edited = row["edited"]
        if choice["decision"] == "accepted":
            values, errors = check_edit(spec, submitted(row["values"], names, choice["values"]))
            if errors:
                row_errors[idx] = errors
                continue
            model_values = {n: row["values"].get(n) for n in names}
            edited = None if values == model_values else values
        if job["linked_table"]:
            review = reviews.setdefault(row["row_id"], item["review"] or [
                {"decision": item["decision"] if r.get("valid") else "pending", "values": None}
                for r in item["records"]])
            review[row["record"]] = {"decision": choice["decision"], "values": edited}
        else:
            decisions[row["row_id"]] = (choice["decision"], edited)
    if row_errors:
        raise JobError(f"{len(row_errors)} accepted row(s) have invalid values: fix them or reject them. "
                       "Nothing was saved.", row_errors=row_errors)
    for row_id, review in reviews.items():
        decisions[row_id] = (item_decision(review), None)
    await store.set_decisions(state, job["id"], decisions, reviews)
    return {"saved": len(posted)}


async def write_accepted(datasette, job: dict) -> dict:
    """Write the accepted rows of a job held for review (valid ones, or corrected)."""
    if job["status"] not in WRITABLE:
        raise JobError(f"A {job['status']} job cannot be written now.", 409)
    state = await state_db(datasette)
    accepted = [i for i in await store.items(state, job["id"], limit=MAX_ROWS, status="done")
                if i["decision"] == "accepted" and not i["written"] and (i["valid"] or i["edited"] or i["review"])]
    written = await _write_items(datasette, job, accepted)
    if job["status"] == "review" and job["phase"] == "rest":
        await store.update_job(state, job["id"], only_status={"review"}, status="done")
    return {"written": written}


async def source_documents(db, table: str, source: list[str], row_ids: list[int]) -> dict[int, str]:
    """rowid -> the text the model reads for that row now (``row_document``); deleted rows are missing."""
    out: dict[int, str] = {}
    present = set(await table_columns(db, table))
    cols = [c for c in source if c in present]
    for start in range(0, len(row_ids), 500):
        chunk = row_ids[start:start + 500]
        result = await db.execute(
            f"select rowid, {quote_identifiers(cols)} from {quote_identifier(table)}"  # noqa: S608 - quoted names
            f" where rowid in ({', '.join('?' for _ in chunk)})", chunk)
        for r in result.rows:
            out[r[0]] = row_document(dict(zip(cols, tuple(r)[1:])), source)
    return out


async def undo(datasette, actor, job: dict) -> dict:
    """Put back what the job wrote: previous values of cells it set, or delete its linked records."""
    if job["status"] in store.ACTIVE:
        raise JobError("Pause or cancel the job before undoing it.", 409)
    state = await state_db(datasette)
    written = await store.written_items(state, job["id"])
    if not written:
        raise JobError("This job has written nothing to undo.", 409)
    db = datasette.databases[job["database_name"]]
    spec = TableSpec(**job["schema"])
    if job["linked_table"]:
        result = await db.execute_write_fn(undo_linked_fn(job["linked_table"], job["id"]), block=True)
    else:
        rows = []
        for item in written:
            records = json.loads(item["records_json"]) if item["records_json"] else []
            edited = json.loads(item["edited_json"]) if item["edited_json"] else None
            rows.append((item["row_id"], edited or ((records[0].get("values") if records else None) or {}),
                         json.loads(item["previous_json"]) if item["previous_json"] else None))
        result = await db.execute_write_fn(undo_values_fn(job["table_name"], spec, rows), block=True)
    await store.record_undo(state, job["id"], str(actor["id"]) if actor and actor.get("id") else None)
    return result


async def wait_for(datasette, job_id: str, statuses: set[str], timeout: float) -> dict:
    """Wait (bounded) until the job reaches one of ``statuses``."""
    state = await state_db(datasette)
    deadline = time.monotonic() + timeout
    while True:
        job = await store.get_job(state, job_id)
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is {job['status']}, not {sorted(statuses)}")
        await asyncio.sleep(0.05)


def time_left(job: dict, now: float | None = None) -> float | None:
    """Seconds left at this attempt's pace (None until a row was done in it)."""
    now = time.time() if now is None else now
    done = job["rows_done"] + job["rows_failed"] - (job["session_rows_start"] or 0)
    if job["status"] != "running" or done <= 0 or not job["session_started_at"]:
        return None
    total = job["sample_size"] if job["phase"] == "sample" else job["rows_total"]
    left = max(0, total - job["rows_done"] - job["rows_failed"])
    return left * (now - job["session_started_at"]) / done
