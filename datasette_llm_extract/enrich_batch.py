"""Enrichment through a provider's batch API (OpenAI Batch API, Anthropic Message Batches).

A job in batch mode (``batch_json`` set) sends every pending row as one
batch (``datasette_llm_core.batches``), keeps the handle in the job row, and
polls it, from the command line (each run of the command polls once) or as a
background job (every ``batch_poll_seconds``; after a restart the process that
takes the job over polls the same handle, it never submits twice). Before
submitting, the job stores a mark with a new submission id, which the
vendor's batch carries (OpenAI: metadata; Anthropic: the requests'
``custom_id``); if the process dies before the handle is stored, the next
step finds that batch (``find_batch``) and adopts it, or, when the vendor
has none, submits again. When the
batch has ended, each result goes through the same parsing, validation,
one re-ask (a direct call) and quote check as a direct run, and is written
directly or held for review.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

from datasette_llm_core.batches import (
    BatchRequest,
    cancel_batch,
    fetch_batch_results,
    find_batch,
    poll_batch,
    submit_batch,
    supports_batch,
)
from datasette_llm_core.config import plugin_settings
from datasette_llm_core.errors import ConfigError, ModelError
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.state import state_db
from datasette_llm_core.types import TextPart, Usage

from . import enrich_store as store
from .enrich import RowResult, build_row_request, finish_answer, row_document
from .enrich_jobs import JobError
from .schema import TableSpec
from .settings import extract_settings

#: ``batch_json`` of a batch-mode job not submitted yet.
NOT_SUBMITTED: dict = {}


def provider_config(datasette, model_id: str) -> dict:
    """The configured ``models:`` entry of ``model_id`` as a dict (what the batch client needs)."""
    for model in plugin_settings(datasette).models:
        if model.id == model_id:
            config = model.model_dump(exclude_none=True)
            if supports_batch(config):
                return config
            break
    raise ConfigError(
        f"Model {model_id!r} cannot be used with a batch API: configure it under plugins: "
        "datasette-llm-newsroom: models: with provider openai or anthropic, or run without --batch."
    )


def _user_text(request) -> str:
    return "\n\n".join(p.text for p in request.messages[-1].parts if isinstance(p, TextPart))


def custom_id(row_id: int, submission_id: str | None = None) -> str:
    """A request's id: the row, and the submission it was sent in (what finds an Anthropic
    batch again after a crash: its results name these ids)."""
    return f"row-{row_id}-{submission_id}" if submission_id else f"row-{row_id}"


def row_of(custom_id: str) -> int:
    return int(custom_id.split("-")[1])


async def _requests(datasette, job: dict, items: list[dict],
                    submission_id: str | None = None) -> tuple[list[BatchRequest], dict[int, str]]:
    from .enrich_jobs import _read_row

    db = datasette.databases[job["database_name"]]
    spec = TableSpec(**job["schema"])
    out, documents = [], {}
    for item in items:
        row = await _read_row(db, job["table_name"], job["source_columns"], [], item["row_id"])
        document = row_document(row or {}, job["source_columns"])
        documents[item["row_id"]] = document
        request = build_row_request(spec, job["instructions"], document, linked=bool(job["linked_table"]))
        out.append(BatchRequest(custom_id=custom_id(item["row_id"], submission_id), system=request.system or "",
                                user=_user_text(request), json_schema=request.json_schema,
                                max_tokens=request.max_tokens or 1024, schema_name="extracted_rows"))
    return out, documents


async def _pending(state, job: dict) -> list[dict]:
    return await store.pending_items(state, job["id"], sample_only=job["phase"] == "sample", after=-1,
                                     limit=10_000_000)


def _not_created(error: BaseException) -> bool:
    """Whether a failed submit surely created no batch (so the mark can go): refused before
    sending, or a 4xx answer. A 5xx, a timeout, a dropped connection or a cancelled task may
    come after the vendor created it: the mark stays and the next step looks for the batch."""
    if isinstance(error, (ValueError, ConfigError)):
        return True
    if isinstance(error, ModelError):
        return error.status is not None and 400 <= error.status < 500
    return False


async def submit(datasette, job: dict) -> dict:
    """Send every pending row of the job as one batch and store the handle."""
    state = await state_db(datasette)
    items = await _pending(state, job)
    config = provider_config(datasette, job["model_id"])
    submission_id = secrets.token_hex(6)
    requests, _ = await _requests(datasette, job, items, submission_id)
    # a crash between the vendor creating the batch and the handle being stored leaves this mark:
    # the next step looks the batch up by it (``recover``) instead of paying for the rows twice
    mark = {"submitting": time.time(), "submission_id": submission_id, "rows": len(requests)}
    await store.update_job(state, job["id"], batch_json=json.dumps(mark))
    try:
        handle = await submit_batch(config, config.get("model") or job["model_id"], requests,
                                    submission_id=submission_id)
    except BaseException as e:
        if _not_created(e):
            await store.update_job(state, job["id"], batch_json=json.dumps(NOT_SUBMITTED))
        elif getattr(e, "cancelled_batch_ids", None):
            # parts submit_batch made and cancelled itself when a later one failed: never adopted
            mark["cancelled"] = e.cancelled_batch_ids
            await store.update_job(state, job["id"], batch_json=json.dumps(mark))
        raise
    await store.update_job(state, job["id"], batch_json=json.dumps(handle))
    return handle


async def recover(datasette, job: dict, mark: dict) -> tuple[dict | None, str, bool]:
    """After a submit that never stored its handle: the vendor's batch of that submission,
    adopted as the job's handle, or None when the vendor has none (safe to submit again).
    Raises ``SubmitInterrupted`` for a mark without a submission id (written before
    recovery existed). Returns (handle or None, message, wait): ``wait`` while an Anthropic
    batch that may be ours is still running (its results, which name the requests, come only
    once it has ended): nothing may be submitted then."""
    if not mark.get("submission_id"):
        raise SubmitInterrupted(
            "The server stopped while this job's batch was being submitted, so a batch may have been "
            "created at the provider without its id being kept. Check the provider's batch list (cancel "
            "that batch if there is one), then resume the job to submit again.")
    state = await state_db(datasette)
    config = provider_config(datasette, job["model_id"])
    submission_id = mark["submission_id"]
    ids = [custom_id(item["row_id"], submission_id) for item in await _pending(state, job)]
    try:
        handle = await find_batch(config, config.get("model") or job["model_id"], submission_id,
                                  custom_ids=ids, created_after=float(mark["submitting"]))
    except ModelError as e:
        if e.error_class != "batch_unconfirmed":
            raise
        return None, (f"The last submit was interrupted before its batch id was kept. {e} Nothing is "
                      "submitted until it is known whether one of these is this job's batch."), True
    if handle is not None and mark.get("cancelled"):
        # parts our own submit cancelled: their answers are kept, their unrun rows sent again
        handle["rerun_cancelled"] = [i for p in handle["parts"] if p["batch_id"] in mark["cancelled"]
                                     for i in p["custom_ids"]]
    if handle is None:
        await store.update_job(state, job["id"], batch_json=json.dumps(NOT_SUBMITTED))
        return None, ("The last submit was interrupted before its batch id was kept, and "
                      f"{config['provider']} has no batch of it: the rows are submitted again (nothing "
                      "was sent twice)."), False
    await store.update_job(state, job["id"], batch_json=json.dumps(handle))
    return handle, (f"The last submit was interrupted before its batch id was kept; batch "
                    f"{handle['batch_id']} of that submission was found at {config['provider']} and adopted "
                    "(not submitted again)."), False


class SubmitInterrupted(JobError):
    """The process stopped while submitting: a batch may exist at the provider."""


async def collect(datasette, job: dict, handle: dict, actor=None) -> dict:
    """Fetch an ended batch's results and record each like a direct answer; write them if direct."""
    from .enrich_jobs import _read_row, _write_items

    state = await state_db(datasette)
    config = provider_config(datasette, job["model_id"])
    gateway = await llm_gateway(datasette)
    spec = TableSpec(**job["schema"])
    db = datasette.databases[job["database_name"]]
    names = spec.column_names()
    direct = job["write_mode"] == "direct" and job["phase"] == "rest"
    counts = {"done": 0, "failed": 0, "written": 0}
    to_write = []
    rerun = set(handle.get("rerun_cancelled") or [])
    async for result in fetch_batch_results(config, handle, datasette=datasette, ref=f"enrich:{job['id']}",
                                            actor=actor):
        if result.error_class == "cancelled" and result.custom_id in rerun:
            continue  # never run: the row stays pending and is submitted again after this batch
        row_id = row_of(result.custom_id)
        row = await _read_row(db, job["table_name"], job["source_columns"],
                              [] if job["linked_table"] else names, row_id)
        previous = None if job["linked_table"] or row is None else {n: row.get(n) for n in names}
        out = RowResult(usage=Usage(result.input_tokens, result.output_tokens), model_id=job["model_id"])
        if result.error or row is None:
            out.error = result.error or "The row was deleted before its result arrived."
        else:
            out = await finish_answer(out, gateway, spec, job["instructions"],
                                      row_document(row, job["source_columns"]), result.text or "",
                                      model_id=job["model_id"], linked=bool(job["linked_table"]),
                                      extra={"ref": f"enrich:{job['id']}"})
        stored = await store.record_result(
            state, job["id"], row_id, records=out.records, valid=out.valid, error=out.error,
            model_id=out.model_id, input_tokens=out.usage.input_tokens, output_tokens=out.usage.output_tokens,
            cost=result.cost_usd, previous=previous)
        if stored:
            counts["failed" if out.error else "done"] += 1
            if direct and out.valid:
                to_write.append({"row_id": row_id, "records": out.records, "edited": None})
    counts["written"] = await _write_items(datasette, job, to_write)
    await store.update_job(state, job["id"], batch_json=None)
    return counts


