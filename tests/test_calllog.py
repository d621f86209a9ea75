"""Call-log tables, feedback and redaction."""

import sqlite3

import pytest
from datasette.app import Datasette

from datasette_llm_core.calllog import (
    REDACTED,
    CallRecord,
    calls_for_ref,
    get_call,
    record_feedback,
    redact,
    secret_values,
    usage_for_ref,
    write_call,
)
from datasette_llm_core.config import parse_settings
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.state import _apply_migrations


def make_ds(**settings):
    config = {"state_database": ":memory:", **settings}
    return Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": config}})


async def test_tables_and_column_comments():
    ds = make_ds()
    await ds.invoke_startup()
    db = ds.databases["llm_newsroom"]
    tables = await db.table_names()
    assert {"llm_calls", "llm_feedback"} <= set(tables)
    sql = (await db.execute("select sql from sqlite_master where name = 'llm_calls'")).first()[0]
    for column in ("purpose", "provider", "model_id", "actor_id", "prompt_version", "input_tokens",
                   "output_tokens", "cost_usd", "latency_ms", "outcome", "error_class", "error_message",
                   "attempt", "ref", "started_at", "finished_at"):
        line = next(line for line in sql.splitlines() if line.strip().startswith(column + " "))
        assert "--" in line, f"column {column} has no comment"


def test_insert_statement_matches_record_fields():
    from datasette_llm_core import calllog

    listed = calllog._INSERT.split("(", 1)[1].split(")", 1)[0]
    assert [c.strip() for c in listed.split(",")] == calllog._COLUMNS
    assert calllog._INSERT.count("?") == len(calllog._COLUMNS)


def test_migrations_run_twice_safely(tmp_path):
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    _apply_migrations(conn)
    _apply_migrations(conn)
    names = [r[0] for r in conn.execute("select name from _llm_migrations where package = 'core'")]
    assert names.count("0001_llm_calls") == 1 and "0002_llm_feedback" in names
    conn.close()


async def test_write_and_read_calls_by_ref():
    ds = make_ds()
    await ds.invoke_startup()
    first = CallRecord(kind="chat", outcome="retry", ref="run-9", attempt=1, error_message="rate limited")
    second = CallRecord(kind="chat", outcome="ok", ref="run-9", attempt=2, input_tokens=5)
    await write_call(ds, first)
    await write_call(ds, second)
    await write_call(ds, CallRecord(kind="chat", outcome="ok", ref="other"))
    rows = await calls_for_ref(ds, "run-9")
    assert [r["id"] for r in rows] == [first.id, second.id]
    assert rows[0]["finished_at"] is not None
    assert (await get_call(ds, second.id))["input_tokens"] == 5
    totals = await usage_for_ref(ds, "run-9")
    assert (totals["calls"], totals["input_tokens"], totals["failed_attempts"]) == (2, 5, 1)
    assert await get_call(ds, "nope") is None


async def test_feedback_recorded_against_call_and_ref():
    ds = make_ds()
    await ds.invoke_startup()
    call = CallRecord(kind="chat", outcome="ok")
    await write_call(ds, call)
    up = await record_feedback(ds, call_id=call.id, actor={"id": "ana"}, rating=1, comment="  Spot on ")
    down = await record_feedback(ds, ref="run-3", actor={"id": "bo"}, rating=-1)
    db = ds.databases["llm_newsroom"]
    rows = [dict(r) for r in (await db.execute("select * from llm_feedback order by id")).rows]
    assert [r["id"] for r in rows] == [up, down]
    assert (rows[0]["call_id"], rows[0]["actor_id"], rows[0]["rating"], rows[0]["comment"]) == (
        call.id, "ana", 1, "Spot on")
    assert (rows[1]["ref"], rows[1]["rating"], rows[1]["comment"]) == ("run-3", -1, None)
    with pytest.raises(ValueError):
        await record_feedback(ds, ref="run-3", actor=None, rating=5)
    with pytest.raises(ValueError):
        await record_feedback(ds, actor=None, rating=1)


def test_redact_configured_and_key_shaped_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-proj-abcdefghijklmnopqrstuvwxyz")
    monkeypatch.setenv("MY_LOCAL_KEY", "local-token-123456")
    settings = parse_settings({
        "models": [
            {"id": "a", "provider": "openai-compatible", "base_url": "http://x", "api_key_env": "MY_LOCAL_KEY"},
            {"id": "b", "provider": "anthropic", "api_key": "literal-anthropic-secret"},
        ]
    })
    secrets = secret_values(settings)
    text = ("keys: sk-proj-abcdefghijklmnopqrstuvwxyz local-token-123456 literal-anthropic-secret "
            "Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123 and sk-otherkey1234567890")
    cleaned = redact(text, secrets)
    for secret in ("abcdefghijklmnopqrstuvwxyz", "local-token-123456", "literal-anthropic-secret",
                   "sk-otherkey1234567890"):
        assert secret not in cleaned
    assert cleaned.count(REDACTED) == 5
    assert redact("nothing secret here", secrets) == "nothing secret here"
    assert redact(None, secrets) is None


async def test_key_not_rendered_in_config_pages(fake_api_keys):
    ds = make_ds(models=[{"id": "gpt", "provider": "openai", "api_key": {"$env": "OPENAI_API_KEY"}}])
    await ds.invoke_startup()
    gw = await llm_gateway(ds)
    assert gw.get_chat_model("gpt").connection.api_key("gpt") == fake_api_keys["OPENAI_API_KEY"]
    # The secret scanner (conftest) fails the test if a key shows up in these bodies.
    for path in ("/-/metadata.json", "/-/config.json", "/-/plugins.json", "/llm_newsroom.json"):
        await ds.client.get(path, cookies={"ds_actor": ds.sign({"a": {"id": "root"}}, "actor")})


async def test_concurrent_rows_share_commits():
    import asyncio

    ds = make_ds()
    await ds.invoke_startup()
    db = ds.databases["llm_newsroom"]
    real = db.execute_write_fn
    writes = []

    async def counting(fn, *args, **kwargs):
        writes.append(fn)
        return await real(fn, *args, **kwargs)

    db.execute_write_fn = counting
    records = [CallRecord(kind="chat", outcome="ok", ref="burst") for _ in range(40)]
    ids = await asyncio.gather(*(write_call(ds, r) for r in records))
    assert sorted(ids) == sorted(r.id for r in records)
    assert len(await calls_for_ref(ds, "burst")) == 40
    assert 1 <= len(writes) < 40  # grouped into fewer transactions than rows
