"""Anthropic models through the real SDK, intercepted at the transport."""

import base64
import json

import pytest
from datasette.app import Datasette

from datasette_llm_core.calllog import flush_pending
from datasette_llm_core.errors import CapabilityError, ConfigError, ModelError
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.providers import builtin
from datasette_llm_core.types import ChatRequest, ImagePart, Message, PdfPart, StreamEnd, TextDelta

from .vendor_payloads import (
    Reply,
    VendorServer,
    anthropic_error,
    anthropic_message,
    anthropic_sse,
    anthropic_text_block,
    anthropic_tool_block,
    openai_completion,
    openai_error,
)

SCHEMA = {
    "type": "object",
    "properties": {"rows": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "party": {"type": "string"}}}}},
    "required": ["rows"],
}
CLAUDE = [{"id": "claude", "provider": "anthropic", "model": "claude-haiku-4-5"}]


@pytest.fixture
def servers(monkeypatch):
    servers = {"anthropic": VendorServer("anthropic"), "openai": VendorServer("openai")}
    monkeypatch.setattr(builtin, "make_http_client", lambda config: servers[config.provider].client())
    return servers


class RecordingSleep:
    def __init__(self):
        self.delays = []

    async def __call__(self, seconds):
        self.delays.append(seconds)


def ds_with(models, **settings):
    config = {"state_database": ":memory:", "models": models, **settings}
    return Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": config}})


async def setup(ds):
    await ds.invoke_startup()
    sleep = RecordingSleep()
    return await llm_gateway(ds, sleep=sleep), sleep


async def rows(ds):
    await flush_pending()
    result = await ds.databases["llm_newsroom"].execute("select * from llm_calls order by started_at, attempt")
    return [dict(r) for r in result.rows]


def extract_request():
    return ChatRequest(
        messages=[Message.user("Senator Ada Lovelace (D) and Rep. Alan Turing (R) met.")],
        system="Extract people.",
        json_schema=SCHEMA,
        schema_name="people",
        max_tokens=1000,
    )


async def test_structured_output_via_forced_tool(servers, fake_api_keys):
    data = {"rows": [{"name": "Ada Lovelace", "party": "D"}]}
    servers["anthropic"].queue(Reply(json=anthropic_message([anthropic_tool_block("people", data)],
                                                            stop_reason="tool_use", input_tokens=120,
                                                            output_tokens=30)))
    ds = ds_with(CLAUDE)
    gw, _ = await setup(ds)
    response = await gw.complete(extract_request(), purpose="extract", prompt_version="extract-v1")
    assert response.json() == data
    assert response.finish_reason == "stop"
    seen = servers["anthropic"].requests[0]
    assert seen.url == "https://api.anthropic.com/v1/messages"
    # The key goes as x-api-key or (current SDKs) a bearer token.
    sent = seen.headers.get("x-api-key") or seen.headers["authorization"].removeprefix("Bearer ")
    assert sent == fake_api_keys["ANTHROPIC_API_KEY"]
    body = seen.body
    assert body["model"] == "claude-haiku-4-5" and body["max_tokens"] == 1000
    assert body["system"] == "Extract people."
    # One tool, used only as the output shape, and forced.
    assert [t["name"] for t in body["tools"]] == ["people"]
    assert body["tools"][0]["input_schema"] == SCHEMA
    assert body["tool_choice"] == {"type": "tool", "name": "people"}
    (row,) = await rows(ds)
    assert (row["provider"], row["input_tokens"], row["output_tokens"]) == ("anthropic", 120, 30)
    # claude-haiku-4-5 list price: $1 in / $5 out per million tokens.
    assert row["cost_usd"] == pytest.approx((120 * 1.0 + 30 * 5.0) / 1e6)


async def test_streamed_tool_input_arrives_as_text_deltas(servers, fake_api_keys):
    pieces = ['{"rows": [{"na', 'me": "Ada Lovelace", ', '"party": "D"}]}']
    servers["anthropic"].queue(Reply(sse=anthropic_sse(pieces, tool="people", input_tokens=80, output_tokens=22)))
    ds = ds_with(CLAUDE)
    gw, _ = await setup(ds)
    events = [e async for e in gw.stream(extract_request(), purpose="extract", prompt_version="v")]
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == pieces
    assert json.loads("".join(deltas)) == {"rows": [{"name": "Ada Lovelace", "party": "D"}]}
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert (end.usage.input_tokens, end.usage.output_tokens, end.finish_reason) == (80, 22, "stop")
    assert servers["anthropic"].requests[0].body["stream"] is True
    (row,) = await rows(ds)
    assert row["id"] == end.call_id and row["outcome"] == "ok" and row["output_tokens"] == 22