async def step(datasette, job: dict, actor=None) -> tuple[str, str]:
    """One step of a batch-mode job: submit, or poll (and collect once ended).
    Returns (status the job is in afterwards, message)."""
    handle = job["batch"]
    note = ""
    if handle and "submitting" in handle and "batch_id" not in handle:
        handle, note, wait = await recover(datasette, job, handle)
        if wait:
            return "batch", note
        note += " "
    if not handle:
        handle = await submit(datasette, job)
        return "batch", (f"{note}Submitted {handle.get('total', job['rows_total'])} row(s) as batch "
                         f"{handle['batch_id']}; results come within 24 hours.")
    status = await poll_batch(provider_config(datasette, job["model_id"]), handle)
    if status["state"] == "in_progress":
        return "batch", f"{note}Batch {handle['batch_id']}: {status['done']:,} of {status['total']:,} done."
    counts = await collect(datasette, job, handle, actor)
    message = (f"{note}Batch {handle['batch_id']} {status['state']}: {counts['done']} row(s) answered, "
               f"{counts['failed']} failed, {counts['written']} written.")
    state = await state_db(datasette)
    left = len(await _pending(state, job))
    if left:  # rows an adopted batch did not hold or run (a submit cut off between two parts)
        await store.update_job(state, job["id"], batch_json=json.dumps(NOT_SUBMITTED))
        return "batch", f"{message} {left} row(s) were not run by the batch found: they are submitted next."
    final = "review" if job["phase"] == "sample" or job["write_mode"] == "review" else "done"
    return final, message


