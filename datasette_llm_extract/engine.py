"""Run an extraction job: chunks in parallel, rows streamed as events.

``run_extraction(gateway, job, actor=...)`` is an async generator of small
event dataclasses (each with ``to_dict()`` for JSON / server-sent events):

    RunStarted -> (PageRead..., DocumentRead)* -> [RunStarted again if reading changed the plan]
        -> (ChunkStarted, (RowExtracted | RowCorrected)..., ChunkDone | ChunkFailed)* -> RunFinished

Scans are read first (``reading.py``: local OCR, text-layer positions), so
any text model can extract from them and every row knows its quote's page
and boxes.

Chunks run concurrently (bounded by ``job.concurrency``); their events are
merged through one queue so rows reach the caller as soon as the model closes
each row object. Invalid rows are re-asked once with their validation errors,
each under an id its correction must echo (``reask.match_corrections``);
rows still invalid are reported with ``valid=False`` and reasons, never
dropped. With ``job.stream_invalid`` (the web pages) an invalid row is emitted
at once (``reask_pending``) and its outcome follows as ``RowCorrected`` with
the same index; otherwise it is emitted once, after its re-ask. Failed chunks are reported, never skipped silently. Closing the
generator cancels every running call. No Datasette imports here: the gateway
is passed in.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from dataclasses import asdict, dataclass, field
from typing import Any, AsyncIterator, Union

from datasette_llm_core.errors import BudgetError, CapabilityError, LLMSuiteError
from datasette_llm_core.models import ChatModel, output_tokens_for
from datasette_llm_core.types import ChatRequest, StreamEnd, TextDelta, Usage

from .chunking import DEFAULT_CHUNK_CHARS, Chunk, chunk_chars_for_model, chunk_text, locate_quote
from .documents import Document
from .merge import Deduplicator
from .pages import quote_place
from .prompts import (
    PROMPT_VERSION,
    build_continue_request,
    build_reask_request,
    build_request,
    reask_ids,
)
from .reading import (
    OCR_PAGE_TOKENS,
    DocumentRead,
    OcrLimits,
    PageRead,
    mode_for,
    page_texts,
    pages_to_ocr,
    read_documents,
)
from .reask import match_corrections
from .schema import QUOTE_FIELD, TableSpec, row_model, validate_row
from .streamparse import RowStreamParser

PURPOSE = "extract"
IMAGE_TOKENS = 1_500  # rough input tokens per image, for estimates
PDF_PAGE_TOKENS = 1_800  # rough input tokens per natively read PDF page


@dataclass
class ExtractionJob:
    spec: TableSpec
    instructions: str = ""
    documents: list[Document] = field(default_factory=list)
    model_id: str | None = None
    examples: list[dict] = field(default_factory=list)
    concurrency: int = 4
    #: Characters per text chunk; None sizes chunks from the model's context window.
    chunk_chars: int | None = None
    overlap: int = 300
    #: Keys (tuples of key-column values, or row dicts) already in the target table.
    existing_keys: list[Any] = field(default_factory=list)
    #: Per-run caps: refuse to start when the estimate is over, stop starting chunks once reached.
    max_cost: float | None = None
    max_tokens: int | None = None
    #: Output tokens asked for per request; None: the model's ``max_output_tokens``, else sized
    #: from its context (``output_tokens_for``). The gateway also fits each request to the context.
    max_output_tokens: int | None = None
    reask: bool = True
    #: Emit rows that fail validation at once (flagged, ``reask_pending``) and their
    #: corrections later as ``RowCorrected`` events; False holds them back until the
    #: re-ask has answered and emits each once (the command line and evaluation).
    stream_invalid: bool = False
    #: Follow-up requests when an answer is cut off by the output limit (0 disables).
    max_continuations: int = 2
    #: None: send PDFs natively when the model reads PDFs, else their text.
    native_pdfs: bool | None = None
    #: A gateway ``Budget`` shared by every call of the run (passed when the gateway accepts it).
    budget: Any = None
    #: Resuming a run: ``(document, chunk start)`` of the units an earlier attempt finished
    #: (start None for a whole image / native PDF). They are planned like the others, so
    #: chunk boundaries and numbers stay those of the first attempt, but not sent again.
    done_units: set[tuple[int, int | None]] = field(default_factory=set)
    #: Rows kept from the earlier attempt, as ``(row number, values)``: a new row with the
    #: same key is a duplicate of the kept one, as within one uninterrupted run.
    kept_rows: list[tuple[int, dict]] = field(default_factory=list)
    #: Number of the first new row (a resumed run numbers on after the rows it had).
    first_row_index: int = 0
    #: Tokens and USD the earlier attempts spent: they count against ``max_tokens``/``max_cost``.
    spent_tokens: int = 0
    spent_cost: float = 0.0
    #: How images and PDFs reach the model: "auto", "vision", "ocr" or "both" (see reading.py).
    read_as: str = "auto"
    #: Page, per-page time and total time limits of local OCR (reading.OcrLimits).
    ocr_limits: Any = None


@dataclass
class WorkUnit:
    """One request's worth of input: a text chunk, or a whole image / native PDF."""

    index: int
    document: int
    chunk: Chunk | None
    native: bool = False
    note: str | None = None
    #: Pages of a scan still to be read by OCR (estimates before the run: no text yet).
    pending_pages: int = 0
    #: The unit cannot be sent (e.g. OCR found no text): reported as a failed chunk.
    error: str | None = None
    #: Text sent next to a native file ("both"): the OCR text or text layer.
    hint: str | None = None

    def to_dict(self, documents: list[Document]) -> dict:
        doc = documents[self.document]
        out = {"index": self.index, "document": self.document, "document_name": doc.name,
               "kind": "text" if self.chunk is not None else doc.kind}
        if self.chunk is not None:
            out.update(start=self.chunk.start, end=self.chunk.end)
        return out


