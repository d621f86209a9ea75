"""What signed-out visitors read (issue #12, item 5), on a real server.

Visitors are readers: they are told what they can do (search) and never how
to configure the server; only those who can fix it (root, or the database's
``llm-index`` holders) read about keys, permissions and configuration.
Served without a chat model and without ``llm-ask`` for anyone but root.
"""

from __future__ import annotations

import json

import pytest

from .fake_openai_server import FakeOpenAIServer
from .publish_helpers import PublicServer, config_flag, index_database
from .test_publish_readonly import make_documents

OPERATOR_WORDS = ("llm-ask", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "plugins:", "permission",
                  "datasette-llm-newsroom")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("wording")
    db = make_documents(base / "data")
    with FakeOpenAIServer() as fake:
        plugin = {
            "state_database": ":memory:",
            "auto_models": False,  # no chat model, whatever the environment holds
            "embedding_models": [{"id": "fake-embed", "provider": "openai-compatible",
                                  "model": "fake-embedding", "base_url": fake.base_url,
                                  "dimensions": 64}],
            "defaults": {"embed": "fake-embed"},
            "permissions": {"databases": {"documents": {"llm-index": {"id": "editor"}}}},
            "rag": {"embedding_model": "fake-embed", "min_score": -1, "databases": {
                "documents": {"tables": {"articles": {"columns": ["title", "body"],
                                                      "title_column": "title"}}}}},
        }
        config = base / "config.json"
        config.write_text(json.dumps({"plugins": {"datasette-llm-newsroom": plugin}}))
        index_database(db, config)
        with PublicServer([str(db), config_flag(), str(config)], base / "server.log") as s:
            yield s


def visible_text(html: bytes) -> str:
    """The words of a page (what a reader reads), without markup or scripts."""
    import re

    text = html.decode()
    text = re.sub(r"<script.*?</script>", "", text, flags=re.S)
    text = re.sub(r"<style.*?</style>", "", text, flags=re.S)
    return re.sub(r"<[^>]+>", " ", text)  # words only: no URLs or attributes


def test_a_signed_out_visitor_is_told_they_can_search_not_how_to_configure(server):
    status, html, _ = server.get("/-/llm-ask/documents?q=bridge")
    assert status == 200
    text = visible_text(html)
    assert "Bridge repairs delayed" in text  # the search results
    assert "search" in text.lower()
    for word in OPERATOR_WORDS:
        assert word not in text, word


def test_a_signed_out_visitors_api_notice_speaks_to_readers(server):
    status, body = server.json("POST", "/-/llm-rag/documents/ask.json", {"q": "bridge"})
    assert status == 200 and body["mode"] == "search" and body["rows"]
    message = body["notice"]["message"]
    assert "search" in message.lower()
    for word in OPERATOR_WORDS:
        assert word not in message, word
    status, raw, _ = server.request("POST", "/-/llm-rag/documents/ask.json",
                                    {"q": "bridge", "stream": True})
    from .rag_web_helpers import parse_sse

    notices = [e for e in parse_sse(raw.decode()) if e["event"] == "notice"]
    assert notices and all("search" in e["message"].lower() for e in notices)
    for word in OPERATOR_WORDS:
        assert not any(word in e["message"] for e in notices), word


def test_root_who_can_fix_it_is_told_how_to_configure_a_model(server):
    status, html, _ = server.get("/-/llm-ask/documents?q=bridge", root=True)
    assert status == 200 and "OPENAI_API_KEY" in visible_text(html)
    status, body = server.json("POST", "/-/llm-rag/documents/ask.json", {"q": "bridge"}, root=True)
    assert status == 200 and "OPENAI_API_KEY" in body["notice"]["message"]
