"""A streamed answer whose reader goes away is logged as ``cancelled``, once.

Gateway level: closing the stream (``aclose()``) or cancelling the task that
reads it. HTTP level: the client of a streamed ``ask.json`` (what the
``/-/llm-ask`` page reads) disconnects after the first delta. The app is driven
through raw ASGI the way uvicorn does it: ``receive()`` answers
``http.disconnect`` once the connection is gone and ``send()`` silently drops
what is written afterwards, so without a disconnect watcher the answer would
run to its end and be logged ``ok``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from datasette_llm_core import permissions as P
from datasette_llm_core.budget import Budget
from datasette_llm_core.calllog import flush_pending
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.state import state_db
from datasette_llm_core.types import ChatRequest, Message, StreamEnd, TextDelta
from datasette_llm_rag.answer import ask_events

from .fake_openai_server import FakeOpenAIServer
from .fakes import Scripted
from .rag_web_helpers import cookies, csrf_headers, make_datasette, rag_section
from .test_crash_recovery import REPO, Server
from .test_rag_web import build_index

ASK = "/-/llm-rag/news/ask.json"
ANSWER = "The council delayed the bridge repairs until spring [1]. " * 8


async def call_rows(ds, purpose: str = "answer") -> list[dict]:
    await flush_pending()
    db = await state_db(ds)
    result = await db.execute("select * from llm_calls where purpose = ? order by started_at", [purpose])
    return [dict(r) for r in result.rows]


@pytest.fixture
async def ds(tmp_path, fake_models):
    ds = make_datasette(tmp_path, rag=rag_section(tmp_path, embedding_model="hash-embed"),
                        state=str(tmp_path / "state.db"))
    await ds.invoke_startup()
    return ds


@pytest.fixture
async def indexed(ds):
    await build_index(ds)
    return ds


def request() -> ChatRequest:
    return ChatRequest(messages=[Message.user("Why were the bridge repairs delayed?")])


# --- gateway level ------------------------------------------------------------
async def test_closed_stream_logs_one_cancelled_row_with_usage_so_far(ds, scripted_model):
    scripted_model.enqueue(Scripted(text=ANSWER, chunks=40, delay=0.005))
    gw = await llm_gateway(ds)
    budget = Budget(max_tokens=100_000)
    stream = gw.stream(request(), purpose="answer", prompt_version="t-1", actor={"id": "alice"},
                       ref="r-close", budget=budget)
    seen = [await stream.__anext__() for _ in range(3)]
    assert all(isinstance(e, TextDelta) for e in seen)
    await stream.aclose()
    await asyncio.sleep(0.05)  # a second, late row would show up here
    (row,) = await call_rows(ds)
    assert (row["outcome"], row["error_class"], row["ref"], row["actor_id"]) == (
        "cancelled", "cancelled", "r-close", "alice")
    chars = sum(len(e.text) for e in seen)
    assert row["output_tokens"] == -(-chars // 4) and row["output_tokens"] < len(ANSWER) // 4
    assert row["input_tokens"] > 0 and row["tokens_estimated"] == 1
    assert row["latency_ms"] is not None and row["first_token_ms"] is not None
    assert row["finished_at"] is not None
    # the budget is charged once, for what was streamed
    assert budget.calls == 1
    assert budget.spent_tokens == row["input_tokens"] + row["output_tokens"]


async def test_cancelled_reader_task_logs_cancelled_and_propagates(ds, scripted_model):
    scripted_model.enqueue(Scripted(text=ANSWER, chunks=40, delay=0.02))
    gw = await llm_gateway(ds)
    got: list[str] = []
    two = asyncio.Event()

    async def read():
        async for event in gw.stream(request(), purpose="answer", prompt_version="t-1"):
            if isinstance(event, TextDelta):
                got.append(event.text)
                if len(got) == 2:
                    two.set()
            assert not isinstance(event, StreamEnd), "the answer must not finish"

    task = asyncio.create_task(read())
    await asyncio.wait_for(two.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    (row,) = await call_rows(ds)
    assert row["outcome"] == "cancelled"
    assert 1 <= row["output_tokens"] < len(ANSWER) // 4


async def test_stream_read_to_the_end_is_ok_once(ds, scripted_model):
    """The control: the same stream read to its end is one ``ok`` row, not a cancelled one."""
    scripted_model.enqueue(Scripted(text=ANSWER, chunks=4))
    gw = await llm_gateway(ds)
    stream = gw.stream(request(), purpose="answer", prompt_version="t-1")
    events = [e async for e in stream]
    await stream.aclose()
    assert isinstance(events[-1], StreamEnd)
    (row,) = await call_rows(ds)
    assert row["outcome"] == "ok" and row["id"] == events[-1].call_id


# --- the RAG answer stream ---------------------------------------------------
async def test_closing_the_answer_events_closes_the_model_stream_at_once(indexed, scripted_model):
    ds = indexed
    scripted_model.enqueue(Scripted(text=ANSWER, chunks=40, delay=0.005))
    events = ask_events(ds, {"id": "alice"}, "news", "Why were the bridge repairs delayed?")
    kinds = []
    async for event in events:
        kinds.append(event["event"])
        if event["event"] == "delta":
            break
    assert kinds[0] == "sources"
    await events.aclose()
    (row,) = await call_rows(ds)  # no waiting for the garbage collector
    assert row["outcome"] == "cancelled" and row["actor_id"] == "alice"
    (answer,) = await answer_rows(ds)  # the answer record says so too, with what was said
    assert answer["status"] == "cancelled" and answer["answer"] and answer["finished_at"]


async def answer_rows(ds) -> list[dict]:
    from datasette_llm_core.state import state_db

    db = await state_db(ds)
    return [dict(r) for r in (await db.execute("select * from rag_answers")).rows]


# --- HTTP level ---------------------------------------------------------------
async def ask_and_hang_up(ds, body: dict, actor_id: str) -> bytes:
    """POST ``ask.json`` through raw ASGI; hang up once the first delta arrives."""
    jar = cookies(ds, actor_id)
    headers = await csrf_headers(ds, jar)
    raw_headers = [
        (b"host", b"localhost"),
        (b"content-type", b"application/json"),
        (b"cookie", "; ".join(f"{k}={v}" for k, v in jar.items()).encode()),
    ] + [(k.encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": ASK, "raw_path": ASK.encode(), "query_string": b"",
        "root_path": "", "headers": raw_headers, "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
    }
    payload = json.dumps(body).encode()
    hung_up = asyncio.Event()
    received: list[bytes] = []
    body_sent = False

    async def receive():
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await hung_up.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if hung_up.is_set():
            return  # as uvicorn does: writes after a disconnect are dropped
        if message["type"] == "http.response.body":
            received.append(message.get("body", b""))
            if b"event: delta" in b"".join(received):
                hung_up.set()

    await asyncio.wait_for(ds.app()(scope, receive, send), 10)
    return b"".join(received)


async def test_client_hanging_up_mid_answer_logs_cancelled(indexed, scripted_model):
    ds = indexed
    scripted_model.enqueue(Scripted(text=ANSWER, chunks=40, delay=0.02))
    got = await ask_and_hang_up(ds, {"q": "Why were the bridge repairs delayed?", "stream": True}, "alice")
    assert b"event: sources" in got and b"event: done" not in got
    await asyncio.sleep(0.1)
    (row,) = await call_rows(ds)
    assert row["outcome"] == "cancelled" and row["actor_id"] == "alice"
    assert 1 <= row["output_tokens"] < len(ANSWER) // 4
    # the model stopped being read: the stream did not run on to its end
    assert row["latency_ms"] < 40 * 20
    (answer,) = await answer_rows(ds)
    assert answer["status"] == "cancelled"


async def test_streamed_answer_read_to_the_end_is_still_ok(indexed, scripted_model):
    ds = indexed
    """The watcher does not cut a reader who stays (through the usual test client)."""
    scripted_model.enqueue(Scripted(text=ANSWER, chunks=10, delay=0.005))
    jar = cookies(ds, "alice")
    headers = await csrf_headers(ds, jar)
    r = await ds.client.post(ASK, json={"q": "Why were the bridge repairs delayed?", "stream": True},
                             cookies=jar, headers=headers)
    assert r.status_code == 200 and "event: done" in r.text
    (row,) = await call_rows(ds)
    assert row["outcome"] == "ok"


# --- a real server ----------------------------------------------------------------
def test_real_server_client_hanging_up_logs_cancelled(tmp_path):
    """``datasette serve`` (uvicorn) with a fake OpenAI server: close the socket
    after the first delta; the call is logged ``cancelled`` long before the
    model would have finished."""
    db = tmp_path / "news.db"
    conn = sqlite3.connect(db)
    conn.execute("create table articles (id integer primary key, title text, body text)")
    conn.executemany("insert into articles values (?, ?, ?)", [
        (1, "Bridge repairs delayed", "The council delayed the bridge repairs until spring."),
        (2, "Library hours", "The central library opens on Sundays from March."),
    ])
    conn.commit()
    conn.close()
    side = tmp_path / "news.llm-rag.db"
    words = len(ANSWER.split())
    token_delay = 0.05  # the whole answer would take words * token_delay seconds
    with FakeOpenAIServer(token_delay=token_delay, default=ANSWER) as fake:
        server = Server(tmp_path, db, fake.base_url)
        config = json.loads(server.config.read_text())
        settings = config["plugins"]["datasette-llm-newsroom"]
        settings["embedding_models"] = [{"id": "fake-embed", "provider": "openai-compatible",
                                         "model": "fake-embedding", "base_url": fake.base_url,
                                         "dimensions": 64}]
        settings["defaults"] = {"answer": "fake", "embed": "fake-embed"}
        settings["permissions"] = {"databases": {"news": {"llm-ask": {"id": "root"},
                                                          "llm-search": {"id": "root"}}}}
        settings["rag"] = {"embedding_model": "fake-embed", "min_score": -1,
                           "databases": {"news": {"sidecar": str(side), "tables": {
                               "articles": {"columns": ["title", "body"], "title_column": "title"}}}}}
        server.config.write_text(json.dumps(config))
        flag = "-c" if P.IS_V1 else "-m"
        subprocess.run([sys.executable, "-m", "datasette", "llm-rag", "index", str(db), flag,
                        str(server.config), "--sidecar", str(side)],
                       check=True, cwd=REPO, timeout=60, capture_output=True)
        server.start()
        try:
            cookie, token = server.csrf("/-/llm-ask/news")
            body = json.dumps({"q": "Why were the bridge repairs delayed?", "stream": True}).encode()
            head = (f"POST {ASK} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                    f"Content-Type: application/json\r\nCookie: {cookie}\r\n"
                    + (f"x-csrftoken: {token}\r\n" if token else "")
                    + f"Content-Length: {len(body)}\r\n\r\n")
            got = b""
            with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
                sock.sendall(head.encode() + body)
                while b"event: delta" not in got:
                    chunk = sock.recv(65536)
                    assert chunk, got.decode(errors="replace")
                    got += chunk
            assert b" 200 " in got.split(b"\r\n", 1)[0]
            hung_up = time.monotonic()

            def answer_row():
                conn = sqlite3.connect(tmp_path / "state.db")
                conn.row_factory = sqlite3.Row
                try:
                    return conn.execute("select * from llm_calls where purpose = 'answer'").fetchall()
                finally:
                    conn.close()

            rows = []
            while not rows and time.monotonic() - hung_up < words * token_delay:
                time.sleep(0.05)
                rows = answer_row()
            assert len(rows) == 1, server.log.read_text()[-2000:]
            assert rows[0]["outcome"] == "cancelled" and rows[0]["actor_id"] == "root"
            assert rows[0]["output_tokens"] < len(ANSWER) // 4
            time.sleep(0.3)
            assert len(answer_row()) == 1  # nothing logged twice
        finally:
            server.stop()
