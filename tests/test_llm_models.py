"""``llm`` models through the suite's gateway, with an llm plugin of our own.

``tests/llm_test_plugin.py`` is registered with ``llm.plugins.pm`` exactly as
llm registers an installed plugin; the suite then finds its models through
``llm.get_models_with_aliases()``. LLM_USER_PATH points at a temporary
directory, so llm's key store and aliases are never the user's real ones.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading

import pytest

llm = pytest.importorskip("llm", reason="pip install 'datasette-llm-newsroom[llm]'")

from datasette.app import Datasette  # noqa: E402

from datasette_llm_core.calllog import flush_pending  # noqa: E402
from datasette_llm_core.errors import BudgetError, CapabilityError, ConfigError, ModelError  # noqa: E402
from datasette_llm_core.gateway import Budget, llm_gateway  # noqa: E402
from datasette_llm_core.providers import llm_plugin  # noqa: E402
from datasette_llm_core.types import ChatRequest, ImagePart, Message, PdfPart, StreamEnd, TextDelta  # noqa: E402

from . import llm_test_plugin as plugin  # noqa: E402
from .conftest import SECRET_MARKER, wait_for  # noqa: E402
from .llm_test_plugin import Turn  # noqa: E402

LLM_KEY = SECRET_MARKER + "llm-plugin-2b9c41d7e0"


@pytest.fixture(autouse=True)
def llm_world(tmp_path, monkeypatch):
    """Our llm plugin registered, llm's user dir in tmp, no vendor keys around."""
    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path / "llm-user"))
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DATASETTE_LLM_BASE_URL", "SCRIPTED_LLM_KEY"):
        monkeypatch.delenv(name, raising=False)
    plugin.reset()
    plugin.register()
    llm_plugin.clear_cache()
    yield tmp_path / "llm-user"
    plugin.unregister()
    plugin.reset()
    llm_plugin.clear_cache()


class RecordingSleep:
    def __init__(self):
        self.delays = []

    async def __call__(self, seconds):
        self.delays.append(seconds)


def make_ds(**settings):
    config = {"state_database": ":memory:", "auto_models": False, **settings}
    return Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": config}})


async def gateway_for(**settings):
    ds = make_ds(**settings)
    await ds.invoke_startup()
    sleep = RecordingSleep()
    return ds, await llm_gateway(ds, sleep=sleep), sleep


async def call_rows(ds):
    await flush_pending()
    db = ds.databases["llm_newsroom"]
    rows = (await db.execute("select * from llm_calls order by started_at, attempt")).rows
    return [dict(r) for r in rows]


def ask(text="Say hello", **kwargs):
    return ChatRequest(messages=[Message.user(text)], **kwargs)


async def collect(stream):
    text, end = [], None
    async for event in stream:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, StreamEnd):
            end = event
    return "".join(text), end


CONFIGURED = [
    {"id": "gemini-flash", "provider": "llm", "model": "scripted-sync"},
    {"id": "keyed", "provider": "llm", "model": "scripted-alias"},
    {"id": "plain", "provider": "llm", "model": "plain-llm"},
]


# ------------------------------------------------------------------ listing
async def test_configured_llm_models_are_listed_with_honest_capabilities():
    _, gw, _ = await gateway_for(models=CONFIGURED)
    models = {m.model_id: m for m in gw.chat_models()}
    assert set(models) == {"gemini-flash", "keyed", "plain"}
    assert models["gemini-flash"].provider == "llm"
    assert models["gemini-flash"].capabilities() == {"streaming", "schema", "images"}
    assert models["keyed"].llm_model_id == "scripted-alias"  # found by llm alias
    assert models["keyed"].capabilities() == {"streaming", "pdfs"}
    assert models["plain"].capabilities() == set()
    # supports: may only narrow what llm reports
    _, gw, _ = await gateway_for(models=[{**CONFIGURED[0], "supports": ["streaming", "pdfs"]}])
    assert gw.get_chat_model("gemini-flash").capabilities() == {"streaming"}


