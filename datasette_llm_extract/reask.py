"""Match a re-ask's corrected rows to the rows they correct.

Rows that failed validation are sent back to the model under ids ("R1",
"R2"... see ``prompts.reask_ids``) that each correction must echo in
``ROW_ID_FIELD``. Real models reorder, add, leave out and repeat rows, or
answer with every row of the document, so nothing is matched by position:

- a correction is matched by its id (``"R2"``, ``"r2"``, ``2`` all count);
- a correction without a known id is matched by its quote, when exactly one
  row sent has that quote and no correction of its own;
- a row with no correction, or with several that disagree, keeps the model's
  first values (still invalid) and says why;
- corrections that match no row sent are not used, and counted in a warning.

No Datasette imports here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .schema import QUOTE_FIELD, ROW_ID_FIELD

NO_CORRECTION = "the re-ask answer had no correction for this row, so the model's first values are kept"


@dataclass
class Outcome:
    """What became of one row sent for correction."""

    #: The corrected row (without its id), or None when there is none to use.
    fixed: dict | None
    #: Why there is none (None when ``fixed`` is set).
    note: str | None = None


def _row_id(value, ids: list[str]) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    text = str(value).strip()
    m = re.fullmatch(r"(?i)r?\s*(\d+)", text)
    candidate = f"R{int(m.group(1))}" if m else text
    return candidate if candidate in ids else None


def _quote(row: dict) -> str | None:
    quote = row.get(QUOTE_FIELD)
    return " ".join(quote.split()) if isinstance(quote, str) and quote.strip() else None


def _same(rows: list[dict]) -> bool:
    dumped = {json.dumps(r, sort_keys=True, default=str) for r in rows}
    return len(dumped) == 1


def match_corrections(originals: list[dict], corrections: list[dict],
                      ids: list[str]) -> tuple[list[Outcome], list[str]]:
    """One ``Outcome`` per original row (same order) and warnings about the answer."""
    by_id: dict[str, list[dict]] = {i: [] for i in ids}
    loose: list[dict] = []
    for correction in corrections:
        if not isinstance(correction, dict):
            continue
        row_id = _row_id(correction.get(ROW_ID_FIELD), ids)
        clean = {k: v for k, v in correction.items() if k != ROW_ID_FIELD}
        if row_id is None:
            loose.append(clean)
        else:
            by_id[row_id].append(clean)
    unused = 0
    quotes = [_quote(o) for o in originals]
    for correction in loose:
        quote = _quote(correction)
        hits = [i for i, q in enumerate(quotes) if quote is not None and q == quote]
        if len(hits) == 1 and not by_id[ids[hits[0]]]:
            by_id[ids[hits[0]]].append(correction)
        else:
            unused += 1
    outcomes = []
    for row_id in ids:
        found = by_id[row_id]
        if not found:
            outcomes.append(Outcome(None, NO_CORRECTION))
        elif len(found) > 1 and not _same(found):
            outcomes.append(Outcome(None, f"the re-ask answer had {len(found)} different corrections for this "
                                          "row, so the model's first values are kept"))
        else:
            outcomes.append(Outcome(found[0]))
    warnings = []
    if unused:
        warnings.append(f"the re-ask answer had {unused} row(s) that correct no row sent for correction; "
                        "they were not used")
    return outcomes, warnings