# --- events -------------------------------------------------------------------

@dataclass
class Event:
    def to_dict(self) -> dict:
        data = asdict(self)
        data["type"] = type(self).__name__
        return data


@dataclass
class RunStarted(Event):
    chunks_total: int
    estimate: dict
    model_id: str
    prompt_version: str = PROMPT_VERSION


@dataclass
class ChunkStarted(Event):
    chunk: dict


@dataclass
class RowEvent(Event):
    index: int
    values: dict
    source_quote: str | None
    quote_found: bool
    quote_span: list[int] | None
    document: int
    chunk: int
    valid: bool
    errors: list[str] = field(default_factory=list)
    duplicate: bool = False
    #: "run" (an earlier row of this run, see duplicate_of) or "table" (already in the table).
    duplicate_reason: str | None = None
    duplicate_of: int | None = None
    reasked: bool = False
    #: False for images: there is no text to check the quote against.
    quote_checked: bool = True
    #: Page of the document the quote is on (0-based), and its boxes there
    #: ([x0, y0, x1, y1] in fractions of the page) when OCR or a text layer gave positions.
    quote_page: int | None = None
    quote_boxes: list | None = None
    #: The row failed validation and was sent back to the model: a ``RowCorrected``
    #: event with the same index follows (only with ``ExtractionJob.stream_invalid``).
    reask_pending: bool = False
    #: When the re-ask corrected the row: the values the model first gave.
    replaced: dict | None = None
    #: When the re-ask could not correct the row: why.
    reask_note: str | None = None


@dataclass
class RowExtracted(RowEvent):
    """A new row."""


@dataclass
class RowCorrected(RowEvent):
    """The re-ask's outcome for a row emitted before with ``reask_pending``: the row as
    it now stands (corrected, or still invalid with ``reask_note``), same ``index``."""


@dataclass
class ChunkDone(Event):
    chunk: dict
    rows: int
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    #: Follow-up model calls (re-ask, continuation) that failed: rows are missing or unchecked.
    failed_calls: list[str] = field(default_factory=list)


@dataclass
class ChunkFailed(Event):
    chunk: dict
    error: str
    error_class: str = ""
    #: The start of the model's answer when it was not the requested JSON (for the log).
    answer: str | None = None


@dataclass
class RunFinished(Event):
    usage: dict
    cost: float | None
    chunks_ok: int
    chunks_failed: int
    rows_valid: int
    rows_invalid: int
    rows_duplicate: int = 0
    cancelled: bool = False


ExtractionEvent = Union[RunStarted, ChunkStarted, RowExtracted, RowCorrected, ChunkDone, ChunkFailed,
                        RunFinished, PageRead, DocumentRead]


# --- planning -----------------------------------------------------------------

def _resolve_model(gateway, job: ExtractionJob) -> ChatModel:
    if job.model_id:
        return gateway.get_chat_model(job.model_id)
    model = gateway.default_chat_model(PURPOSE)
    if model is None:
        from datasette_llm_core.gateway import no_model_message

        raise CapabilityError(no_model_message(PURPOSE))
    return model