async def test_llm_models_setting_registers_every_llm_model():
    _, gw, _ = await gateway_for(llm_models=True, models=[CONFIGURED[0]])
    ids = {m.model_id for m in gw.chat_models()}
    assert {"gemini-flash", "scripted-sync", "scripted-async", "plain-llm"} <= ids
    assert gw.get_chat_model("claude-haiku-4-5-test").input_cost_per_mtok == 1.00  # a known family
    assert gw.get_chat_model("scripted-sync").input_cost_per_mtok is None  # unknown, not guessed
    assert "scripted-embed" in {m.model_id for m in gw.embedding_models()}
    # without the setting, only configured ones
    _, gw, _ = await gateway_for(models=[CONFIGURED[0]])
    assert {m.model_id for m in gw.chat_models()} == {"gemini-flash"}


async def test_unknown_llm_model_is_listed_as_unavailable_with_what_to_do():
    _, gw, _ = await gateway_for(models=[{"id": "x", "provider": "llm", "model": "no-such-model"}])
    reason = gw.unavailable_reason(gw.get_chat_model("x"))
    assert "llm has no model 'no-such-model'" in reason and "scripted-sync" in reason
    with pytest.raises(ConfigError, match="llm install"):
        await gw.complete(ask(), purpose="answer", prompt_version="t", model_id="x")


async def test_llm_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm", None)
    _, gw, _ = await gateway_for(models=[CONFIGURED[0]])
    reason = gw.unavailable_reason(gw.get_chat_model("gemini-flash"))
    assert "pip install 'datasette-llm-newsroom[llm]'" in reason


# ------------------------------------------------------------------ calls
async def test_sync_model_streams_in_a_worker_thread_with_usage_logged():
    ds, gw, _ = await gateway_for(models=CONFIGURED)
    plugin.SCRIPT.append(Turn(chunks=["One ", "two ", "three."], input_tokens=21, output_tokens=4,
                              reasoning="Let me count (not part of the answer)"))
    text, end = await collect(gw.stream(ask("Count", max_tokens=50), purpose="answer",
                                        prompt_version="t1", model_id="gemini-flash",
                                        actor={"id": "maria"}))
    assert text == "One two three."
    assert (end.usage.input_tokens, end.usage.output_tokens) == (21, 4)
    assert end.finish_reason == "stop"  # the plugin's stop_reason, mapped
    call = plugin.CALLS[-1]
    assert call["thread"].startswith("llm-sync")
    assert call["prompt"] == "Count" and call["options"] == {"max_tokens": 50, "temperature": 0.0}
    rows = await call_rows(ds)
    assert len(rows) == 1
    row = rows[0]
    assert (row["provider"], row["model_id"], row["outcome"]) == ("llm", "gemini-flash", "ok")
    assert (row["input_tokens"], row["output_tokens"], row["tokens_estimated"]) == (21, 4, 0)
    assert row["actor_id"] == "maria"
    assert end.call_id == row["id"]


async def test_sync_model_does_not_block_the_event_loop():
    _, gw, _ = await gateway_for(models=CONFIGURED)
    plugin.SCRIPT.append(Turn(chunks=["a ", "b ", "c "], delay=0.15))
    ticks = 0
    stop = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    text, _ = await collect(gw.stream(ask(), purpose="answer", prompt_version="t", model_id="gemini-flash"))
    stop.set()
    await task
    assert text == "a b c "
    # 0.45 s of blocking work in the model: a blocked loop would tick ~0 times
    assert ticks >= 20, ticks


