"""A real HTTP server that speaks the OpenAI API from a script, for tests and benchmarks.

It listens on 127.0.0.1 and implements ``POST /v1/chat/completions`` (JSON and
server-sent events shaped like OpenAI's ``chat.completion.chunk``, with the
final usage chunk when ``stream_options.include_usage`` is set),
``POST /v1/embeddings`` (floats or base64, deterministic hashed vectors) and
``GET /v1/models``. Only the standard library is used.

In a test::

    from tests.fake_openai_server import FakeOpenAIServer, Reply

    with FakeOpenAIServer(token_delay=0.01) as server:
        server.on("capital of France", "Paris.")         # rule, used every time
        server.enqueue(Reply(status=429, retry_after=1))  # one-shot, in order
        client = openai.OpenAI(base_url=server.base_url, api_key="x")

Replies are chosen for each chat request in this order: the first queued reply
whose ``match`` fits (consumed), the ``handler`` callable (may return None to
pass), the first rule whose ``match`` fits, then ``default``. ``match`` is a
substring of the last user message; ``match_any`` a substring of any message.

As a process (so a real Datasette server can use it as provider
``openai-compatible`` with ``base_url: http://127.0.0.1:PORT/v1``)::

    python -m tests.fake_openai_server --port 8555 --script script.json

Shaped like llama.cpp's ``llama-server`` when asked: ``slots=N`` serves at
most N chat requests at once and holds the others in a queue without sending
a byte (``max_in_flight`` records the most served at once); ``n_ctx=N``
refuses a prompt of N tokens or more with llama-server's 400
``exceed_context_size_error`` body.

where script.json is ``{"rules": [reply...], "queue": [reply...], "default":
reply, "token_delay": 0.02, "ttft": 0.2}`` and each reply is an object with
the fields of ``Reply``. While running, ``GET /_fake/requests`` lists the
requests received and ``POST /_fake/script`` replaces the script.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import re
import socket
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Handler = Callable[[dict], "Reply | str | None"]


@dataclasses.dataclass
class Reply:
    """One scripted answer (or fault) of the fake server."""

    content: str = ""
    #: Explicit stream pieces; default: ``content`` split into words.
    chunks: list[str] | None = None
    #: Substring of the last user message this reply is for (None: any request).
    match: str | None = None
    #: Substring of any message (system or user) this reply is for.
    match_any: str | None = None
    #: HTTP status; anything but 200 returns an OpenAI-shaped error body.
    status: int = 200
    #: Seconds for a ``Retry-After`` header (with 429/503).
    retry_after: float | None = None
    error_message: str | None = None
    #: Close the connection after this many content chunks (mid-stream fault).
    drop_after: int | None = None
    #: Per-reply latency overrides (seconds); None uses the server's.
    token_delay: float | None = None
    ttft: float | None = None
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None

    @classmethod
    def from_obj(cls, obj: "Reply | str | dict") -> "Reply":
        if isinstance(obj, Reply):
            return obj
        if isinstance(obj, str):
            return cls(content=obj)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(obj) - fields
        if unknown:
            raise ValueError(f"unknown reply fields {sorted(unknown)}; known: {sorted(fields)}")
        return cls(**obj)

    def matches(self, request: dict) -> bool:
        if self.match is not None and self.match not in last_user_text(request):
            return False
        if self.match_any is not None and self.match_any not in all_text(request):
            return False
        return True

    def pieces(self) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        return re.findall(r"\s*\S+\s*", self.content) or ([self.content] if self.content else [])


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal parts
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def last_user_text(request: dict) -> str:
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def all_text(request: dict) -> str:
    return "\n".join(_text_of(m.get("content")) for m in request.get("messages") or [])


def count_tokens(text: str) -> int:
    """A rough, deterministic token count (words and punctuation)."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def fake_embedding(text: str, dimensions: int) -> list[float]:
    """Deterministic unit vector from word hashes: shared words give similar vectors."""
    vector = [0.0] * dimensions
    for word in re.findall(r"\w+", text.lower()) or [""]:
        digest = hashlib.sha256(word.encode()).digest()
        index = int.from_bytes(digest[:4], "little") % dimensions
        vector[index] += 1.0 if digest[4] % 2 else -1.0
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    return [v / norm for v in vector]


# --- re-asks: how real models misanswer a request to correct some rows ----------------

REASK_MARKER = "failed validation"
_REASK_ROW = re.compile(r"^Row (R\d+): (\{.*\})$", re.MULTILINE)


def reask_rows(request: dict) -> list[tuple[str, dict]]:
    """``(id, row)`` of each row an extraction re-ask sent back for correction."""
    return [(m.group(1), json.loads(m.group(2))) for m in _REASK_ROW.finditer(last_user_text(request))]