def plan_units(job: ExtractionJob, model: ChatModel) -> list[WorkUnit]:
    """Split the job's documents into work units, checking the model can read them."""
    if not job.documents:
        raise ValueError("Nothing to extract from: paste some text or add a file.")
    if job.max_output_tokens is None:
        job.max_output_tokens = output_tokens_for(model)
    fits = chunk_chars_for_model(getattr(model, "context_tokens", 0) or 0, output_tokens=job.max_output_tokens)
    # a configured size never overflows a small-context model
    chunk_chars = min(job.chunk_chars, fits) if job.chunk_chars else (fits or DEFAULT_CHUNK_CHARS)
    units: list[WorkUnit] = []
    for d, doc in enumerate(job.documents):
        if (d, None) in job.done_units:
            # read whole by an earlier attempt (an image or a native PDF): nothing to check
            units.append(WorkUnit(len(units), d, None, native=True, note=doc.name))
            continue
        mode = mode_for(doc, job.read_as, model, job.native_pdfs)
        if mode in ("vision", "both"):
            if doc.kind == "image" and not model.supports_images:
                raise CapabilityError(
                    f"{doc.name} is an image but model {model.model_id!r} cannot read images: "
                    "pick a model with image input, or read the scan as text (OCR)."
                )
            if doc.kind == "pdf" and not model.supports_pdfs:
                raise CapabilityError(
                    f"Model {model.model_id!r} cannot read PDFs: pick one that does, "
                    "or read the PDF as text (OCR for scanned pages)."
                )
            hint = doc.text if mode == "both" and doc.text.strip() else None
            # "both" before OCR ran (an estimate): count the OCR text to come
            pending = len(pages_to_ocr(doc, mode)) if mode == "both" and doc.layout is None else 0
            units.append(WorkUnit(len(units), d, None, native=True, note=doc.name, hint=hint,
                                  pending_pages=pending))
            continue
        if mode == "ocr" and doc.layout is None and (
            doc.kind == "image" or any(not t.strip() for t in page_texts(doc))
        ):
            # an estimate before OCR ran: one placeholder for the pages still to read
            pending = 1 if doc.kind == "image" else sum(1 for t in page_texts(doc) if not t.strip())
            units.append(WorkUnit(len(units), d, None, note=doc.name, pending_pages=pending))
            continue
        if mode == "ocr" and not doc.text.strip():
            units.append(WorkUnit(len(units), d, None, note=doc.name, error=(
                f"OCR found no text in {doc.name}: check the scan, or pick a model that reads "
                + ("images." if doc.kind == "image" else "PDFs.")
            )))
            continue
        if not doc.text.strip():
            raise CapabilityError(
                f"{doc.name} has no text to extract from"
                + (" (a scanned PDF without a text layer): pick a model that reads PDFs, or run OCR first."
                   if doc.kind == "pdf" else ".")
            )
        chunks = chunk_text(doc.text, chunk_chars, job.overlap, document=d)
        for c in chunks:
            note = doc.name if len(chunks) == 1 else f"part {c.index + 1} of {len(chunks)} of {doc.name}"
            units.append(WorkUnit(len(units), d, c, note=note))
    return units


def unit_key(unit: WorkUnit) -> tuple[int, int | None]:
    """``(document, chunk start)``: how a unit is recognised across attempts of a run."""
    return (unit.document, unit.chunk.start if unit.chunk is not None else None)


def pending_units(job: ExtractionJob, model: ChatModel) -> list[WorkUnit]:
    """The planned units still to run: all of them but those in ``job.done_units``."""
    return [u for u in plan_units(job, model) if unit_key(u) not in job.done_units]


def _request_for(job: ExtractionJob, unit: WorkUnit, structured: bool = True) -> ChatRequest:
    """The request for one unit; ``structured=False`` for models without structured output
    (the prompt alone then asks for the JSON shape, and the parser is lenient)."""
    doc = job.documents[unit.document]
    if unit.native:
        note = unit.note + (" (the text below was read from the file and may contain errors)"
                            if unit.hint else "")
        request = build_request(job.spec, job.instructions, unit.hint, parts=doc.parts(native=True),
                                examples=job.examples, note=note, max_tokens=job.max_output_tokens)
    elif unit.chunk is None:  # not read yet (estimate) or nothing to send
        request = build_request(job.spec, job.instructions, "", examples=job.examples,
                                note=unit.note, max_tokens=job.max_output_tokens)
    else:
        request = build_request(job.spec, job.instructions, unit.chunk.text, examples=job.examples,
                                note=unit.note, max_tokens=job.max_output_tokens)
    if not structured:
        request.json_schema = None
    return request