async def test_async_model_is_preferred_and_gets_the_key(llm_world, monkeypatch):
    _, gw, _ = await gateway_for(models=CONFIGURED)
    with pytest.raises(ConfigError) as info:
        await gw.complete(ask(), purpose="answer", prompt_version="t", model_id="keyed")
    assert "llm keys set scripted" in str(info.value) and "SCRIPTED_LLM_KEY" in str(info.value)
    assert plugin.CALLS == []  # refused before anything was sent
    # llm's own key store, in LLM_USER_PATH (never the user's real ~/.config)
    llm_world.mkdir(parents=True, exist_ok=True)
    (llm_world / "keys.json").write_text(json.dumps({"scripted": LLM_KEY}))
    assert str(llm.user_dir()) == str(llm_world)
    response = await gw.complete(ask(), purpose="answer", prompt_version="t", model_id="keyed")
    assert response.text == "Hello from llm."
    call = plugin.CALLS[-1]
    assert call["key"] == LLM_KEY
    assert call["thread"] == threading.current_thread().name  # no worker thread for async models


async def test_configured_api_key_is_passed_as_key(monkeypatch):
    monkeypatch.setenv("NEWSROOM_SCRIPTED_KEY", LLM_KEY)
    _, gw, _ = await gateway_for(models=[{**CONFIGURED[1], "api_key": {"$env": "NEWSROOM_SCRIPTED_KEY"}}])
    await gw.complete(ask(), purpose="answer", prompt_version="t", model_id="keyed")
    assert plugin.CALLS[-1]["key"] == LLM_KEY


async def test_rate_limit_is_retried_honouring_retry_after():
    ds, gw, sleep = await gateway_for(models=CONFIGURED)
    plugin.SCRIPT += [Turn(fail_status=429, retry_after=2), Turn(chunks=["ok"])]
    text, _ = await collect(gw.stream(ask(), purpose="answer", prompt_version="t", model_id="gemini-flash"))
    assert text == "ok"
    assert sleep.delays == [2.0]
    rows = await call_rows(ds)
    assert [(r["outcome"], r["error_class"]) for r in rows] == [("retry", "rate_limit"), ("ok", None)]
    assert "429" in rows[0]["error_message"]


async def test_wrapped_server_error_is_retryable_and_final_error_is_ours():
    ds, gw, sleep = await gateway_for(models=CONFIGURED, retries={"max_attempts": 2})
    plugin.SCRIPT += [Turn(fail_status=500, wrap=True), Turn(fail_status=500, wrap=True)]
    with pytest.raises(ModelError) as info:
        await gw.complete(ask(), purpose="answer", prompt_version="t", model_id="gemini-flash")
    assert info.value.status == 500 and info.value.error_class == "server_error"
    assert len(sleep.delays) == 1  # retried once, then gave up
    rows = await call_rows(ds)
    assert [r["outcome"] for r in rows] == ["retry", "error"]


async def test_unknown_exception_is_not_retried_and_falls_back():
    ds, gw, sleep = await gateway_for(models=CONFIGURED, fallback={"answer": ["plain"]})
    plugin.SCRIPT += [Turn(error=RuntimeError("weights file is corrupt")), Turn(chunks=["from plain"])]
    response = await gw.complete(ask(), purpose="answer", prompt_version="t", model_id="gemini-flash")
    assert response.text == "from plain" and response.model_id == "plain"
    assert sleep.delays == []
    rows = await call_rows(ds)
    assert [(r["model_id"], r["outcome"]) for r in rows] == [("gemini-flash", "fallback"), ("plain", "ok")]
    assert "weights file is corrupt" in rows[0]["error_message"]


async def test_error_echoing_the_key_is_redacted(llm_world, monkeypatch):
    monkeypatch.setenv("SCRIPTED_LLM_KEY", LLM_KEY)
    ds, gw, _ = await gateway_for(models=[{**CONFIGURED[1], "api_key": {"$env": "SCRIPTED_LLM_KEY"}}])
    plugin.SCRIPT.append(Turn(error=llm.ModelError(f"key {LLM_KEY} was refused")))
    with pytest.raises(ModelError) as info:
        await gw.complete(ask(), purpose="answer", prompt_version="t", model_id="keyed")
    assert LLM_KEY not in str(info.value) and "refused" in str(info.value)
    rows = await call_rows(ds)
    assert all(LLM_KEY not in (r["error_message"] or "") for r in rows)


