"""Provider faults injected at the HTTP layer, through the real OpenAI SDK.

A real HTTP server (``tests/fake_openai_server.py`` on 127.0.0.1) plays the
provider and misbehaves on cue: 429 storms with ``Retry-After``, 5xx,
answers slower than the timeout, connections dropped mid-stream, output
that breaks the schema or stops mid-row, an error body echoing the API key.
Malformed JSON and truncated event streams come from an
``httpx2.MockTransport`` behind the same SDK. For each fault the suite must
retry, fall back, or fail with a clear message; nothing half-done may be
inserted; and every HTTP attempt must appear in ``llm_calls``.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from datasette.app import Datasette

from datasette_llm_core import permissions as P
from datasette_llm_extract.runs import ACTIVE
from datasette_llm_rag.indexer import refresh_index

from .conftest import FAKE_API_KEYS, SECRET_MARKER, wait_for
from .fake_openai_server import FakeOpenAIServer, Reply
from .fakes import HashEmbeddingModel

V1 = P.IS_V1
ROOT = {"id": "root"}
RAG_TABLES = {"articles": {"columns": ["title", "body"], "title_column": "title"}}
DOC = "Acme Ltd paid 120 dollars on 3 March. Beta LLC paid 75 dollars on 4 March."
GOOD_ROWS = json.dumps(
    {"rows": [
        {"name": "Acme Ltd", "amount": 120, "source_quote": "Acme Ltd paid 120 dollars"},
        {"name": "Beta LLC", "amount": 75, "source_quote": "Beta LLC paid 75 dollars"},
    ]}
)
ANSWER = "The council raised the road budget [1]."
FAULTS_SURVIVED: list[str] = []


def make_news(path) -> str:
    conn = sqlite3.connect(path)
    conn.execute("create table target (id integer primary key, name text, amount integer)")
    conn.execute("create table articles (id integer primary key, title text, body text)")
    conn.executemany(
        "insert into articles values (?, ?, ?)",
        [(i, f"Road budget {i}", f"The council raised the road budget by {i} percent.") for i in range(1, 6)],
    )
    conn.commit()
    conn.close()
    return str(path)


def model(id_, server, **extra):
    return {
        "id": id_, "provider": "openai-compatible", "model": "fake-model", "base_url": server.base_url,
        "api_key_env": "OPENAI_API_KEY", "supports": ["streaming", "schema"], "timeout": 1.5,
        "first_byte_timeout": 1.5, **extra,
    }


@pytest.fixture
def server():
    with FakeOpenAIServer(api_key=FAKE_API_KEYS["OPENAI_API_KEY"], default=ANSWER) as s:
        yield s


@pytest.fixture
async def make_ds(tmp_path, server, fake_models, fake_api_keys):
    news = make_news(tmp_path / "news.db")
    await refresh_index(news, "news", {"databases": {"news": {"tables": RAG_TABLES}}}, HashEmbeddingModel(),
                        sidecar=str(tmp_path / "news.llm-rag.db"))

    async def build(*, fallback: bool = False, max_attempts: int = 3, anthropic: bool = False) -> Datasette:
        models = [model("primary", server)]
        if anthropic:  # reached only through the mock_transport fixture
            models = [{"id": "primary", "provider": "anthropic", "model": "claude-haiku-4-5",
                       "api_key_env": "ANTHROPIC_API_KEY", "base_url": "http://127.0.0.1:9",
                       "supports": ["streaming", "schema"], "timeout": 1.5}]
        plugin = {
            "state_database": str(tmp_path / "state.db"),
            "models": models,
            "defaults": {"extract": "primary", "answer": "primary", "embed": "hash-embed"},
            "retries": {"max_attempts": max_attempts, "backoff": 0.01, "max_backoff": 2},
            "extract": {"direct_insert": True},
            "rag": {"embedding_model": "hash-embed",
                    "databases": {"news": {"sidecar": str(tmp_path / "news.llm-rag.db"), "tables": RAG_TABLES}}},
        }
        if fallback:
            models.append(model("backup", server, model="fake-backup"))
            plugin["fallback"] = {"extract": ["backup"], "answer": ["backup"]}
        config = {"plugins": {"datasette-llm-newsroom": plugin}}
        ds = Datasette([news], config=config) if V1 else Datasette([news], metadata=config)
        if V1:
            ds.root_enabled = True
        await ds.invoke_startup()
        return ds

    return build


def cookies(ds):
    return {"ds_actor": ds.sign({"a": ROOT}, "actor")}


async def post(ds, path, body):
    """POST JSON as root, with the 0.65 CSRF token when that line wants one."""
    jar = cookies(ds)
    headers = {}
    page = await ds.client.get("/-/llm-ask/news", cookies=jar)
    token = page.cookies.get("ds_csrftoken")
    if token:
        jar["ds_csrftoken"] = token
        headers["x-csrftoken"] = token
    return await ds.client.post(path, cookies=jar, json=body, headers=headers)


def parse_sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.split("\n\n"):
        kind = [line[7:] for line in block.split("\n") if line.startswith("event: ")]
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if kind and data:
            events.append((kind[0], json.loads("".join(data))))
    return events


async def run_messages(ds, run: dict) -> str:
    """Every error message of a finished run: the run's own and its failed chunks'."""
    r = await ds.client.get(f"/-/llm-extract/runs/{run['id']}/events", cookies=cookies(ds))
    found = [run.get("error") or ""]
    for kind, data in parse_sse(r.text):
        if kind in ("ChunkFailed", "RunStatus"):
            found.append(str(data.get("error") or data.get("message") or ""))
        if kind == "ChunkDone":
            found += [str(w) for w in data.get("warnings") or []]
    return " ".join(found)


async def call_log(ds) -> list[dict]:
    db = ds.databases["llm_newsroom"]
    rows = await db.execute("select * from llm_calls where kind = 'chat' order by started_at, attempt")
    return [dict(r) for r in rows.rows]


async def target_rows(ds) -> int:
    return (await ds.databases["news"].execute("select count(*) from target")).rows[0][0]


async def extract(ds, text=DOC, **extra) -> dict:
    r = await ds.client.post(
        "/-/llm-extract/api/runs", cookies=cookies(ds),
        json={"database": "news", "table": "target", "text": text, "columns": ["name", "amount"], **extra},
    )
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]

    async def finished():
        got = (await ds.client.get(f"/-/llm-extract/api/runs/{run_id}", cookies=cookies(ds))).json()
        return got if got["status"] not in ACTIVE else None

    return await wait_for(finished, timeout=20)


async def ask(ds, q="road budget") -> tuple[int, dict]:
    r = await post(ds, "/-/llm-rag/news/ask.json", {"q": q})
    return r.status_code, r.json()


def assert_logged_every_attempt(server, log, before_requests=0):
    """One llm_calls row per HTTP request the provider received."""
    assert len(log) == len(server.chat_requests()) - before_requests, (
        [row["outcome"] for row in log], len(server.chat_requests())
    )


def assert_clear(message: str):
    assert message and "Traceback" not in message
    assert SECRET_MARKER not in message
    assert any(word in message for word in ("Try again", "try again", "run it again", "Pick", "fallback", "wait"))


# --------------------------------------------------------------------- retries

async def test_429_storm_with_retry_after_then_success(make_ds, server):
    ds = await make_ds()
    for _ in range(2):
        server.enqueue(Reply(status=429, retry_after=0.2, error_message="Rate limit reached"))
    server.enqueue(Reply(content=GOOD_ROWS))
    run = await extract(ds)
    assert run["status"] == "done", run
    assert len(run["rows"]) == 2 and all(r["valid"] for r in run["rows"])
    log = await call_log(ds)
    assert [r["outcome"] for r in log] == ["retry", "retry", "ok"]
    assert {r["error_class"] for r in log[:2]} == {"rate_limit"}
    assert_logged_every_attempt(server, log)
    assert await target_rows(ds) == 0  # rows wait for review
    FAULTS_SURVIVED.append("429 storm")


async def test_429_storm_longer_than_attempts_fails_clearly(make_ds, server):
    ds = await make_ds(max_attempts=3)
    for _ in range(3):
        server.enqueue(Reply(status=429, retry_after=0.05))
    run = await extract(ds)
    assert run["status"] == "failed"
    assert_clear(await run_messages(ds, run))
    log = await call_log(ds)
    assert [r["outcome"] for r in log] == ["retry", "retry", "error"]
    assert_logged_every_attempt(server, log)
    assert await target_rows(ds) == 0


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_retried(make_ds, server, status):
    ds = await make_ds()
    server.enqueue(Reply(status=status, error_message="upstream exploded"))
    code, body = await ask(ds)
    assert code == 200 and body["ok"], body
    assert "[1]" in body["answer"]
    log = await call_log(ds)
    assert [r["outcome"] for r in log] == ["retry", "ok"]
    assert_logged_every_attempt(server, log)
    FAULTS_SURVIVED.append(f"HTTP {status}")


async def test_slow_provider_times_out_then_retry_succeeds(make_ds, server):
    ds = await make_ds()
    server.enqueue(Reply(content=ANSWER, ttft=4.0))  # over the 1.5 s model timeout
    code, body = await ask(ds)
    assert code == 200 and body["ok"], body
    log = await call_log(ds)
    # a stream that does not start in time (its own wait, issue 16) is retried
    assert log[0]["outcome"] == "retry" and log[0]["error_class"] == "first_byte_timeout"
    assert log[-1]["outcome"] == "ok"
    assert_logged_every_attempt(server, log)
    FAULTS_SURVIVED.append("timeout")


async def test_fallback_model_answers_when_primary_keeps_failing(make_ds, server):
    ds = await make_ds(fallback=True, max_attempts=2)
    server.handler = lambda req: Reply(status=503) if req.get("model") == "fake-model" else None
    code, body = await ask(ds)
    assert code == 200 and body["ok"], body
    log = await call_log(ds)
    assert [r["model_id"] for r in log] == ["primary", "primary", "backup"]
    assert [r["outcome"] for r in log] == ["retry", "fallback", "ok"]
    assert_logged_every_attempt(server, log)
    FAULTS_SURVIVED.append("fallback")


async def test_every_model_down_gives_clear_error_and_no_answer_row_text(make_ds, server):
    ds = await make_ds(fallback=True, max_attempts=1)
    server.handler = lambda req: Reply(status=500)
    code, body = await ask(ds)
    assert code == 502 and not body["ok"]
    assert_clear(body["error"])
    assert "primary" in body["error"] and "backup" in body["error"]
    assert_logged_every_attempt(server, await call_log(ds))


# --------------------------------------------------------------- broken streams

async def test_connection_dropped_mid_answer_is_reported_not_retried_silently(make_ds, server):
    ds = await make_ds()
    server.enqueue(Reply(content="The council raised the road budget by a lot [1] and more", drop_after=3))
    code, body = await ask(ds)
    assert code == 502 and not body["ok"]
    assert_clear(body["error"])
    log = await call_log(ds)
    assert log[-1]["outcome"] == "error"
    assert_logged_every_attempt(server, log)
    FAULTS_SURVIVED.append("connection reset mid-stream")


async def test_connection_dropped_mid_extraction_inserts_nothing(make_ds, server):
    ds = await make_ds()
    server.enqueue(Reply(content=GOOD_ROWS, chunks=[GOOD_ROWS[:40], GOOD_ROWS[40:90], GOOD_ROWS[90:]], drop_after=2))
    server.enqueue(Reply(content=GOOD_ROWS, chunks=[GOOD_ROWS[:40], GOOD_ROWS[40:90], GOOD_ROWS[90:]], drop_after=2))
    server.enqueue(Reply(content=GOOD_ROWS, chunks=[GOOD_ROWS[:40], GOOD_ROWS[40:90], GOOD_ROWS[90:]], drop_after=2))
    before = await target_rows(ds)
    run = await extract(ds, direct_insert=True)
    assert run["status"] in ("failed", "done")
    assert all(not r.get("inserted_pk") for r in run.get("rows", []))
    assert await target_rows(ds) == before
    assert_logged_every_attempt(server, await call_log(ds))
    FAULTS_SURVIVED.append("connection reset mid-extraction")


async def test_output_violating_schema_is_flagged_not_inserted(make_ds, server):
    ds = await make_ds()
    bad = json.dumps({"rows": [{"name": "Acme Ltd", "amount": "a lot", "source_quote": "Acme Ltd paid 120 dollars"}]})
    server.enqueue(Reply(content=bad))
    server.enqueue(Reply(content=bad))  # the one re-ask gets the same
    run = await extract(ds, direct_insert=True)
    rows = run["rows"]
    assert rows and not any(r["valid"] for r in rows)
    assert any("amount" in " ".join(r["errors"] or []) for r in rows)
    assert await target_rows(ds) == 0
    log = await call_log(ds)
    assert len(log) == 2  # the first ask and one re-ask
    assert_logged_every_attempt(server, log)
    FAULTS_SURVIVED.append("schema-violating output")


async def test_model_stopping_mid_row_keeps_whole_rows_only(make_ds, server):
    ds = await make_ds()
    cut = GOOD_ROWS[: GOOD_ROWS.index("Beta LLC") + 4]  # stops inside the second row
    server.enqueue(Reply(content=cut, finish_reason="length"))
    run = await extract(ds)
    names = [r["values"].get("name") for r in run["rows"]]
    assert "Acme Ltd" in names
    assert not any(n and n != "Acme Ltd" and n.startswith("Beta") and n != "Beta LLC" for n in names)
    assert all(r["values"].get("amount") in (120, 75, None) for r in run["rows"])
    assert "cut off" in await run_messages(ds, run)  # the journalist is told
    assert await target_rows(ds) == 0
    assert_logged_every_attempt(server, await call_log(ds))
    FAULTS_SURVIVED.append("model stops mid-row")


async def test_not_json_at_all_is_reported(make_ds, server):
    ds = await make_ds()
    server.enqueue(Reply(content="Sorry, I can't help with that, here is a poem instead."))
    server.enqueue(Reply(content="Still a poem."))
    run = await extract(ds, direct_insert=True)
    assert not [r for r in run["rows"] if r["valid"]]
    assert await target_rows(ds) == 0
    assert_logged_every_attempt(server, await call_log(ds))
    FAULTS_SURVIVED.append("non-JSON output")


# ------------------------------------------------------------------- secrets

async def test_error_body_echoing_the_key_never_reaches_the_user_or_the_log(make_ds, server):
    ds = await make_ds()
    key = FAKE_API_KEYS["OPENAI_API_KEY"]
    server.enqueue(Reply(status=401, error_message=f"Incorrect API key provided: {key}. Check your key."))
    code, body = await ask(ds)
    assert not body["ok"]
    text = json.dumps(body)
    assert key not in text and SECRET_MARKER not in text
    log = await call_log(ds)
    assert log and all(key not in (row["error_message"] or "") for row in log)
    assert log[0]["error_class"] == "auth" and log[0]["outcome"] == "error"  # 401 is not retried
    assert_logged_every_attempt(server, log)
    FAULTS_SURVIVED.append("401 echoing the key")


# ------------------------------------------- malformed HTTP payloads (MockTransport)

def sse(*payloads: str) -> bytes:
    return "".join(f"data: {p}\n\n" for p in payloads).encode()


def chunk(content: str | None = None, finish: str | None = None) -> str:
    delta = {"content": content} if content is not None else {}
    return json.dumps({
        "id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })


@pytest.fixture
def mock_transport(monkeypatch):
    """Route config-built models through an httpx2.MockTransport; returns the request log."""
    import httpx2

    from datasette_llm_core.providers import builtin

    state = {"responses": [], "requests": []}

    def handler(request):
        state["requests"].append(request)
        body = state["responses"].pop(0) if state["responses"] else sse(chunk(ANSWER), chunk(finish="stop"), "[DONE]")
        if isinstance(body, httpx2.Response):
            return body
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    monkeypatch.setattr(builtin, "make_http_client",
                        lambda config: httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))
    return state


@pytest.mark.parametrize("body", [
    pytest.param(sse("{not json at all"), id="sse-garbage"),
    pytest.param(sse(chunk("The council"), '{"id": "x", "choices": [{"delta": {"content": '), id="sse-cut-json"),
    pytest.param(b"<html><body>502 Bad Gateway</body></html>", id="html-instead-of-sse"),
])
async def test_malformed_provider_payload_is_a_clear_logged_error(make_ds, mock_transport, body):
    ds = await make_ds(max_attempts=2)
    mock_transport["responses"] = [body, body]
    code, result = await ask(ds)
    log = await call_log(ds)
    assert not result["ok"] and code >= 400
    assert_clear(result["error"])
    assert len(log) == len(mock_transport["requests"]) >= 1
    assert log[-1]["outcome"] == "error"
    FAULTS_SURVIVED.append("malformed payload")


async def test_stream_cut_before_finish_reason_is_not_passed_off_as_complete(make_ds, mock_transport):
    ds = await make_ds(max_attempts=1)
    mock_transport["responses"] = [sse(chunk("The council raised"), chunk(" the road"))]  # no finish, no [DONE]
    code, result = await ask(ds)
    log = await call_log(ds)
    assert len(log) == len(mock_transport["requests"]) == 1
    assert not result["ok"]
    assert_clear(result["error"])
    assert log[0]["outcome"] == "error"


# ------------------------------------------------------ the Anthropic SDK, same faults

def anthropic_reply(status: int, body: dict | bytes, headers: dict | None = None):
    import httpx2

    if isinstance(body, bytes):
        return httpx2.Response(status, headers={"content-type": "text/event-stream", **(headers or {})}, content=body)
    return httpx2.Response(status, headers=headers or {}, json=body)


async def test_anthropic_429_and_529_are_retried_then_answer(make_ds, mock_transport):
    from .vendor_payloads import anthropic_error, anthropic_sse

    ds = await make_ds(anthropic=True, max_attempts=3)
    mock_transport["responses"] = [
        anthropic_reply(429, anthropic_error("rate_limit_error", "Too many requests"), {"retry-after": "0.2"}),
        anthropic_reply(529, anthropic_error("overloaded_error", "Overloaded")),
        anthropic_reply(200, anthropic_sse(["The council raised ", "the road budget [1]."])),
    ]
    code, body = await ask(ds)
    assert code == 200 and body["ok"], body
    assert "[1]" in body["answer"]
    log = await call_log(ds)
    assert [r["outcome"] for r in log] == ["retry", "retry", "ok"]
    assert len(log) == len(mock_transport["requests"]) == 3
    FAULTS_SURVIVED.append("anthropic 429 + 529")


async def test_anthropic_error_event_mid_stream_is_reported(make_ds, mock_transport):
    from .vendor_payloads import anthropic_error, anthropic_sse

    ds = await make_ds(anthropic=True, max_attempts=2)
    broken = anthropic_sse(["The council ", "raised ", "the road"], error=anthropic_error("overloaded_error", "Overloaded"),
                           error_after=2)
    mock_transport["responses"] = [anthropic_reply(200, broken)]
    code, body = await ask(ds)
    assert code == 502 and not body["ok"]
    assert_clear(body["error"])
    log = await call_log(ds)
    assert log[-1]["outcome"] == "error"
    assert len(log) == len(mock_transport["requests"])
    FAULTS_SURVIVED.append("anthropic error event mid-stream")


async def test_anthropic_401_echoing_the_key_stays_secret(make_ds, mock_transport):
    from .vendor_payloads import anthropic_error

    ds = await make_ds(anthropic=True)
    key = FAKE_API_KEYS["ANTHROPIC_API_KEY"]
    mock_transport["responses"] = [anthropic_reply(401, anthropic_error("authentication_error", f"invalid x-api-key {key}"))]
    code, body = await ask(ds)
    assert not body["ok"]
    assert key not in json.dumps(body) and SECRET_MARKER not in json.dumps(body)
    log = await call_log(ds)
    assert len(log) == len(mock_transport["requests"]) == 1
    assert log[0]["error_class"] == "auth" and key not in (log[0]["error_message"] or "")
    FAULTS_SURVIVED.append("anthropic 401 echoing the key")
