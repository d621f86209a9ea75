"""What the review grid shows for each row, and where a run stands, in words.

Pure functions over stored rows and runs (no Datasette imports): the run page
renders their output, and ``static/llm_extract.js`` builds the same controls
for rows that stream in (keep the two in step).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

#: Decision radio values, in the order shown.
DECISIONS = (("accept", "Accept"), ("reject", "Reject"), ("pending", "Undecided"))
BOOLEAN_OPTIONS = (("", "(blank)"), ("true", "Yes"), ("false", "No"))


def display(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _iso_date(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return _dt.date.fromisoformat(value).isoformat() == value
    except ValueError:
        return False


def control(column: dict, value: Any) -> dict:
    """The form control for one value of ``column``: the right kind for its type, and
    never one that would hide or silently drop a value it cannot hold (an invalid
    date stays a text box showing it; an unknown choice stays selected)."""
    ctype = column.get("type", "text")
    text = display(value)
    if ctype == "date":
        if value is None or _iso_date(value):
            return {"kind": "input", "type": "date", "value": text}
        return {"kind": "input", "type": "text", "value": text, "placeholder": "YYYY-MM-DD"}
    if ctype in ("integer", "number"):
        return {"kind": "input", "type": "text", "value": text,
                "inputmode": "numeric" if ctype == "integer" else "decimal"}
    if ctype in ("boolean", "choice"):
        options = list(BOOLEAN_OPTIONS) if ctype == "boolean" else [("", "(blank)")] + [
            (c, c) for c in column.get("choices") or []]
        if text not in {v for v, _ in options}:
            options.append((text, f"{text} (not allowed)"))
        return {"kind": "select", "value": text, "options": options}
    return {"kind": "textarea", "value": text}


def default_decision(row: dict) -> str:
    """Every row starts Undecided; a decision already recorded (an insert that was
    undone, or a form shown again with errors) is kept."""
    return {"accepted": "accept", "rejected": "reject"}.get(row.get("decision"), "pending")


def row_view(row: dict, columns: list[dict], *, editable: bool) -> dict:
    """A stored row as the grid shows it: one cell per column with its control, the
    value the reviewer replaced and the value a re-ask replaced."""
    model_values = row["values"] or {}
    edited = row.get("edited")
    shown = edited or model_values
    replaced = row.get("replaced")
    cells = []
    for n, column in enumerate(columns):
        name = column["name"]
        value = shown.get(name)
        cell = {"n": n, "name": name, "type": column.get("type", "text"), "value": value,
                "text": display(value), "control": control(column, value)}
        if edited is not None and edited.get(name) != model_values.get(name):
            cell["model_value"] = display(model_values.get(name))
        if replaced is not None and replaced.get(name) != model_values.get(name):
            cell["reask_from"] = display(replaced.get(name))
        cells.append(cell)
    return {**row, "cells": cells, "editable": editable, "default_decision": default_decision(row),
            "changed_by_reviewer": [c["name"] for c in cells if "model_value" in c]}


# --- where a run stands ---------------------------------------------------------------

def run_state(run: dict, counts: dict | None = None) -> tuple[str, str]:
    """``(key, words)`` saying truthfully where a run stands, for the runs list and page.

    ``counts``: ``{"rows", "pending", "inserted", "rejected"}`` of the run's rows.
    """
    counts = counts or {}
    rows = counts.get("rows", 0)
    pending = counts.get("pending", 0)
    inserted = counts.get("inserted", 0)
    status = run["status"]
    awaiting = f"{pending} of {rows} row(s) awaiting review" if pending else ""
    if status in ("pending", "running"):
        return "extracting", "extracting" + (f": {rows} row(s) so far" if rows else "")
    if status == "done":
        return ("awaiting-review", f"awaiting review: {rows} row(s)") if rows else ("empty", "done: no rows found")
    if status in ("failed", "cancelled", "interrupted"):
        return status, status + (f"; {awaiting}" if pending else "")
    if status in ("inserted", "inserting"):
        if pending:
            return "partly-inserted", f"partly inserted: {inserted} row(s) inserted, {awaiting}"
        return "inserted", f"inserted: {inserted} row(s)" + (
            f", {counts.get('rejected', 0)} rejected" if counts.get("rejected") else "")
    if status == "reviewed":
        return "reviewed", "reviewed: every row rejected, nothing inserted"
    if status in ("undone", "undoing"):
        return "undone", "undone: its rows were deleted; review them and insert again if you want"
    if status == "discarded":
        return "discarded", "discarded"
    return status, status
