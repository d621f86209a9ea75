"""How real model servers behave, replayed by the scripted server (issue 16).

Pointed at llama.cpp's ``llama-server`` the suite met behaviour the scripted
tests never showed. Each test here scripts ``tests/fake_openai_server.py``
to behave the way the real server did (prose instead of JSON, a queue longer
than its slots, a small context, a process that dies mid-answer) and goes
through the real OpenAI SDK, the gateway and the ``datasette llm-extract``
command. ``tests/real_server/`` runs the same checks against the real thing.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from click.testing import CliRunner
from datasette.app import Datasette
from datasette.cli import cli

from datasette_llm_core.calllog import flush_pending
from datasette_llm_core.errors import ModelError
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.providers.builtin import default_model_configs
from datasette_llm_core.types import ChatRequest, Message, StreamEnd, TextDelta
from datasette_llm_extract.prompts import build_request
from datasette_llm_extract.schema import validate_table_spec

from .fake_openai_server import FakeOpenAIServer, Reply

SPEC = {"columns": [{"name": "name", "nullable": False}, {"name": "age", "type": "integer"}]}
ROWS = json.dumps({"rows": [{"name": "Ann", "age": 40, "source_quote": "Ann is 40 years old"}]})


def local_model(server, **extra) -> dict:
    return {"id": "local", "provider": "openai-compatible", "model": "smollm", "base_url": server.base_url,
            "supports": ["streaming", "schema"], **extra}


def make_ds(server, *, retries=None, **model_extra) -> Datasette:
    config = {"state_database": ":memory:", "models": [local_model(server, **model_extra)],
              "retries": retries or {"max_attempts": 2, "backoff": 0.01}}
    return Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": config}})


async def gateway(ds):
    await ds.invoke_startup()
    return await llm_gateway(ds)


async def call_log(ds) -> list[dict]:
    await flush_pending()
    result = await ds.databases["llm_newsroom"].execute("select * from llm_calls order by started_at, attempt")
    return [dict(r) for r in result.rows]


async def stream_text(gw, request, **kwargs) -> tuple[str, StreamEnd]:
    pieces, end = [], None
    async for event in gw.stream(request, purpose="extract", prompt_version="t", **kwargs):
        if isinstance(event, TextDelta):
            pieces.append(event.text)
        elif isinstance(event, StreamEnd):
            end = event
    return "".join(pieces), end


@pytest.fixture
def server():
    with FakeOpenAIServer(default=ROWS) as s:
        yield s


# --- 1. prompt parts -----------------------------------------------------------------

async def test_prompt_parts_are_separated_in_openai_messages(server):
    ds = make_ds(server)
    gw = await gateway(ds)
    spec = validate_table_spec(SPEC)
    request = build_request(spec, "Only people.", "Ann is 40 years old.")
    await stream_text(gw, request)
    (body,) = server.chat_requests()
    user = body["messages"][-1]["content"]
    assert "Only people.\n\nDocument to extract from" in user
    assert "</document>\n\nReply with the JSON object" in user
    assert "</document>Reply" not in user


# --- helpers for the command line -------------------------------------------------------

def cli_setup(tmp_path, server, files: dict[str, str], **model_extra):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    config = tmp_path / "datasette.yaml"
    config.write_text(json.dumps({"plugins": {"datasette-llm-newsroom": {
        "state_database": str(tmp_path / "state.db"), "models": [local_model(server, **model_extra)],
        "retries": {"max_attempts": 2, "backoff": 0.01}}}}))
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SPEC))
    return folder, config, schema


def run_cli(tmp_path, folder, config, schema, *extra):
    args = ["llm-extract", "run", str(tmp_path / "out.db"), "people", str(folder), "--schema", str(schema),
            "-c", str(config), *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def files_done(tmp_path) -> dict:
    conn = sqlite3.connect(tmp_path / "out.db")
    try:
        return dict(conn.execute("select path, status from _llm_extract_files"))
    finally:
        conn.close()


# --- 2. prose is not "no rows" -----------------------------------------------------------

def test_prose_answer_is_a_failed_file_not_zero_rows(tmp_path, server):
    # What SmolLM2 answered on llama-server: prose quoting a bracketed fragment.
    server.default = Reply('The people are listed in row["name"], see ["Ann"] for the first.')
    folder, config, schema = cli_setup(tmp_path, server, {"a.txt": "Ann is 40 years old."})
    result = run_cli(tmp_path, folder, config, schema)
    assert result.exit_code == 1, result.output
    assert "0 file(s) extracted" in result.output and "1 failed" in result.output
    assert "no JSON object" in result.output
    assert 'row[\\"name\\"]' in result.output or 'row["name"]' in result.output  # the answer, for the log
    assert files_done(tmp_path) == {}  # not marked done: the next run retries it


# --- 5. cost of a model without prices --------------------------------------------------

def test_cli_says_cost_unknown_for_a_model_without_prices(tmp_path, server):
    folder, config, schema = cli_setup(tmp_path, server, {"a.txt": "Ann is 40 years old."})
    result = run_cli(tmp_path, folder, config, schema)
    assert result.exit_code == 0, result.output
    assert "1 rows written" in result.output
    assert "$0.0000" not in result.output and "cost unknown" in result.output


# --- 6. a server that dies mid-answer -----------------------------------------------------

async def test_server_dying_mid_stream_is_not_reported_as_unreachable(server):
    server.enqueue(Reply("one two three four five six seven", drop_after=3))
    ds = make_ds(server, retries={"max_attempts": 1})
    gw = await gateway(ds)
    with pytest.raises(ModelError) as info:
        await stream_text(gw, ChatRequest([Message.user("hello")]))
    message = str(info.value)
    assert "could not connect" not in message and "check that it is running" not in message
    assert "in the middle of the answer" in message and server.base_url in message
    (row,) = await call_log(ds)
    assert row["error_class"] == "connection_lost" and row["outcome"] == "error"


# --- 3. a queue longer than the server's slots -----------------------------------------

async def test_queue_time_is_not_a_between_events_timeout(server):
    # llama-server -np 1: the second and third request wait, with no byte sent, for the slot.
    slow = FakeOpenAIServer(default=Reply("a b c d e f g h", token_delay=0.1), slots=1).start()
    try:
        ds = make_ds(slow, timeout=0.5, retries={"max_attempts": 1})
        gw = await gateway(ds)
        results = await asyncio.gather(*[stream_text(gw, ChatRequest([Message.user(f"q{i}")])) for i in range(3)])
        assert [text for text, _ in results] == ["a b c d e f g h"] * 3
        assert [r["outcome"] for r in await call_log(ds)] == ["ok"] * 3
    finally:
        slow.stop()


async def test_per_model_concurrency_keeps_requests_out_of_the_server_queue(server):
    slow = FakeOpenAIServer(default=Reply("a b c", token_delay=0.05), slots=4).start()
    try:
        ds = make_ds(slow, concurrency=2)
        gw = await gateway(ds)
        await asyncio.gather(*[stream_text(gw, ChatRequest([Message.user(f"q{i}")])) for i in range(6)])
        assert len(slow.chat_requests()) == 6 and slow.max_in_flight == 2
    finally:
        slow.stop()


async def test_a_queue_longer_than_the_first_byte_wait_backs_off_instead_of_failing(server):
    slow = FakeOpenAIServer(default=Reply("a b c d e f", token_delay=0.1), slots=1).start()
    try:
        ds = make_ds(slow, first_byte_timeout=0.3, retries={"max_attempts": 3, "backoff": 0.05})
        gw = await gateway(ds)
        results = await asyncio.gather(*[stream_text(gw, ChatRequest([Message.user(f"q{i}")])) for i in range(3)])
        assert [text for text, _ in results] == ["a b c d e f"] * 3
        log = await call_log(ds)
        assert sorted(r["outcome"] for r in log if r["outcome"] != "ok") == ["retry"] * (len(log) - 3)
        assert {r["error_class"] for r in log if r["outcome"] == "retry"} <= {"first_byte_timeout"}
        assert sum(r["outcome"] == "ok" for r in log) == 3
    finally:
        slow.stop()


# --- 4. output sized from the context ----------------------------------------------------

async def test_max_tokens_fits_the_models_context(server):
    ds = make_ds(server, context_tokens=2048)
    gw = await gateway(ds)
    request = build_request(validate_table_spec(SPEC), "", "Ann is 40 years old. " * 100)
    await stream_text(gw, request)
    (body,) = server.chat_requests()
    prompt_chars = sum(len(m["content"]) for m in body["messages"])
    assert body["max_tokens"] + prompt_chars // 4 <= 2048
    assert body["max_tokens"] >= 256


async def test_prompt_larger_than_the_context_is_refused_before_sending(server):
    ds = make_ds(server, context_tokens=512)
    gw = await gateway(ds)
    with pytest.raises(ModelError) as info:
        await stream_text(gw, ChatRequest([Message.user("word " * 3000)]))
    assert "context" in str(info.value) and "context_tokens" in str(info.value)
    assert server.chat_requests() == []


async def test_llama_server_context_error_says_what_to_set(server):
    small = FakeOpenAIServer(default=ROWS, n_ctx=64).start()
    try:
        ds = make_ds(small)  # context_tokens not configured: the default 128k is wrong for this server
        gw = await gateway(ds)
        with pytest.raises(ModelError) as info:
            await stream_text(gw, ChatRequest([Message.user("word " * 200)]))
        message = str(info.value)
        assert "64" in message and "context_tokens" in message
        assert info.value.error_class == "context_exceeded"
        assert len(small.chat_requests()) == 1  # not retried: it cannot succeed
    finally:
        small.stop()


def test_environment_route_sets_context_output_and_concurrency():
    (config,) = default_model_configs({
        "DATASETTE_LLM_BASE_URL": "http://127.0.0.1:8080/v1", "DATASETTE_LLM_MODEL": "smollm",
        "DATASETTE_LLM_CONTEXT_TOKENS": "4096", "DATASETTE_LLM_MAX_OUTPUT_TOKENS": "512",
        "DATASETTE_LLM_CONCURRENCY": "2"})
    assert (config.context_tokens, config.max_output_tokens, config.concurrency) == (4096, 512, 2)


def test_cli_exits_non_zero_and_says_why_when_the_context_is_too_small(tmp_path, server):
    small = FakeOpenAIServer(default=ROWS, n_ctx=300).start()
    try:
        folder, config, schema = cli_setup(tmp_path, small, {"a.txt": "Ann is 40 years old. " * 150})
        result = run_cli(tmp_path, folder, config, schema)
        assert result.exit_code == 1, result.output
        assert "1 failed" in result.output and "context_tokens" in result.output
        assert files_done(tmp_path) == {}
    finally:
        small.stop()


# --- 10. Anthropic-format servers that ignore the output tool or output_config ------------
# llama-server's /v1/messages answers a forced tool call with a plain text block, and ignores
# output_config. Replayed through the real anthropic SDK with an httpx2 transport.

ANTHROPIC_SCHEMA = {"type": "object", "properties": {"rows": {"type": "array", "items": {"type": "object"}}},
                    "required": ["rows"]}


@pytest.fixture
def anthropic_server(monkeypatch, fake_api_keys):
    from datasette_llm_core.providers import builtin

    from .vendor_payloads import VendorServer

    vendor = VendorServer("anthropic")
    monkeypatch.setattr(builtin, "make_http_client", lambda config: vendor.client())
    return vendor


def claude_ds(**extra) -> Datasette:
    model = {"id": "claude", "provider": "anthropic", "model": "smollm", "base_url": "http://127.0.0.1:9",
             "api_key_env": "ANTHROPIC_API_KEY", **extra}
    config = {"state_database": ":memory:", "models": [model], "retries": {"max_attempts": 1}}
    return Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": config}})


def schema_request():
    return ChatRequest([Message.user("Ann is 40.")], json_schema=ANTHROPIC_SCHEMA, schema_name="rows")


async def test_tool_mode_reads_json_from_a_text_block(anthropic_server):
    from .vendor_payloads import Reply as VendorReply
    from .vendor_payloads import anthropic_message, anthropic_sse, anthropic_text_block

    said = 'Here are the rows:\n```json\n{"rows": [{"name": "Ann"}]}\n```'
    anthropic_server.queue(VendorReply(sse=anthropic_sse([said[:20], said[20:]])))
    anthropic_server.queue(VendorReply(json=anthropic_message([anthropic_text_block(said)])))
    ds = claude_ds()
    gw = await gateway(ds)
    text, end = await stream_text(gw, schema_request())
    assert json.loads(text) == {"rows": [{"name": "Ann"}]} and end.finish_reason == "stop"
    response = await gw.complete(schema_request(), purpose="extract", prompt_version="t")
    assert response.json() == {"rows": [{"name": "Ann"}]}


async def test_tool_mode_says_the_model_ignored_the_tool(anthropic_server):
    from .vendor_payloads import Reply as VendorReply
    from .vendor_payloads import anthropic_sse

    anthropic_server.queue(VendorReply(sse=anthropic_sse(["I could not find ", "any people."])))
    ds = claude_ds()
    gw = await gateway(ds)
    with pytest.raises(ModelError) as info:
        await stream_text(gw, schema_request())
    message = str(info.value)
    assert "ignored the output tool" in message and "I could not find any people." in message
    assert "output limit" not in message
    (row,) = await call_log(ds)
    assert row["error_class"] == "ignored_tool"


async def test_native_structured_output_ignored_by_the_server_is_detected(anthropic_server):
    from .vendor_payloads import Reply as VendorReply
    from .vendor_payloads import anthropic_sse

    anthropic_server.queue(VendorReply(sse=anthropic_sse(["Sure! Ann ", "is 40 years old."])))
    ds = claude_ds(structured_output="native")
    gw = await gateway(ds)
    with pytest.raises(ModelError) as info:
        await stream_text(gw, schema_request())
    message = str(info.value)
    assert "output_config" in message and "structured_output: tool" in message
    assert anthropic_server.requests[0].body["output_config"]["format"]["type"] == "json_schema"
    (row,) = await call_log(ds)
    assert row["error_class"] == "structured_output_ignored"


def test_cli_says_why_invalid_rows_were_not_written(tmp_path, server):
    bad = json.dumps({"rows": [{"name": "Ann", "age": "forty", "source_quote": "Ann is forty"}]})
    server.default = Reply(bad)  # the re-ask gets the same invalid row back
    folder, config, schema = cli_setup(tmp_path, server, {"a.txt": "Ann is forty years old."})
    result = run_cli(tmp_path, folder, config, schema)
    assert result.exit_code == 0, result.output
    assert "(1 invalid rows not written)" in result.output
    assert "a.txt: 1 invalid row(s) not written: 1 x " in result.output and "age" in result.output


def test_cli_fails_the_file_when_the_re_ask_fails(tmp_path, server):
    # The real case: the re-ask was refused by the server (context), and the CLI said
    # "1 rows written (19 invalid rows not written)" and exited 0.
    bad = json.dumps({"rows": [{"name": "Ann", "age": "forty", "source_quote": "Ann is forty"}]})
    server.enqueue(Reply(bad))
    server.default = Reply(status=500, error_message="slot unavailable")
    folder, config, schema = cli_setup(tmp_path, server, {"a.txt": "Ann is forty years old."})
    result = run_cli(tmp_path, folder, config, schema)
    assert result.exit_code == 1, result.output
    assert "1 failed" in result.output and "re-ask failed" in result.output
    assert files_done(tmp_path) == {}


async def test_anthropic_stream_that_breaks_off_is_not_reported_as_unreachable(monkeypatch, fake_api_keys):
    import httpx2

    from datasette_llm_core.providers import builtin

    from .vendor_payloads import anthropic_sse

    whole = anthropic_sse(["one ", "two ", "three ", "four"])
    cut = whole[: whole.index(b"three")]

    async def body():
        yield cut
        raise httpx2.RemoteProtocolError("peer closed connection without sending complete message body")

    def handler(request):
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    monkeypatch.setattr(builtin, "make_http_client",
                        lambda config: httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))
    ds = claude_ds()
    gw = await gateway(ds)
    with pytest.raises(ModelError) as info:
        await stream_text(gw, ChatRequest([Message.user("count")]))
    message = str(info.value)
    assert "could not connect" not in message and "in the middle of the answer" in message
    (row,) = await call_log(ds)
    assert row["error_class"] == "connection_lost"