async def run_batch_cli(datasette, job: dict, echo) -> dict:
    """The command line's ``--batch``: one step per invocation (submit, or poll and collect)."""
    state = await state_db(datasette)
    if job["batch"] is None:
        await store.update_job(state, job["id"], batch_json=json.dumps(NOT_SUBMITTED))
        job = await store.get_job(state, job["id"])
    status, message = await step(datasette, job, {"id": "cli"})
    await store.update_job(state, job["id"], status=status, error=None, finished_at=time.time())
    if status == "batch":
        message += " Run the same command again to collect the results."
    return {"message": f"Job {job['id']}: {message}"}


async def run_in_job(datasette, job_id: str, handle, actor=None) -> str:
    """Background job mode: submit if needed, then poll every ``batch_poll_seconds`` until the
    batch ends (or the job is paused or cancelled: a cancel cancels the batch)."""
    state = await state_db(datasette)
    interval = extract_settings(datasette).batch_poll_seconds
    while True:
        job = await store.get_job(state, job_id)
        if handle.cancel:
            batch, wait = job["batch"], False
            if batch and "submitting" in batch and "batch_id" not in batch:
                # cut off while submitting: cancel that batch if the vendor has it (a mark is no handle);
                # while an Anthropic batch may still be ours the mark stays, for a resume to look again
                batch, _, wait = (await recover(datasette, job, batch) if batch.get("submission_id")
                                  else (None, "", False))
            if batch:
                await cancel_batch(provider_config(datasette, job["model_id"]), batch)
            if job["batch"] and not wait:
                await store.update_job(state, job_id, batch_json=json.dumps(NOT_SUBMITTED))
            return "cancelled"
        if handle.pause:
            return "paused"
        status, message = await step(datasette, job, actor)
        handle.message = message if status == "batch" else None
        if status != "batch":
            return status
        await asyncio.sleep(interval)
