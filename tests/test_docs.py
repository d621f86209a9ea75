"""README.md must match the code: hook signatures, actions, runnable examples."""

from __future__ import annotations

import inspect
import re
import sqlite3
import types
from pathlib import Path

import pytest
import yaml
from datasette.app import Datasette
from datasette.plugins import pm

from datasette_llm_core import hookspecs
from datasette_llm_core import permissions as P
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.types import ChatRequest, Message

README = Path(__file__).resolve().parents[1] / "README.md"


def sections() -> dict[str, str]:
    """README text by level-2 heading."""
    out: dict[str, str] = {}
    current = None
    for line in README.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^## (.+?)\s*$", line)
        if m:
            current = m.group(1)
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def tagged_block(name: str) -> str:
    """The fenced code block right after ``<!-- docs-test: name -->``."""
    text = README.read_text(encoding="utf-8")
    m = re.search(
        r"<!-- docs-test: " + re.escape(name) + r" -->\s*\n```[a-z]*\n(.*?)\n```", text, re.S
    )
    assert m, f"README has no code block tagged docs-test: {name}"
    return m.group(1)


def hookspec_signatures() -> dict[str, str]:
    return {
        name: str(inspect.signature(fn))
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "datasette_spec")
    }


def documented_hooks() -> dict[str, str]:
    body = sections()["Plugin hooks"]
    return {
        m.group(1): f"({m.group(2)})"
        for m in re.finditer(r"^### (\w+)\((.*?)\)\s*$", body, re.M)
    }


def test_there_are_hookspecs_to_check():
    assert set(hookspec_signatures()) >= {"register_llm_models", "register_embedding_models"}


@pytest.mark.parametrize("name", sorted(hookspec_signatures()))
def test_hook_documented_with_its_signature(name):
    documented = documented_hooks()
    assert name in documented, f"hook {name} is not documented under ## Plugin hooks"
    assert documented[name] == hookspec_signatures()[name], (
        f"README documents {name}{documented[name]} but hookspecs.py says "
        f"{name}{hookspec_signatures()[name]}"
    )


def test_no_documented_hook_is_missing_from_code():
    assert set(documented_hooks()) <= set(hookspec_signatures())


def permission_table_actions() -> list[str]:
    body = sections()["Permissions"]
    return re.findall(r"^\| `([a-z-]+)` \|", body, re.M)


@pytest.mark.parametrize("action", sorted(P.ACTIONS))
def test_action_in_permissions_table(action):
    assert action in permission_table_actions(), f"{action} missing from README ## Permissions"


def test_permissions_table_lists_only_real_actions():
    assert set(permission_table_actions()) <= set(P.ACTIONS)


async def test_example_plugin_runs():
    module = types.ModuleType("readme_example_plugin")
    exec(compile(tagged_block("example-plugin"), "README.md example", "exec"), module.__dict__)
    name = f"readme-example-{id(module)}"
    pm.register(module, name=name)
    try:
        ds = Datasette(
            memory=True,
            metadata={"plugins": {"datasette-llm-newsroom": {"state_database": ":memory:"}}},
        )
        await ds.invoke_startup()
        gw = await llm_gateway(ds)
        assert "echo" in [m.model_id for m in gw.chat_models()]
        response = await gw.complete(
            ChatRequest(messages=[Message.user("hello from the docs")]),
            purpose="answer",
            prompt_version="docs-test",
            model_id="echo",
        )
        assert response.text.strip() == "hello from the docs"
        vectors = await gw.embed(["a b", "b a", "zebra"], kind="document", model_id="letter-hash")
        assert vectors.shape == (3, 32)
        assert float(vectors[0] @ vectors[1]) == pytest.approx(1.0)
    finally:
        pm.unregister(name=name)


def newsroom_db(tmp_path) -> str:
    path = tmp_path / "newsroom.db"
    conn = sqlite3.connect(path)
    conn.execute("create table filings (id integer primary key)")
    conn.execute("create table other (id integer primary key)")
    conn.commit()
    conn.close()
    return str(path)


def with_memory_state(config: dict) -> dict:
    config = dict(config)
    plugins = dict(config.get("plugins") or {})
    plugin = dict(plugins.get("datasette-llm-newsroom") or {})
    plugin["state_database"] = ":memory:"
    plugins["datasette-llm-newsroom"] = plugin
    config["plugins"] = plugins
    return config


async def test_plugin_permissions_example_loads_and_grants(tmp_path):
    config = with_memory_state(yaml.safe_load(tagged_block("plugin-permissions")))
    if P.IS_V1:
        ds = Datasette([newsroom_db(tmp_path)], config=config)
    else:
        ds = Datasette([newsroom_db(tmp_path)], metadata=config)
    await ds.invoke_startup()

    async def can(actor_id, action, table=None):
        actor = {"id": actor_id} if actor_id else None
        db = None if action == "llm-view-log" else "newsroom"
        return await P.allowed(ds, actor, action, db, table)

    assert await can("alice", "llm-extract", "other")
    assert not await can("alice", "llm-ask")
    assert await can("bob", "llm-ask") and await can("bob", "llm-index")
    assert not await can("bob", "llm-extract", "filings")
    assert await can("carol", "llm-extract", "filings")
    assert not await can("carol", "llm-extract", "other")
    assert await can("editor", "llm-view-log")
    assert not await can("alice", "llm-view-log")
    assert not await can(None, "llm-extract", "filings")


@pytest.mark.skipif(not P.IS_V1, reason="native permissions: blocks need Datasette 1.0")
async def test_native_permissions_example_loads_and_grants(tmp_path):
    config = with_memory_state(yaml.safe_load(tagged_block("native-permissions")))
    ds = Datasette([newsroom_db(tmp_path)], config=config)
    await ds.invoke_startup()
    assert await P.allowed(ds, {"id": "dave"}, "llm-ask", "newsroom")
    assert not await P.allowed(ds, {"id": "erin"}, "llm-ask", "newsroom")
    assert await P.allowed(ds, {"id": "erin"}, "llm-extract", "newsroom", "filings")
    assert not await P.allowed(ds, {"id": "erin"}, "llm-extract", "newsroom", "other")
    assert not await P.allowed(ds, None, "llm-search", "newsroom")