async def test_streamed_text(servers, fake_api_keys):
    servers["anthropic"].queue(Reply(sse=anthropic_sse(["The answer ", "is [1]."], stop_reason="max_tokens")))
    ds = ds_with(CLAUDE)
    gw, _ = await setup(ds)
    events = [e async for e in gw.stream(ChatRequest([Message.user("q")]), purpose="answer",
                                         prompt_version="v")]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "The answer is [1]."
    assert events[-1].finish_reason == "length"
    assert "tools" not in servers["anthropic"].requests[0].body


async def test_image_and_pdf_blocks(servers, fake_api_keys):
    servers["anthropic"].queue(Reply(json=anthropic_message([anthropic_text_block("A receipt.")])))
    ds = ds_with(CLAUDE)
    gw, _ = await setup(ds)
    jpg, pdf = b"\xff\xd8\xff\xe0fake", b"%PDF-1.7 /Type /Page"
    request = ChatRequest([Message.user("Describe", ImagePart(jpg, "image/jpeg"), PdfPart(pdf, "a.pdf"))])
    response = await gw.complete(request, purpose="extract", prompt_version="v")
    assert response.text == "A receipt."
    content = servers["anthropic"].requests[0].body["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "Describe"}
    assert content[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                                      "data": base64.b64encode(jpg).decode()}}
    assert content[2]["type"] == "document"
    assert content[2]["source"] == {"type": "base64", "media_type": "application/pdf",
                                    "data": base64.b64encode(pdf).decode()}


async def test_overloaded_529_retries_with_retry_after(servers, fake_api_keys):
    servers["anthropic"].queue(
        Reply(529, json=anthropic_error("overloaded_error", "Overloaded"), headers={"retry-after": "3"}),
        Reply(json=anthropic_message([anthropic_text_block("fine")])),
    )
    ds = ds_with(CLAUDE)
    gw, sleep = await setup(ds)
    response = await gw.complete(ChatRequest([Message.user("q")]), purpose="answer", prompt_version="v")
    assert response.text == "fine" and sleep.delays == [3.0]
    logged = await rows(ds)
    assert [(r["outcome"], r["error_class"]) for r in logged] == [("retry", "overloaded"), ("ok", None)]


async def test_retry_after_too_long_falls_back_to_openai(servers, fake_api_keys):
    servers["anthropic"].queue(
        Reply(429, json=anthropic_error("rate_limit_error", "Number of request tokens has exceeded your "
                                        "per-minute rate limit"), headers={"retry-after": "600"}),
    )
    servers["openai"].queue(Reply(json=openai_completion('{"rows": []}')))
    models = CLAUDE + [{"id": "gpt", "provider": "openai", "model": "gpt-4.1-mini"}]
    ds = ds_with(models, defaults={"extract": "claude"}, fallback={"extract": ["gpt"]},
                 retries={"max_attempts": 3, "max_backoff": 30})
    gw, sleep = await setup(ds)
    response = await gw.complete(extract_request(), purpose="extract", prompt_version="v")
    assert response.model_id == "gpt" and response.json() == {"rows": []}
    assert sleep.delays == []  # a 10 minute wait is not worth it when a fallback exists
    assert [(r["model_id"], r["outcome"]) for r in await rows(ds)] == [("claude", "fallback"), ("gpt", "ok")]


async def test_stream_falls_back_before_first_delta(servers, fake_api_keys):
    servers["openai"].queue(Reply(500, json=openai_error("boom", type="server_error")))
    servers["anthropic"].queue(Reply(sse=anthropic_sse(["from ", "claude"])))
    models = [{"id": "gpt", "provider": "openai", "model": "gpt-4.1-mini"}] + CLAUDE
    ds = ds_with(models, defaults={"answer": "gpt"}, fallback=["claude"], retries={"max_attempts": 1})
    gw, _ = await setup(ds)
    events = [e async for e in gw.stream(ChatRequest([Message.user("q")]), purpose="answer",
                                         prompt_version="v")]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "from claude"
    assert [(r["model_id"], r["outcome"]) for r in await rows(ds)] == [("gpt", "fallback"), ("claude", "ok")]


