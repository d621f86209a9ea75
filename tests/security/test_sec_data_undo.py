"""#10.7: undo deletes only the rows that are still the run's own.

Attack (accident, here): extraction-created tables have no integer primary
key, so VACUUM renumbers their rowids; undo used to delete by the rowids stored
at insert time and removed another run's rows. A real ``datasette serve``,
both lines; on 1.0 undo also needs ``delete-row``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time

import pytest

from datasette_llm_core import permissions as P

from ..fake_openai_server import FakeOpenAIServer, Reply, last_user_text
from .sec_data_helpers import Server

ROOT = {"id": "root"}
ALICE = {"id": "alice"}  # llm-extract, create-table and insert-row, but no delete-row
SCHEMA = {"columns": [{"name": "name", "type": "text"}, {"name": "amount", "type": "integer"}]}


def rows_for(request: dict) -> Reply:
    found = re.findall(r"(\w+) paid (\d+) dollars", last_user_text(request))
    rows = [{"name": n, "amount": int(a), "source_quote": f"{n} paid {a} dollars"} for n, a in found]
    return Reply(content=json.dumps({"rows": rows}))


def config_for(tmp, base_url: str) -> dict:
    config = {"plugins": {"datasette-llm-newsroom": {
        "state_database": str(tmp / "state.db"),
        "models": [{"id": "fake", "provider": "openai-compatible", "model": "fake-model", "base_url": base_url,
                    "supports": ["streaming", "schema"], "timeout": 30}],
        "defaults": {"extract": "fake"},
        "permissions": {"llm-extract": {"id": ["alice"]}},
        "lease_seconds": 1,
        # existing tables keep their columns: "ledger" below has no _llm_run
        "extract": {"add_run_column": False},
    }}}
    if P.IS_V1:
        config["permissions"] = {"create-table": {"id": ["alice", "root"]}, "insert-row": {"id": ["alice", "root"]}}
    return config


def extract_and_insert(server: Server, names: list[str], *, table: str, create: bool, actor=ROOT) -> str:
    text = " ".join(f"{n} paid {10 + i} dollars." for i, n in enumerate(names))
    body = {"database": "news", "table": table, "text": text}
    body.update({"create": True, "schema": SCHEMA} if create else {"columns": ["name", "amount"]})
    status, run = server.json("POST", "/-/llm-extract/api/runs", body, actor=actor)
    assert status == 201, run
    run_id = run["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, run = server.json("GET", f"/-/llm-extract/api/runs/{run_id}", actor=actor)
        if run.get("status") not in ("pending", "running"):
            break
        time.sleep(0.1)
    assert run["status"] == "done", run
    status, body = server.json("POST", f"/-/llm-extract/api/runs/{run_id}/insert", {"accept": "all_valid"},
                               actor=actor)
    assert status == 200 and body["inserted"] == len(names), body
    return run_id


def names_in(db, table="payments") -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute(f"select name from {table} order by rowid")]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("undo")
    db = tmp / "news.db"
    conn = sqlite3.connect(db)
    conn.execute("create table ledger (name text, amount integer)")
    conn.close()
    with FakeOpenAIServer(handler=rows_for) as fake:
        server = Server(tmp, [db], config_for(tmp, fake.base_url)).start()
        try:
            yield server, db
        finally:
            server.stop()


def test_undo_after_vacuum_leaves_other_runs_rows(world):
    server, db = world
    run_a = extract_and_insert(server, ["Alpha1", "Alpha2", "Alpha3"], table="payments", create=True)
    extract_and_insert(server, ["Beta1", "Beta2", "Beta3"], table="payments", create=False)
    # An editor deletes one of run A's rows, then the database is vacuumed: rowids move down.
    conn = sqlite3.connect(db, timeout=10)
    conn.execute("delete from payments where name = 'Alpha1'")
    conn.commit()
    conn.execute("vacuum")
    assert [r[0] for r in conn.execute("select rowid from payments order by rowid")] == [1, 2, 3, 4, 5]
    conn.close()

    status, body = server.json("POST", f"/-/llm-extract/api/runs/{run_a}/undo", {}, actor=ROOT)
    assert status == 200, body
    assert names_in(db) == ["Beta1", "Beta2", "Beta3"]  # run B untouched
    assert body["deleted"] == 2 and body["skipped"] == 1, body  # Alpha1 was already gone: reported


def test_undo_without_a_run_column_matches_the_inserted_values(world):
    # No _llm_run to go by: a stored rowid counts only while its row still holds
    # exactly what the run inserted (the old code deleted Fox1 here).
    server, db = world
    run_e = extract_and_insert(server, ["Echo1", "Echo2", "Echo3"], table="ledger", create=False)
    extract_and_insert(server, ["Fox1", "Fox2", "Fox3"], table="ledger", create=False)
    conn = sqlite3.connect(db, timeout=10)
    assert "_llm_run" not in [r[1] for r in conn.execute("pragma table_info(ledger)")]
    conn.execute("delete from ledger where name = 'Echo1'")
    conn.commit()
    conn.execute("vacuum")
    conn.close()
    status, body = server.json("POST", f"/-/llm-extract/api/runs/{run_e}/undo", {}, actor=ROOT)
    assert status == 200, body
    # VACUUM moved every row: no stored rowid still holds its inserted values, so
    # nothing is deleted (run F's rows least of all) and all three are reported.
    assert names_in(db, "ledger") == ["Echo2", "Echo3", "Fox1", "Fox2", "Fox3"]
    assert body["deleted"] == 0 and body["skipped"] == 3, body
    # Rows that did not move are found and deleted.
    run_g = extract_and_insert(server, ["Golf1", "Golf2"], table="ledger", create=False)
    status, body = server.json("POST", f"/-/llm-extract/api/runs/{run_g}/undo", {}, actor=ROOT)
    assert status == 200 and body["deleted"] == 2 and body["skipped"] == 0, body
    assert names_in(db, "ledger") == ["Echo2", "Echo3", "Fox1", "Fox2", "Fox3"]


def test_undo_leaves_a_row_someone_took_over(world):
    # A row of the run whose _llm_run an editor changed (it is now theirs) stays.
    server, db = world
    run_c = extract_and_insert(server, ["Gamma1", "Gamma2"], table="gamma", create=True)
    conn = sqlite3.connect(db, timeout=10)
    conn.execute("update gamma set _llm_run = null where name = 'Gamma2'")
    conn.commit()
    conn.close()
    status, body = server.json("POST", f"/-/llm-extract/api/runs/{run_c}/undo", {}, actor=ROOT)
    assert status == 200 and body == {"ok": True, "deleted": 1, "skipped": 1}, body
    assert names_in(db, "gamma") == ["Gamma2"]


@pytest.mark.skipif(not P.IS_V1, reason="Datasette 0.65 has no delete-row permission")
def test_undo_needs_delete_row_on_v1(world):
    server, db = world
    run_id = extract_and_insert(server, ["Delta1", "Delta2"], table="delta", create=True, actor=ALICE)
    status, body = server.json("POST", f"/-/llm-extract/api/runs/{run_id}/undo", {}, actor=ALICE)
    assert status == 403 and "delete-row" in body["error"], body
    assert names_in(db, "delta") == ["Delta1", "Delta2"]
    status, run = server.json("GET", f"/-/llm-extract/api/runs/{run_id}", actor=ALICE)
    assert run["status"] == "inserted"
