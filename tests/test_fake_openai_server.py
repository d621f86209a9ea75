"""The fake OpenAI server, exercised with the real openai SDK over real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import openai
import pytest

from .fake_openai_server import FakeOpenAIServer, Reply, fake_embedding

ROOT = Path(__file__).parent.parent


@pytest.fixture
def server():
    with FakeOpenAIServer() as s:
        yield s


@pytest.fixture
def client(server, monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def test_non_streaming_reply_from_rule(server, client):
    server.on("capital of France", "Paris is the capital.")
    result = client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "What is the capital of France?"}],
    )
    assert result.choices[0].message.content == "Paris is the capital."
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.completion_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    # rules are not consumed; unmatched requests get the default
    again = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "capital of France again"}])
    other = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "something else"}])
    assert again.choices[0].message.content == "Paris is the capital."
    assert other.choices[0].message.content == server.default.content
    assert len(server.chat_requests()) == 3
    assert server.chat_requests()[0]["messages"][1]["content"].startswith("What is")


def test_streaming_chunks_and_usage(server, client):
    server.enqueue(Reply(chunks=["Hel", "lo", " world"], completion_tokens=3))
    stream = client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "hi"}],
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello world"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    # without include_usage there is no usage chunk
    server.enqueue("again")
    plain = list(client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True))
    assert all(c.choices for c in plain)
    assert all(getattr(c, "usage", None) is None for c in plain)


def test_queue_is_consumed_in_order_and_by_match(server, client):
    server.enqueue("first")
    server.enqueue("for bananas", match="banana")
    server.enqueue("second")
    ask = lambda q: client.chat.completions.create(  # noqa: E731
        model="m", messages=[{"role": "user", "content": q}]).choices[0].message.content
    assert ask("a banana please") == "first"  # first queued reply that matches
    assert ask("a banana please") == "for bananas"
    assert ask("anything") == "second"
    assert ask("anything") == server.default.content


def test_handler_callable_sees_the_request(server, client):
    server.handler = lambda req: f"model was {req['model']}" if req["model"] == "x" else None
    out = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "q"}])
    assert out.choices[0].message.content == "model was x"
    out = client.chat.completions.create(model="y", messages=[{"role": "user", "content": "q"}])
    assert out.choices[0].message.content == server.default.content


def test_rate_limit_and_server_error(server, client):
    server.enqueue(Reply(status=429, retry_after=7, error_message="Slow down"))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "7"
    assert "Slow down" in str(info.value)
    server.enqueue(Reply(status=500))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
    # the SDK's own retries get the next scripted reply
    server.enqueue(Reply(status=500))
    retrying = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=1)
    out = retrying.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
    assert out.choices[0].message.content == server.default.content


def test_dropped_connection_mid_stream(server, client):
    server.enqueue(Reply(content="one two three four five", drop_after=2))
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "q"}], stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert "".join(received) == "one two "


def test_latency_ttft_and_token_delay(client, server):
    server.ttft = 0.2
    server.token_delay = 0.05
    server.enqueue("a b c d e")
    start = time.monotonic()
    stamps = []
    for chunk in client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "q"}], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.monotonic() - start)
    assert len(stamps) == 5
    assert stamps[0] >= 0.2
    assert stamps[-1] - stamps[0] >= 4 * 0.05 * 0.9


def test_embeddings_float_and_base64(server, client):
    result = client.embeddings.create(model="fake-embedding", input=["tax cuts", "tax cuts", "war"])
    vectors = np.array([d.embedding for d in result.data], dtype=np.float32)
    assert vectors.shape == (3, server.embedding_dimensions)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[1])
    assert not np.allclose(vectors[0], vectors[2])
    assert result.usage.prompt_tokens == 5
    floats = client.embeddings.create(model="e", input="tax cuts", encoding_format="float")
    assert np.allclose(floats.data[0].embedding, fake_embedding("tax cuts", 64), atol=1e-6)


def test_models_and_api_key(monkeypatch):
    with FakeOpenAIServer(api_key="sk-right", models=["alpha", "beta"]) as server:
        good = openai.OpenAI(base_url=server.base_url, api_key="sk-right", max_retries=0)
        assert [m.id for m in good.models.list()] == ["alpha", "beta"]
        bad = openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
        # keys are never recorded
        assert all("authorization" not in r["headers"] for r in server.requests)


@pytest.mark.slow
def test_runs_as_a_subprocess_with_a_script(tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"rules": [{"match": "ping", "content": "pong"}],
                                  "token_delay": 0}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_openai_server", "--port", "0", "--script", str(script)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, line
        base_url = line.split()[-1]
        client = openai.OpenAI(base_url=base_url, api_key="k", max_retries=0)
        out = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "ping?"}])
        assert out.choices[0].message.content == "pong"
        # the script can be replaced while it runs
        req = urllib.request.Request(
            base_url.replace("/v1", "/_fake/script"), method="POST",
            data=json.dumps({"default": "new default"}).encode(),
            headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()
        out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert out.choices[0].message.content == "new default"
        seen = json.loads(urllib.request.urlopen(
            base_url.replace("/v1", "/_fake/requests"), timeout=5).read())
        assert len(seen) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=10)
