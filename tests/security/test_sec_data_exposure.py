"""#10.2 and #10.3: the state database and search-index sidecars through Datasette's own pages.

Attack: serve a database next to its sidecar (``datasette documents.db
documents.llm-rag.db``, a directory, or ``datasette publish`` with both), or
start with ``--crossdb``, then read ``entries`` / the state tables with SQL.
Both must be readable only by an actor explicitly granted ``llm-view-log``;
through ``--crossdb`` (one shared connection for everyone) by nobody.
A real ``datasette serve`` process, both Datasette lines.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
import urllib.parse

import pytest

from datasette_llm_rag.indexer import refresh_index

from ..fakes import HashEmbeddingModel
from .sec_data_helpers import Server, fill_row

CANARY_DOC = "CANARY-PASTED-DOCUMENT-7f3a"
CANARY_QUESTION = "CANARY-QUESTION-ABOUT-SOURCE-91bd"
CANARY_ERROR = "CANARY-CALL-ERROR-55e0"
CANARY_SECRET_ROW = "CANARY-WHISTLEBLOWER-JANE-ROE"
RAG = {"databases": {"documents": {"tables": {
    "public_notes": {"columns": ["body"]},
    "secret_sources": {"columns": ["body"]},
}}}}

ANON = None
EDITOR = {"id": "editor"}  # may view secret_sources, has no llm-view-log
ROOT = {"id": "root"}  # everything, but no explicit llm-view-log grant
AUDITOR = {"id": "auditor"}  # explicitly granted llm-view-log


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exposure")
    db = tmp / "documents.db"
    conn = sqlite3.connect(db)
    conn.execute("create table public_notes (id integer primary key, body text)")
    conn.execute("create table secret_sources (id integer primary key, body text)")
    conn.execute("insert into public_notes values (1, 'Harbour dredging budget approved')")
    conn.execute("insert into secret_sources values (1, ?)", (f"{CANARY_SECRET_ROW} met us at the harbour",))
    conn.commit()
    conn.close()
    side = tmp / "documents.llm-rag.db"
    asyncio.run(refresh_index(str(db), "documents", RAG, HashEmbeddingModel(), sidecar=str(side)))
    # The same index under a name that says nothing: recognised by content, not name.
    shutil.copy(side, tmp / "archive.db")
    config = {
        "databases": {"documents": {"tables": {"secret_sources": {"allow": {"id": ["editor", "root"]}}}}},
        "plugins": {"datasette-llm-newsroom": {
            "state_database": str(tmp / "state.db"),
            "permissions": {"llm-view-log": {"id": "auditor"}},
            "rag": RAG,
        }},
    }
    # The state database file served as a plain database too (name "state").
    sqlite3.connect(tmp / "state.db").close()
    server = Server(tmp, [db, side, tmp / "archive.db", tmp / "state.db"], config, args=["--crossdb"]).start()
    try:
        state = sqlite3.connect(tmp / "state.db", timeout=10)
        fill_row(state, "llm_extract_documents", {"run_id": "run-1", "idx": 0, "text": CANARY_DOC})
        fill_row(state, "rag_answers", {"id": "a1", "question": CANARY_QUESTION, "created_at": time.time()})
        fill_row(state, "llm_calls", {"id": "c1", "error_message": CANARY_ERROR, "outcome": "error",
                                      "kind": "chat", "started_at": "2026-01-01T00:00:00"})
        state.commit()
        state.close()
        yield server
    finally:
        server.stop()


def enc(name: str) -> str:
    from datasette.utils import tilde_encode

    return tilde_encode(name)  # "documents.llm-rag" -> "documents~2Ellm-rag", as Datasette links it


def sql_url(database: str, sql: str) -> str:
    return f"/{enc(database)}.json?" + urllib.parse.urlencode({"sql": sql, "_shape": "array"})


STATE_QUERIES = [
    ("select run_id, text from llm_newsroom.llm_extract_documents", CANARY_DOC),
    ("select question from llm_newsroom.rag_answers", CANARY_QUESTION),
    ("select error_message from llm_newsroom.llm_calls", CANARY_ERROR),
    ("select sql from llm_newsroom.sqlite_master", "llm_extract_documents"),
]


@pytest.mark.parametrize("actor", [ANON, EDITOR, ROOT, AUDITOR], ids=["anon", "editor", "root", "auditor"])
def test_crossdb_cannot_read_the_state_database(world, actor):
    # Several requests: on 1.0 connections opened after startup attach it too.
    for sql, canary in STATE_QUERIES * 2:
        status, text, _ = world.get(sql_url("_memory", sql), actor=actor)
        assert canary not in text, (actor, sql, status, text[:300])
        assert status in (400, 403), (actor, sql, status, text[:300])
    # The query page still works for everything else.
    status, text, _ = world.get(sql_url("_memory", "select body from documents.public_notes"), actor=actor)
    assert status == 200 and "Harbour dredging" in text, text[:300]


@pytest.mark.parametrize("schema", ["documents.llm-rag", "archive"])
@pytest.mark.parametrize("actor", [ANON, EDITOR, ROOT, AUDITOR], ids=["anon", "editor", "root", "auditor"])
def test_crossdb_cannot_read_a_sidecar(world, actor, schema):
    for sql in (f'select text from "{schema}".entries', f'select count(*) from "{schema}".entries',
                f'select text from "{schema}".entries_fts where entries_fts match \'harbour\''):
        status, text, _ = world.get(sql_url("_memory", sql), actor=actor)
        assert CANARY_SECRET_ROW not in text, (actor, sql, text[:300])
        assert status in (400, 403), (actor, sql, status, text[:300])


SIDECAR_PATHS = [
    lambda db: sql_url(db, "select text from entries"),
    lambda db: sql_url(db, "select text from entries_fts where entries_fts match 'harbour'"),
    lambda db: f"/{enc(db)}/entries.json?_shape=array",
    lambda db: f"/{enc(db)}.db",
]


@pytest.mark.parametrize("db", ["documents.llm-rag", "archive"])
@pytest.mark.parametrize("actor", [ANON, EDITOR, ROOT], ids=["anon", "editor", "root"])
def test_served_sidecar_is_refused_without_an_explicit_grant(world, actor, db):
    for make in SIDECAR_PATHS:
        status, text, _ = world.get(make(db), actor=actor)
        assert CANARY_SECRET_ROW not in text, (actor, make(db), text[:300])
        assert status in (403, 404), (actor, make(db), status, text[:300])


@pytest.mark.parametrize("db", ["documents.llm-rag", "archive"])
def test_served_sidecar_is_readable_with_an_explicit_grant(world, db):
    # The probe can fail: the explicitly granted auditor reads the index.
    status, text, _ = world.get(sql_url(db, "select text from entries"), actor=AUDITOR)
    assert status == 200 and CANARY_SECRET_ROW in text, text[:300]


@pytest.mark.parametrize("name", ["llm_newsroom", "state"])
def test_state_database_needs_llm_view_log_under_any_name(world, name):
    # Root included: the state database holds every user's pasted documents, and
    # only an explicit llm-view-log grant opens it (#10.3), as for the sidecars.
    for actor in (ANON, EDITOR, ROOT):
        for path in (sql_url(name, "select text from llm_extract_documents"),
                     f"/{name}/llm_extract_documents.json?_shape=array", f"/{name}.db"):
            status, text, _ = world.get(path, actor=actor)
            assert CANARY_DOC not in text and status in (403, 404), (actor, path, status)
    status, text, _ = world.get(sql_url(name, "select text from llm_extract_documents"), actor=AUDITOR)
    assert status == 200 and CANARY_DOC in text, (status, text[:300])


def test_suite_files_carry_their_marks(world):
    from datasette_llm_core.suitefiles import SIDECAR_APPLICATION_ID, STATE_APPLICATION_ID

    for path, expected in (("state.db", STATE_APPLICATION_ID), ("documents.llm-rag.db", SIDECAR_APPLICATION_ID)):
        conn = sqlite3.connect(world.workdir / path)
        assert conn.execute("pragma application_id").fetchone()[0] == expected, path
        conn.close()


def test_directory_mode_serves_no_sidecar(world, tmp_path):
    # `datasette serve folder/` opens every *.db in it, the index included.
    folder = tmp_path / "published"
    folder.mkdir()
    for name in ("documents.db", "documents.llm-rag.db"):
        shutil.copy(world.workdir / name, folder / name)
    config = {"plugins": {"datasette-llm-newsroom": {"state_database": str(tmp_path / "state.db"),
                                                     "permissions": {"llm-view-log": {"id": "auditor"}}}}}
    server = Server(tmp_path, [folder], config).start()
    try:
        status, text, _ = server.get(sql_url("documents.llm-rag", "select text from entries"), actor=AUDITOR)
        assert status == 200 and CANARY_SECRET_ROW in text  # Datasette did open it...
        for make in SIDECAR_PATHS:  # ...and nobody without the grant reads it
            for actor in (ANON, ROOT):
                status, text, _ = server.get(make("documents.llm-rag"), actor=actor)
                assert CANARY_SECRET_ROW not in text and status in (403, 404), (actor, make, status)
    finally:
        server.stop()
