"""Model keys from datasette-secrets: ``api_key: {secret: NAME}``.

datasette-secrets 0.2 runs on Datasette 0.65 only (its pages call
``datasette.permission_allowed``, which 1.0 alphas removed), so the tests
that need it skip elsewhere; the environment path is tested on both lines.

The main test runs a real ``datasette serve`` with datasette-secrets: an admin
sets the secret through its page, the models page's test call then reaches
``tests/fake_openai_server.py`` with that key in its Authorization header, a
new value set through the page is used by the next call without a restart,
and no value appears in any page, the server's log or the state database.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasette import hookimpl
from datasette.app import Datasette

from datasette_llm_core.config import parse_settings
from datasette_llm_core.errors import ConfigError
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.types import ChatRequest, Message

from .conftest import SECRET_MARKER, find_secret_hits
from .fake_openai_server import FakeOpenAIServer, Reply
from .processes import free_port, stop_process, wait_until_serving

REPO = Path(__file__).parent.parent
SECRET_NAME = "NEWSROOM_OPENAI_KEY"
FIRST = SECRET_MARKER + "stored-first-5d0c7a1e93"
SECOND = SECRET_MARKER + "stored-second-8e24b6f1c0"
FROM_ENV = SECRET_MARKER + "from-env-3a7f90d2c4"
SERVER_SECRET = "secrets-suite-signing-secret"

try:
    import datasette_secrets  # noqa: F401
    from cryptography.fernet import Fernet

    HAVE_SECRETS = True
except ImportError:
    HAVE_SECRETS = False

needs_secrets = pytest.mark.skipif(
    not HAVE_SECRETS, reason="datasette-secrets is not installed (it supports Datasette 0.65)")


def model_entry(base_url: str) -> dict:
    return {"id": "newsroom-gpt", "provider": "openai-compatible", "model": "fake-model",
            "base_url": base_url, "api_key": {"secret": SECRET_NAME}}


def plugin_config(base_url: str, **extra) -> dict:
    return {"auto_models": False, "models": [model_entry(base_url)],
            "retries": {"max_attempts": 1}, **extra}


# ------------------------------------------------------------------ both lines
def test_secret_reference_parses_and_bad_names_are_refused():
    settings = parse_settings({"models": [{"id": "m", "provider": "openai", "api_key": {"secret": "OPENAI_API_KEY"}}]})
    assert settings.models[0].api_key.secret == "OPENAI_API_KEY"
    with pytest.raises(ConfigError, match="api_key"):
        parse_settings({"models": [{"id": "m", "provider": "openai", "api_key": {"secret": "no spaces"}}]})


async def test_environment_variable_of_the_secret_name_works_without_the_store(monkeypatch):
    monkeypatch.setenv(SECRET_NAME, FROM_ENV)
    with FakeOpenAIServer(api_key=FROM_ENV) as fake:
        ds = Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": {
            "state_database": ":memory:", **plugin_config(fake.base_url)}}})
        await ds.invoke_startup()
        gw = await llm_gateway(ds)
        response = await gw.complete(ChatRequest(messages=[Message.user("hi")]), purpose="answer",
                                     prompt_version="t")
        assert response.text
        assert [r["key_ok"] for r in fake.requests] == [True]


async def test_unset_secret_says_where_to_set_it(monkeypatch):
    monkeypatch.delenv(SECRET_NAME, raising=False)
    ds = Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": {
        "state_database": ":memory:", **plugin_config("http://127.0.0.1:9/v1")}}})
    await ds.invoke_startup()
    gw = await llm_gateway(ds)
    reason = gw.unavailable_reason(gw.get_chat_model("newsroom-gpt"))
    assert f"/-/secrets/{SECRET_NAME}" in reason and f"{SECRET_NAME} environment variable" in reason


# ------------------------------------------------------------------ with datasette-secrets, in process
class _Grant:
    """0.65 has no config for other plugins' permissions: root may manage secrets."""

    __name__ = "grant-manage-secrets"

    @hookimpl
    def permission_allowed(self, actor, action):
        if action == "manage-secrets" and actor and actor.get("id") == "root":
            return True
        return None


GRANT = _Grant()


@pytest.fixture
def grant():
    from datasette.plugins import pm

    pm.register(GRANT, name="grant-manage-secrets")
    yield
    pm.unregister(GRANT)


