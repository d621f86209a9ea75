"""Uploaded files kept for review, the pages read from them, and where quotes sit.

Images and PDFs of a run are kept (in the state database, or in a configured
folder) for ``keep_documents_days`` days, within ``keep_documents_max_bytes``
for all runs together (the oldest kept files go first when a new run needs
room), so the review page can show them and their pages. The pages read
before a run (OCR or text layer: text offsets and line boxes) are kept with
the run for as long as the run. Every function takes the state ``Database``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

from datasette_llm_core.state import register_migrations

from .pages import PageLayout
from .runs import _write

DAY = 86_400.0


def _m0001_kept(conn: sqlite3.Connection) -> None:
    conn.executescript(
        """
create table if not exists llm_extract_files (
  run_id text not null, -- llm_extract_runs.id
  idx integer not null, -- llm_extract_documents.idx
  media_type text not null, -- MIME type of the bytes
  size integer not null, -- bytes
  data blob, -- the file, when kept in the state database
  path text, -- the file, when kept in documents_folder
  kept_at real not null, -- unix time stored
  keep_until real not null, -- unix time after which it is deleted
  primary key (run_id, idx)
);
create index if not exists llm_extract_files_until on llm_extract_files (keep_until);

create table if not exists llm_extract_pages (
  run_id text not null, -- llm_extract_runs.id
  document integer not null, -- llm_extract_documents.idx
  page integer not null, -- page number, 0-based
  width real, -- page width (PDF points or image pixels)
  height real, -- page height
  source text not null, -- text (PDF text layer), ocr, or none
  text_start integer, -- offset of the page's text in the document text
  text_end integer, -- end offset of the page's text
  seconds real, -- time taken to read the page
  lines_json text not null default '[]', -- [{text, box: [x0, y0, x1, y1] as page fractions, start, end}]
  primary key (run_id, document, page)
);
"""
    )
    conn.execute(
        "alter table llm_extract_rows add column quote_page integer"
        " /* page (0-based) of the document the quote is on */"
    )
    conn.execute(
        "alter table llm_extract_rows add column quote_boxes_json text"
        " /* [[x0, y0, x1, y1], ...] boxes of the quote on that page, as page fractions */"
    )


register_migrations("extract-pages", [("0001_kept_files_pages", _m0001_kept)])


def _folder_path(folder: str, run_id: str, idx: int) -> str:
    return os.path.join(folder, f"{run_id}-{idx}.bin")


def _delete(conn, rows, folder: str | None) -> int:
    for run_id, idx, path in rows:
        conn.execute("delete from llm_extract_files where run_id = ? and idx = ?", [run_id, idx])
        if path:
            try:
                os.remove(path)
            except OSError:
                pass
    return len(rows)


async def purge_expired(db, now: float | None = None) -> int:
    """Delete kept files past their date; return how many."""
    now = time.time() if now is None else now

    def fn(conn):
        with conn:
            rows = conn.execute(
                "select run_id, idx, path from llm_extract_files where keep_until <= ?", [now]
            ).fetchall()
            return _delete(conn, rows, None)

    return await _write(db, fn)


async def keep_files(db, run_id: str, files: list[tuple[int, str, bytes]], *, days: float,
                     max_bytes: int, folder: str | None = None) -> dict[int, str]:
    """Keep ``(idx, media_type, data)`` files of a run; return ``{idx: reason}`` for those
    not kept. Expired files are deleted first, then the oldest until the new ones fit."""
    if not files:
        return {}
    if days <= 0:
        return {idx: "keeping files is switched off (keep_documents_days: 0)" for idx, _, _ in files}
    now = time.time()
    total = sum(len(data) for _, _, data in files)
    if total > max_bytes:
        return {idx: f"the run's files ({total / 1e6:.1f} MB) are over keep_documents_max_bytes"
                for idx, _, _ in files}
    if folder:
        os.makedirs(folder, exist_ok=True)

    def fn(conn):
        with conn:
            expired = conn.execute(
                "select run_id, idx, path from llm_extract_files where keep_until <= ?", [now]
            ).fetchall()
            _delete(conn, expired, folder)
            used = conn.execute("select coalesce(sum(size), 0) from llm_extract_files").fetchone()[0]
            if used + total > max_bytes:
                freed, oldest = 0, []
                for run, idx, path, size in conn.execute(
                    "select run_id, idx, path, size from llm_extract_files order by kept_at, run_id, idx"
                ):
                    if used - freed + total <= max_bytes:
                        break
                    oldest.append((run, idx, path))
                    freed += size
                _delete(conn, oldest, folder)
            for idx, media_type, data in files:
                path = None
                if folder:
                    path = _folder_path(folder, run_id, idx)
                    with open(path, "wb") as f:
                        f.write(data)
                conn.execute(
                    "insert or replace into llm_extract_files (run_id, idx, media_type, size, data, path,"
                    " kept_at, keep_until) values (?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, idx, media_type, len(data), None if path else data, path, now, now + days * DAY),
                )
            return {}

    return await _write(db, fn)


async def get_file(db, run_id: str, idx: int) -> tuple[str, bytes] | None:
    """``(media_type, bytes)`` of a kept file still within its date, else None."""
    rows = await db.execute(
        "select media_type, data, path from llm_extract_files where run_id = ? and idx = ? and keep_until > ?",
        [run_id, idx, time.time()],
    )
    row = rows.first()
    if row is None:
        return None
    if row["path"]:
        try:
            with open(row["path"], "rb") as f:
                return row["media_type"], f.read()
        except OSError:
            return None
    return row["media_type"], row["data"]


async def files_of_run(db, run_id: str) -> dict[int, dict]:
    """``{idx: {size, keep_until, expired}}`` of the run's kept files (bytes not loaded)."""
    rows = await db.execute(
        "select idx, size, keep_until from llm_extract_files where run_id = ?", [run_id]
    )
    now = time.time()
    return {r["idx"]: {"size": r["size"], "keep_until": r["keep_until"], "expired": r["keep_until"] <= now}
            for r in rows.rows}


