"""Gateway policy with scripted models: retries, fallback, timeouts, budgets, logging."""

import asyncio

import pytest
from datasette.app import Datasette
from datasette.plugins import pm

from datasette_llm_core.calllog import flush_pending
from datasette_llm_core.errors import BudgetError, CapabilityError, ConfigError, ModelError
from datasette_llm_core.gateway import Budget, estimate, llm_gateway
from datasette_llm_core.types import ChatRequest, ImagePart, Message, StreamEnd, TextDelta, Usage

from .fakes import FakeModelsPlugin, HashEmbeddingModel, Scripted, ScriptedChatModel


def make_ds(**settings):
    config = {"state_database": ":memory:", **settings}
    return Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": config}})


@pytest.fixture
def two_models(monkeypatch):
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DATASETTE_LLM_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    primary = ScriptedChatModel("primary")
    backup = ScriptedChatModel("backup")
    plugin = FakeModelsPlugin(chat=[primary, backup], embedding=[HashEmbeddingModel()])
    name = f"two-models-{id(plugin)}"
    pm.register(plugin, name=name)
    try:
        yield primary, backup
    finally:
        pm.unregister(name=name)


async def calls(ds):
    await flush_pending()
    db = ds.databases["llm_newsroom"]
    rows = (await db.execute("select * from llm_calls order by started_at, attempt")).rows
    return [dict(r) for r in rows]


def req(text="Hello there, model"):
    return ChatRequest(messages=[Message.user(text)])


class RecordingSleep:
    def __init__(self):
        self.delays = []

    async def __call__(self, seconds):
        self.delays.append(seconds)


async def gateway(ds):
    await ds.invoke_startup()
    sleep = RecordingSleep()
    gw = await llm_gateway(ds, sleep=sleep)
    return gw, sleep


async def test_stream_logs_one_ok_row_with_call_id(two_models):
    primary, _ = two_models
    primary.enqueue(Scripted(text="abcdefgh", usage=Usage(11, 3)))
    ds = make_ds(defaults={"extract": "primary"})
    gw, _ = await gateway(ds)
    events = [
        e
        async for e in gw.stream(
            req(), purpose="extract", prompt_version="extract-v1", actor={"id": "ana"}, ref="run-7"
        )
    ]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "abcdefgh"
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.call_id
    (row,) = await calls(ds)
    assert row["id"] == end.call_id
    assert row["outcome"] == "ok"
    assert (row["purpose"], row["model_id"], row["provider"]) == ("extract", "primary", "test")
    assert (row["actor_id"], row["prompt_version"], row["ref"]) == ("ana", "extract-v1", "run-7")
    assert (row["input_tokens"], row["output_tokens"], row["tokens_estimated"]) == (11, 3, 0)
    assert row["cost_usd"] == pytest.approx((11 * 1.0 + 3 * 2.0) / 1e6)
    assert row["streamed"] == 1 and row["latency_ms"] >= 0 and row["first_token_ms"] is not None


async def test_retries_honour_retry_after_then_succeed(two_models):
    primary, _ = two_models
    primary.enqueue(
        ModelError("rate limited", status=429, retryable=True, retry_after=2.5, error_class="rate_limit"),
        ModelError("server error", status=503, retryable=True, error_class="server_error"),
        "done",
    )
    ds = make_ds(defaults={"answer": "primary"}, retries={"max_attempts": 3, "backoff": 0.25})
    gw, sleep = await gateway(ds)
    response = await gw.complete(req(), purpose="answer", prompt_version="a1")
    assert response.text == "done"
    # Retry-After honoured first; then exponential backoff (0.25 * 2**1).
    assert sleep.delays == [2.5, 0.5]
    rows = await calls(ds)
    assert [r["outcome"] for r in rows] == ["retry", "retry", "ok"]
    assert [r["attempt"] for r in rows] == [1, 2, 3]
    assert len({r["call_group"] for r in rows}) == 1
    assert rows[0]["error_class"] == "rate_limit"
    assert response.call_id == rows[-1]["id"]


