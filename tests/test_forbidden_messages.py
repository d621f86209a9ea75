"""A 403 on the suite's pages tells a signed-out visitor to sign in, and a
signed-in one which permission their account lacks (status stays 403)."""

from __future__ import annotations

import html

import pytest
from datasette.app import Datasette

from datasette_llm_core import permissions as P
from datasette_llm_core.denied import denied_message

from .rag_web_helpers import cookies, make_source, rag_section

SIGN_IN = "Sign in to"
NO_GRANT = "Your account does not have the"


@pytest.fixture
async def ds(tmp_path, fake_models):
    path = make_source(tmp_path / "news.db")
    plugin = {
        "state_database": ":memory:",
        "rag": rag_section(tmp_path, embedding_model="hash-embed"),
        "permissions": {"llm-extract": {"id": "editor"}},
    }
    # only alice and root may view news at all (so llm-search is refused to others)
    rules = {"databases": {"news": {"allow": {"id": ["alice", "bob", "root"]}}}}
    key = "config" if P.IS_V1 else "metadata"
    datasette = Datasette([path], **{key: {**rules, "plugins": {"datasette-llm-newsroom": plugin}}})
    if P.IS_V1:
        datasette.root_enabled = True  # what `datasette --root` does
    await datasette.invoke_startup()
    return datasette


def test_denied_message_wording():
    anon = denied_message(None, "llm-ask", "news")
    assert anon.startswith("Sign in to ask questions") and "'news'" in anon
    signed = denied_message({"id": "bob"}, "llm-ask", "news")
    assert "llm-ask permission in 'news'" in signed and "administrator" in signed
    assert SIGN_IN not in signed


PAGES = [
    # (path, who gets refused with "sign in", who with "no grant", action named)
    ("/-/llm-rag/index", None, "bob", "llm-index"),
    ("/-/llm-rag/index/news", None, "bob", "llm-index"),
    ("/-/llm-ask/news", None, "carol", "llm-search"),
    ("/-/llm-ask/news?q=bridge", None, "carol", "llm-search"),
    ("/-/llm-extract/new/news", None, "bob", "llm-extract"),
    ("/-/llm-extract/into/news/articles", None, "bob", "llm-extract"),
    ("/-/llm-extract/", None, "bob", "llm-extract"),
    ("/llm_newsroom", None, "bob", "llm-view-log"),
    ("/llm_newsroom/llm_calls", None, "bob", "llm-view-log"),
]


@pytest.mark.parametrize("path,anon,signed_in,action", PAGES)
async def test_signed_out_is_told_to_sign_in(ds, path, anon, signed_in, action):
    r = await ds.client.get(path)
    assert r.status_code == 403
    text = html.unescape(r.text)
    if path != "/-/llm-extract/":  # its own words: "Sign in to see your extraction runs."
        assert SIGN_IN in text, text[-2000:]
    else:
        assert "Sign in" in text
    assert NO_GRANT not in text


@pytest.mark.parametrize("path,anon,signed_in,action", PAGES)
async def test_signed_in_is_told_which_permission(ds, path, anon, signed_in, action):
    r = await ds.client.get(path, cookies=cookies(ds, signed_in))
    assert r.status_code == 403
    text = html.unescape(r.text)
    assert f"{NO_GRANT} {action} permission" in text, text[-2000:]
    assert "Ask an administrator" in text
    assert SIGN_IN not in text


async def test_json_refusals_say_the_same(ds):
    anon = await ds.client.get("/-/llm-rag/news/search.json?q=bridge")
    assert anon.status_code == 403 and anon.json()["error"].startswith(SIGN_IN)
    carol = await ds.client.get("/-/llm-rag/news/search.json?q=bridge",
                                cookies=cookies(ds, "carol"))
    assert carol.status_code == 403 and carol.json()["error"].startswith(NO_GRANT)
    bob = await ds.client.get("/-/llm-rag/index/news.json", cookies=cookies(ds, "bob"))
    assert bob.status_code == 403 and "llm-index permission" in bob.json()["error"]


async def test_allowed_actors_still_get_in(ds):
    root = cookies(ds, "root")
    for path in ("/-/llm-rag/index/news", "/-/llm-ask/news", "/-/llm-extract/new/news",
                 "/-/llm-models"):
        assert (await ds.client.get(path, cookies=root)).status_code == 200, path
    # The state database needs an explicit llm-view-log grant, root included.
    assert (await ds.client.get("/llm_newsroom", cookies=root)).status_code == 403
    # alice may view news: search is allowed by default
    assert (await ds.client.get("/-/llm-ask/news", cookies=cookies(ds, "alice"))).status_code == 200
