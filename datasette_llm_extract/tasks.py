"""Background extraction runs.

Each run is an asyncio task kept in a module-level registry (a strong
reference, so it cannot be garbage-collected mid-run) with a timeout. Every
engine event is written to the state database as it arrives, so a page reload
replays what is stored and then follows live events.

The state database may be shared by several server processes, so a run
records which process executes it (``worker_id``) and that process renews
``heartbeat_at`` while it runs. A run is taken for dead (and marked
"interrupted") when it executes in this process and its task has ended, or
when it does not execute here and its owner's heartbeat is older than the
lease (``datasette_llm_core.workers``): at startup and whenever the run is
read through ``run_for`` or followed over SSE.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from datasette_llm_core.errors import LLMSuiteError
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.state import state_db
from datasette_llm_core.workers import (
    abandoned,
    beat_until_stopped,
    heartbeat_seconds,
    lease_for,
    worker_id,
)

from . import kept, runs
from .documents import InputError
from .engine import ExtractionJob, run_extraction

log = logging.getLogger(__name__)

#: run id -> handle of a run executing in this process (strong references).
REGISTRY: dict[str, "RunHandle"] = {}


@dataclass
class RunHandle:
    run_id: str
    task: asyncio.Task | None = None
    cancel_requested: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        """Wake everyone waiting for news of this run."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def changed(self) -> asyncio.Event:
        """Take this before reading the database, then ``wait(event)``: a
        notification in between sets the taken event, so none is lost."""
        return self._changed

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass


def handle_for(run_id: str) -> RunHandle | None:
    return REGISTRY.get(run_id)


@dataclass
class _Progress:
    chunks_done: int = 0
    chunks_failed: int = 0
    done_chunks: list = field(default_factory=list)
    #: What earlier attempts of a resumed run spent: the run's totals add this attempt's to it.
    spent_input_tokens: int = 0
    spent_output_tokens: int = 0
    spent_cost: float | None = None


def _row_from_event(data: dict, doc_map: list[int] | None) -> dict:
    span = data.get("quote_span") or [None, None]
    document = data.get("document")
    if doc_map is not None and document is not None and document < len(doc_map):
        document = doc_map[document]
    duplicate = data.get("duplicate_reason") or ("run" if data.get("duplicate") else None)
    return {
        "idx": data.get("index"),
        "values": data.get("values") or {},
        "source_quote": data.get("source_quote"),
        "quote_found": None if not data.get("quote_checked", True) else bool(data.get("quote_found")),
        "quote_start": span[0],
        "quote_end": span[1],
        "document": document,
        "chunk": data.get("chunk"),
        "valid": data.get("valid"),
        "errors": data.get("errors") or [],
        "duplicate": duplicate,
        "reask": ("pending" if data.get("reask_pending") else "corrected" if data.get("replaced") is not None
                  else "uncorrected" if data.get("reasked") else None),
        "replaced": data.get("replaced"),
        "reask_note": data.get("reask_note"),
        "quote_page": data.get("quote_page"),
        "quote_boxes": data.get("quote_boxes"),
    }


async def _record(db, run_id: str, event, progress: _Progress, doc_map: list[int] | None,
                  documents: list | None = None) -> None:
    data = event.to_dict()
    etype = data.get("type") or type(event).__name__
    row = None
    fields: dict = {}
    if etype in ("PageRead", "DocumentRead") and doc_map is not None:
        data["document"] = doc_map[data["document"]]
    if etype == "DocumentRead" and documents is not None:
        # the document's text now includes its OCR pages: keep it, with the pages' lines
        doc = documents[event.document]
        await kept.store_reading(db, run_id, data["document"], doc.text, doc.layout or [])
    if etype == "RunStarted":
        fields = {"model_id": data.get("model_id"), "prompt_version": data.get("prompt_version")}
        fields["chunks_total"] = progress.chunks_done + (data.get("chunks_total") or 0)
    elif etype in ("RowExtracted", "RowCorrected"):
        row = _row_from_event(data, doc_map)
        data["document"] = row["document"]
    elif etype in ("ChunkStarted", "ChunkDone", "ChunkFailed"):
        chunk = dict(data.get("chunk") or {})
        if doc_map is not None and chunk.get("document") is not None:
            chunk["document"] = doc_map[chunk["document"]]
            data["chunk"] = chunk
        if etype == "ChunkDone":
            progress.chunks_done += 1
            progress.done_chunks.append([chunk.get("document"), chunk.get("start"), chunk.get("index")])
            fields = {"chunks_done": progress.chunks_done,
                      "done_chunks_json": json.dumps(progress.done_chunks)}
        elif etype == "ChunkFailed":
            progress.chunks_failed += 1
            fields = {"chunks_failed": progress.chunks_failed}
    elif etype == "RunFinished":
        usage = dict(data.get("usage") or {})
        cost = data.get("cost")
        if progress.spent_input_tokens or progress.spent_output_tokens or progress.spent_cost is not None:
            # a resumed run: its totals are the earlier attempts' plus this one's
            data["attempt_usage"], data["attempt_cost"] = dict(usage), cost
            usage["input_tokens"] = usage.get("input_tokens", 0) + progress.spent_input_tokens
            usage["output_tokens"] = usage.get("output_tokens", 0) + progress.spent_output_tokens
            if progress.spent_cost is not None:
                cost = round(progress.spent_cost + (cost or 0.0), 6)
            data["usage"], data["cost"] = usage, cost
        fields = {"input_tokens": usage.get("input_tokens", 0),
                  "output_tokens": usage.get("output_tokens", 0), "cost": cost}
    await runs.record_event(db, run_id, etype, data, row=row, run_fields=fields or None,
                            correction=etype == "RowCorrected")