async def test_fallback_after_retries_run_out(two_models):
    primary, backup = two_models
    err = ModelError("overloaded", status=529, retryable=True, error_class="overloaded")
    primary.enqueue(err, err)
    backup.enqueue("from backup")
    ds = make_ds(
        defaults={"extract": "primary"},
        fallback={"extract": ["backup"]},
        retries={"max_attempts": 2, "backoff": 0.1},
    )
    gw, sleep = await gateway(ds)
    text = ""
    async for e in gw.stream(req(), purpose="extract", prompt_version="x"):
        if isinstance(e, TextDelta):
            text += e.text
    assert text == "from backup"
    assert e.model_id == "backup"  # the StreamEnd says who answered
    assert sleep.delays == [0.1]
    rows = await calls(ds)
    assert [(r["model_id"], r["outcome"]) for r in rows] == [
        ("primary", "retry"),
        ("primary", "fallback"),
        ("backup", "ok"),
    ]


async def test_non_retryable_error_falls_back_without_sleep(two_models):
    primary, backup = two_models
    primary.enqueue(ModelError("bad request", status=400, retryable=False, error_class="bad_request"))
    backup.enqueue("ok")
    ds = make_ds(defaults={"answer": "primary"}, fallback=["backup"])
    gw, sleep = await gateway(ds)
    response = await gw.complete(req(), purpose="answer", prompt_version="x")
    assert response.model_id == "backup"
    assert sleep.delays == []


async def test_final_error_is_actionable_and_logged(two_models):
    primary, backup = two_models
    primary.enqueue(ModelError("quota gone", status=429, retryable=False, error_class="rate_limit"))
    backup.enqueue(ModelError("boom", status=500, retryable=False, error_class="server_error"))
    ds = make_ds(defaults={"answer": "primary"}, fallback=["backup"])
    gw, _ = await gateway(ds)
    with pytest.raises(ModelError) as info:
        await gw.complete(req(), purpose="answer", prompt_version="x")
    message = str(info.value)
    assert "primary: quota gone" in message and "backup: boom" in message
    assert "fallback" in message  # says what to do next
    rows = await calls(ds)
    assert [r["outcome"] for r in rows] == ["fallback", "error"]


async def test_no_fallback_after_first_delta(two_models):
    primary, backup = two_models

    class Breaking(ScriptedChatModel):
        async def stream(self, request, *, timeout=None):
            yield TextDelta("partial ")
            raise ModelError("connection reset", retryable=True, error_class="connection")

    breaking = Breaking("breaking")
    plugin = FakeModelsPlugin(chat=[breaking])
    pm.register(plugin, name="breaking-plugin")
    try:
        backup.enqueue("never used")
        ds = make_ds(defaults={"extract": "breaking"}, fallback=["backup"])
        gw, sleep = await gateway(ds)
        seen = []
        with pytest.raises(ModelError) as info:
            async for e in gw.stream(req(), purpose="extract", prompt_version="x"):
                seen.append(e)
        assert [e.text for e in seen] == ["partial "]
        assert "broke off" in str(info.value)
        assert backup.requests == [] and sleep.delays == []
        (row,) = await calls(ds)
        assert row["outcome"] == "error" and row["error_class"] == "connection"
    finally:
        pm.unregister(name="breaking-plugin")


async def test_timeout_retries_then_errors(two_models):
    primary, _ = two_models
    primary.enqueue(Scripted(text="slow", delay=1.0), Scripted(text="slow", delay=1.0))
    ds = make_ds(defaults={"answer": "primary"}, retries={"max_attempts": 2, "backoff": 0.01})
    gw, sleep = await gateway(ds)
    with pytest.raises(ModelError) as info:
        await gw.complete(req(), purpose="answer", prompt_version="x", timeout=0.05)
    assert info.value.error_class == "timeout"
    assert "in time" in str(info.value)
    rows = await calls(ds)
    assert [(r["outcome"], r["error_class"]) for r in rows] == [("retry", "timeout"), ("error", "timeout")]