async def store_reading(db, run_id: str, document: int, text: str, layouts: list[PageLayout]) -> None:
    """After a document's pages were read: its new text (OCR pages added) and its pages."""

    def fn(conn):
        with conn:
            conn.execute("update llm_extract_documents set text = ? where run_id = ? and idx = ?",
                         [text, run_id, document])
            conn.execute("delete from llm_extract_pages where run_id = ? and document = ?", [run_id, document])
            for p in layouts:
                conn.execute(
                    "insert into llm_extract_pages (run_id, document, page, width, height, source, text_start,"
                    " text_end, seconds, lines_json) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, document, p.page, p.width, p.height, p.source, p.text_start, p.text_end,
                     p.seconds, json.dumps([line.__dict__ for line in p.lines])),
                )

    await _write(db, fn)


async def pages_of_run(db, run_id: str) -> dict[int, list[PageLayout]]:
    rows = await db.execute(
        "select * from llm_extract_pages where run_id = ? order by document, page", [run_id]
    )
    out: dict[int, list[PageLayout]] = {}
    for r in rows.rows:
        out.setdefault(r["document"], []).append(PageLayout.from_dict({
            "page": r["page"], "width": r["width"] or 0.0, "height": r["height"] or 0.0,
            "source": r["source"], "text_start": r["text_start"] or 0, "text_end": r["text_end"] or 0,
            "seconds": r["seconds"] or 0.0, "lines": json.loads(r["lines_json"] or "[]"),
        }))
    return out


async def row_places(db, run_id: str) -> dict[int, dict]:
    """``{row idx: {page, boxes}}`` of the run's rows that know their quote's page."""
    rows = await db.execute(
        "select idx, document, quote_page, quote_boxes_json from llm_extract_rows"
        " where run_id = ? and quote_page is not null", [run_id]
    )
    return {r["idx"]: {"document": r["document"], "page": r["quote_page"],
                       "boxes": json.loads(r["quote_boxes_json"] or "[]")} for r in rows.rows}