def _estimate_units(job: ExtractionJob, model: ChatModel, units: list[WorkUnit]) -> dict:
    input_tokens = 0
    output_tokens = 0
    for unit in units:
        tokens = _request_for(job, unit).text_length() // 4 + 1
        doc = job.documents[unit.document]
        if unit.native:
            tokens += IMAGE_TOKENS if doc.kind == "image" else PDF_PAGE_TOKENS * max(1, doc.pages)
        if unit.native and unit.hint:
            tokens += len(unit.hint) // 4
        if unit.pending_pages:  # OCR text not read yet: a page's worth each, plus any text layer
            tokens += OCR_PAGE_TOKENS * unit.pending_pages + (0 if unit.native else len(doc.text) // 4)
        input_tokens += tokens
        content = tokens if unit.chunk is None else len(unit.chunk.text) // 4
        output_tokens += min(job.max_output_tokens or output_tokens_for(model), max(200, content // 2))
    cost = model.estimate_cost(input_tokens, output_tokens)
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cost": None if cost is None else round(cost, 6), "chunks": len(units),
            "model_id": model.model_id}


def estimate(job: ExtractionJob, model: ChatModel) -> dict:
    """Rough tokens and cost of running ``job`` on ``model`` (cost None when prices are unknown).

    Output tokens are a guess (half the input of each chunk, at least 200, at
    most ``max_output_tokens``); re-asks are not counted.
    """
    return _estimate_units(job, model, pending_units(job, model))


def check_budget(job: ExtractionJob, est: dict) -> None:
    """Raise ``BudgetError`` if the estimate, plus what earlier attempts of the run spent,
    is over the job's caps."""
    total = est["input_tokens"] + est["output_tokens"] + job.spent_tokens
    spent = f" (including {job.spent_tokens:,} already spent)" if job.spent_tokens else ""
    if job.max_tokens is not None and total > job.max_tokens:
        raise BudgetError(
            f"This run would use about {total:,} tokens{spent}, over the per-run limit of "
            f"{job.max_tokens:,}. Split the document, extract from fewer files, or ask an administrator "
            "to raise budgets: max_tokens_per_run."
        )
    cost = None if est.get("cost") is None else est["cost"] + job.spent_cost
    if job.max_cost is not None and cost is not None and cost > job.max_cost:
        spent = f" (including ${job.spent_cost:.2f} already spent)" if job.spent_cost else ""
        raise BudgetError(
            f"This run would cost about ${cost:.2f}{spent}, over the per-run limit of ${job.max_cost:.2f}. "
            "Pick a cheaper model, split the document, or ask an administrator to raise "
            "budgets: max_cost_per_run."
        )


# --- running ------------------------------------------------------------------

def _gateway_kwargs(gateway, **optional) -> dict:
    """Pass ``ref``/``budget`` only to gateways that accept them."""
    try:
        params = inspect.signature(gateway.stream).parameters
    except (TypeError, ValueError):
        return {}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in optional.items() if v is not None and (accepts_any or k in params)}


class _Run:
    def __init__(self, gateway, job: ExtractionJob, model: ChatModel, units: list[WorkUnit],
                 actor, ref) -> None:
        self.gateway = gateway
        self.job = job
        self.model = model
        self.units = units
        self.actor = actor
        self.extra = _gateway_kwargs(gateway, ref=ref, budget=job.budget)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.row_model = row_model(job.spec)
        self.dedup = Deduplicator(job.spec, job.existing_keys)
        for index, values in sorted(job.kept_rows, key=lambda r: r[0]):
            self.dedup.check(values, index)  # remembers the first row of each key
        self.usage = Usage()
        self.next_index = job.first_row_index
        self.budget_hit = False
        #: Unit index -> messages of its follow-up calls that failed.
        self.failed_calls: dict[int, list[str]] = {}

    def _unit_dict(self, unit: WorkUnit) -> dict:
        return unit.to_dict(self.job.documents)

    def _over_budget(self) -> bool:
        if self.job.max_tokens is not None and (
            self.usage.input_tokens + self.usage.output_tokens + self.job.spent_tokens >= self.job.max_tokens
        ):
            return True
        if self.job.max_cost is not None:
            cost = self.model.estimate_cost(self.usage.input_tokens, self.usage.output_tokens)
            if cost is not None and cost + self.job.spent_cost >= self.job.max_cost:
                return True
        return False

    async def _stream(self, request: ChatRequest, parser: RowStreamParser, on_rows) -> str | None:
        finish = None
        async for event in self.gateway.stream(
            request, purpose=PURPOSE, prompt_version=PROMPT_VERSION, actor=self.actor,
            model_id=self.model.model_id, **self.extra,
        ):
            if isinstance(event, TextDelta):
                rows = parser.feed(event.text)
                if rows:
                    await on_rows(rows)
            elif isinstance(event, StreamEnd):
                self.usage = self.usage + (event.usage or Usage())
                finish = event.finish_reason
        return finish

    def _make_row(self, unit: WorkUnit, raw: dict, values: dict, errors: list[str], reasked: bool, *,
                  index: int | None = None, cls: type[RowEvent] = RowExtracted, **extra) -> RowEvent:
        """A row event; a new row number unless ``index`` (a correction) is given."""
        quote = raw.get(QUOTE_FIELD)
        quote = quote.strip() if isinstance(quote, str) and quote.strip() else None
        doc = self.job.documents[unit.document]
        span = None
        checked = doc.kind != "image" or bool(doc.text.strip())
        if quote and checked:
            if unit.chunk is not None:
                local = locate_quote(unit.chunk.text, quote)
                if local:
                    span = (local[0] + unit.chunk.start, local[1] + unit.chunk.start)
            if span is None:
                span = locate_quote(doc.text, quote)
        page, boxes = quote_place(doc.text, doc.layout, span[0] if span else None,
                                  span[1] if span else None, quote, doc.kind)
        if index is None:
            index = self.next_index
            self.next_index += 1
        duplicate_reason = duplicate_of = None
        if not errors:
            duplicate_reason = self.dedup.check(values, index)
            if duplicate_reason == "run":
                duplicate_of = self.dedup.first_index(values)
        return cls(
            index=index, values=values, source_quote=quote, quote_found=span is not None,
            quote_span=list(span) if span else None, document=unit.document, chunk=unit.index,
            valid=not errors, errors=errors, duplicate=duplicate_reason is not None,
            duplicate_reason=duplicate_reason, duplicate_of=duplicate_of, reasked=reasked,
            quote_checked=checked, quote_page=page, quote_boxes=boxes or None, **extra,
        )

    def _original_values(self, raw: dict) -> dict:
        return {n: raw.get(n) for n in self.job.spec.column_names()}

    async def run_unit(self, unit: WorkUnit, semaphore: asyncio.Semaphore) -> None:
        async with semaphore:
            if self.budget_hit or self._over_budget():
                self.budget_hit = True
                await self.queue.put(ChunkFailed(self._unit_dict(unit),
                                                 "Skipped: the run reached its token or cost limit.",
                                                 "BudgetError"))
                return
            if unit.error:
                await self.queue.put(ChunkFailed(self._unit_dict(unit), unit.error, "OcrError"))
                return
            await self.queue.put(ChunkStarted(self._unit_dict(unit)))
            emitted = 0
            #: (row as sent, errors, row number when already emitted)
            invalid: list[tuple[dict, list[str], int | None]] = []

            async def on_rows(rows: list[dict]) -> None:
                nonlocal emitted
                for raw in rows:
                    values, errors = validate_row(self.row_model, raw)
                    if not errors and all(v is None for v in values.values()):
                        # nothing to re-ask: the model found no values at all
                        await self.queue.put(self._make_row(unit, raw, values, ["the row has no values"], False))
                        emitted += 1
                        continue
                    if errors and self.job.reask:
                        index = None
                        if self.job.stream_invalid:
                            row = self._make_row(unit, raw, values, errors, False, reask_pending=True)
                            await self.queue.put(row)
                            emitted += 1
                            index = row.index
                        invalid.append((raw, errors, index))
                        continue
                    await self.queue.put(self._make_row(unit, raw, values, errors, False))
                    emitted += 1

            parser = RowStreamParser()
            try:
                finish = await self._stream(
                    _request_for(self.job, unit, bool(self.model.supports_schema)), parser, on_rows)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # reported, never dropped
                await self._flush_invalid(unit, invalid, "the chunk failed before they could be re-asked")
                await self.queue.put(ChunkFailed(self._unit_dict(unit), _error_message(e),
                                                 type(e).__name__))
                return
            result = parser.finish()
            warnings = list(result.errors)
            truncated = result.truncated or finish == "length"
            if finish == "length" and not result.truncated:
                warnings.append("the model stopped at its output limit")
            if not result.rows and not parser.complete:
                # Not the requested JSON object (prose, a fragment, nothing): a failure with
                # what the model said, never an answer with no rows.
                await self._flush_invalid(unit, invalid, "")
                await self.queue.put(ChunkFailed(
                    self._unit_dict(unit),
                    "The model's answer could not be read as rows: " + "; ".join(warnings)
                    + f". It answered: {_excerpt(parser.head)}. Try again, or pick another model.",
                    "OutputError", answer=parser.head))
                return
            continued = 0
            seen = list(result.rows)
            while truncated and seen and continued < self.job.max_continuations and not self._over_budget():
                # Cut off by the output limit: ask for the records after the last one received.
                continued += 1
                parser = RowStreamParser()
                try:
                    finish = await self._stream(self._continue_request(unit, seen), parser, on_rows)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    warnings.append(f"continuing after the output limit failed: {_error_message(e)}")
                    self.failed_calls.setdefault(unit.index, []).append(warnings[-1])
                    break
                more = parser.finish()
                seen += more.rows
                truncated = more.truncated or finish == "length"
                if not more.rows:
                    break
            if continued:
                warnings.append(
                    f"the answer reached the model's output limit; it was continued {continued} time(s)"
                    + (" and is still incomplete: split the document into smaller parts" if truncated else "")
                )
            if invalid:
                emitted += await self._reask(unit, invalid, warnings)
            await self.queue.put(ChunkDone(self._unit_dict(unit), emitted, truncated, warnings,
                                           self.failed_calls.pop(unit.index, [])))

    def _continue_request(self, unit: WorkUnit, seen: list[dict]) -> ChatRequest:
        doc = self.job.documents[unit.document]
        request = build_continue_request(
            self.job.spec, self.job.instructions, None if unit.native else unit.chunk.text,
            done=seen, parts=doc.parts(native=True) if unit.native else None,
            note=unit.note, max_tokens=self.job.max_output_tokens,
        )
        if not self.model.supports_schema:
            request.json_schema = None
        return request

    async def _settle(self, unit: WorkUnit, raw: dict, errors: list[str], index: int | None,
                      fixed: dict | None, note: str | None) -> int:
        """Emit the final state of a row sent for correction; return the number of new rows."""
        if fixed is not None and all(fixed.get(n) == raw.get(n) for n in self.job.spec.column_names()):
            fixed, note = None, "the re-ask answer repeated the same values"
        if fixed is not None:
            values, new_errors = validate_row(self.row_model, fixed)
            if not fixed.get(QUOTE_FIELD):
                fixed = {**fixed, QUOTE_FIELD: raw.get(QUOTE_FIELD)}
            source, extra = fixed, {"replaced": self._original_values(raw)}
        else:
            values, new_errors = self._original_values(raw), errors + ([note] if note else [])
            source, extra = raw, {"reask_note": note}
        if index is None:
            await self.queue.put(self._make_row(unit, source, values, new_errors, True, **extra))
            return 1
        await self.queue.put(self._make_row(unit, source, values, new_errors, True, index=index,
                                            cls=RowCorrected, **extra))
        return 0

    async def _flush_invalid(self, unit, invalid, reason: str) -> None:
        for raw, errors, index in invalid:
            await self._settle(unit, raw, errors, index, None, f"not re-asked: {reason}" if reason else None)
        invalid.clear()

    async def _reask(self, unit: WorkUnit, invalid: list[tuple[dict, list[str], int | None]],
                     warnings: list[str]) -> int:
        doc = self.job.documents[unit.document]
        request = build_reask_request(
            self.job.spec, self.job.instructions,
            None if unit.native else unit.chunk.text,
            invalid=[(raw, errors) for raw, errors, _ in invalid],
            parts=doc.parts(native=True) if unit.native else None,
            note=unit.note, max_tokens=self.job.max_output_tokens,
        )
        if not self.model.supports_schema:
            request.json_schema = None
        parser = RowStreamParser()

        async def ignore(rows):
            return None

        try:
            await self._stream(request, parser, ignore)
            corrected = parser.finish().rows
        except asyncio.CancelledError:
            raise
        except Exception as e:
            count = sum(1 for *_, index in invalid if index is None)
            self.failed_calls.setdefault(unit.index, []).append(f"the re-ask failed: {_error_message(e)}")
            await self._flush_invalid(unit, invalid, f"the re-ask failed ({_error_message(e)})")
            return count
        outcomes, problems = match_corrections([raw for raw, _, _ in invalid], corrected,
                                               reask_ids(len(invalid)))
        warnings.extend(problems)
        count = 0
        for (raw, errors, index), outcome in zip(invalid, outcomes):
            count += await self._settle(unit, raw, errors, index, outcome.fixed, outcome.note)
        return count


def _excerpt(text: str, limit: int = 300) -> str:
    text = " ".join((text or "").split())
    if not text:
        return "nothing"
    return json.dumps(text[:limit] + ("…" if len(text) > limit else ""), ensure_ascii=False)


def _error_message(e: BaseException) -> str:
    if isinstance(e, LLMSuiteError):
        return str(e)
    return f"{type(e).__name__}: {e}"


async def run_extraction(gateway, job: ExtractionJob, *, actor: dict | None = None,
                         ref: str | None = None) -> AsyncIterator[ExtractionEvent]:
    """Run ``job`` through ``gateway`` and yield events as they happen.

    Raises (before yielding anything) ``CapabilityError``/``ConfigError`` when
    the model cannot do the job, ``BudgetError`` when the estimate is over the
    caps, ``ValueError`` when there is nothing to extract.
    """
    model = _resolve_model(gateway, job)
    units = pending_units(job, model)
    est = _estimate_units(job, model, units)
    check_budget(job, est)
    yield RunStarted(chunks_total=len(units), estimate=est, model_id=model.model_id)
    modes = [mode_for(doc, job.read_as, model, job.native_pdfs) for doc in job.documents]
    read_any = False
    async for event in read_documents(job.documents, modes, job.ocr_limits or OcrLimits()):
        read_any = True
        yield event
    if read_any:  # OCR text is planned like any text: the number of parts may change
        planned = len(units)
        units = pending_units(job, model)
        if len(units) != planned:
            yield RunStarted(chunks_total=len(units), estimate=est, model_id=model.model_id)
    run = _Run(gateway, job, model, units, actor, ref)
    semaphore = asyncio.Semaphore(max(1, int(job.concurrency)))
    tasks = [asyncio.create_task(run.run_unit(u, semaphore), name=f"extract-chunk-{u.index}") for u in units]
    remaining = set(tasks)
    ok = failed = 0
    states: dict[int, str] = {}
    finished = False

    def on_done(task: asyncio.Task) -> None:
        remaining.discard(task)
        if not task.cancelled() and task.exception() is not None:
            run.queue.put_nowait(("crash", task, task.exception()))
        if not remaining:
            run.queue.put_nowait(None)

    for t in tasks:
        t.add_done_callback(on_done)
    try:
        while True:
            item = await run.queue.get()
            if item is None:
                if run.queue.empty():
                    break
                run.queue.put_nowait(None)  # drain what arrived first
                continue
            if isinstance(item, tuple):  # a bug in a chunk task: report it as a failed chunk
                _, task, exc = item
                unit = units[tasks.index(task)]
                item = ChunkFailed(unit.to_dict(job.documents), _error_message(exc), type(exc).__name__)
            if isinstance(item, ChunkDone):
                ok += 1
            elif isinstance(item, ChunkFailed):
                failed += 1
            elif isinstance(item, RowEvent):  # a correction replaces its row's earlier state
                states[item.index] = "invalid" if not item.valid else "duplicate" if item.duplicate else "valid"
            yield item
        finished = True
        valid, invalid_rows, duplicates = (sum(1 for s in states.values() if s == k)
                                           for k in ("valid", "invalid", "duplicate"))
        cost = model.estimate_cost(run.usage.input_tokens, run.usage.output_tokens)
        yield RunFinished(
            usage=asdict(run.usage), cost=None if cost is None else round(cost, 6),
            chunks_ok=ok, chunks_failed=failed, rows_valid=valid, rows_invalid=invalid_rows,
            rows_duplicate=duplicates,
        )
    finally:
        if not finished:
            for t in tasks:
                t.cancel()
        pending = [t for t in tasks if not t.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