def misanswered_reask(request: dict, fix: Callable[[dict], dict], *, reorder: bool = True,
                      add: list[dict] = (), omit: tuple[str, ...] = (), duplicate: tuple[str, ...] = (),
                      ids: bool = True) -> str:
    """A re-ask answer the way real models give them: each row sent is corrected with
    ``fix`` and echoes its id (unless ``ids=False``), except the ids in ``omit``; ids in
    ``duplicate`` come twice; ``add`` rows (e.g. every other row of the document, as
    a model answering with all rows does) are mixed in; ``reorder`` reverses the order."""
    out = []
    for row_id, row in reask_rows(request):
        if row_id in omit:
            continue
        fixed = fix(dict(row))
        if ids:
            fixed = {"_llm_row_id": row_id, **fixed}
        out += [fixed] * (2 if row_id in duplicate else 1)
    out += list(add)
    if reorder:
        out.reverse()
    return json.dumps({"rows": out})


_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


class FakeOpenAIServer:
    """Scripted OpenAI-compatible server on a free port of 127.0.0.1."""

    def __init__(
        self,
        *,
        token_delay: float = 0.0,
        ttft: float = 0.0,
        default: "Reply | str" = "This is a scripted reply from the fake server.",
        models: list[str] | None = None,
        embedding_dimensions: int = 64,
        api_key: str | None = None,
        handler: Handler | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        slots: int | None = None,
        n_ctx: int | None = None,
    ):
        self.token_delay = token_delay
        self.ttft = ttft
        self.default = Reply.from_obj(default)
        self.models = models or ["fake-model", "fake-embedding"]
        self.embedding_dimensions = embedding_dimensions
        self.api_key = api_key
        self.handler = handler
        self.n_ctx = n_ctx
        self._slots = threading.Semaphore(slots) if slots else None
        self.in_flight = 0
        self.max_in_flight = 0
        self.rules: list[Reply] = []
        self.queue: list[Reply] = []
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._host, self._port = host, port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- script
    def on(self, match: str | None, reply: "Reply | str | dict", **fields) -> Reply:
        """Add a rule: requests whose last user message contains ``match`` get ``reply``."""
        reply = dataclasses.replace(Reply.from_obj(reply), match=match, **fields)
        with self._lock:
            self.rules.append(reply)
        return reply

    def enqueue(self, reply: "Reply | str | dict", **fields) -> Reply:
        """Add a one-shot reply, used by the next request it matches."""
        reply = dataclasses.replace(Reply.from_obj(reply), **fields)
        with self._lock:
            self.queue.append(reply)
        return reply

    def load_script(self, script: dict) -> None:
        """Replace rules, queue, default and latency from a JSON-style dict."""
        with self._lock:
            self.rules = [Reply.from_obj(r) for r in script.get("rules", [])]
            self.queue = [Reply.from_obj(r) for r in script.get("queue", [])]
            if "default" in script:
                self.default = Reply.from_obj(script["default"])
            self.token_delay = float(script.get("token_delay", self.token_delay))
            self.ttft = float(script.get("ttft", self.ttft))

    def reset(self) -> None:
        with self._lock:
            self.rules, self.queue, self.requests = [], [], []

    def choose(self, request: dict) -> Reply:
        with self._lock:
            for i, reply in enumerate(self.queue):
                if reply.matches(request):
                    return self.queue.pop(i)
        if self.handler is not None:
            result = self.handler(request)
            if result is not None:
                return Reply.from_obj(result)
        with self._lock:
            for reply in self.rules:
                if reply.matches(request):
                    return reply
        return self.default

    def chat_requests(self) -> list[dict]:
        return [r["body"] for r in self.requests if r["path"].endswith("/chat/completions")]

    # ------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    def start(self) -> "FakeOpenAIServer":
        handler = type("BoundHandler", (_RequestHandler,), {"fake": self})
        self._httpd = ThreadingHTTPServer((self._host, self._port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="fake-openai", daemon=True,
            kwargs={"poll_interval": 0.05},
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpenAIServer  # set on the subclass

    def log_message(self, format, *args):  # quiet
        pass

    # ------------------------------------------------------------- helpers
    def _send_json(self, status: int, payload: Any, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int, message: str | None = None,
                    retry_after: float | None = None) -> None:
        kind, code = _ERROR_TYPES.get(status, ("server_error", None))
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        self._send_json(status, {"error": {
            "message": message or f"Scripted error {status} from the fake server.",
            "type": kind, "param": None, "code": code,
        }}, headers)

    def _read_json(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            self._send_error(400, "Request body is not valid JSON.")
            return None

    def _authorised(self) -> bool:
        if self.fake.api_key is None:
            return True
        if self.headers.get("Authorization") == f"Bearer {self.fake.api_key}":
            return True
        self._send_error(401, "Incorrect API key provided.")
        return False

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    # -------------------------------------------------------------- routes
    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            if self._authorised():
                self._send_json(200, {"object": "list", "data": [
                    {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
                    for m in self.fake.models]})
        elif self.path == "/_fake/requests":
            self._send_json(200, self.fake.requests)
        else:
            self._send_error(404, f"Unknown path {self.path}")

    def do_POST(self):
        body = self._read_json()
        if body is None:
            return
        path = self.path.split("?")[0].rstrip("/")
        if path == "/_fake/script":
            self.fake.load_script(body)
            return self._send_json(200, {"ok": True})
        if path == "/_fake/reset":
            self.fake.reset()
            return self._send_json(200, {"ok": True})
        with self.fake._lock:
            self.fake.requests.append({"path": path, "body": body, "time": time.time(),
                                       "headers": {k.lower(): v for k, v in self.headers.items()
                                                   if k.lower() != "authorization"},
                                       # whether Authorization carried the expected key
                                       # (the key itself is never recorded)
                                       "key_ok": self.fake.api_key is None or self.headers.get(
                                           "Authorization") == f"Bearer {self.fake.api_key}"})
        if not self._authorised():
            return
        if path == "/v1/chat/completions":
            self._chat(body)
        elif path == "/v1/embeddings":
            self._embeddings(body)
        else:
            self._send_error(404, f"Unknown path {path}")

    def _embeddings(self, body: dict) -> None:
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return self._send_error(400, "input must be a string or a list of strings.")
        dims = int(body.get("dimensions") or self.fake.embedding_dimensions)
        data = []
        for i, text in enumerate(texts):
            vector = fake_embedding(text, dims)
            if body.get("encoding_format") == "base64":
                value: Any = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            else:
                value = vector
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(count_tokens(t) for t in texts)
        self._send_json(200, {"object": "list", "data": data,
                              "model": body.get("model") or "fake-embedding",
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _chat(self, body: dict) -> None:
        fake = self.fake
        if fake._slots is None:
            return self._chat_in_slot(body)
        with fake._slots:  # like llama-server: queued requests get no byte until a slot frees
            with fake._lock:
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                return self._chat_in_slot(body)
            finally:
                with fake._lock:
                    fake.in_flight -= 1

    def _chat_in_slot(self, body: dict) -> None:
        if not body.get("messages"):
            return self._send_error(400, "messages is required.")
        prompt_tokens = count_tokens(all_text(body))
        if self.fake.n_ctx and prompt_tokens >= self.fake.n_ctx:
            # llama-server's body for a prompt larger than a slot's context
            return self._send_json(400, {"error": {
                "code": 400, "type": "exceed_context_size_error",
                "message": f"request ({prompt_tokens} tokens) exceeds the available context size "
                           f"({self.fake.n_ctx} tokens), try increasing it",
                "n_prompt_tokens": prompt_tokens, "n_ctx": self.fake.n_ctx}})
        reply = self.fake.choose(body)
        ttft = reply.ttft if reply.ttft is not None else self.fake.ttft
        if reply.status != 200:
            return self._send_error(reply.status, reply.error_message, reply.retry_after)
        model = reply.model or body.get("model") or "fake-model"
        pieces = reply.pieces()
        usage = {
            "prompt_tokens": reply.prompt_tokens if reply.prompt_tokens is not None
            else count_tokens(all_text(body)),
            "completion_tokens": reply.completion_tokens if reply.completion_tokens is not None
            else max(len(pieces), count_tokens(reply.content) if reply.chunks is None else 0),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0}
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not body.get("stream"):
            if ttft:
                time.sleep(ttft)
            return self._send_json(200, {
                "id": completion_id, "object": "chat.completion", "created": created,
                "model": model, "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "message": {
                    "role": "assistant", "content": "".join(pieces), "refusal": None,
                    "annotations": []}, "logprobs": None, "finish_reason": reply.finish_reason}],
                "usage": usage, "service_tier": "default",
            })
        self._stream(body, reply, pieces, usage, completion_id, created, model, ttft)

    def _stream(self, body, reply, pieces, usage, completion_id, created, model, ttft) -> None:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        delay = reply.token_delay if reply.token_delay is not None else self.fake.token_delay
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
        self.end_headers()

        def event(choices: list, usage_value: Any = None) -> None:
            chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                     "model": model, "system_fingerprint": "fp_fake", "service_tier": "default",
                     "choices": choices}
            if include_usage:
                chunk["usage"] = usage_value
            self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())

        def delta(d: dict, finish: str | None = None) -> list:
            return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]

        try:
            if ttft:
                time.sleep(ttft)
            event(delta({"role": "assistant", "content": "", "refusal": None}))
            for n, piece in enumerate(pieces):
                if reply.drop_after is not None and n >= reply.drop_after:
                    self._drop()
                    return
                if n and delay:
                    time.sleep(delay)
                event(delta({"content": piece}))
            if reply.drop_after is not None and reply.drop_after >= len(pieces):
                self._drop()
                return
            event(delta({}, reply.finish_reason))
            if include_usage:
                event([], usage)
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")  # end of the chunked body
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (e.g. cancelled)

    def _drop(self) -> None:
        """Close the socket without finishing the chunked body."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Scripted OpenAI-compatible server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--script", help="JSON file: rules, queue, default, token_delay, ttft")
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--ttft", type=float, default=0.0)
    parser.add_argument("--api-key", help="require this bearer token")
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(token_delay=args.token_delay, ttft=args.ttft,
                              api_key=args.api_key, host=args.host, port=args.port)
    if args.script:
        with open(args.script, encoding="utf-8") as f:
            server.load_script(json.load(f))
    server.start()
    print(f"fake OpenAI server listening on {server.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
