"""The suite against a real llama.cpp ``llama-server`` with SmolLM2-135M (issue 16).

Both of its APIs (OpenAI ``/v1/chat/completions`` and Anthropic ``/v1/messages``)
through the real SDKs: extraction from the command line and the web API, a
streamed cited answer, usage in the call log, structured output, a server
killed in the middle of an answer, a queue longer than the server's slots,
and a context smaller than the default output. A 135M model answers badly,
so nothing here checks what it said: only that the protocol works and that
whatever happened is reported as it happened (rows written or a failure that
says why; a cost that is unknown, not $0; a crash that is called a crash).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from click.testing import CliRunner
from datasette.app import Datasette
from datasette.cli import cli
from datasette.plugins import pm

from datasette_llm_core import permissions as P
from datasette_llm_core.calllog import flush_pending
from datasette_llm_core.errors import ModelError
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.types import ChatRequest, Message, StreamEnd, TextDelta
from datasette_llm_extract.prompts import build_request
from datasette_llm_extract.schema import validate_table_spec

from ..extract_web_helpers import cookies, wait_run
from ..fakes import FakeModelsPlugin, HashEmbeddingModel
from ..rag_web_helpers import make_source, parse_sse, post_json, rag_section
from ..test_rag_web import build_index
from .conftest import model_config

APIS = ["openai", "anthropic"]
SPEC = {"columns": [{"name": "name", "nullable": False}, {"name": "age", "type": "integer"}]}
PEOPLE = "Ann Smith is 40 years old. Bob Jones is 35 years old."
SHORT = 48  # output tokens for checks that only need an answer to start and end


def gateway_ds(server, api, *, retries=None, **extra) -> Datasette:
    config = {"state_database": ":memory:", "models": [model_config(server, api, **extra)],
              "retries": retries or {"max_attempts": 2, "backoff": 0.2}}
    return Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": config}})


async def gateway(ds):
    await ds.invoke_startup()
    return await llm_gateway(ds)


async def call_log(ds, where: str = "1", params=()) -> list[dict]:
    await flush_pending()
    db = ds.databases["llm_newsroom"]
    rows = (await db.execute(f"select * from llm_calls where {where} order by started_at, attempt",
                             list(params))).rows
    return [dict(r) for r in rows]


async def stream_all(gw, request, **kwargs) -> tuple[str, StreamEnd]:
    pieces, end = [], None
    async for event in gw.stream(request, purpose=kwargs.pop("purpose", "answer"), prompt_version="t",
                                 **kwargs):
        if isinstance(event, TextDelta):
            pieces.append(event.text)
        elif isinstance(event, StreamEnd):
            end = event
    return "".join(pieces), end


def assert_usage_logged(rows: list[dict]) -> None:
    """Every answered call carries the token counts the server reported."""
    ok = [r for r in rows if r["outcome"] == "ok"]
    assert ok, rows
    for row in ok:
        # input 0 is what llama-server reports over /v1/messages when the whole prompt came from
        # its prompt cache (seen in one of six queued identical-prefix calls); it is still the
        # server's count, not a guess, so only output must be positive
        assert row["input_tokens"] is not None and row["input_tokens"] >= 0, row
        assert row["output_tokens"] > 0, row
        assert row["tokens_estimated"] == 0, row  # from the server's usage, not guessed
        assert row["cost_usd"] is None  # no prices for a local model: unknown, never $0


# --- extraction from the command line ---------------------------------------------------------

def cli_files(tmp_path, server, api, docs: dict[str, str], **extra):
    folder = tmp_path / f"docs-{api}"
    folder.mkdir()
    for name, text in docs.items():
        (folder / name).write_text(text)
    config = tmp_path / f"datasette-{api}.yaml"
    config.write_text(json.dumps({"plugins": {"datasette-llm-newsroom": {
        "state_database": str(tmp_path / f"state-{api}.db"), "models": [model_config(server, api, **extra)],
        "retries": {"max_attempts": 2, "backoff": 0.2}}}}))
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SPEC))
    return folder, config, schema


def run_cli(tmp_path, api, folder, config, schema):
    db = tmp_path / f"out-{api}.db"
    result = CliRunner().invoke(cli, ["llm-extract", "run", str(db), "people", str(folder), "--schema",
                                      str(schema), "-c", str(config)], catch_exceptions=False)
    return result, db


def assert_honest_cli(result, db, docs) -> None:
    """Each file is either done (its rows in the table) or reported as failed, with a reason."""
    output = result.output
    assert "file(s) extracted" in output and "cost unknown" in output and "$0.0000" not in output, output
    conn = sqlite3.connect(db)
    try:
        done = dict(conn.execute("select path, rows from _llm_extract_files where status = 'done'"))
        in_table = conn.execute("select count(*) from people").fetchone()[0]
    finally:
        conn.close()
    failed = [name for name in docs if name not in done]
    for name in failed:
        assert f"{name}: " in output and "will be retried" in output, output
    assert sum(done.values()) == in_table
    assert result.exit_code == (1 if failed else 0), output
    assert f"{len(done)} file(s) extracted" in output and f"{len(failed)} failed" in output


@pytest.mark.parametrize("api", APIS)
def test_cli_extraction(tmp_path, llama, api):
    docs = {"a.txt": PEOPLE, "b.txt": "Carol White is 52 years old."}
    folder, config, schema = cli_files(tmp_path, llama, api, docs, max_output_tokens=256)
    result, db = run_cli(tmp_path, api, folder, config, schema)
    assert_honest_cli(result, db, docs)
    state = sqlite3.connect(tmp_path / f"state-{api}.db")
    state.row_factory = sqlite3.Row
    rows = [dict(r) for r in state.execute("select * from llm_calls where purpose = 'extract'")]
    state.close()
    assert rows and all(r["provider"] == ("openai-compatible" if api == "openai" else "anthropic") for r in rows)
    if any(r["outcome"] == "ok" for r in rows):
        assert_usage_logged(rows)


# --- extraction from the web ------------------------------------------------------------------

@pytest.mark.parametrize("api", APIS)
async def test_web_extraction(tmp_path, llama, api):
    from ..extract_web_helpers import make_ds

    ds = make_ds(tmp_path, plugin={"models": [model_config(llama, api, max_output_tokens=256)],
                                   "permissions": {"llm-extract": {"id": "alice"}}},
                 rules={"permissions": {"create-table": {"id": "alice"}, "insert-row": {"id": "alice"}}}
                 if P.IS_V1 else None)
    await ds.invoke_startup()
    payload = {"database": "news", "table": "people", "create": True, "schema": SPEC, "text": PEOPLE,
               "model": "llama"}
    r = await ds.client.post("/-/llm-extract/api/runs", json=payload, cookies=cookies(ds, "alice"))
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    run = await wait_run(ds, run_id, cookies(ds, "alice"), timeout=300)
    assert run["status"] in ("done", "failed"), run
    if run["status"] == "failed" or run["chunks_failed"]:
        assert run["error"] or run["chunks_failed"], run  # a failure says so
    for row in run["rows"]:
        assert row["valid"] or row["errors"], row  # an invalid row carries its reasons
    log = await call_log(ds, "ref = ?", [run_id])
    assert log, "every model call is in the call log"
    if run["status"] == "done" and any(r["outcome"] == "ok" for r in log):
        assert_usage_logged(log)
        assert run["input_tokens"] > 0


# --- a streamed cited answer -------------------------------------------------------------------

@pytest.mark.parametrize("api", APIS)
async def test_streamed_cited_answer(tmp_path, llama, api):
    plugin = FakeModelsPlugin(chat=[], embedding=[HashEmbeddingModel()])
    pm.register(plugin, name=f"hash-embed-{api}")
    try:
        path = make_source(tmp_path / "news.db")
        settings = {"state_database": str(tmp_path / "state.db"), "models": [model_config(llama, api,
                    max_output_tokens=160)], "rag": rag_section(tmp_path, embedding_model="hash-embed"),
                    "permissions": {"databases": {"news": {"llm-ask": {"id": "alice"}}}}}
        config = {"plugins": {"datasette-llm-newsroom": settings}}
        ds = Datasette([path], **({"config": config} if P.IS_V1 else {"metadata": config}))
        await ds.invoke_startup()
        await build_index(ds)
        r = await post_json(ds, "/-/llm-rag/news/ask.json",
                            {"q": "Why were the bridge repairs delayed?", "stream": True}, "alice")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(r.text)
        kinds = [e["event"] for e in events]
        assert kinds[0] == "sources" and kinds[-1] in ("done", "error"), kinds
        given = {row["n"] for row in events[0]["rows"]}
        if kinds[-1] == "error":
            assert events[-1]["message"]  # a failure says what happened
            return
        assert "delta" in kinds  # the answer streamed in pieces
        done = events[-1]
        assert set(done["cited"]) <= given  # citations only to rows that were retrieved
        assert done["uncited"] == (not done["cited"])
        if done["uncited"]:
            assert done["notice"]["kind"] == "uncited" and done["search_rows"]
        (call,) = await call_log(ds, "ref = ?", [done["answer_id"]])
        assert_usage_logged([call])
        assert call["streamed"] == 1 and call["first_token_ms"] is not None
        assert done["finish_reason"] in ("stop", "length")
    finally:
        pm.unregister(name=f"hash-embed-{api}")


# --- structured output ----------------------------------------------------------------------------

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.mark.parametrize("api, mode", [("openai", None), ("anthropic", "tool"), ("anthropic", "native")])
async def test_structured_output(llama, api, mode):
    extra = {"structured_output": mode} if mode else {}
    ds = gateway_ds(llama, api, **extra)
    gw = await gateway(ds)
    request = ChatRequest([Message.user("Ann Smith is 40 years old. Give her name and age.")],
                          json_schema=PERSON, schema_name="person", max_tokens=64)
    try:
        response = await gw.complete(request, purpose="extract", prompt_version="t")
    except ModelError as e:
        # an honest failure: the model ignored the output format (quoting what it said instead),
        # or the server refused the request with its own message; never an empty "success"
        assert api == "anthropic", e
        assert e.error_class in ("ignored_tool", "structured_output_ignored", "bad_request",
                                 "server_error"), e
        assert ("said" in str(e) or "answered" in str(e)) if e.error_class in (
            "ignored_tool", "structured_output_ignored") else "(" in str(e)
        return
    data = response.json()
    assert isinstance(data, dict)
    if api == "openai":  # llama-server turns response_format json_schema into a grammar
        assert set(data) == {"name", "age"} and isinstance(data["age"], int)
    assert_usage_logged(await call_log(ds))


# --- a server killed in the middle of an answer -----------------------------------------------------

@pytest.mark.parametrize("api", APIS)
async def test_server_killed_mid_stream(doomed_llama, api):
    ds = gateway_ds(doomed_llama, api)
    gw = await gateway(ds)
    request = ChatRequest([Message.user("Count from 1 to 500, one number per line.")], max_tokens=1500)
    seen = []
    with pytest.raises(ModelError) as info:
        async for event in gw.stream(request, purpose="answer", prompt_version="t"):
            if isinstance(event, TextDelta):
                seen.append(event.text)
                if len(seen) == 5:
                    await asyncio.to_thread(doomed_llama.kill)
    message = str(info.value)
    assert len(seen) >= 5
    assert "could not connect" not in message and "check that it is running" not in message
    assert "in the middle of the answer" in message and doomed_llama.url in message
    log = await call_log(ds)
    assert log[-1]["outcome"] == "error" and log[-1]["error_class"] == "connection_lost", log


# --- a queue longer than the server's slots ---------------------------------------------------------

@pytest.mark.parametrize("api", APIS)
async def test_queue_longer_than_the_slots(llama, api):
    # No concurrency of our own: six requests at a two-slot server, four of them queued there
    # with no byte sent. Queue time is not a between-events timeout (10 s here).
    ds = gateway_ds(llama, api, concurrency=None, timeout=10)
    gw = await gateway(ds)
    requests = [ChatRequest([Message.user(f"Say hello to person number {i}.")], max_tokens=SHORT)
                for i in range(6)]
    results = await asyncio.gather(*[stream_all(gw, r) for r in requests])
    assert all(end is not None for _, end in results)
    log = await call_log(ds)
    assert [r["outcome"] for r in log] == ["ok"] * 6, log
    assert_usage_logged(log)


async def test_queue_longer_than_the_first_byte_wait_backs_off(llama):
    ds = gateway_ds(llama, "openai", concurrency=None, first_byte_timeout=1.0,
                    retries={"max_attempts": 6, "backoff": 0.2})
    gw = await gateway(ds)
    requests = [ChatRequest([Message.user(f"Write two sentences about the number {i}.")], max_tokens=96)
                for i in range(6)]
    results = await asyncio.gather(*[stream_all(gw, r) for r in requests])
    assert all(end is not None for _, end in results)
    log = await call_log(ds)
    assert sum(r["outcome"] == "ok" for r in log) == 6
    assert {r["error_class"] for r in log if r["outcome"] != "ok"} <= {"first_byte_timeout"}, log


# --- a context smaller than the default output ---------------------------------------------------

@pytest.mark.parametrize("api", APIS)
async def test_context_smaller_than_the_default_output(small_llama, api):
    assert small_llama.slot_ctx < 4096
    ds = gateway_ds(small_llama, api)  # context_tokens: the server's per-slot context
    gw = await gateway(ds)
    # the extraction request asks for 4,096 output tokens by default: fitted to the context
    request = build_request(validate_table_spec(SPEC), "", PEOPLE)
    request.json_schema = None if api == "anthropic" else request.json_schema
    text, end = await stream_all(gw, request, purpose="extract")
    assert end.finish_reason in ("stop", "length")
    log = await call_log(ds)
    assert [r["outcome"] for r in log] == ["ok"], log


@pytest.mark.parametrize("api", APIS)
def test_cli_with_the_context_left_at_its_default_says_what_to_set(tmp_path, small_llama, api):
    docs = {"long.txt": PEOPLE * 60}
    # context_tokens not set (the default 128k is wrong here): the server refuses the prompt
    folder, config, schema = cli_files(tmp_path, small_llama, api, docs, context_tokens=None)
    result, db = run_cli(tmp_path, api, folder, config, schema)
    assert result.exit_code == 1, result.output
    assert "1 failed" in result.output and "long.txt" in result.output
    assert f"context_tokens: {small_llama.slot_ctx}" in result.output or "context_tokens" in result.output


@pytest.mark.parametrize("api", APIS)
def test_cli_with_the_context_set_fits_its_requests(tmp_path, small_llama, api):
    docs = {"long.txt": PEOPLE * 12}  # longer than one chunk at this context
    folder, config, schema = cli_files(tmp_path, small_llama, api, docs, max_output_tokens=120)
    result, db = run_cli(tmp_path, api, folder, config, schema)
    assert "exceeds the available context" not in result.output
    assert "context_exceeded" not in result.output
    assert_honest_cli(result, db, docs)
