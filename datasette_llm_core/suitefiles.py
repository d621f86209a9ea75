"""Recognise the suite's own SQLite files: the state database and search-index sidecars.

Both hold copies of private data (pasted documents, questions, call errors;
the text of every indexed row, including rows of tables a visitor may not
view), so wherever Datasette opens one (``datasette *.db``, a directory, a
published deployment, ``--crossdb``) the suite must know it by its content,
not by its file name:

- ``PRAGMA application_id``: the suite writes ``STATE_APPLICATION_ID`` into
  the state database (a migration) and ``SIDECAR_APPLICATION_ID`` into every
  sidecar it opens for writing;
- files written before those ids existed are recognised by their tables: the
  state database by ``_llm_migrations``, a sidecar by its index tables.

Pure: no Datasette import. Callers pass a ``connect`` function from the same
SQLite library Datasette uses (two copies of SQLite in one process must not
open the same file: closing one copy's descriptor drops the other's locks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote

#: "LLNS" and "LLRX" as big-endian 32-bit integers.
STATE_APPLICATION_ID = 0x4C4C4E53
SIDECAR_APPLICATION_ID = 0x4C4C5258

STATE = "state"
SIDECAR = "sidecar"

STATE_MARKER_TABLE = "_llm_migrations"
#: Tables every sidecar has had since its first migration.
SIDECAR_TABLES = frozenset({"meta", "entries", "vectors", "terms", "postings"})


@dataclass(frozen=True)
class SuiteFile:
    """What a recognised file is, and its tables (for table-level denials)."""

    kind: str  # STATE or SIDECAR
    tables: tuple[str, ...] = ()


def kind_from_schema(application_id: int, tables) -> str | None:
    """``STATE``, ``SIDECAR`` or None from a file's application id and table names."""
    if application_id == STATE_APPLICATION_ID:
        return STATE
    if application_id == SIDECAR_APPLICATION_ID:
        return SIDECAR
    names = set(tables)
    if STATE_MARKER_TABLE in names:
        return STATE
    if SIDECAR_TABLES <= names:
        return SIDECAR
    return None


def classify_connection(conn) -> SuiteFile | None:
    """Recognise the ``main`` database of an open connection (reads the schema only)."""
    application_id = conn.execute("pragma application_id").fetchone()[0]
    tables = tuple(
        row[0]
        for row in conn.execute(
            "select name from sqlite_master where type in ('table', 'view') order by name"
        )
    )
    kind = kind_from_schema(application_id, tables)
    return SuiteFile(kind, tables) if kind else None


def classify_file(path: str, connect: Callable, *, immutable: bool = False) -> SuiteFile | None:
    """Recognise the SQLite file at ``path``, opened read-only with ``connect``
    (``sqlite3.connect`` of Datasette's SQLite library). A file that cannot be
    read as SQLite is not the suite's: None."""
    if not os.path.isfile(path):
        return None
    # mode=ro everywhere (never creates a file); immutable=1 also for WAL files
    # in a read-only folder, which mode=ro alone cannot open
    flags = ["mode=ro&immutable=1"] if immutable else ["mode=ro", "mode=ro&immutable=1"]
    for flag in flags:
        try:
            conn = connect(f"file:{quote(os.path.abspath(path))}?{flag}", uri=True, check_same_thread=False)
        except Exception:
            continue
        try:
            return classify_connection(conn)
        except Exception:
            continue
        finally:
            conn.close()
    return None


def file_signature(path: str) -> tuple:
    """Changes when the file (or its WAL) is written: when to look again at a
    file that was not the suite's. ``os.stat`` opens no descriptor."""
    out = []
    for p in (path, path + "-wal"):
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)
