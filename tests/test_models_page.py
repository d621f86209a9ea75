"""The models page (/-/llm-models) and its "Test" call, on both Datasette lines.

Models come from four sources at once: the configuration (an OpenAI-compatible
model at ``tests/fake_openai_server.py``), the ``llm`` package (our llm test
plugin, registered with llm's plugin manager), another plugin's hook (the
scripted fake) and, in a second instance, environment variables.
"""

from __future__ import annotations

import pytest
from datasette.app import Datasette

from datasette_llm_core.calllog import flush_pending
from datasette_llm_core.providers import llm_plugin

from .extract_web_helpers import cookies, post_form
from .fake_openai_server import FakeOpenAIServer, Reply

FAKE_KEY = "sk-fake-models-page-key-7720"


@pytest.fixture
def fake_server():
    with FakeOpenAIServer(api_key=FAKE_KEY) as server:
        yield server


@pytest.fixture
def llm_plugin_registered(tmp_path, monkeypatch):
    pytest.importorskip("llm")
    from . import llm_test_plugin

    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path / "llm-user"))
    llm_test_plugin.reset()
    llm_test_plugin.register()
    llm_plugin.clear_cache()
    yield llm_test_plugin
    llm_test_plugin.unregister()
    llm_plugin.clear_cache()


def make_ds(fake_server, **extra) -> Datasette:
    settings = {
        "state_database": ":memory:",
        "models": [
            {"id": "house", "provider": "openai-compatible", "model": "fake-model",
             "base_url": fake_server.base_url, "api_key_env": "MODELS_PAGE_KEY",
             "supports": ["streaming", "schema"]},
            {"id": "gemini-flash", "provider": "llm", "model": "scripted-sync"},
            {"id": "keyless", "provider": "llm", "model": "scripted-async"},
            {"id": "vision", "provider": "openai-compatible", "model": "fake-vision",
             "base_url": fake_server.base_url, "api_key_env": "MODELS_PAGE_KEY",
             "supports": ["images"], "accepts_urls": True},
        ],
        "defaults": {"answer": "house"},
        "fallback": {"answer": ["gemini-flash", "ghost"]},
        "retries": {"max_attempts": 3},
        "permissions": {"llm-view-log": {"id": "editor"}},
        **extra,
    }
    return Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": settings}})


@pytest.fixture
async def ds(fake_server, fake_models, llm_plugin_registered, monkeypatch):
    monkeypatch.setenv("MODELS_PAGE_KEY", FAKE_KEY)
    monkeypatch.delenv("SCRIPTED_LLM_KEY", raising=False)
    ds = make_ds(fake_server)
    await ds.invoke_startup()
    return ds


async def test_only_log_viewers_see_the_page(ds):
    for actor, status in ((None, 403), ("reporter", 403), ("editor", 200), ("root", 200)):
        response = await ds.client.get("/-/llm-models", cookies=cookies(ds, actor))
        assert response.status_code == status, (actor, response.text[:300])
    for actor, shown in (("reporter", False), ("editor", True)):
        home = (await ds.client.get("/", cookies=cookies(ds, actor))).text
        assert ('href="/-/llm-models"' in home) is shown, actor  # the "LLM models" menu item
    denied = await ds.client.post("/-/llm-models/test", cookies=cookies(ds, "reporter"),
                                  json={"model_id": "house"})
    assert denied.status_code == 403


async def test_page_lists_sources_capabilities_prices_and_chains(ds):
    html = (await ds.client.get("/-/llm-models", cookies=cookies(ds, "root"))).text
    rows = {}
    for chunk in html.split('<tr data-model-id="')[1:]:
        rows[chunk.split('"', 1)[0]] = chunk.split("</tr>", 1)[0]
    assert {"house", "gemini-flash", "keyless", "scripted", "hash-embed", "all-MiniLM-L6-v2"} <= set(rows)
    assert "configuration" in rows["house"] and "environment variable MODELS_PAGE_KEY" in rows["house"]
    assert "llm package" in rows["gemini-flash"] and "scripted-sync" in rows["gemini-flash"]
    assert "plugin hook (fake-models-" in rows["scripted"]
    assert "built in (local)" in rows["all-MiniLM-L6-v2"]
    # capabilities as llm reports them, prices known or said to be unknown
    assert "image input: yes" in rows["gemini-flash"] and "PDF input: no" in rows["gemini-flash"]
    assert "unknown / unknown" in rows["gemini-flash"] and "$1 / $2" in rows["scripted"]
    # an llm model without its key is listed as unavailable, with llm's own advice
    assert "unavailable" in rows["keyless"] and "llm keys set scripted" in rows["keyless"]
    assert "ready" in rows["house"]
    # every row has its own Test form, asking for the right kind of call
    assert 'name="kind" value="chat"' in rows["house"] and 'name="model_id" value="house"' in rows["house"]
    assert 'name="kind" value="embed"' in rows["hash-embed"]
    # whether the provider fetches image / PDF URLs for the model (enrichment's URL columns)
    assert 'llm-core-yes">image URLs' in rows["vision"] and 'llm-core-no">PDF URLs' in rows["vision"]
    assert 'llm-core-no">image URLs' in rows["house"]
    # the fallback chain, with the unregistered model flagged
    assert "gemini-flash &rarr; ghost <span class=\"llm-core-unavailable\">(not registered)" in html
    assert FAKE_KEY not in html