async def test_stream_idle_timeout(two_models):
    primary, _ = two_models
    primary.enqueue(Scripted(text="slow", delay=1.0))
    ds = make_ds(defaults={"answer": "primary"}, retries={"max_attempts": 1})
    gw, _ = await gateway(ds)
    with pytest.raises(ModelError):
        async for _ in gw.stream(req(), purpose="answer", prompt_version="x", timeout=0.05):
            pass


async def test_capability_mismatch_sends_nothing(two_models):
    primary, _ = two_models
    primary.supports_images = False
    ds = make_ds(defaults={"extract": "primary"})
    gw, _ = await gateway(ds)
    request = ChatRequest(messages=[Message.user("what", ImagePart(b"\x89PNG", "image/png"))])
    with pytest.raises(CapabilityError) as info:
        await gw.complete(request, purpose="extract", prompt_version="x")
    assert "image input" in str(info.value)
    assert primary.requests == []
    assert await calls(ds) == []


async def test_fallback_skips_models_lacking_capability(two_models):
    primary, backup = two_models
    backup.supports_schema = False
    primary.enqueue(ModelError("down", status=503, retryable=False))
    ds = make_ds(defaults={"extract": "primary"}, fallback=["backup"])
    gw, _ = await gateway(ds)
    request = ChatRequest(messages=[Message.user("x")], json_schema={"type": "object"})
    with pytest.raises(ModelError):
        await gw.complete(request, purpose="extract", prompt_version="x")
    assert backup.requests == []


async def test_cancelled_stream_is_logged(two_models):
    primary, _ = two_models
    primary.enqueue(Scripted(text="a long answer streamed slowly", chunks=10, delay=0.01))
    ds = make_ds(defaults={"answer": "primary"})
    gw, _ = await gateway(ds)
    stream = gw.stream(req(), purpose="answer", prompt_version="x", actor={"id": "bo"})
    first = await stream.__anext__()
    assert isinstance(first, TextDelta)
    await stream.aclose()
    (row,) = await calls(ds)
    assert row["outcome"] == "cancelled"
    assert row["actor_id"] == "bo" and row["output_tokens"] >= 1


async def test_cancelled_task_is_logged(two_models):
    primary, _ = two_models
    primary.enqueue(Scripted(text="x" * 50, chunks=50, delay=0.05))
    ds = make_ds(defaults={"answer": "primary"})
    gw, _ = await gateway(ds)
    started = asyncio.Event()

    async def consume():
        async for _ in gw.stream(req(), purpose="answer", prompt_version="x"):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rows = await calls(ds)
    assert [r["outcome"] for r in rows] == ["cancelled"]


async def test_budget_refuses_before_sending(two_models):
    primary, _ = two_models
    ds = make_ds(defaults={"extract": "primary"})
    gw, _ = await gateway(ds)
    budget = Budget(max_tokens=100)
    with pytest.raises(BudgetError) as info:
        await gw.complete(req("word " * 400), purpose="extract", prompt_version="x", budget=budget)
    assert "max_tokens_per_run" in str(info.value)
    assert primary.requests == []
    (row,) = await calls(ds)
    assert row["outcome"] == "refused" and row["error_class"] == "budget"


async def test_budget_accumulates_actual_usage(two_models):
    primary, _ = two_models
    primary.enqueue(Scripted(text="a", usage=Usage(100, 50)), Scripted(text="b", usage=Usage(100, 50)))
    ds = make_ds(defaults={"extract": "primary"})
    gw, _ = await gateway(ds)
    budget = Budget(max_cost=0.01)
    for _ in range(2):
        await gw.complete(req(), purpose="extract", prompt_version="x", budget=budget)
    assert budget.spent_tokens == 300
    assert budget.spent_cost == pytest.approx(2 * (100 * 1.0 + 50 * 2.0) / 1e6)
    assert budget.calls == 2
    # A cost cap below what is already spent refuses the next call.
    tight = Budget(max_cost=budget.spent_cost / 10)
    tight.settle(None, 0, budget.spent_cost)
    with pytest.raises(BudgetError):
        await gw.complete(req(), purpose="extract", prompt_version="x", budget=tight)