async def test_capabilities_are_checked_before_anything_is_sent():
    ds, gw, _ = await gateway_for(models=CONFIGURED)
    with pytest.raises(CapabilityError, match="structured output"):
        await gw.complete(ask(json_schema={"type": "object"}), purpose="extract", prompt_version="t",
                          model_id="plain")
    gif = ChatRequest(messages=[Message.user("What is this?", ImagePart(b"GIF89a", "image/gif"))])
    with pytest.raises(CapabilityError, match="image/gif"):
        await gw.complete(gif, purpose="extract", prompt_version="t", model_id="gemini-flash")
    assert plugin.CALLS == [] and await call_rows(ds) == []


async def test_schema_images_pdfs_and_history_reach_the_plugin(monkeypatch):
    monkeypatch.setenv("SCRIPTED_LLM_KEY", LLM_KEY)
    _, gw, _ = await gateway_for(models=CONFIGURED)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    png = ChatRequest(messages=[Message.user("Read it", ImagePart(b"\x89PNG....", "image/png"))],
                      system="Be brief", json_schema=schema)
    await gw.complete(png, purpose="extract", prompt_version="t", model_id="gemini-flash")
    call = plugin.CALLS[-1]
    assert call["schema"] == schema and call["system"] == "Be brief"
    assert call["attachments"] == [("image/png", 8)]
    pdf = ChatRequest(messages=[Message.user("Summarise"), Message.assistant("Which part?"),
                                Message.user("All of it", PdfPart(b"%PDF-1.4 x"))])
    await gw.complete(pdf, purpose="extract", prompt_version="t", model_id="keyed")
    call = plugin.CALLS[-1]
    assert call["attachments"] == [("application/pdf", 10)]
    assert [role for role, _ in call["messages"]] == ["user", "assistant", "user"]


async def test_model_that_cannot_stream_is_served_whole():
    _, gw, _ = await gateway_for(models=CONFIGURED)
    plugin.SCRIPT.append(Turn(chunks=["all ", "at ", "once"]))
    text, end = await collect(gw.stream(ask(), purpose="answer", prompt_version="t", model_id="plain"))
    assert text == "all at once" and end.usage.input_tokens == 11


async def test_budget_refuses_before_the_plugin_is_called():
    ds, gw, _ = await gateway_for(models=CONFIGURED)
    with pytest.raises(BudgetError):
        await gw.complete(ask("x" * 4000), purpose="answer", prompt_version="t", model_id="gemini-flash",
                          budget=Budget(max_tokens=100))
    assert plugin.CALLS == []
    assert [r["outcome"] for r in await call_rows(ds)] == ["refused"]


async def test_closing_a_stream_early_is_logged_cancelled_and_closes_the_model():
    ds, gw, _ = await gateway_for(models=CONFIGURED)
    plugin.SCRIPT.append(Turn(chunks=["first ", "second ", "third "], delay=0.05))
    stream = gw.stream(ask(), purpose="answer", prompt_version="t", model_id="gemini-flash")
    first = await stream.__anext__()
    assert first.text == "first "
    await stream.aclose()
    rows = await call_rows(ds)
    assert [r["outcome"] for r in rows] == ["cancelled"]
    # the plugin's generator is closed in its thread, not left to run on
    await wait_for(lambda: plugin.CALLS[-1].get("closed"), timeout=5)


