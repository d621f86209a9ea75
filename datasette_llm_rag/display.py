"""What a reporter reads about a hit: the table's title, the row's label, how close it is.

Retrieval returns table names, primary keys, an optional stored title and
scores. Pages show instead the table's metadata title (falling back to its
name), the row's label (the title the index stored from ``title_column``,
else the table's ``label_column`` as Datasette picks it, else "Row <key>")
and how relevant it is: the reranker's score when the list was reranked
(the number that orders it), else words only; the raw numbers stay available
as a tooltip.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from datasette_llm_core.sql import quote_identifier


# ------------------------------------------------------------------ relevance (pure)
def relevance(vector_score: float | None, fts_rank: int | None,
              score: float | None = None, reranked: float | None = None) -> tuple[str, str]:
    """(plain words shown on the page, the numbers for a tooltip).

    A reranked hit shows its calibrated reranker score ("relevance 87%"),
    the score that orders the list, so the numbers read down in order. Other
    hits show words only: their cosine similarity does not order the list
    (the fusion does), so it stays in the tooltip.
    """
    parts = []
    if reranked is not None:
        parts.append(f"relevance {round(max(0.0, min(1.0, float(reranked))) * 100)}%")
    elif vector_score is not None:
        parts.append("close in meaning")
    if fts_rank is not None:
        parts.append("contains your words")
    shown = " · ".join(parts) or "matched"
    numbers = []
    if reranked is not None:
        numbers.append(f"reranker score {float(reranked):.3f} (orders the list)")
    if vector_score is not None:
        numbers.append(f"cosine similarity {float(vector_score):.3f}")
    if fts_rank is not None:
        numbers.append(f"keyword rank {int(fts_rank)}")
    if score is not None:
        numbers.append(f"fused rank score {float(score):.4f}"
                       + ("" if reranked is not None else " (orders the list)"))
    return shown, "; ".join(numbers)


def split_strong_weak(items: Iterable[Any], relevant=lambda item: item["relevant"]) -> tuple[list, list]:
    """Strong matches first, weaker ones after, each keeping its order."""
    strong, weak = [], []
    for item in items:
        (strong if relevant(item) else weak).append(item)
    return strong, weak


# ------------------------------------------------------------------ times (pure)
def relative_time(ts: float, now: float | None = None) -> str:
    """``ts`` (unix time) as "just now", "5 minutes ago", "3 days ago"."""
    delta = (time.time() if now is None else now) - float(ts)
    if delta < 0:
        return "just now" if delta > -60 else "in the future (check the server clock)"
    for unit, seconds in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if delta >= seconds:
            n = int(delta // seconds)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def format_time(ts: float, *, iso: bool = False) -> str:
    """``ts`` as "2026-11-21 07:40 UTC" (or ISO 8601 for ``<time datetime>``)."""
    fmt = "%Y-%m-%dT%H:%M:%SZ" if iso else "%Y-%m-%d %H:%M UTC"
    return time.strftime(fmt, time.gmtime(float(ts)))


# ------------------------------------------------------------------ titles and labels
async def table_title(datasette, database: str, table: str) -> str:
    """The table's ``title`` from metadata, or its name."""
    meta: dict = {}
    getter = getattr(datasette, "get_resource_metadata", None)  # Datasette 1.0
    try:
        if getter is not None:
            meta = await getter(database, table) or {}
        else:
            meta = datasette.table_metadata(database, table) or {}
    except Exception:  # noqa: BLE001 - a title is decoration; never fail a page for it
        meta = {}
    title = meta.get("title")
    return str(title) if title else table


async def table_titles(datasette, database: str, tables: Iterable[str]) -> dict[str, str]:
    return {t: await table_title(datasette, database, t) for t in dict.fromkeys(tables)}


async def label_column(datasette, database: str, table: str,
                       title_column: str | None = None) -> str | None:
    """The column that names a row: Datasette's ``label_column`` (explicit in
    metadata, or a ``name``/``title`` column), else the index's ``title_column``."""
    db = datasette.databases[database]
    try:
        columns = set(await db.table_columns(table))
        column = await db.label_column_for_table(table)
    except Exception:  # noqa: BLE001 - a missing table or odd schema: no label
        return None
    if column in columns:
        return column
    return title_column if title_column in columns else None


async def row_label(datasette, database: str, table: str, pk_values: list,
                    column: str | None) -> str | None:
    """The row's value in ``column`` (looked up by primary key), if any."""
    if not column:
        return None
    db = datasette.databases[database]
    pks = await db.primary_keys(table) or ["rowid"]
    if len(pks) != len(pk_values):
        return None
    where = " and ".join(f"{quote_identifier(c)} = ?" for c in pks)
    sql = (f"select {quote_identifier(column)} from {quote_identifier(table)} "
           f"where {where} limit 1")
    try:
        rows = (await db.execute(sql, list(pk_values))).rows
    except Exception:  # noqa: BLE001 - the row may have gone; fall back to the key
        return None
    if not rows or rows[0][0] in (None, ""):
        return None
    return str(rows[0][0])


class Labeller:
    """Labels and table titles for hits of one database, looked up once per table."""

    def __init__(self, datasette, database: str, title_columns: dict[str, str | None] | None = None):
        self.datasette = datasette
        self.database = database
        self.title_columns = title_columns or {}
        self._titles: dict[str, str] = {}
        self._columns: dict[str, str | None] = {}

    async def table_title(self, table: str) -> str:
        if table not in self._titles:
            self._titles[table] = await table_title(self.datasette, self.database, table)
        return self._titles[table]

    async def found_label(self, table: str, pk_values: list,
                          stored_title: str | None = None) -> str | None:
        """The stored title, else the row's label column value; ``None`` if neither."""
        if stored_title not in (None, ""):
            return str(stored_title)
        if table not in self._columns:
            self._columns[table] = await label_column(
                self.datasette, self.database, table, self.title_columns.get(table))
        return await row_label(self.datasette, self.database, table, pk_values,
                               self._columns[table])

    async def label(self, table: str, pk_values: list, stored_title: str | None) -> str:
        found = await self.found_label(table, pk_values, stored_title)
        return found or "Row " + ", ".join(str(v) for v in pk_values)

    async def describe(self, row: dict) -> dict:
        """A hit as JSON (``RowHit.as_json()``) plus ``label``, ``table_title``,
        ``relevance`` (words) and ``relevance_detail`` (the numbers)."""
        words, numbers = relevance(row.get("vector_score"), row.get("fts_rank"), row.get("score"),
                                   row.get("rerank_score"))
        return {
            **row,
            "label": await self.label(row["table"], row.get("pk_values") or [row.get("pk")],
                                      row.get("title")),
            "table_title": await self.table_title(row["table"]),
            "relevance": words,
            "relevance_detail": numbers,
        }
