"""Enrich existing rows: one model call per selected row fills new columns.

Pure logic, no Datasette imports: the gateway is passed in. A row becomes a
small document (its source columns, each labelled), the request is the
extraction prompt with a note that the document is one row, the answer is
validated with the same typed row model as extraction, rows that fail
validation are re-asked once (``reask.match_corrections``), and the quote
must be found in that row's own text (``chunking.locate_quote``).

The table page's filter becomes SQL through Datasette's own ``Filters``
(built by the caller, see ``enrich_jobs.selection_sql``); here only the
parts that need no Datasette: the column checks and the request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from datasette_llm_core.types import Usage

from .chunking import locate_quote
from .prompts import PROMPT_VERSION, build_reask_request, build_request, reask_ids
from .reask import match_corrections
from .schema import QUOTE_FIELD, TableSpec, row_model, validate_row
from .streamparse import RowStreamParser

#: Logged with every call of an enrichment (the extraction prompt plus the one-row note).
ENRICH_PROMPT_VERSION = f"enrich-v1+{PROMPT_VERSION}"
PURPOSE = "extract"
#: Longest text of one source cell sent to the model (longer cells are cut, and say so).
MAX_CELL_CHARS = 20_000
#: Rows reviewed before the rest runs, unless the job says otherwise.
DEFAULT_SAMPLE = 20

ONE_ROW_NOTE = (
    "The document is one row of a database table: each of its columns is labelled [column name]. "
    "Return exactly one row with the values for this record (null where the row does not say)."
)
MANY_ROWS_NOTE = (
    "The document is one row of a database table: each of its columns is labelled [column name]. "
    "It may hold several records: return one row per record, and {\"rows\": []} if it holds none."
)


class EnrichError(ValueError):
    """Bad enrichment settings; the message says what to fix."""


def check_columns(table_columns: list[str], source: list[str], spec: TableSpec, *, linked: bool,
                  refillable: set[str] = frozenset()) -> None:
    """Source columns must exist; new columns must not (unless they go to a linked table),
    except ``refillable`` ones: columns earlier enrichment jobs added (a re-run, ``--since-last``)."""
    if not source:
        raise EnrichError("Choose at least one source column for the model to read.")
    missing = [c for c in source if c not in table_columns]
    if missing:
        raise EnrichError(f"The table has no column(s) {', '.join(map(repr, missing))}: pick source columns it has.")
    if set(source) & set(spec.column_names()):
        raise EnrichError("A column cannot be both read and filled: pick other source columns.")
    if not linked:
        folded = {c.casefold() for c in table_columns}
        again = {c.casefold() for c in refillable}
        clash = [c for c in spec.column_names() if c.casefold() in folded and c.casefold() not in again]
        if clash:
            raise EnrichError(
                f"The table already has column(s) {', '.join(map(repr, clash))}: give the new columns other names."
            )


#: How a URL's path must end to be sent as an image or a PDF by URL (query and fragment aside).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")
PDF_SUFFIXES = (".pdf",)
#: What a column marked as holding file URLs holds (``url_columns``).
URL_KINDS = ("image", "pdf")


def file_url_kind(value, marked: str | None = None) -> str | None:
    """``"image"`` or ``"pdf"`` when the cell ``value`` is one ``https://`` URL to send by URL
    (the provider fetches it, the suite never does), else None (the cell stays text).

    The kind comes from the column's mark (``url_columns``), else from how the URL's
    path ends. Only https: the vendors fetch public https URLs, and a plain-http
    address can be changed in transit between the host and the vendor."""
    from urllib.parse import urlsplit

    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text.lower().startswith("https://") or any(c.isspace() for c in text) or len(text) > 2048:
        return None
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if not parts.hostname:
        return None
    if marked in URL_KINDS:
        return marked
    path = parts.path.lower()
    if path.endswith(IMAGE_SUFFIXES):
        return "image"
    if path.endswith(PDF_SUFFIXES):
        return "pdf"
    return None


def row_files(row: dict, source: list[str], url_columns: dict | None = None) -> list:
    """Images and PDFs in the source columns, as model input parts: blobs sent as data,
    ``https://`` URLs of images and PDFs (or any https URL in a column marked in
    ``url_columns``) sent as URL parts for the provider to fetch (the suite never fetches
    a URL). The model must read images / PDFs (by URL: ``accepts_urls``)."""
    from urllib.parse import unquote, urlsplit

    from datasette_llm_core.types import ImagePart, ImageUrlPart, PdfPart, PdfUrlPart

    from .documents import sniff

    out = []
    for name in source:
        value = row.get(name)
        if isinstance(value, bytes):
            kind = sniff(value)
            if kind and kind.startswith("image/"):
                out.append(ImagePart(value, kind))
            elif kind == "application/pdf":
                out.append(PdfPart(value, f"{name}.pdf"))
        elif (kind := file_url_kind(value, (url_columns or {}).get(name))) is not None:
            url = value.strip()
            if kind == "image":
                out.append(ImageUrlPart(url))
            else:
                filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1])[:100] or f"{name}.pdf"
                out.append(PdfUrlPart(url, filename))
    return out


def row_document(row: dict, source: list[str], url_columns: dict | None = None) -> str:
    """The text the model reads for one row: each source column labelled (an image or PDF
    blob, or a URL sent by URL, is named here and attached, see ``row_files``)."""
    from datasette_llm_core.calllog import redact_url

    from .documents import sniff

    parts = []
    for name in source:
        value = row.get(name)
        if value is None:
            continue
        kind = file_url_kind(value, (url_columns or {}).get(name))
        if kind is not None:
            # the model gets the URL itself as a part; here it is named without credentials
            parts.append(f"[{name}]\n(attached {kind} from {redact_url(value.strip())})")
            continue
        if isinstance(value, bytes):
            kind = sniff(value)
            text = (f"(attached {kind}, {len(value)} bytes)" if kind and kind != "text/plain"
                    else f"(binary, {len(value)} bytes)")
        else:
            text = str(value)
        if len(text) > MAX_CELL_CHARS:
            text = text[:MAX_CELL_CHARS] + " [cut]"
        parts.append(f"[{name}]\n{text}")
    return "\n\n".join(parts)


def row_instructions(instructions: str, *, linked: bool) -> str:
    """The journalist's instructions after the one-row (or several-records) note."""
    note_text = MANY_ROWS_NOTE if linked else ONE_ROW_NOTE
    return note_text + (f"\n{instructions.strip()}" if instructions and instructions.strip() else "")