async def test_error_mid_stream_ends_with_model_error(servers, fake_api_keys):
    servers["anthropic"].queue(Reply(sse=anthropic_sse(
        ["one ", "two ", "three"], error=anthropic_error("overloaded_error", "Overloaded"), error_after=2)))
    servers["openai"].queue(Reply(json=openai_completion("must not be used")))
    models = CLAUDE + [{"id": "gpt", "provider": "openai", "model": "gpt-4.1-mini"}]
    ds = ds_with(models, defaults={"answer": "claude"}, fallback=["gpt"])
    gw, sleep = await setup(ds)
    seen = []
    with pytest.raises(ModelError) as info:
        async for e in gw.stream(ChatRequest([Message.user("q")]), purpose="answer", prompt_version="v"):
            seen.append(e)
    assert [e.text for e in seen] == ["one ", "two "]
    assert "broke off" in str(info.value) and "overloaded" in str(info.value)
    assert servers["openai"].requests == [] and sleep.delays == []
    (row,) = await rows(ds)
    assert row["outcome"] == "error" and row["error_class"] == "overloaded"


async def test_cancelled_stream_logged(servers, fake_api_keys):
    servers["anthropic"].queue(Reply(sse=anthropic_sse(["a", "b", "c", "d"])))
    ds = ds_with(CLAUDE)
    gw, _ = await setup(ds)
    stream = gw.stream(ChatRequest([Message.user("q")]), purpose="answer", prompt_version="answer-v1",
                       actor={"id": "root"}, ref="q-1")
    assert (await stream.__anext__()).text == "a"
    await stream.aclose()
    (row,) = await rows(ds)
    assert (row["outcome"], row["ref"], row["actor_id"]) == ("cancelled", "q-1", "root")


async def test_auth_error_mentions_env_var(servers, fake_api_keys):
    key = fake_api_keys["ANTHROPIC_API_KEY"]
    servers["anthropic"].queue(Reply(401, json=anthropic_error("authentication_error", f"invalid x-api-key {key}")))
    ds = ds_with(CLAUDE)
    gw, sleep = await setup(ds)
    with pytest.raises(ModelError) as info:
        await gw.complete(ChatRequest([Message.user("q")]), purpose="answer", prompt_version="v")
    assert "ANTHROPIC_API_KEY" in str(info.value) and key not in str(info.value)
    assert sleep.delays == [] and len(servers["anthropic"].requests) == 1


async def test_missing_key(servers, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    ds = ds_with(CLAUDE)
    gw, _ = await setup(ds)
    with pytest.raises(ConfigError) as info:
        async for _ in gw.stream(ChatRequest([Message.user("q")]), purpose="answer", prompt_version="v"):
            pass
    assert "ANTHROPIC_API_KEY" in str(info.value)
    assert servers["anthropic"].requests == []
    assert "ANTHROPIC_API_KEY" in gw.unavailable_reason(gw.get_chat_model("claude"))


async def test_non_object_schema_is_capability_error(servers, fake_api_keys):
    ds = ds_with(CLAUDE)
    gw, _ = await setup(ds)
    request = ChatRequest([Message.user("q")], json_schema={"type": "array", "items": {"type": "string"}})
    with pytest.raises(CapabilityError):
        await gw.complete(request, purpose="extract", prompt_version="v")
    assert servers["anthropic"].requests == []


async def test_native_structured_output_option(servers, fake_api_keys):
    pieces = ['{"rows": [', '{"name": "Ada Lovelace", "party": "D"}', "]}"]
    servers["anthropic"].queue(Reply(sse=anthropic_sse(pieces)))
    models = [dict(CLAUDE[0], structured_output="native")]
    ds = ds_with(models)
    gw, _ = await setup(ds)
    events = [e async for e in gw.stream(extract_request(), purpose="extract", prompt_version="v")]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert json.loads(text)["rows"][0]["name"] == "Ada Lovelace"
    body = servers["anthropic"].requests[0].body
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert "tools" not in body and "tool_choice" not in body


async def test_long_retry_after_without_fallback_says_when(servers, fake_api_keys):
    servers["anthropic"].queue(
        Reply(429, json=anthropic_error("rate_limit_error", "Too many requests"), headers={"retry-after": "600"})
    )
    ds = ds_with(CLAUDE)
    gw, sleep = await setup(ds)
    with pytest.raises(ModelError) as info:
        await gw.complete(ChatRequest([Message.user("q")]), purpose="answer", prompt_version="v")
    assert "Try again in 600 seconds" in str(info.value)
    assert info.value.retry_after == 600 and sleep.delays == []
