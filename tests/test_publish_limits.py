"""Spending limits per visitor on a public server (issue #12, item 3).

A real ``datasette serve`` with ``state_database: ":memory:"``, signed-out
visitors told apart by their client address (``trusted_proxies: 1``, so the
address a proxy appends to ``X-Forwarded-For`` counts), and a fake model
whose requests are counted: a limit is enforced before the model is called,
the visitor still gets the search results, and ``llm-view-log`` holders see
current use.
"""

from __future__ import annotations

import json
import shutil

import pytest

from .fake_openai_server import FakeOpenAIServer
from .publish_helpers import PublicServer, config_flag, index_database
from .rag_web_helpers import parse_sse
from .test_publish_readonly import ANSWER, make_documents, plugin_config

ASK = "/-/llm-rag/{db}/ask.json"
QUESTION = "Why were the bridge repairs delayed?"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("limits")
    db = make_documents(base / "data")
    archive = base / "data" / "archive.db"
    shutil.copy(db, archive)
    with FakeOpenAIServer(default=ANSWER) as fake:
        plugin = plugin_config(fake.base_url)
        plugin["models"][0].update(input_cost_per_mtok=1.0, output_cost_per_mtok=1.0)
        plugin["permissions"]["databases"]["archive"] = {"llm-ask": True}
        plugin["rag"]["databases"]["archive"] = plugin["rag"]["databases"]["documents"]
        plugin["limits"] = {
            "questions_per_minute": 2,
            "questions_per_hour": 50,
            "trusted_proxies": 1,
            # a database of its own: a tiny daily allowance (one answer costs more)
            "databases": {"archive": {"dollars_per_day": 0.0000001}},
        }
        config = base / "config.json"
        config.write_text(json.dumps({"plugins": {"datasette-llm-newsroom": plugin}}))
        index_database(db, config)
        index_database(archive, config)
        server = PublicServer([str(db), str(archive), config_flag(), str(config)],
                              base / "server.log")
        with server:
            yield server, fake


def ask(server, client, db="documents", question=QUESTION, **body):
    return server.json("POST", ASK.format(db=db), {"q": question, **body}, client=client)


def test_a_visitor_over_the_per_minute_limit_gets_search_results_and_no_model_call(world):
    server, fake = world
    for _ in range(2):
        status, body = ask(server, "10.0.0.1")
        assert status == 200 and body["mode"] == "answer" and body["answer"], body
    before = len(fake.chat_requests())
    status, body = ask(server, "10.0.0.1")
    assert status == 200, body
    assert len(fake.chat_requests()) == before  # refused before the model was called
    assert body["answer"] is None and body["notice"]["kind"] == "limit"
    assert 0 < body["notice"]["retry_after"] <= 60
    message = body["notice"]["message"]
    assert "2 questions in the last minute" in message and "resume in about" in message
    assert "search" in message and "limits:" not in message  # a reader's words, not config
    # ... and still the semantic search results
    assert body["rows"] and body["rows"][0]["title"] == "Bridge repairs delayed"


def test_other_visitors_are_not_held_back_by_one_visitors_limit(world):
    server, _fake = world
    status, body = ask(server, "10.0.0.2")
    assert status == 200 and body["answer"], body


def test_a_forged_forwarded_for_entry_does_not_escape_the_limit(world):
    """Only the entry the trusted proxy appended counts (the rightmost)."""
    server, fake = world
    ask(server, "10.0.0.3")
    ask(server, "10.0.0.3")
    before = len(fake.chat_requests())
    status, body = ask(server, "203.0.113.9, 10.0.0.3")
    assert status == 200 and body["notice"]["kind"] == "limit", body
    assert len(fake.chat_requests()) == before


def test_a_streamed_answer_over_the_limit_ends_with_a_notice_after_the_sources(world):
    server, _fake = world
    ask(server, "10.0.0.4")
    ask(server, "10.0.0.4")
    status, raw, _ = server.request("POST", ASK.format(db="documents"),
                                    {"q": QUESTION, "stream": True}, client="10.0.0.4")
    assert status == 200
    events = parse_sse(raw.decode())
    assert [e["event"] for e in events] == ["sources", "notice"]
    assert events[0]["rows"] and events[1]["kind"] == "limit" and events[1]["retry_after"] > 0


def test_a_databases_own_dollar_limit_is_enforced_before_the_call(world):
    server, fake = world
    before = len(fake.chat_requests())
    status, body = ask(server, "10.0.0.5", db="archive")
    assert status == 200, body
    assert body["notice"]["kind"] == "limit" and "spending limit for a day" in body["notice"]["message"]
    assert body["rows"] and len(fake.chat_requests()) == before
    # the documents database has no dollar limit: the same visitor gets an answer there
    status, body = ask(server, "10.0.0.5")
    assert body["answer"], body


def test_the_usage_page_shows_current_use_to_log_viewers_only(world):
    server, _fake = world
    status, usage = server.json("GET", "/-/llm-rag/limits.json", root=True)
    assert status == 200 and usage["active"] is True
    rows = {(v["visitor"], v["database"]): v for v in usage["visitors"]}
    first = rows[("address:10.0.0.1", "documents")]
    assert first["questions_minute"] == 2 and first["at_limit"] == ["questions_per_minute"]
    assert first["dollars_day"] > 0  # priced offline from the configured prices
    assert ("address:10.0.0.5", "archive") not in rows  # refused questions spend nothing
    assert usage["instance_dollars_day"] >= first["dollars_day"]
    status, html, _ = server.get("/-/llm-rag/limits", root=True)
    assert status == 200 and b"address:10.0.0.1" in html
    for path in ("/-/llm-rag/limits", "/-/llm-rag/limits.json"):
        assert server.get(path)[0] == 403  # signed out