def build_row_request(spec: TableSpec, instructions: str, document: str, *, linked: bool,
                      max_tokens: int = 1024, files: list | None = None):
    return build_request(spec, row_instructions(instructions, linked=linked), document, parts=files or None,
                         note="one table row", max_tokens=max_tokens)


@dataclass
class RowResult:
    """What the model gave for one source row."""

    #: One dict per record (exactly one unless ``linked``): values, quote, quote_found, valid, errors.
    records: list[dict] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None
    model_id: str | None = None
    #: The call failed (after the gateway's retries and fallbacks): nothing usable.
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.error is None and all(r["valid"] for r in self.records) and (
            bool(self.records))

    def to_json(self) -> str:
        return json.dumps(self.records, ensure_ascii=False, default=str)


def _record(values: dict, raw: dict, errors: list[str], document: str, files: list | None = None,
            replaced: dict | None = None) -> dict:
    """``quote_found`` is None when the row's source is an attached image or PDF: nothing to check it in.
    ``replaced``: the values the model first gave, when a re-ask corrected them (the review shows them)."""
    quote = raw.get(QUOTE_FIELD)
    quote = quote.strip() if isinstance(quote, str) and quote.strip() else None
    found = bool(quote) and locate_quote(document, quote) is not None
    if files and not found:
        found = None
    record = {"values": values, "quote": quote, "quote_found": found, "valid": not errors, "errors": errors}
    if replaced is not None:
        record["replaced"] = replaced
    return record


def _parse(text: str) -> tuple[list[dict], list[str]]:
    parser = RowStreamParser()
    parser.feed(text or "")
    result = parser.finish()
    return result.rows, list(result.errors)


async def _ask(gateway, request, model_id: str | None, extra: dict) -> tuple[str, Usage, str | None]:
    response = await gateway.complete(request, purpose=PURPOSE, prompt_version=ENRICH_PROMPT_VERSION,
                                      model_id=model_id, **extra)
    return response.text or "", response.usage or Usage(), response.model_id


