"""OpenAI and OpenAI-compatible models through the real SDK, intercepted at the transport."""

import base64
import json

import numpy as np
import pytest
from datasette.app import Datasette

from datasette_llm_core.calllog import flush_pending
from datasette_llm_core.errors import CapabilityError, ConfigError, ModelError
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.providers import builtin
from datasette_llm_core.providers.openai_models import is_strict_compatible
from datasette_llm_core.types import ChatRequest, ImagePart, Message, PdfPart, StreamEnd, TextDelta

from .vendor_payloads import (
    Reply,
    VendorServer,
    openai_completion,
    openai_embeddings,
    openai_error,
    openai_sse,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "total": {"type": "number"},
    },
    "required": ["name", "total"],
    "additionalProperties": False,
}


@pytest.fixture
def server(monkeypatch):
    for name in ("DATASETTE_LLM_BASE_URL", "DATASETTE_LLM_MODEL", "DATASETTE_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    server = VendorServer("openai")
    monkeypatch.setattr(builtin, "make_http_client", lambda config: server.client())
    return server


class RecordingSleep:
    def __init__(self):
        self.delays = []

    async def __call__(self, seconds):
        self.delays.append(seconds)


def ds_with(models=None, **settings):
    config = {"state_database": ":memory:", **settings}
    if models is not None:
        config["models"] = models
    return Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": config}})


OPENAI = [{"id": "gpt", "provider": "openai", "model": "gpt-4.1-mini"}]


async def setup(ds):
    await ds.invoke_startup()
    sleep = RecordingSleep()
    return await llm_gateway(ds, sleep=sleep), sleep


async def rows(ds):
    await flush_pending()
    result = await ds.databases["llm_newsroom"].execute("select * from llm_calls order by started_at, attempt")
    return [dict(r) for r in result.rows]


def receipt_request(**kwargs):
    return ChatRequest(
        messages=[Message.user("TESCO STORES total 12.40")],
        system="Extract the receipt.",
        json_schema=SCHEMA,
        schema_name="receipt row",
        **kwargs,
    )


async def test_structured_output_complete(server, fake_api_keys):
    server.queue(Reply(json=openai_completion('{"name": "TESCO", "total": 12.4}', prompt=31, completion=9)))
    ds = ds_with(OPENAI)
    gw, _ = await setup(ds)
    response = await gw.complete(receipt_request(), purpose="extract", prompt_version="extract-v1",
                                 actor={"id": "root"}, ref="run-1")
    assert response.json() == {"name": "TESCO", "total": 12.4}
    (seen,) = server.requests
    assert seen.url == "https://api.openai.com/v1/chat/completions"
    assert seen.headers["authorization"] == "Bearer " + fake_api_keys["OPENAI_API_KEY"]
    body = seen.body
    assert body["model"] == "gpt-4.1-mini"
    assert body["messages"][0] == {"role": "system", "content": "Extract the receipt."}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "receipt_row", "schema": SCHEMA, "strict": True},
    }
    assert body["max_completion_tokens"] == 4096 and body["temperature"] == 0.0
    assert "stream" not in body
    (row,) = await rows(ds)
    assert row["id"] == response.call_id
    assert (row["provider"], row["model_id"], row["outcome"]) == ("openai", "gpt", "ok")
    assert (row["input_tokens"], row["output_tokens"], row["tokens_estimated"]) == (31, 9, 0)
    # gpt-4.1-mini list price: $0.40 in / $1.60 out per million tokens.
    assert row["cost_usd"] == pytest.approx((31 * 0.40 + 9 * 1.60) / 1e6)
    assert row["ref"] == "run-1" and row["prompt_version"] == "extract-v1"


