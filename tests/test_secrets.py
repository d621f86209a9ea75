"""The secret scanner itself, and the suite's pages with real keys configured.

``tests/conftest.py`` runs ``secret_scan`` around every test: it records each
response from ``datasette.client``, every log record and every state-database
row, and fails the test when a fake API key (marked ``sk-test-SECRET-``)
appears. These tests prove the scanner would catch a leak, so that a quiet
run of the whole suite means something.
"""

from __future__ import annotations

import logging

from datasette.app import Datasette

from datasette_llm_core.state import state_db

from .conftest import FAKE_API_KEYS, SECRET_MARKER, find_secret_hits


def config(**extra):
    return {"plugins": {"datasette-llm-newsroom": {"state_database": ":memory:", **extra}}}


def test_fake_keys_are_recognisable(fake_api_keys):
    assert fake_api_keys
    for value in fake_api_keys.values():
        assert value.startswith(SECRET_MARKER)


def test_scanner_finds_key_in_body_and_log():
    key = FAKE_API_KEYS["OPENAI_API_KEY"]
    assert find_secret_hits([("GET /x", f"error: bad key {key}")], [], [])
    assert find_secret_hits([], [f"calling with {key}"], [])
    assert not find_secret_hits([("GET /x", "all fine")], ["nothing here"], [])


async def test_scanner_records_client_responses(secret_scan):
    ds = Datasette(memory=True, metadata=config())
    await ds.invoke_startup()
    before = len(secret_scan)
    response = await ds.client.get("/-/versions.json")
    assert response.status_code == 200
    assert len(secret_scan) == before + 1
    where, text = secret_scan[-1]
    assert where.endswith("/-/versions.json")
    assert "datasette" in text


async def test_scanner_reads_state_database(tmp_path):
    ds = Datasette(memory=True, metadata=config(state_database=str(tmp_path / "state.db")))
    await ds.invoke_startup()
    db = await state_db(ds)
    await db.execute_write("create table leak_probe (v text)")
    assert not find_secret_hits([], [], [ds])
    await db.execute_write(
        "insert into leak_probe values (?)", [f"Authorization: Bearer {FAKE_API_KEYS['ANTHROPIC_API_KEY']}"]
    )
    hits = find_secret_hits([], [], [ds])
    assert hits == ["state table 'leak_probe'"]
    # Clean up so this test's own teardown scan passes.
    await db.execute_write("delete from leak_probe")


async def test_scanner_reads_in_memory_state_database():
    ds = Datasette(memory=True, metadata=config())
    await ds.invoke_startup()
    db = await state_db(ds)
    await db.execute_write("create table leak_probe (v text)")
    await db.execute_write("insert into leak_probe values (?)", [FAKE_API_KEYS["OPENAI_API_KEY"]])
    assert find_secret_hits([], [], [ds]) == ["state table 'leak_probe'"]
    await db.execute_write("delete from leak_probe")


def test_log_records_are_collected_through_root_logger(caplog):
    key = FAKE_API_KEYS["OPENAI_API_KEY"]
    # A message that would leak is detected by the same function the fixture uses.
    logging.getLogger("datasette_llm_core.test").warning("no key here")
    assert not find_secret_hits([], [r.getMessage() for r in caplog.records], [])
    assert find_secret_hits([], [f"oops {key}"], [])