async def test_llm_embedding_model_through_the_gateway():
    ds, gw, _ = await gateway_for(
        embedding_models=[{"id": "words", "provider": "llm", "model": "scripted-embed"}],
        defaults={"embed": "words"})
    vectors = await gw.embed(["one two", "three", "four five six", "seven", "eight"], kind="document")
    assert vectors.shape == (5, 8)
    assert abs(float((vectors[0] ** 2).sum()) - 1.0) < 1e-5
    assert gw.get_embedding_model("words").dimensions == 8
    assert all(c["thread"].startswith("llm-sync") for c in plugin.CALLS)
    rows = await call_rows(ds)
    # the llm model's own batch_size (4) is honoured: two batches, one row each
    assert [(r["kind"], r["provider"], r["outcome"], r["items"]) for r in rows] == [
        ("embed", "llm", "ok", 4), ("embed", "llm", "ok", 1)]


async def test_readme_llm_example_registers_what_it_says():
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- docs-test: llm-models -->\s*\n```yaml\n(.*?)\n```", readme, re.S).group(1)
    settings = yaml.safe_load(block)["plugins"]["datasette-llm-newsroom"]
    _, gw, _ = await gateway_for(**settings)
    models = {m.model_id: m for m in gw.chat_models()}
    assert models["gpt-4.1-mini"].provider == "openai"  # the configured one wins over llm's
    assert {"scripted-sync", "plain-llm"} <= set(models)  # llm_models: true
    reason = gw.unavailable_reason(models["gemini-flash"])  # llm-gemini is not installed here
    assert "gemini-2.5-flash" in reason and "llm install" in reason


async def test_key_from_llm_key_store_is_redacted_when_echoed(llm_world):
    llm_world.mkdir(parents=True, exist_ok=True)
    (llm_world / "keys.json").write_text(json.dumps({"scripted": LLM_KEY}))
    ds, gw, _ = await gateway_for(models=CONFIGURED)
    plugin.SCRIPT.append(Turn(error=RuntimeError(f"upstream said: token {LLM_KEY} expired")))
    with pytest.raises(ModelError) as info:
        await gw.complete(ask(), purpose="answer", prompt_version="t", model_id="keyed")
    assert "expired" in str(info.value) and LLM_KEY not in str(info.value)
    assert all(LLM_KEY not in (r["error_message"] or "") for r in await call_rows(ds))


class BrokenPlugin:
    """An llm plugin whose hook fails, like one installed without its dependency."""

    @llm.hookimpl
    def register_models(self, register):
        raise ModuleNotFoundError("No module named 'llama_cpp'")


async def test_a_broken_llm_plugin_is_reported_not_a_crash():
    from llm.plugins import pm as llm_pm

    broken = BrokenPlugin()
    llm_pm.register(broken, name="broken-test-plugin")
    try:
        _, gw, _ = await gateway_for(models=[CONFIGURED[0]])
        reason = gw.unavailable_reason(gw.get_chat_model("gemini-flash"))
        assert "llama_cpp" in reason and "llm uninstall" in reason
    finally:
        llm_pm.unregister(broken)


async def test_single_turn_model_gets_earlier_turns_as_text():
    _, gw, _ = await gateway_for(models=CONFIGURED)
    request = ChatRequest(messages=[Message.user("Example: 2+2"), Message.assistant("4"),
                                    Message.user("Now: 3+3")])
    response = await gw.complete(request, purpose="extract", prompt_version="t", model_id="plain")
    assert response.text == "Hello from llm."
    call = plugin.CALLS[-1]
    assert call["messages"] == [("user", 1)]  # one turn, as llm requires for this model
    assert "User: Example: 2+2" in call["prompt"] and "Assistant: 4" in call["prompt"]
    assert call["prompt"].endswith("Now: 3+3")


async def test_option_out_of_the_plugins_range_is_left_to_its_default():
    _, gw, _ = await gateway_for(models=CONFIGURED)
    await gw.complete(ask(max_tokens=4096), purpose="answer", prompt_version="t", model_id="gemini-flash")
    assert plugin.CALLS[-1]["options"] == {"temperature": 0.0}  # max_tokens <= 1000 for this plugin