async def test_streaming_with_usage_chunk(server, fake_api_keys):
    server.queue(Reply(sse=openai_sse(['{"name": "TE', 'SCO", "total"', ": 12.4}"], prompt=50, completion=12)))
    ds = ds_with(OPENAI)
    gw, _ = await setup(ds)
    events = [e async for e in gw.stream(receipt_request(), purpose="extract", prompt_version="v")]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert json.loads(text) == {"name": "TESCO", "total": 12.4}
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert (end.usage.input_tokens, end.usage.output_tokens, end.finish_reason) == (50, 12, "stop")
    body = server.requests[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    (row,) = await rows(ds)
    assert row["streamed"] == 1 and row["input_tokens"] == 50 and row["call_group"]
    assert row["id"] == end.call_id


async def test_image_and_pdf_input_as_data_urls(server, fake_api_keys):
    server.queue(Reply(json=openai_completion("a receipt")))
    ds = ds_with(OPENAI)
    gw, _ = await setup(ds)
    png = b"\x89PNG\r\n\x1a\nfake"
    pdf = b"%PDF-1.4 /Type /Page fake"
    request = ChatRequest(messages=[Message.user("What is this?", ImagePart(png, "image/png"),
                                                 PdfPart(pdf, "scan.pdf"))])
    await gw.complete(request, purpose="extract", prompt_version="v")
    content = server.requests[0].body["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "What is this?"}
    assert content[1]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(png).decode()
    assert content[2]["file"]["filename"] == "scan.pdf"
    assert content[2]["file"]["file_data"].startswith("data:application/pdf;base64,")


async def test_rate_limit_retry_after_then_success(server, fake_api_keys):
    limited = openai_error("Rate limit reached for gpt-4.1-mini on tokens per min (TPM).",
                           type="tokens", code="rate_limit_exceeded")
    server.queue(
        Reply(429, json=limited, headers={"retry-after": "2"}),
        Reply(429, json=limited, headers={"retry-after-ms": "250", "retry-after": "1"}),
        Reply(json=openai_completion("ok")),
    )
    ds = ds_with(OPENAI, retries={"max_attempts": 3, "backoff": 0.01})
    gw, sleep = await setup(ds)
    response = await gw.complete(ChatRequest([Message.user("hi")]), purpose="answer", prompt_version="v")
    assert response.text == "ok"
    assert sleep.delays == [2.0, 0.25]  # retry-after, then retry-after-ms preferred
    assert len(server.requests) == 3
    logged = await rows(ds)
    assert [(r["outcome"], r["error_class"]) for r in logged] == [
        ("retry", "rate_limit"), ("retry", "rate_limit"), ("ok", None)
    ]
    assert "Rate limit reached" in logged[0]["error_message"]


async def test_server_error_retries_with_backoff_and_final_error(server, fake_api_keys):
    boom = openai_error("The server had an error while processing your request.", type="server_error")
    server.queue(Reply(500, json=boom), Reply(503, json=boom))
    ds = ds_with(OPENAI, retries={"max_attempts": 2, "backoff": 0.5})
    gw, sleep = await setup(ds)
    with pytest.raises(ModelError) as info:
        await gw.complete(ChatRequest([Message.user("hi")]), purpose="answer", prompt_version="v")
    assert sleep.delays == [0.5]
    assert info.value.status == 503 and info.value.error_class == "server_error"
    assert "Try again later" in str(info.value)


async def test_insufficient_quota_is_not_retried(server, fake_api_keys):
    server.queue(Reply(429, json=openai_error("You exceeded your current quota.", type="insufficient_quota",
                                              code="insufficient_quota")))
    ds = ds_with(OPENAI)
    gw, sleep = await setup(ds)
    with pytest.raises(ModelError) as info:
        await gw.complete(ChatRequest([Message.user("hi")]), purpose="answer", prompt_version="v")
    assert len(server.requests) == 1 and sleep.delays == []
    assert info.value.error_class == "quota" and "billing" in str(info.value)


async def test_auth_failure_names_env_var_and_never_the_key(server, fake_api_keys):
    key = fake_api_keys["OPENAI_API_KEY"]
    # A proxy echoing the whole key back must not leak it either.
    server.queue(Reply(401, json=openai_error(f"Incorrect API key provided: {key}.", code="invalid_api_key")))
    ds = ds_with(OPENAI)
    gw, sleep = await setup(ds)
    with pytest.raises(ModelError) as info:
        await gw.complete(ChatRequest([Message.user("hi")]), purpose="answer", prompt_version="v")
    message = str(info.value)
    assert "OPENAI_API_KEY" in message and key not in message
    assert info.value.retryable is False and len(server.requests) == 1 and sleep.delays == []
    for row in await rows(ds):
        assert key not in json.dumps(row)
        assert row["error_class"] == "auth"


async def test_bad_request_message_redacts_key(server, fake_api_keys):
    key = fake_api_keys["OPENAI_API_KEY"]
    server.queue(Reply(400, json=openai_error(f"Invalid schema for response_format (saw {key})")))
    ds = ds_with(OPENAI)
    gw, _ = await setup(ds)
    with pytest.raises(ModelError) as info:
        await gw.complete(receipt_request(), purpose="extract", prompt_version="v")
    assert "Invalid schema" in str(info.value) and key not in str(info.value)
    assert "[REDACTED]" in str(info.value)
    (row,) = await rows(ds)
    assert key not in row["error_message"] and row["error_class"] == "bad_request"


async def test_missing_key_is_config_error_before_any_request(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ds = ds_with([{"id": "gpt", "provider": "openai", "api_key_env": "NEWSROOM_OPENAI_KEY"}])
    monkeypatch.delenv("NEWSROOM_OPENAI_KEY", raising=False)
    gw, _ = await setup(ds)
    with pytest.raises(ConfigError) as info:
        await gw.complete(ChatRequest([Message.user("hi")]), purpose="answer", prompt_version="v")
    assert "NEWSROOM_OPENAI_KEY" in str(info.value)
    assert server.requests == []
    assert await rows(ds) == []


async def test_capability_mismatch_sends_no_request(server):
    ds = ds_with([{"id": "local", "provider": "openai-compatible", "base_url": "http://127.0.0.1:11434/v1",
                   "model": "llama3.2", "supports": ["streaming"]}])
    gw, _ = await setup(ds)
    with pytest.raises(CapabilityError) as info:
        await gw.complete(receipt_request(), purpose="extract", prompt_version="v")
    assert "structured output" in str(info.value)
    request = ChatRequest([Message.user("x", ImagePart(b"img", "image/jpeg"))])
    with pytest.raises(CapabilityError):
        async for _ in gw.stream(request, purpose="extract", prompt_version="v"):
            pass
    assert server.requests == []


async def test_openai_compatible_server_by_base_url(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.queue(Reply(sse=openai_sse(["Hel", "lo"], model="llama3.2", usage_chunk=False)))
    ds = ds_with([{"id": "local", "provider": "openai-compatible", "base_url": "http://127.0.0.1:11434/v1",
                   "model": "llama3.2"}])
    gw, _ = await setup(ds)
    events = [e async for e in gw.stream(ChatRequest([Message.user("hi")]), purpose="answer",
                                         prompt_version="v")]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello"
    seen = server.requests[0]
    assert seen.url == "http://127.0.0.1:11434/v1/chat/completions"
    assert seen.body["model"] == "llama3.2" and seen.body["max_tokens"] == 4096
    (row,) = await rows(ds)
    # The server sent no usage: tokens are estimates and the price is unknown.
    assert row["tokens_estimated"] == 1 and row["output_tokens"] >= 1 and row["cost_usd"] is None
    assert row["provider"] == "openai-compatible"


async def test_env_defaults_register_models(monkeypatch, fake_api_keys):
    monkeypatch.setenv("DATASETTE_LLM_BASE_URL", "http://127.0.0.1:8080/v1")
    monkeypatch.setenv("DATASETTE_LLM_MODEL", "qwen2.5")
    ds = ds_with()
    gw, _ = await setup(ds)
    ids = [m.model_id for m in gw.chat_models()]
    assert ids == ["gpt-4.1-mini", "claude-haiku-4-5", "qwen2.5"]
    assert all(gw.unavailable_reason(m) is None for m in gw.chat_models())
    local = gw.get_chat_model("qwen2.5")
    assert local.provider == "openai-compatible" and local.supports_schema and not local.supports_images
    assert [m.model_id for m in gw.embedding_models() if m.provider == "openai"] == ["text-embedding-3-small"]
    # Configured models replace the defaults.
    ds2 = ds_with(OPENAI)
    gw2, _ = await setup(ds2)
    assert [m.model_id for m in gw2.chat_models()] == ["gpt"]


async def test_no_env_no_models(monkeypatch):
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DATASETTE_LLM_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    ds = ds_with()
    gw, _ = await setup(ds)
    assert [m for m in gw.chat_models() if m.provider in ("openai", "anthropic", "openai-compatible")] == []


async def test_timeout_then_clear_error(server, fake_api_keys):
    server.queue(Reply(json=openai_completion("late"), delay=5), Reply(json=openai_completion("late"), delay=5))
    ds = ds_with(OPENAI, retries={"max_attempts": 2, "backoff": 0.01})
    gw, sleep = await setup(ds)
    with pytest.raises(ModelError) as info:
        await gw.complete(ChatRequest([Message.user("hi")]), purpose="answer", prompt_version="v", timeout=0.1)
    assert info.value.error_class == "timeout" and info.value.retryable
    assert sleep.delays == [0.01]
    assert [r["error_class"] for r in await rows(ds)] == ["timeout", "timeout"]


async def test_refusal_is_output_error(server, fake_api_keys):
    server.queue(Reply(json=openai_completion(None, refusal="I can't help with that.")))
    ds = ds_with(OPENAI)
    gw, _ = await setup(ds)
    with pytest.raises(ModelError) as info:
        await gw.complete(receipt_request(), purpose="extract", prompt_version="v")
    assert "declined" in str(info.value) and info.value.error_class == "refusal"


async def test_embeddings_vendor_shaped(server, fake_api_keys):
    vectors = [[3.0, 4.0, 0.0], [0.0, 0.0, 2.0], [1.0, 0.0, 0.0]]
    # The API may list embeddings out of order: each carries its index.
    server.queue(Reply(json=openai_embeddings(vectors, prompt=17, order=[2, 0, 1])))
    ds = ds_with(embedding_models=[{"id": "oa-small", "provider": "openai", "model": "text-embedding-3-small"}])
    gw, _ = await setup(ds)
    out = await gw.embed(["alpha", "beta", "gamma"], kind="document", model_id="oa-small", ref="idx")
    assert out.dtype == np.float32 and out.shape == (3, 3)
    np.testing.assert_allclose(out[0], [0.6, 0.8, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.0, 0.0, 1.0])
    body = server.requests[0].body
    assert body["input"] == ["alpha", "beta", "gamma"] and body["model"] == "text-embedding-3-small"
    assert body["encoding_format"] == "float" and "dimensions" not in body
    assert server.requests[0].url == "https://api.openai.com/v1/embeddings"
    (row,) = await rows(ds)
    assert (row["kind"], row["items"], row["input_tokens"], row["tokens_estimated"]) == ("embed", 3, 17, 0)
    assert row["cost_usd"] == pytest.approx(17 * 0.02 / 1e6)


async def test_embeddings_retry_on_429(server, fake_api_keys):
    server.queue(
        Reply(429, json=openai_error("Rate limit", code="rate_limit_exceeded"), headers={"retry-after": "1"}),
        Reply(json=openai_embeddings([[1.0, 0.0]])),
    )
    ds = ds_with(embedding_models=[{"id": "e", "provider": "openai", "model": "text-embedding-3-small"}])
    gw, sleep = await setup(ds)
    out = await gw.embed(["x"], kind="query", model_id="e")
    assert out.shape == (1, 2) and sleep.delays == [1.0]


def test_strict_schema_detection():
    assert is_strict_compatible(SCHEMA)
    loose = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    assert not is_strict_compatible(loose)
    nested = {
        "type": "object",
        "properties": {"rows": {"type": "array", "items": {"type": "object", "properties": {"x": {}},
                                                           "required": []}}},
        "required": ["rows"],
        "additionalProperties": False,
    }
    assert not is_strict_compatible(nested)


async def test_reasoning_models_get_no_temperature(server, fake_api_keys):
    server.queue(Reply(json=openai_completion("ok", model="gpt-5-mini")))
    ds = ds_with([{"id": "g5", "provider": "openai", "model": "gpt-5-mini"}])
    gw, _ = await setup(ds)
    await gw.complete(ChatRequest([Message.user("hi")]), purpose="answer", prompt_version="v")
    body = server.requests[0].body
    assert "temperature" not in body and body["max_completion_tokens"] == 4096
    assert gw.get_chat_model("g5").input_cost_per_mtok == 0.25


def test_parse_retry_after_forms():
    import datetime as dt
    import email.utils

    from datasette_llm_core.providers.base import parse_retry_after

    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)
    seconds = parse_retry_after({"retry-after": email.utils.format_datetime(future, usegmt=True)})
    assert 25 <= seconds <= 31
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "99999"}) is None  # nonsense is ignored
    assert parse_retry_after({}) is None


async def test_models_cached_per_instance_and_rebuilt_on_config_change(server, fake_api_keys):
    ds = ds_with(OPENAI)
    gw1, _ = await setup(ds)
    gw2 = await llm_gateway(ds)
    assert gw1.get_chat_model("gpt") is gw2.get_chat_model("gpt")  # one SDK client per instance
    other = ds_with(OPENAI)
    gw3, _ = await setup(other)
    assert gw3.get_chat_model("gpt") is not gw1.get_chat_model("gpt")


def test_new_event_loop_gets_new_clients(server, fake_api_keys):
    import asyncio

    ds = ds_with(OPENAI)

    async def model():
        gw = await llm_gateway(ds)
        return gw.get_chat_model("gpt"), gw.get_chat_model("gpt") is (await llm_gateway(ds)).get_chat_model("gpt")

    first, same_within_loop = asyncio.run(model())
    second, _ = asyncio.run(model())
    assert same_within_loop and first is not second


@pytest.mark.parametrize(
    "exc, error_class",
    [("ReadTimeout", "timeout"), ("ConnectError", "connection")],
)
async def test_transport_failures_map_to_retryable_errors(monkeypatch, exc, error_class):
    import httpx2

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    calls = []

    def handler(request):
        calls.append(request)
        raise getattr(httpx2, exc)("simulated", request=request)

    monkeypatch.setattr(builtin, "make_http_client",
                        lambda config: httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))
    ds = ds_with([{"id": "local", "provider": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}],
                 retries={"max_attempts": 2, "backoff": 0.01})
    gw, sleep = await setup(ds)
    with pytest.raises(ModelError) as info:
        await gw.complete(ChatRequest([Message.user("hi")]), purpose="answer", prompt_version="v")
    assert info.value.error_class == error_class and info.value.retryable
    assert len(calls) == 2 and sleep.delays == [0.01]  # the SDK itself does not retry
    if error_class == "connection":
        assert "http://127.0.0.1:9/v1" in str(info.value) and "running" in str(info.value)