async def test_test_button_makes_one_logged_call(ds, fake_server):
    fake_server.on(None, Reply(content="OK", prompt_tokens=9, completion_tokens=1))
    response = await post_form(ds, "/-/llm-models/test", {"model_id": "house"}, cookies(ds, "root"),
                               token_page="/-/llm-models")
    assert response.status_code == 200
    assert "OK in" in response.text and "Test of house" in response.text
    result = (await ds.client.post("/-/llm-models/test", cookies=cookies(ds, "root"),
                                   headers={"Accept": "application/json"},
                                   json={"model_id": "house"})).json()
    assert result["ok"] and result["output"] == "OK" and result["input_tokens"] == 9
    await flush_pending()
    rows = (await ds.get_database("llm_newsroom").execute(
        "select purpose, model_id, outcome, actor_id, prompt_version from llm_calls")).rows
    assert [tuple(r) for r in rows] == [("model-test", "house", "ok", "root", "model-test-1")] * 2
    assert all(r["key_ok"] for r in fake_server.requests)


async def test_failing_test_shows_the_exact_error_without_retry_or_fallback(ds, fake_server):
    fake_server.enqueue(Reply(status=429, retry_after=1, error_message="Rate limit reached for requests"))
    result = (await ds.client.post("/-/llm-models/test", cookies=cookies(ds, "root"),
                                   headers={"Accept": "application/json"},
                                   json={"model_id": "house"})).json()
    assert not result["ok"]
    assert result["error_class"] == "rate_limit" and result["status"] == 429
    assert "Rate limit reached for requests" in result["error"]
    await flush_pending()
    rows = (await ds.get_database("llm_newsroom").execute(
        "select model_id, outcome from llm_calls")).rows
    assert [tuple(r) for r in rows] == [("house", "error")]  # one attempt, no fallback to gemini-flash
    # an llm model without its key: the ConfigError, nothing sent
    result = (await ds.client.post("/-/llm-models/test", cookies=cookies(ds, "root"),
                                   headers={"Accept": "application/json"},
                                   json={"model_id": "keyless"})).json()
    assert result["error_class"] == "ConfigError" and "SCRIPTED_LLM_KEY" in result["error"]


async def test_llm_and_embedding_models_can_be_tested(ds, llm_plugin_registered):
    llm_plugin_registered.SCRIPT.append(llm_plugin_registered.Turn(fail_status=500, wrap=True))
    result = (await ds.client.post("/-/llm-models/test", cookies=cookies(ds, "root"),
                                   headers={"Accept": "application/json"},
                                   json={"model_id": "gemini-flash"})).json()
    assert not result["ok"] and result["status"] == 500 and result["error_class"] == "server_error"
    result = (await ds.client.post("/-/llm-models/test", cookies=cookies(ds, "root"),
                                   headers={"Accept": "application/json"},
                                   json={"model_id": "gemini-flash"})).json()
    assert result["ok"] and result["output"] == "Hello from llm."
    result = (await ds.client.post("/-/llm-models/test", cookies=cookies(ds, "root"),
                                   headers={"Accept": "application/json"},
                                   json={"model_id": "hash-embed", "kind": "embed"})).json()
    assert result["ok"] and "64 dimensions" in result["output"]


async def test_environment_models_say_so(fake_api_keys, monkeypatch):
    for name in ("DATASETTE_LLM_BASE_URL",):
        monkeypatch.delenv(name, raising=False)
    ds = Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": {"state_database": ":memory:"}}})
    await ds.invoke_startup()
    html = (await ds.client.get("/-/llm-models", cookies=cookies(ds, "root"))).text
    row = html.split('<tr data-model-id="gpt-4.1-mini"', 1)[1].split("</tr>", 1)[0]
    assert "environment variables" in row and "environment variable OPENAI_API_KEY" in row
    assert "$0.4 / $1.6" in row


async def test_a_failing_plugin_hook_is_shown_not_a_500(ds):
    from datasette import hookimpl
    from datasette.plugins import pm

    class Broken:
        __name__ = "broken-models-plugin"

        @hookimpl
        def register_llm_models(self, datasette):
            raise RuntimeError("could not reach the model registry")

    broken = Broken()
    pm.register(broken, name="broken-models-plugin")
    try:
        response = await ds.client.get("/-/llm-models", cookies=cookies(ds, "root"))
    finally:
        pm.unregister(broken)
    assert response.status_code == 200
    assert "plugin hook (broken-models-plugin): RuntimeError: could not reach the model registry" in response.text
    assert 'data-model-id="house"' in response.text
