"""#10.10, #10.11 and #10.14: what search shows, what the index page counts, what a search logs.

- A row deleted, or redacted ("[name withheld]"), after the last index
  refresh must not be shown, offered as similar, or sent to the model with its
  old text: results are checked against the live row at query time.
- ``/-/llm-rag/index/<db>.json`` (and ``?verify=1``) must not list a table the
  actor may not view, nor count its rows.
- Anonymous searches must not add one call-log row each; old call-log rows are
  pruned after ``call_log_retention_days``.

A real ``datasette serve`` and the fake OpenAI-compatible server (chat and
embeddings), both lines.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.parse

import pytest

from datasette_llm_core import permissions as P

from ..fake_openai_server import FakeOpenAIServer
from .sec_data_helpers import REPO, Server

ROOT = {"id": "root"}
INDEXER = {"id": "indexer"}  # llm-index on news, may not view the sealed table
ARTICLES = [
    (1, "Harbour dredging contract", "The harbour dredging contract went to John Smith of Smith Marine."),
    (2, "Harbour budget vote", "The council approved the harbour dredging budget on Monday."),
    (3, "Bridge repairs delayed", "Bridge repairs were delayed by the storm until spring."),
    (4, "Library hours", "The central library opens on Sundays from March."),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    db = tmp / "news.db"
    conn = sqlite3.connect(db)
    conn.execute("create table articles (id integer primary key, title text, body text)")
    conn.executemany("insert into articles values (?, ?, ?)", ARTICLES)
    conn.execute("create table sealed (id integer primary key, body text)")
    conn.executemany("insert into sealed values (?, ?)", [(1, "Sealed court filing about the harbour"),
                                                           (2, "Sealed grand jury note")])
    conn.commit()
    conn.close()
    side = tmp / "news.llm-rag.db"
    with FakeOpenAIServer(default="The contract went to the company in row [1].") as fake:
        config = {
            "databases": {"news": {"tables": {"sealed": {"allow": {"id": "root"}}}}},
            "plugins": {"datasette-llm-newsroom": {
                "state_database": str(tmp / "state.db"),
                "models": [{"id": "fake", "provider": "openai-compatible", "model": "fake-model",
                            "base_url": fake.base_url, "supports": ["streaming"], "timeout": 30}],
                "embedding_models": [{"id": "fake-embed", "provider": "openai-compatible",
                                      "model": "fake-embedding", "base_url": fake.base_url, "dimensions": 64}],
                "defaults": {"answer": "fake", "embed": "fake-embed"},
                "permissions": {"databases": {"news": {"llm-index": {"id": "indexer"}}}},
                "call_log_retention_days": 30,
                "rag": {"embedding_model": "fake-embed", "min_score": -1, "databases": {"news": {
                    "sidecar": str(side), "tables": {
                        "articles": {"columns": ["title", "body"], "title_column": "title"},
                        "sealed": {"columns": ["body"]}}}}},
            }},
        }
        server = Server(tmp, [db], config)
        flag = "-c" if P.IS_V1 else "-m"
        subprocess.run([sys.executable, "-m", "datasette", "llm-rag", "index", str(db), flag,
                        str(server.config_path), "--sidecar", str(side)],
                       check=True, cwd=REPO, timeout=120, capture_output=True, env=server.env)
        server.start()
        try:
            yield server, db, fake, tmp
        finally:
            server.stop()


def search(server, q: str, actor=None) -> list[dict]:
    status, body = server.json("GET", "/-/llm-rag/news/search.json?" + urllib.parse.urlencode({"q": q, "k": 10}),
                               actor=actor)
    assert status == 200, body
    return body["rows"]


def test_deleted_and_redacted_rows_are_not_served(world):
    server, db, fake, _ = world
    before = search(server, "harbour dredging contract John Smith")
    assert any("John Smith" in r["text"] for r in before)  # indexed as it was
    conn = sqlite3.connect(db)
    conn.execute("delete from articles where id = 3")
    conn.execute("update articles set body = replace(body, 'John Smith', '[name withheld]') where id = 1")
    conn.commit()
    conn.close()

    rows = search(server, "harbour dredging contract John Smith")
    assert all("John Smith" not in json.dumps(r) for r in rows), rows
    redacted = next(r for r in rows if r["table"] == "articles" and r["pk_values"] == [1])
    assert redacted["stale"] is True and "[name withheld]" in redacted["text"]
    assert all(not r.get("stale") for r in rows if r is not redacted)
    assert all(r["pk_values"] != [3] for r in search(server, "bridge repairs delayed storm"))
    # the server-rendered page too
    status, page, _ = server.get("/-/llm-ask/news?" + urllib.parse.urlencode({"q": "bridge repairs storm"}))
    assert status == 200 and "Bridge repairs were delayed" not in page
    status, page, _ = server.get("/-/llm-ask/news?" + urllib.parse.urlencode({"q": "dredging contract"}))
    assert "John Smith" not in page and "changed since the index was refreshed" in page

    status, similar = server.json("GET", "/-/llm-rag/similar/news/articles/2.json")
    assert status == 200, similar
    text = json.dumps(similar)
    assert "John Smith" not in text and "Bridge repairs were delayed" not in text
    status, gone = server.json("GET", "/-/llm-rag/similar/news/articles/3.json")  # the deleted row itself
    assert status == 404, gone

    # what the model is sent
    status, answer = server.json("POST", "/-/llm-rag/news/ask.json", {"q": "Who won the dredging contract?"},
                                 actor=ROOT, headers=server.csrf_headers("/-/llm-ask/news", ROOT))
    assert status == 200 and answer["mode"] == "answer", answer
    prompt = json.dumps(fake.chat_requests()[-1])
    assert "[name withheld]" in prompt
    assert "John Smith" not in prompt and "Bridge repairs were delayed" not in prompt


@pytest.mark.parametrize("path", ["/-/llm-rag/index/news.json", "/-/llm-rag/index/news.json?verify=1",
                                  "/-/llm-rag/index/news", "/-/llm-rag/index"])
def test_index_status_lists_only_viewable_tables(world, path):
    server = world[0]
    status, text, _ = server.get(path, actor=INDEXER)
    assert status == 200, text[:300]
    assert "sealed" not in text.lower(), text[:2000]
    status, text, _ = server.get(path, actor=ROOT)  # the probe can fail: root sees it
    assert status == 200 and "sealed" in text


def call_rows(tmp) -> tuple[int, int]:
    conn = sqlite3.connect(tmp / "state.db")
    try:
        rows = conn.execute("select count(*) from llm_calls").fetchone()[0]
        counted = conn.execute("select coalesce(sum(calls), 0) from llm_call_totals").fetchone()[0]
        return rows, counted
    finally:
        conn.close()


def test_anonymous_searches_do_not_grow_the_call_log(world):
    server, _, _, tmp = world
    rows_before, counted_before = call_rows(tmp)
    for i in range(6):
        search(server, f"harbour budget question {i}")
        status, body = server.json("POST", "/-/llm-rag/news/ask.json", {"q": f"library hours {i}"},
                                   headers=server.csrf_headers("/-/llm-ask/news"))  # anonymous: search mode
        assert status == 200 and body["mode"] == "search", body
    rows_after, counted_after = call_rows(tmp)
    assert rows_after == rows_before
    assert counted_after == counted_before + 12


def test_call_log_retention_prunes_old_rows(world):
    server, _, _, tmp = world
    conn = sqlite3.connect(tmp / "state.db")
    for call_id, started in (("old-call", "2001-01-01T00:00:00.000+00:00"),
                             ("new-call", "2999-01-01T00:00:00.000+00:00")):
        conn.execute("insert into llm_calls (id, kind, outcome, started_at) values (?, 'chat', 'error', ?)",
                     (call_id, started))
    conn.execute("insert into llm_call_totals (day, purpose, kind, model_id, outcome) "
                 "values ('2001-01-01', 'search', 'embed', 'fake-embed', 'ok')")
    conn.commit()
    conn.close()
    server.stop()
    server.start()  # pruned at startup (and at most hourly while running)
    conn = sqlite3.connect(tmp / "state.db")
    ids = {r[0] for r in conn.execute("select id from llm_calls where id in ('old-call', 'new-call')")}
    old_days = conn.execute("select count(*) from llm_call_totals where day = '2001-01-01'").fetchone()[0]
    conn.close()
    assert ids == {"new-call"} and old_days == 0