async def set_secret_in_process(ds, value: str) -> None:
    root = {"ds_actor": ds.sign({"a": {"id": "root"}}, "actor")}
    page = await ds.client.get(f"/-/secrets/{SECRET_NAME}", cookies=root)
    assert page.status_code == 200, page.text
    token = re.search(r'name="csrftoken" value="([^"]*)"', page.text).group(1)
    jar = {**root, "ds_csrftoken": page.cookies.get("ds_csrftoken") or token}
    done = await ds.client.post(f"/-/secrets/{SECRET_NAME}", cookies=jar,
                                data={"csrftoken": token, "secret": value, "note": ""})
    assert done.status_code == 302, done.text


@needs_secrets
async def test_environment_wins_over_the_stored_secret(monkeypatch, grant):
    monkeypatch.delenv(SECRET_NAME, raising=False)
    with FakeOpenAIServer(api_key=FIRST) as fake:
        ds = Datasette(memory=True, metadata={"plugins": {
            "datasette-secrets": {"encryption-key": Fernet.generate_key().decode()},
            "datasette-llm-newsroom": {"state_database": ":memory:", **plugin_config(fake.base_url)},
        }})
        await ds.invoke_startup()
        listing = await ds.client.get("/-/secrets", cookies={"ds_actor": ds.sign({"a": {"id": "root"}}, "actor")})
        assert SECRET_NAME in listing.text  # registered by the suite's register_secrets hook
        await set_secret_in_process(ds, FIRST)
        request = ChatRequest(messages=[Message.user("hi")])
        gw = await llm_gateway(ds)
        await gw.complete(request, purpose="answer", prompt_version="t")
        assert fake.requests[-1]["key_ok"]  # the stored secret was sent
        monkeypatch.setenv(SECRET_NAME, FROM_ENV)
        fake.api_key = FROM_ENV
        gw = await llm_gateway(ds)
        await gw.complete(request, purpose="answer", prompt_version="t")
        assert fake.requests[-1]["key_ok"]  # the environment variable won


@needs_secrets
async def test_llm_model_key_from_a_secret(monkeypatch, grant, tmp_path):
    llm = pytest.importorskip("llm")  # noqa: F841
    from datasette_llm_core.providers import llm_plugin

    from . import llm_test_plugin

    monkeypatch.delenv(SECRET_NAME, raising=False)
    monkeypatch.delenv("SCRIPTED_LLM_KEY", raising=False)
    llm_test_plugin.reset()
    llm_test_plugin.register()
    llm_plugin.clear_cache()
    try:
        ds = Datasette(memory=True, metadata={"plugins": {
            "datasette-secrets": {"encryption-key": Fernet.generate_key().decode()},
            "datasette-llm-newsroom": {"state_database": ":memory:", "models": [
                {"id": "keyed", "provider": "llm", "model": "scripted-async",
                 "api_key": {"secret": SECRET_NAME}}]},
        }})
        await ds.invoke_startup()
        gw = await llm_gateway(ds)
        reason = gw.unavailable_reason(gw.get_chat_model("keyed"))
        assert f"/-/secrets/{SECRET_NAME}" in reason
        await set_secret_in_process(ds, FIRST)
        gw = await llm_gateway(ds)
        await gw.complete(ChatRequest(messages=[Message.user("hi")]), purpose="answer", prompt_version="t")
        assert llm_test_plugin.CALLS[-1]["key"] == FIRST
        llm_test_plugin.CALLS.clear()  # it holds the key; the scan must not see it as ours
    finally:
        llm_test_plugin.unregister()
        llm_plugin.clear_cache()


