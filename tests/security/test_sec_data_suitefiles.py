"""How the suite recognises its own files (pure logic, no server): by the
application id it writes, else by their tables; never by the file name."""

from __future__ import annotations

import sqlite3

from datasette_llm_core.suitefiles import (
    SIDECAR,
    SIDECAR_APPLICATION_ID,
    STATE,
    classify_file,
    kind_from_schema,
)
from datasette_llm_rag.sidecar import open_sidecar


def test_kinds_from_schema():
    assert kind_from_schema(SIDECAR_APPLICATION_ID, []) == SIDECAR
    assert kind_from_schema(0, ["_llm_migrations", "llm_calls"]) == STATE
    assert kind_from_schema(0, ["meta", "entries", "vectors", "terms", "postings", "entries_fts"]) == SIDECAR
    assert kind_from_schema(0, ["entries", "meta"]) is None  # an ordinary database with such names
    assert kind_from_schema(0, []) is None


def test_files(tmp_path):
    fresh = tmp_path / "anything.db"
    open_sidecar(str(fresh), create=True).close()
    assert classify_file(str(fresh), sqlite3.connect).kind == SIDECAR
    conn = sqlite3.connect(fresh)
    assert conn.execute("pragma application_id").fetchone()[0] == SIDECAR_APPLICATION_ID
    conn.execute("pragma application_id = 0")  # as written by an earlier version
    conn.commit()
    conn.close()
    found = classify_file(str(fresh), sqlite3.connect)
    assert found.kind == SIDECAR and "entries" in found.tables
    assert classify_file(str(fresh), sqlite3.connect, immutable=True).kind == SIDECAR

    plain = tmp_path / "plain.llm-rag.db"  # the name says sidecar; the content does not
    conn = sqlite3.connect(plain)
    conn.execute("create table entries (id integer primary key, text text)")
    conn.commit()
    conn.close()
    assert classify_file(str(plain), sqlite3.connect) is None

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    assert classify_file(str(junk), sqlite3.connect) is None
    assert classify_file(str(tmp_path / "missing.db"), sqlite3.connect) is None
    assert not (tmp_path / "missing.db").exists()  # looking creates nothing
