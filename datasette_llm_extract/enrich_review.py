"""Enrichment review in the extraction grid: the grid rows and source blocks of a job's
answered items, and the grid's form mapped back to item decisions.

Pure functions (no Datasette imports). One grid row per extracted record: one per
source row when the job fills new columns, one per record (grouped by source row) when
it fills a linked table. The form's field names are the run page's
(``row-<idx>-decision``, ``row-<idx>-col-<n>``); ``idx`` is the row's place in the list
built here, and ``row-<idx>-item`` names the item and record it showed, so a form for a
list that changed since, or one naming a row the job does not have, is refused whole
instead of deciding the wrong row.
"""

from __future__ import annotations

import re
from typing import Callable

from .chunking import locate_quote
from .documents import canonical_text
from .review import row_view

#: Decision radio values of the grid -> decisions stored on items.
DECISION_WORDS = {"accept": "accepted", "reject": "rejected", "pending": "pending"}
_DECISION_FIELD = re.compile(r"^row-(\d+)-decision$")


class ReviewError(ValueError):
    """A review form that cannot be applied; nothing was saved."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _label(item: dict) -> str:
    pk = item.get("pk")
    return "Row " + (", ".join(str(v) for v in pk) if pk else str(item["row_id"]))


def _record_decision(item: dict, k: int) -> tuple[str, dict | None]:
    """(decision, reviewer's values) of record ``k`` of a one-to-many item."""
    review = item.get("review")
    if review and k < len(review):
        return review[k].get("decision", "pending"), review[k].get("values")
    record = item["records"][k]
    return (item["decision"] if record.get("valid") else "pending"), None


def grid(items: list[dict], documents: dict[int, str | None], columns: list[dict], *, linked: bool,
         editable: bool, row_href: Callable[[dict], str | None] = lambda item: None,
         model_id: str | None = None) -> tuple[list[dict], list[dict]]:
    """``(rows, sources)`` for the grid include and the source blocks include.

    ``documents``: rowid -> the text the model read for that row (``enrich.row_document``
    of the row as it is now; None when the row is gone). Quote offsets are computed on
    exactly the text shown (canonical line breaks, as the page's ``<pre>`` holds it).
    A row answered by another model than the job's ``model_id`` (a fallback) says which."""
    rows: list[dict] = []
    sources: list[dict] = []
    for item in items:
        text = documents.get(item["row_id"])
        doc_idx = None
        href = row_href(item)
        if text is not None:
            doc_idx = len(sources)
            text = canonical_text(text)
            sources.append({"idx": doc_idx, "name": _label(item), "href": href, "text": text,
                            "details": f"{len(text)} characters read by the model"})
        records = item["records"] if item["status"] == "done" else []
        fallback = item.get("model_id") if item.get("model_id") != model_id else None
        base = {"row_id": item["row_id"], "href": href, "document": doc_idx, "model_id": fallback,
                "written": bool(item["written"]), "duplicate": None}
        if not records:
            why = item.get("error") or ("the model found no records in this row" if linked else "no answer")
            rows.append(row_view({**base, "idx": len(rows), "ref": f"{item['row_id']}:-", "label": _label(item),
                                  "values": {}, "edited": None, "decision": "failed", "valid": False,
                                  "errors": [], "failure": why, "source_quote": None, "quote_found": None,
                                  "quote_start": None, "quote_end": None, "decided_text": "nothing to write"},
                                 columns, editable=False))
            continue
        shown = records if linked else records[:1]
        for k, record in enumerate(shown):
            if linked:
                decision, edited = _record_decision(item, k)
                label = f"{_label(item)}, record {k + 1} of {len(shown)}"
            else:
                decision, edited = item["decision"], item.get("edited")
                label = _label(item)
            quote = record.get("quote")
            span = locate_quote(text, quote) if text and quote else None
            found = record.get("quote_found")
            row = {**base, "idx": len(rows), "ref": f"{item['row_id']}:{k}", "label": label, "record": k,
                   "values": record.get("values") or {}, "edited": edited, "replaced": record.get("replaced"),
                   "reask": "corrected" if record.get("replaced") is not None else None,
                   "decision": decision, "valid": bool(record.get("valid")), "errors": record.get("errors") or [],
                   "source_quote": quote, "quote_found": None if found is None else span is not None,
                   "quote_start": span[0] if span else None, "quote_end": span[1] if span else None,
                   "decided_text": ("written" if decision == "accepted" else decision) if item["written"] else None}
            rows.append(row_view(row, columns, editable=editable and not item["written"]))
    return rows, sources


def _first(form: dict, key: str) -> str | None:
    values = form.get(key)
    return values[0] if values else None


def form_decisions(form: dict[str, list[str]], rows: list[dict], names: list[str]) -> dict[int, dict]:
    """``{idx: {"decision": accepted|rejected|pending, "values": {column: text}}}`` from the grid's
    form (``parse_qs`` shape), checked against the rows the page showed (``grid``)."""
    by_idx = {r["idx"]: r for r in rows}
    out: dict[int, dict] = {}
    for key in form:
        m = _DECISION_FIELD.match(key)
        if not m:
            continue
        idx = int(m.group(1))
        row = by_idx.get(idx)
        if row is None:
            raise ReviewError(f"Row {idx + 1} is not part of this job's review: reload the page. Nothing was saved.")
        if _first(form, f"row-{idx}-item") != row["ref"]:
            raise ReviewError("The rows of this review changed since the page was shown: reload it and decide "
                              "again. Nothing was saved.", 409)
        if not row["editable"]:
            raise ReviewError(f"{row['label']} cannot be decided now (it was written, or has nothing to write): "
                              "reload the page. Nothing was saved.", 409)
        decision = DECISION_WORDS.get(_first(form, key) or "")
        if decision is None:
            raise ReviewError(f"{row['label']}: the decision must be accept, reject or pending. Nothing was saved.")
        values = {name: _first(form, f"row-{idx}-col-{n}") for n, name in enumerate(names)
                  if f"row-{idx}-col-{n}" in form}
        out[idx] = {"decision": decision, "values": values}
    return out


def item_decision(review: list[dict]) -> str:
    """A one-to-many item is written once every record is decided: pending while any is
    undecided, accepted when some record is accepted, else rejected."""
    decisions = [r.get("decision") for r in review]
    if "pending" in decisions:
        return "pending"
    return "accepted" if "accepted" in decisions else "rejected"


def submitted(values: dict, names: list[str], posted: dict) -> dict:
    """The model's values overlaid with the posted text (blank text: null)."""
    out = {}
    for name in names:
        value = posted[name] if name in posted else values.get(name)
        out[name] = None if isinstance(value, str) and not value.strip() else value
    return out
