"""Answers that can be shared and cached (issue #12, item 4), on a real server.

Every answer has a permalink page with the question, the answer, the rows as
the model read them, the model, the prompt version and the time; readers
who may not view a table the answer drew on do not see it. With
``cache_answers: true`` the same question against the same rows, index and
model is answered again without a model call, marked as cached; refreshing
the index invalidates it.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from .fake_openai_server import FakeOpenAIServer
from .publish_helpers import PublicServer, config_flag, index_database
from .rag_web_helpers import make_source

ANSWER = "The council delayed the bridge repairs until spring [1]."
BRIDGE = "Why were the bridge repairs delayed?"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("answers")
    db = make_source(base / "news.db")
    with FakeOpenAIServer(default=ANSWER) as fake:
        plugin = {
            "state_database": ":memory:",
            "models": [{"id": "fake", "provider": "openai-compatible", "model": "fake-model",
                        "base_url": fake.base_url, "supports": ["streaming"], "timeout": 30}],
            "embedding_models": [{"id": "fake-embed", "provider": "openai-compatible",
                                  "model": "fake-embedding", "base_url": fake.base_url,
                                  "dimensions": 64}],
            "defaults": {"answer": "fake", "embed": "fake-embed"},
            "permissions": {"databases": {"news": {"llm-ask": True}}},
            "limits": {"questions_per_minute": 1, "trusted_proxies": 1},
            # hash embeddings and short made-up rows: the cross-encoder is tested in test_rag_rerank.py
            "rag": {"embedding_model": "fake-embed", "min_score": -1, "cache_answers": True,
                    "rerank": {"answers": False},
                    "databases": {"news": {"tables": {
                        "articles": {"columns": ["title", "body"], "title_column": "title"},
                        "memos": {"columns": ["title", "body"], "title_column": "title"}}}}},
        }
        # memos: only root may view it
        config = {"databases": {"news": {"tables": {"memos": {"allow": {"id": "root"}}}}},
                  "plugins": {"datasette-llm-newsroom": plugin}}
        path = base / "config.json"
        path.write_text(json.dumps(config))
        index_database(db, path)
        server = PublicServer([str(db), config_flag(), str(path)], base / "server.log")
        with server:
            yield {"server": server, "fake": fake, "db": db, "config": path}


def ask(world, question=BRIDGE, client="10.1.0.1", root=False):
    status, body = world["server"].json("POST", "/-/llm-rag/news/ask.json", {"q": question},
                                        client=client, root=root)
    assert status == 200, body
    return body


def test_an_answer_has_a_permalink_page_with_the_rows_as_they_were(world):
    server = world["server"]
    body = ask(world, client="10.1.0.1")
    assert body["cached"] is False and body["permalink"].startswith("/-/llm-rag/answers/rag-")
    # the row is edited after the answer was written
    conn = sqlite3.connect(world["db"])
    conn.execute("update articles set body = 'Edited later.' where id = 1")
    conn.commit()
    conn.close()
    status, html, _ = server.get(body["permalink"])
    text = html.decode()
    assert status == 200
    assert BRIDGE in text and "until spring" in text
    assert "The council delayed the bridge repairs until spring because of the budget." in text
    assert "Edited later." not in text
    assert "fake" in text and "answer-v" in text and "<time datetime=" in text
    assert 'href="/news/articles/1"' in text  # the citation links to the row's page
    status, data = server.json("GET", body["permalink"] + ".json")
    assert status == 200 and data["question"] == BRIDGE and data["cited"] == [1]
    assert data["cited_rows"][0]["title"] == "Bridge repairs delayed"
    assert data["model"] == "fake" and data["answered_at"]


def test_the_same_question_is_served_from_the_cache_without_a_model_call(world):
    fake = world["fake"]
    first = ask(world, question="Which library hours changed?", client="10.1.0.2")
    calls = len(fake.chat_requests())
    again = ask(world, question="  which LIBRARY hours   changed? ", client="10.1.0.3")
    assert len(fake.chat_requests()) == calls  # no new spend
    assert again["cached"] is True and again["answer_id"] == first["answer_id"]
    assert again["answer"] == first["answer"] and again["permalink"] == first["permalink"]
    assert again["cited_rows"] and again["finish_reason"] == "cached"


def test_a_cached_answer_is_served_to_a_visitor_at_their_limit(world):
    """A cache hit spends nothing, so it is not refused by the spending limits."""
    fake = world["fake"]
    ask(world, question="What happened to school lunch prices?", client="10.1.0.4")
    over = ask(world, question="Is the library open on Sundays?", client="10.1.0.4")
    assert over["notice"]["kind"] == "limit"  # one question a minute
    calls = len(fake.chat_requests())
    cached = ask(world, question="What happened to school lunch prices?", client="10.1.0.4")
    assert cached["cached"] is True and len(fake.chat_requests()) == calls


def test_refreshing_the_index_invalidates_the_cache(world):
    fake = world["fake"]
    question = "Where is the river park?"
    first = ask(world, question=question, client="10.1.0.5")
    assert ask(world, question=question, client="10.1.0.6")["cached"] is True
    # a row the question does not retrieve changes; the refresh bumps the index generation
    conn = sqlite3.connect(world["db"])
    conn.execute("update articles set body = body || ' (corrected)' where id = 4")
    conn.commit()
    conn.close()
    index_database(world["db"], world["config"])
    calls = len(fake.chat_requests())
    fresh = ask(world, question=question, client="10.1.0.7")
    assert fresh["cached"] is False and fresh["answer_id"] != first["answer_id"]
    assert len(fake.chat_requests()) == calls + 1


def test_a_permalink_is_not_shown_to_readers_who_may_not_view_its_rows(world):
    server = world["server"]
    body = ask(world, question="Secret bridge memo budget cut", root=True)
    assert any(row["table"] == "memos" for row in body["rows"]), body["rows"]
    status, data = server.json("GET", body["permalink"] + ".json")
    assert status == 403 and "may not view" in data["error"]
    assert "Secret" not in json.dumps(data)
    status, html, _ = server.get(body["permalink"])
    assert status == 403 and b"Internal memo" not in html
    status, data = server.json("GET", body["permalink"] + ".json", root=True)
    assert status == 200 and "Internal memo" in json.dumps(data)


def test_the_cache_never_serves_an_answer_built_on_rows_a_reader_may_not_view(world):
    """Root's cached answer used memos; an anonymous visitor asking the same
    question retrieves other rows, so gets an answer of their own."""
    fake = world["fake"]
    question = "Internal memo about the bridge repairs budget"
    ask(world, question=question, root=True)
    calls = len(fake.chat_requests())
    mine = ask(world, question=question, client="10.1.0.8")
    assert mine["cached"] is False and len(fake.chat_requests()) == calls + 1
    assert all(row["table"] != "memos" for row in mine["rows"])


def test_concurrent_visitors_on_in_memory_state_get_no_table_locked_errors(world):
    """A ':memory:' state database is one shared-cache database: a reader that
    met a table the writer held failed at once ("database table is locked")."""
    from concurrent.futures import ThreadPoolExecutor

    server = world["server"]
    questions = ["Which library hours changed?", "Where is the river park?",
                 "What happened to school lunch prices?"]

    def one(i):  # repeated questions (cache reads) among new ones (answer writes)
        q = questions[i % 3] if i % 2 else f"What did council report {i} say about bridges?"
        return server.json("POST", "/-/llm-rag/news/ask.json", {"q": q},
                           client=f"10.2.{i // 200}.{i % 200}")

    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(one, range(90)))
    failed = [body for status, body in results if status != 200 or not body.get("answer")]
    assert not failed, failed[:3]


def test_hostile_row_text_on_a_permalink_is_shown_as_text(world):
    server = world["server"]
    body = ask(world, question="What about the harbour fees notice?", client="10.1.0.9")
    assert any("Harbour" in (row.get("title") or "") for row in body["rows"])
    status, html, _ = server.get(body["permalink"])
    assert status == 200
    assert b"<script>alert(1)</script>" not in html and b"&lt;script&gt;alert(1)" in html
    assert b'src="http://evil.example' not in html and b'href="http://evil.example' not in html
