"""#10.9: credentials in a model URL never reach a page, a log or the call log.

Attack: the operator configures ``DATASETTE_LLM_BASE_URL=http://user:pass@host/v1``
(or a gateway URL with ``?api_key=...``); the model is down; a visitor with a
grant starts a run. The password used to appear in the run's error, in
``llm_calls.error_message`` and in the server log. A real ``datasette serve``,
both lines.
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from .sec_data_helpers import Server, free_port

PASSWORD = "hunter2-URL-PASSWORD"
QUERY_SECRET = "QUERY-STRING-SECRET-99"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("urlsecrets")
    db = tmp / "news.db"
    conn = sqlite3.connect(db)
    conn.execute("create table target (id integer primary key, name text)")
    conn.commit()
    conn.close()
    down = free_port()  # nothing listens here: the model is down
    env = {"DATASETTE_LLM_BASE_URL": f"http://newsroom:{PASSWORD}@127.0.0.1:{down}/v1?api_key={QUERY_SECRET}",
           "DATASETTE_LLM_MODEL": "local-model"}
    config = {"plugins": {"datasette-llm-newsroom": {
        "state_database": str(tmp / "state.db"), "retries": {"max_attempts": 1},
        "permissions": {"llm-view-log": {"id": "root"}},  # so root's call-log page is really checked
    }}}
    server = Server(tmp, [db], config, env=env).start()
    try:
        yield server, tmp
    finally:
        server.stop()


def test_model_url_credentials_stay_out_of_pages_and_logs(world):
    server, tmp = world
    root = {"id": "root"}
    status, run = server.json("POST", "/-/llm-extract/api/runs",
                              {"database": "news", "table": "target", "text": "Ada paid 5 dollars.",
                               "columns": ["name"]}, actor=root)
    assert status == 201, run
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, body = server.json("GET", f"/-/llm-extract/api/runs/{run['id']}", actor=root)
        if body.get("status") not in ("pending", "running"):
            break
        time.sleep(0.2)
    assert body["status"] == "failed", body
    pages = [server.get(f"/-/llm-extract/api/runs/{run['id']}", actor=root)[1],
             server.get(f"/-/llm-extract/runs/{run['id']}", actor=root)[1],
             server.get(f"/-/llm-extract/runs/{run['id']}/events", actor=root)[1],
             server.get("/llm_newsroom/llm_calls.json?_shape=array", actor=root)[1]]
    assert "127.0.0.1" in pages[-1], pages[-1][:300]  # the call log page was served, not refused
    state = sqlite3.connect(tmp / "state.db")
    calls = state.execute("select error_message from llm_calls").fetchall()
    dumped = "\n".join("\t".join(map(str, row)) for table in ("llm_calls", "llm_extract_runs", "llm_extract_events")
                       for row in state.execute(f"select * from {table}"))
    state.close()
    assert calls and any("127.0.0.1" in (c[0] or "") for c in calls), calls  # the error names the server
    for where, text in [("pages", "\n".join(pages)), ("state database", dumped),
                        ("server log", server.log.read_text())]:
        assert PASSWORD not in text, where
        assert QUERY_SECRET not in text, where


@pytest.mark.parametrize("url, expected", [
    ("http://u:p4ss@h:1/v1", "http://[REDACTED]@h:1/v1"),
    ("https://token@gw.example/v1?api_key=abc&x=1", "https://[REDACTED]@gw.example/v1?api_key=[REDACTED]&x=1"),
    ("http://127.0.0.1:11434/v1", "http://127.0.0.1:11434/v1"),
    ("http://h/v1?sig=zz#frag", "http://h/v1?sig=[REDACTED]#frag"),
])
def test_redact_url(url, expected):
    from datasette_llm_core.calllog import redact, redact_url

    assert redact_url(url) == expected
    assert redact(f"could not connect to {url}: down", []) == f"could not connect to {expected}: down"