async def finish(db, run_id: str, status: str, error: str | None = None) -> None:
    """Set the final status and append a RunStatus event (SSE clients stop on it)."""
    await runs.update_run(db, run_id, status=status, error=error, finished_at=time.time())
    await runs.record_event(db, run_id, "RunStatus", {"type": "RunStatus", "status": status, "error": error})


async def _execute(datasette, run_id: str, job: ExtractionJob, actor: dict | None,
                   handle: RunHandle, timeout: float, doc_map: list[int] | None,
                   progress: _Progress, after) -> None:
    db = await state_db(datasette)
    status, error = "done", None
    beat = None
    try:
        await runs.update_run(db, run_id, status=runs.RUNNING, worker_id=worker_id(), heartbeat_at=time.time())
        beat = asyncio.get_running_loop().create_task(
            _heartbeat(db, run_id, heartbeat_seconds(lease_for(datasette))), name=f"llm-extract-beat-{run_id}")
        handle.notify()
        gateway = await llm_gateway(datasette)

        async def consume():
            async for event in run_extraction(gateway, job, actor=actor, ref=run_id):
                await _record(db, run_id, event, progress, doc_map, job.documents)
                handle.notify()

        await asyncio.wait_for(consume(), timeout)
    except asyncio.CancelledError:
        status, error = "cancelled", "The run was cancelled; the rows extracted so far are kept for review."
    except asyncio.TimeoutError:
        status, error = "failed", (
            f"The run took longer than {timeout:.0f} seconds and was stopped; "
            "the rows extracted so far are kept for review."
        )
    except (LLMSuiteError, InputError, ValueError) as e:
        status, error = "failed", str(e)
    except Exception as e:  # a bug: keep the server alive, tell the user
        log.exception("extraction run %s crashed", run_id)
        status, error = "failed", f"The run stopped because of an internal error ({type(e).__name__})."
    try:
        if status == "done" and progress.chunks_failed and not progress.chunks_done:
            status, error = "failed", "Every part of the document failed; see the messages below."
        await finish(db, run_id, status, error)
        if status == "done" and after is not None:
            await after()
    except Exception:  # pragma: no cover - state db trouble
        log.exception("could not record the end of run %s", run_id)
    finally:
        if beat is not None:
            beat.cancel()
        REGISTRY.pop(run_id, None)
        handle.notify()


async def _heartbeat(db, run_id: str, interval: float) -> None:
    """Renew this process's lease on the run; stop the run when another process
    asked for a cancel (it cannot cancel a task it does not hold)."""

    async def beat() -> bool:
        if await runs.heartbeat(db, run_id, worker_id()):
            cancel(run_id)
            return True
        return False

    await beat_until_stopped(interval, beat, f"extraction run {run_id}")


def start(datasette, run_id: str, job: ExtractionJob, actor: dict | None, *, timeout: float,
          doc_map: list[int] | None = None, progress: _Progress | None = None, after=None) -> RunHandle:
    """Start the run as a background task and register it.

    ``doc_map`` maps the job's document positions to the run's (for resumes),
    ``after`` is an async callable run when the run ends "done".
    """
    handle = RunHandle(run_id)
    REGISTRY[run_id] = handle
    handle.task = asyncio.get_running_loop().create_task(
        _execute(datasette, run_id, job, actor, handle, timeout, doc_map, progress or _Progress(), after),
        name=f"llm-extract-{run_id}",
    )
    return handle


def cancel(run_id: str) -> bool:
    handle = REGISTRY.get(run_id)
    if handle is None or handle.task is None or handle.task.done():
        return False
    handle.cancel_requested = True
    handle.task.cancel()
    return True


def _live_here() -> set[str]:
    return {run_id for run_id, h in REGISTRY.items() if h.task is None or not h.task.done()}


async def recover_interrupted(datasette) -> int:
    """Startup: runs left running by a dead server become "interrupted". Runs
    another live process executes (fresh heartbeat) are left alone; a run of a
    process that just died is caught by ``check_alive`` once its lease lapses."""
    db = await state_db(datasette)
    return await runs.mark_interrupted(db, exclude=_live_here(), lease=lease_for(datasette))


def owned_elsewhere(run: dict, lease: float) -> bool:
    """The run is active, not executing here, and its owner's lease is still fresh."""
    return (run["status"] in runs.ACTIVE and run["id"] not in _live_here()
            and not abandoned(run.get("worker_id"), run.get("heartbeat_at"), lease))


async def check_alive(datasette, db, run: dict) -> dict:
    """The run as stored, after marking it "interrupted" if nobody runs it any more."""
    if run["status"] not in runs.ACTIVE or run["id"] in _live_here():
        return run
    # registered here with its task ended: dead whatever its heartbeat says
    lease = None if run["id"] in REGISTRY else lease_for(datasette)
    if await runs.mark_interrupted(db, only=run["id"], lease=lease):
        return await runs.get_run(db, run["id"]) or run
    return run