# ------------------------------------------------------------------ a real server
class Server:
    def __init__(self, tmp: Path, fake: FakeOpenAIServer):
        self.tmp = tmp
        self.state = tmp / "state.db"
        self.log_path = tmp / "server.log"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        metadata = {"plugins": {
            "datasette-secrets": {"encryption-key": Fernet.generate_key().decode()},
            "datasette-llm-newsroom": {"state_database": str(self.state),
                                       "permissions": {"llm-view-log": {"id": "root"}},
                                       **plugin_config(fake.base_url)},
        }}
        meta = tmp / "metadata.yml"
        meta.write_text(yaml.safe_dump(metadata))
        exe = Path(sys.executable).with_name("datasette")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "LLM_USER_PATH": str(tmp / "llm-user"), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        env.pop(SECRET_NAME, None)
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--memory", "-m", str(meta), "--plugins-dir",
             str(REPO / "tests" / "plugins_secrets"), "-h", "127.0.0.1", "-p", str(self.port),
             "--secret", SERVER_SECRET],
            cwd=tmp, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        import httpx

        wait_until_serving(self.proc, self.base + "/-/versions.json", self.log_path.read_text)
        actor = Datasette(memory=True, secret=SERVER_SECRET).sign({"a": {"id": "root"}}, "actor")
        self.client = httpx.Client(base_url=self.base, cookies={"ds_actor": actor}, timeout=30)
        self.bodies: list[tuple[str, str]] = []

    def get(self, path):
        response = self.client.get(path)
        self.bodies.append((f"GET {path}", str(response.headers) + "\n" + response.text))
        return response

    def post_form(self, page: str, path: str, data: dict, **kwargs):
        form = self.get(page)
        token = re.search(r'name="csrftoken" value="([^"]*)"', form.text).group(1)
        response = self.client.post(path, data={"csrftoken": token, **data}, **kwargs)
        self.bodies.append((f"POST {path}", str(response.headers) + "\n" + response.text))
        return response

    def test_model(self):
        response = self.post_form("/-/llm-models", "/-/llm-models/test",
                                  {"model_id": "newsroom-gpt", "kind": "chat"},
                                  headers={"Accept": "application/json"})
        assert response.status_code == 200, response.text
        return response.json()

    def stop(self):
        self.client.close()
        stop_process(self.proc)
        self.log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not HAVE_SECRETS:
        pytest.skip("datasette-secrets is not installed (it supports Datasette 0.65)")
    with FakeOpenAIServer(api_key=FIRST) as fake:
        server = Server(tmp_path_factory.mktemp("secrets-server"), fake)
        try:
            yield server, fake
        finally:
            server.stop()


def state_hits(path: Path, values: list[str]) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        hits = []
        for (table,) in conn.execute("select name from sqlite_master where type = 'table'").fetchall():
            quoted = '"' + table.replace('"', '""') + '"'
            for row in conn.execute(f"select * from {quoted}"):
                if any(isinstance(v, str) and any(s in v for s in values) for v in row):
                    hits.append(table)
        return hits
    finally:
        conn.close()


@needs_secrets
def test_key_set_at_secrets_page_is_used_per_request_and_never_shown(served):
    server, fake = served
    # 1. Not set yet: the models page says where to set it, and nothing is sent.
    result = server.test_model()
    assert not result["ok"] and f"/-/secrets/{SECRET_NAME}" in result["error"]
    assert fake.chat_requests() == []
    page = server.get("/-/llm-models")
    assert f"secret {SECRET_NAME}" in page.text and "unavailable" in page.text
    assert f'href="/-/secrets/{SECRET_NAME}"' in page.text  # where an admin sets it

    # 2. An admin sets it through datasette-secrets' own page.
    listing = server.get("/-/secrets")
    assert listing.status_code == 200 and SECRET_NAME in listing.text
    done = server.post_form(f"/-/secrets/{SECRET_NAME}", f"/-/secrets/{SECRET_NAME}",
                            {"secret": FIRST, "note": "set by the test"})
    assert done.status_code == 302, done.text
    result = server.test_model()
    assert result["ok"], result
    assert [r["key_ok"] for r in fake.requests] == [True]  # Authorization: Bearer FIRST

    # 3. A new value is read by the next request, without a restart.
    server.post_form(f"/-/secrets/{SECRET_NAME}", f"/-/secrets/{SECRET_NAME}", {"secret": SECOND})
    fake.api_key = SECOND
    result = server.test_model()
    assert result["ok"], result
    assert [r["key_ok"] for r in fake.requests] == [True, True]

    # 4. A provider error that echoes the key shows the error, not the key.
    fake.enqueue(Reply(status=400, error_message=f"Invalid request for key {SECOND}: bad model"))
    result = server.test_model()
    assert not result["ok"] and "bad model" in result["error"] and SECOND not in result["error"]

    # 5. No value anywhere: pages, JSON, the server's log, the state database.
    server.get("/-/llm-models")
    server.get("/llm_newsroom/llm_calls.json?_shape=array")
    server.get(f"/-/secrets/{SECRET_NAME}")
    log_lines = server.log_path.read_text().splitlines()
    assert not find_secret_hits(server.bodies, log_lines, [])
    assert not state_hits(server.state, [FIRST, SECOND, SECRET_MARKER])
    assert len(server.bodies) >= 10