async def enrich_row(gateway, spec: TableSpec, instructions: str, document: str, *, model_id: str | None,
                     linked: bool = False, actor: dict | None = None, ref: str | None = None,
                     budget: Any = None, max_tokens: int = 1024, reask: bool = True,
                     files: list | None = None) -> RowResult:
    """Ask the model about one row; never raises for a model failure (``RowResult.error``)."""
    out = RowResult()
    if not document.strip() and not files:
        out.error = "The row's source columns are empty: nothing to read."
        return out
    extra = {k: v for k, v in {"actor": actor, "ref": ref, "budget": budget}.items() if v is not None}
    request = build_row_request(spec, instructions, document, linked=linked, max_tokens=max_tokens, files=files)
    try:
        text, usage, used = await _ask(gateway, request, model_id, extra)
    except Exception as e:  # noqa: BLE001 - reported on the row, the job goes on
        out.error = str(e) or type(e).__name__
        return out
    out.usage, out.model_id = usage, used
    return await finish_answer(out, gateway, spec, instructions, document, text, model_id=model_id,
                               linked=linked, extra=extra, max_tokens=max_tokens, reask=reask, files=files)


async def finish_answer(out: RowResult, gateway, spec: TableSpec, instructions: str, document: str, text: str, *,
                        model_id: str | None, linked: bool = False, extra: dict | None = None,
                        max_tokens: int = 1024, reask: bool = True, files: list | None = None) -> RowResult:
    """Parse, validate and (once) re-ask the model's answer for one row: the same for a direct call
    and a provider batch's result (its re-ask is a direct call)."""
    extra = extra or {}
    model = row_model(spec)
    rows, problems = _parse(text)
    out.warnings.extend(problems)
    if not rows:
        if problems and not linked:
            out.error = "The model's answer could not be read as a row: " + "; ".join(problems)
        elif not linked:
            out.records = [_record({n: None for n in spec.column_names()}, {}, ["the model found no values"],
                                   document)]
        return out
    if not linked and len(rows) > 1:
        out.warnings.append(f"the model gave {len(rows)} rows for one row; the first is used")
        rows = rows[:1]
    checked = [(raw, *validate_row(model, raw)) for raw in rows]
    invalid = [(i, raw, errors) for i, (raw, _, errors) in enumerate(checked) if errors]
    fixes: dict[int, dict] = {}
    if invalid and reask:
        ids = reask_ids(len(invalid))
        again = build_reask_request(spec, row_instructions(instructions, linked=linked), document,
                                    invalid=[(raw, e) for _, raw, e in invalid], parts=files or None,
                                    note="one table row", max_tokens=max_tokens)
        try:
            text2, usage2, _ = await _ask(gateway, again, model_id, extra)
            out.usage = out.usage + usage2
            corrected, _ = _parse(text2)
            outcomes, warnings = match_corrections([raw for _, raw, _ in invalid], corrected, ids)
            out.warnings.extend(warnings)
            for (i, raw, _), outcome in zip(invalid, outcomes):
                if outcome.fixed is not None:
                    fixed = dict(outcome.fixed)
                    if not fixed.get(QUOTE_FIELD):
                        fixed[QUOTE_FIELD] = raw.get(QUOTE_FIELD)
                    fixes[i] = fixed
        except Exception as e:  # noqa: BLE001
            out.warnings.append(f"the re-ask failed: {e}")
    for i, (raw, values, errors) in enumerate(checked):
        replaced = None
        if i in fixes:
            replaced = {n: raw.get(n) for n in spec.column_names()}
            raw = fixes[i]
            values, errors = validate_row(model, raw)
        if not errors and all(v is None for v in values.values()):
            errors = ["the model found no values"]
        out.records.append(_record(values, raw, errors, document, files, replaced))
    return out


def estimate_rows(spec: TableSpec, instructions: str, documents: list[str], *, linked: bool,
                  max_tokens: int = 1024) -> dict:
    """Rough tokens for sending ``documents`` (characters / 4, as extraction estimates)."""
    input_tokens = output_tokens = 0
    for doc in documents:
        request = build_row_request(spec, instructions, doc, linked=linked, max_tokens=max_tokens)
        input_tokens += request.text_length() // 4 + 1
        output_tokens += min(max_tokens, 30 + 20 * len(spec.columns) + min(len(doc) // 16, 200))
    return {"input_tokens": input_tokens, "output_tokens": output_tokens}