async def test_configured_budget_caps(two_models):
    ds = make_ds(budgets={"max_cost_per_run": 0.5, "max_tokens_per_run": 1000})
    gw, _ = await gateway(ds)
    budget = gw.new_budget()
    assert (budget.max_cost, budget.max_tokens) == (0.5, 1000)


def test_estimate_counts_text_images_and_prices():
    model = ScriptedChatModel("m")
    text_only = ChatRequest(messages=[Message.user("x" * 400)], max_tokens=1000)
    inp, out, cost = estimate(text_only, model)
    assert 100 <= inp <= 120 and out == 256
    assert cost == pytest.approx((inp * 1.0 + out * 2.0) / 1e6)
    with_image = ChatRequest(messages=[Message.user("x" * 400, ImagePart(b"..", "image/png"))])
    assert estimate(with_image, model)[0] > inp + 1000
    model.input_cost_per_mtok = None
    assert estimate(text_only, model)[2] is None


async def test_no_model_configured_is_config_error(monkeypatch):
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DATASETTE_LLM_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    ds = make_ds()
    gw, _ = await gateway(ds)
    with pytest.raises(ConfigError) as info:
        await gw.complete(req(), purpose="answer", prompt_version="x")
    assert "OPENAI_API_KEY" in str(info.value)


async def test_embed_batches_and_logs(two_models):
    ds = make_ds()
    gw, _ = await gateway(ds)
    model = gw.get_embedding_model("hash-embed")
    model.batch_size = 2
    vectors = await gw.embed(["a b", "c d", "e"], kind="document", model_id="hash-embed", ref="idx-1")
    assert vectors.shape == (3, model.dimensions)
    assert model.calls == [("document", 2), ("document", 1)]
    rows = await calls(ds)
    assert [(r["kind"], r["items"], r["outcome"], r["ref"]) for r in rows] == [
        ("embed", 2, "ok", "idx-1"),
        ("embed", 1, "ok", "idx-1"),
    ]


async def test_model_without_streaming_is_streamed_as_one_delta(two_models):
    primary, _ = two_models
    primary.supports_streaming = False
    primary.enqueue(Scripted(text="whole answer", chunks=3))
    ds = make_ds(defaults={"answer": "primary"})
    gw, _ = await gateway(ds)
    events = [e async for e in gw.stream(req(), purpose="answer", prompt_version="x")]
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["whole answer"]
    assert isinstance(events[-1], StreamEnd) and events[-1].call_id


async def test_readme_models_config_example(monkeypatch, fake_api_keys):
    """The README's configuration example parses and builds the models it promises."""
    import yaml

    from .test_docs import tagged_block

    config = yaml.safe_load(tagged_block("models-config"))["plugins"]["datasette-llm-newsroom"]
    config["state_database"] = ":memory:"
    ds = Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": config}})
    gw, _ = await gateway(ds)
    ids = {m.model_id: m for m in gw.chat_models()}
    assert {"gpt-4.1-mini", "claude", "local"} <= set(ids)
    assert ids["gpt-4.1-mini"].connection.api_key("gpt-4.1-mini") == fake_api_keys["OPENAI_API_KEY"]
    assert ids["local"].supports_schema and not ids["local"].supports_images
    assert gw.default_chat_model("answer").model_id == "claude"
    request = ChatRequest(messages=[Message.user("x")], json_schema={"type": "object"})
    chain = gw.fallback_models("extract", gw.default_chat_model("extract"), request)
    assert [m.model_id for m in chain] == ["gpt-4.1-mini", "claude", "local"]
    assert gw.new_budget().max_cost == 0.5
    assert gw.get_embedding_model("openai-small").dimensions == 1536


async def test_unknown_fallback_model_is_config_error(two_models):
    primary, _ = two_models
    ds = make_ds(defaults={"answer": "primary"}, fallback={"answer": ["claude-typo"]})
    gw, _ = await gateway(ds)
    with pytest.raises(ConfigError) as info:
        await gw.complete(req(), purpose="answer", prompt_version="x")
    assert "claude-typo" in str(info.value) and "fallback" in str(info.value)
    assert primary.requests == []
