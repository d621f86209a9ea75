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


# --- the suite's pages with real provider keys configured ---------------------------

import sqlite3  # noqa: E402

import pytest  # noqa: E402

from datasette_llm_core import permissions as P  # noqa: E402


@pytest.fixture
async def keyed_ds(tmp_path, fake_api_keys):
    news = tmp_path / "news.db"
    conn = sqlite3.connect(news)
    conn.execute("create table target (id integer primary key, name text)")
    conn.commit()
    conn.close()
    plugin = {
        "state_database": str(tmp_path / "state.db"),
        "models": [
            {"id": "gpt", "provider": "openai", "model": "gpt-4.1-mini", "api_key_env": "OPENAI_API_KEY",
             "base_url": "http://127.0.0.1:9/v1", "timeout": 2},
            {"id": "claude", "provider": "anthropic", "model": "claude-haiku-4-5",
             "api_key": {"$env": "ANTHROPIC_API_KEY"}, "base_url": "http://127.0.0.1:9", "timeout": 2},
        ],
        "retries": {"max_attempts": 1},
    }
    config = {"plugins": {"datasette-llm-newsroom": plugin}}
    ds = Datasette([str(news)], config=config) if P.IS_V1 else Datasette([str(news)], metadata=config)
    if P.IS_V1:
        ds.root_enabled = True
    await ds.invoke_startup()
    return ds


PAGES = [
    "/", "/news", "/news/target", "/-/versions.json", "/-/plugins.json", "/-/settings.json",
    "/-/metadata.json", "/-/config.json", "/-/llm-extract", "/-/llm-extract/into/news/target",
    "/-/llm-extract/new/news", "/-/llm-ask", "/-/llm-rag/index", "/llm_newsroom",
    "/llm_newsroom/llm_calls.json",
]


async def test_no_page_shows_a_configured_key(keyed_ds, secret_scan):
    cookies = {"ds_actor": keyed_ds.sign({"a": {"id": "root"}}, "actor")}
    for path in PAGES:
        response = await keyed_ds.client.get(path, cookies=cookies)
        assert response.status_code < 500, (path, response.status_code)
        assert SECRET_MARKER not in response.text, path
    assert len(secret_scan) >= len(PAGES)


async def test_failed_calls_to_a_dead_provider_log_no_key(keyed_ds):
    """Both SDKs fail to connect (nothing listens on port 9): errors and log rows stay clean."""
    from datasette_llm_core.errors import ModelError
    from datasette_llm_core.gateway import llm_gateway
    from datasette_llm_core.types import ChatRequest, Message

    gw = await llm_gateway(keyed_ds)
    for model_id in ("gpt", "claude"):
        with pytest.raises(ModelError) as info:
            await gw.complete(ChatRequest(messages=[Message.user("hi")]), purpose="answer",
                              prompt_version="t", model_id=model_id)
        assert SECRET_MARKER not in str(info.value)
    rows = (await keyed_ds.databases["llm_newsroom"].execute("select * from llm_calls")).rows
    assert len(rows) >= 2
    for row in rows:
        assert not any(isinstance(v, str) and SECRET_MARKER in v for v in row)
