"""A fake of the OpenAI Batch API and Anthropic Message Batches, for tests.

One object serves both vendors' endpoints, shaped as they document them:

- OpenAI: ``POST /v1/files`` (multipart, ``purpose=batch``), ``GET
  /v1/files/{id}``, ``GET /v1/files/{id}/content``, ``POST /v1/batches``,
  ``GET /v1/batches`` (list, with metadata), ``GET /v1/batches/{id}``,
  ``POST /v1/batches/{id}/cancel``. Statuses validating -> in_progress ->
  finalizing -> completed (or failed, expired, cancelling -> cancelled);
  ``request_counts``; output and error files with one line per request.
- Anthropic: ``POST /v1/messages/batches``, ``GET /v1/messages/batches``
  (list, most recent first, ``limit`` and ``after_id``), ``GET
  /v1/messages/batches/{id}``, ``POST /v1/messages/batches/{id}/cancel``,
  ``GET /v1/messages/batches/{id}/results`` (JSONL at ``results_url``);
  ``processing_status`` in_progress -> (canceling ->) ended; result types
  succeeded, errored, canceled, expired.

Either as a real HTTP server on 127.0.0.1 (``with FakeBatchAPI() as fake:``,
then ``fake.openai_base_url`` / ``fake.anthropic_base_url``) or behind
``httpx2.MockTransport`` (``fake.transport()``); the same state serves both.

Scripting: a batch advances one step per retrieve and ends after
``polls_to_finish`` retrieves. ``answer(custom_id, request) -> Outcome``
decides each request (default: a JSON object echoing the id);
``outcomes[custom_id]`` overrides it for one request. ``next_batch_fate``
makes the next batch ``"expire"`` (the first ``expire_after`` requests are
answered, the rest expire) or ``"fail_validation"``. ``fail_next(...)``
queues HTTP faults (429 with Retry-After, 5xx, a 500 sent *after* the
batch was created, a download cut off halfway: ``truncate=True``, HTTP only). Results are written in a shuffled order. The vendors'
own limits are enforced: a batch over them is refused as the vendor would.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.parser
import email.policy
import json
import random
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_BYTES = 200_000_000
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256_000_000
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclasses.dataclass
class Outcome:
    """What the fake model does with one request."""

    #: ok | error | expired | missing (no line at all) | duplicate (an ok line written twice)
    #: | prose | cut_off | refusal
    kind: str = "ok"
    #: ok: the JSON object answered (or a string, sent as it is); prose: the text said.
    content: Any = None
    status: int = 400
    message: str = "Invalid request: the model refused the input."
    input_tokens: int = 120
    output_tokens: int = 30


def default_answer(custom_id: str, request: dict) -> Outcome:
    return Outcome("ok", {"id": custom_id, "ok": True})


@dataclasses.dataclass
class Fault:
    method: str
    path: str  # a regex matched against the path
    status: int
    retry_after: float | None = None
    after: bool = False  # do the work, then answer with the error (an ambiguous failure)
    truncate: bool = False  # answer normally but break the connection halfway through the body


def _now() -> int:
    return int(time.time())


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat().replace("+00:00", "Z")


class FakeBatchAPI:
    def __init__(self, *, polls_to_finish: int = 2, seed: int = 7, api_key: str | None = None,
                 answer: Callable[[str, dict], Outcome] | None = None) -> None:
        self.polls_to_finish = polls_to_finish
        self.random = random.Random(seed)
        self.api_key = api_key
        self.answer = answer or default_answer
        self.outcomes: dict[str, Outcome] = {}
        self.next_batch_fate: str | None = None
        self.expire_after = 1
        self.faults: list[Fault] = []
        self.files: dict[str, dict] = {}
        self.openai: dict[str, dict] = {}
        self.anthropic: dict[str, dict] = {}
        self.log: list[tuple[str, str, int]] = []  # (method, path, status)
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ scripting
    def fail_next(self, method: str, path: str, status: int, *, retry_after: float | None = None,
                  times: int = 1, after: bool = False, truncate: bool = False) -> None:
        for _ in range(times):
            self.faults.append(Fault(method, path, status, retry_after, after, truncate))

    def tick(self) -> None:
        """Time passes at the vendor: every batch advances one step, as a retrieve would."""
        with self._lock:
            for batch in self.openai.values():
                self._openai_advance(batch)
            for batch in self.anthropic.values():
                self._anthropic_advance(batch)

    def calls(self, method: str, path_regex: str) -> int:
        return sum(1 for m, p, _ in self.log if m == method and re.fullmatch(path_regex, p))

    def outcome(self, custom_id: str, request: dict) -> Outcome:
        return self.outcomes.get(custom_id) or self.answer(custom_id, request)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "FakeBatchAPI":
        handler = type("BoundBatchHandler", (_HTTPHandler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         name="fake-batch-api", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def openai_base_url(self) -> str:
        return self.origin + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.origin

    def transport(self):
        """An ``httpx2.MockTransport`` answering from the same state."""
        import httpx2

        def handler(request):
            status, headers, body = self.handle(request.method, request.url.raw_path.decode(),
                                                {k.lower(): v for k, v in request.headers.items()},
                                                request.read())
            return httpx2.Response(status, headers=headers, content=body)

        return httpx2.MockTransport(handler)

    # ------------------------------------------------------------ dispatch
    def handle(self, method: str, target: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        path, _, query = target.partition("?")
        anthropic = path.startswith("/v1/messages/")
        with self._lock:
            reply = self._auth(headers, anthropic)
            if reply is None:
                fault = next((f for f in self.faults if f.method == method and re.fullmatch(f.path, path)), None)
                if fault is not None:
                    self.faults.remove(fault)
                    if fault.truncate:
                        reply = self._route(method, path, query, headers, body)
                        reply[1]["x-fake-truncate"] = "1"
                        self.log.append((method, path, reply[0]))
                        return reply
                    if fault.after:
                        self._route(method, path, query, headers, body)
                    reply = self._error(fault.status, "Scripted fault from the fake batch API.",
                                        anthropic, fault.retry_after)
                else:
                    reply = self._route(method, path, query, headers, body)
            self.log.append((method, path, reply[0]))
            return reply

    def _auth(self, headers: dict, anthropic: bool):
        if self.api_key is None:
            return None
        bearer = headers.get("authorization", "")
        given = bearer[7:] if bearer.startswith("Bearer ") else None
        if anthropic and headers.get("x-api-key"):  # the Anthropic SDK sends one or the other
            given = headers["x-api-key"]
        if given == self.api_key:
            return None
        return self._error(401, "invalid x-api-key" if anthropic else "Incorrect API key provided.", anthropic)

    def _route(self, method, path, query, headers, body):
        m = re.fullmatch
        if method == "POST" and path == "/v1/files":
            return self._file_create(headers, body)
        if method == "GET" and (g := m(r"/v1/files/([^/]+)/content", path)):
            f = self.files.get(g[1])
            if f is None:
                return self._error(404, f"No such File object: {g[1]}", False)
            return 200, {"content-type": "application/octet-stream"}, f["data"]
        if method == "GET" and (g := m(r"/v1/files/([^/]+)", path)):
            f = self.files.get(g[1])
            return (self._json(self._file_object(f)) if f else self._error(404, f"No such File object: {g[1]}", False))
        if method == "POST" and path == "/v1/batches":
            return self._openai_create(json.loads(body or b"{}"))
        if method == "GET" and path == "/v1/batches":
            data = [self._openai_object(b) for b in reversed(list(self.openai.values()))][:100]
            return self._json({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                               "last_id": data[-1]["id"] if data else None, "has_more": False})
        if (g := m(r"/v1/batches/([^/]+)(/cancel)?", path)):
            batch = self.openai.get(g[1])
            if batch is None:
                return self._error(404, f"No batch found with id '{g[1]}'.", False)
            if method == "POST" and g[2]:
                return self._openai_cancel(batch)
            if method == "GET" and not g[2]:
                self._openai_advance(batch)
                return self._json(self._openai_object(batch))
        if method == "POST" and path == "/v1/messages/batches":
            return self._anthropic_create(body, headers)
        if method == "GET" and path == "/v1/messages/batches":
            return self._anthropic_list(query, headers)
        if (g := m(r"/v1/messages/batches/([^/]+)(/cancel|/results)?", path)):
            batch = self.anthropic.get(g[1])
            if batch is None:
                return self._error(404, f"message_batch {g[1]} not found", True, kind="not_found_error")
            if method == "POST" and g[2] == "/cancel":
                return self._anthropic_cancel(batch, headers)
            if method == "GET" and g[2] == "/results":
                if batch["status"] != "ended":
                    return self._error(400, "Batch is still processing.", True)
                lines = b"".join(json.dumps(r).encode() + b"\n" for r in batch["results"])
                return 200, {"content-type": "application/binary"}, lines
            if method == "GET" and not g[2]:
                self._anthropic_advance(batch)
                return self._json(self._anthropic_object(batch, headers))
        return self._error(404, f"Unknown path {method} {path}", path.startswith("/v1/messages"))

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _json(payload: Any, status: int = 200) -> tuple[int, dict, bytes]:
        return status, {"content-type": "application/json",
                        "request-id": f"req_{uuid.uuid4().hex[:20]}"}, json.dumps(payload).encode()

    def _error(self, status: int, message: str, anthropic: bool, retry_after: float | None = None,
               kind: str | None = None):
        if anthropic:
            kind = kind or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                            413: "request_too_large", 429: "rate_limit_error",
                            529: "overloaded_error"}.get(status, "api_error")
            payload = {"type": "error", "error": {"type": kind, "message": message}}
        else:
            kind = kind or {400: "invalid_request_error", 401: "invalid_request_error",
                            404: "invalid_request_error", 429: "requests"}.get(status, "server_error")
            payload = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        status, headers, body = self._json(payload, status)
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        return status, headers, body

    def _add_file(self, data: bytes, purpose: str, filename: str) -> dict:
        f = {"id": f"file-{uuid.uuid4().hex[:22]}", "data": data, "purpose": purpose,
             "filename": filename, "created_at": _now()}
        self.files[f["id"]] = f
        return f

    @staticmethod
    def _file_object(f: dict) -> dict:
        return {"id": f["id"], "object": "file", "bytes": len(f["data"]), "created_at": f["created_at"],
                "filename": f["filename"], "purpose": f["purpose"], "status": "processed",
                "expires_at": f["created_at"] + 30 * 86400, "status_details": None}

    def _file_create(self, headers: dict, body: bytes):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + headers.get("content-type", "").encode() + b"\r\n\r\n" + body)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            fields[part.get_param("name", header="content-disposition")] = (
                part.get_filename(), part.get_payload(decode=True))
        if "file" not in fields or fields.get("purpose", (None, b""))[1] != b"batch":
            return self._error(400, "Upload a 'file' with purpose 'batch'.", False)
        f = self._add_file(fields["file"][1], "batch", fields["file"][0] or "upload.jsonl")
        return self._json(self._file_object(f))

    # ------------------------------------------------------------ OpenAI
    def _openai_create(self, body: dict):
        f = self.files.get(body.get("input_file_id"))
        if f is None:
            return self._error(400, f"Invalid 'input_file_id': '{body.get('input_file_id')}'.", False)
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return self._error(400, "Unsupported endpoint or completion_window.", False)
        batch = {"id": f"batch_{uuid.uuid4().hex[:24]}", "input_file_id": f["id"], "created_at": _now(),
                 "status": "validating", "polls": 0, "metadata": body.get("metadata"),
                 "fate": self.next_batch_fate, "errors": None, "times": {}, "lines": [],
                 "output_file_id": None, "error_file_id": None, "done": 0, "failed": 0, "model": None}
        self.next_batch_fate = None
        errors = []
        if len(f["data"]) > OPENAI_MAX_BYTES:
            errors.append({"code": "file_too_large", "message": "The input file exceeds 200 MB.", "line": None})
        seen = set()
        for n, raw in enumerate(f["data"].splitlines(), 1):
            try:
                line = json.loads(raw)
            except ValueError:
                errors.append({"code": "invalid_json_line", "message": "This line is not valid JSON.", "line": n})
                continue
            if line.get("custom_id") in seen:
                errors.append({"code": "duplicate_custom_id", "line": n,
                               "message": "The custom_id for this request is a duplicate of another request."})
            seen.add(line.get("custom_id"))
            if line.get("url") != "/v1/chat/completions" or line.get("method") != "POST":
                errors.append({"code": "mismatched_endpoint", "line": n,
                               "message": "The provided request url does not match the batch endpoint."})
            batch["model"] = batch["model"] or (line.get("body") or {}).get("model")
            batch["lines"].append(line)
        if len(batch["lines"]) > OPENAI_MAX_REQUESTS:
            errors.append({"code": "too_many_requests", "line": None,
                           "message": f"The batch input file has more than {OPENAI_MAX_REQUESTS} requests."})
        if batch["fate"] == "fail_validation":
            errors.append({"code": "invalid_request", "line": 1,
                           "message": "The 'model' parameter is not supported with the Batch API."})
        batch["validation_errors"] = errors
        self.openai[batch["id"]] = batch
        return self._json(self._openai_object(batch))

    def _openai_advance(self, batch: dict) -> None:
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return
        batch["polls"] += 1
        now = _now()
        if batch["status"] == "cancelling":
            self._openai_finish(batch, "cancelled", len(batch["lines"]) // 2)
            return
        if batch["status"] == "validating":
            if batch["validation_errors"]:
                batch.update(status="failed", errors={"object": "list", "data": batch["validation_errors"]})
                batch["times"]["failed_at"] = now
                return
            batch["status"] = "in_progress"
            batch["times"]["in_progress_at"] = now
        if batch["polls"] >= self.polls_to_finish:
            if batch["fate"] == "expire":
                self._openai_finish(batch, "expired", self.expire_after)
            else:
                self._openai_finish(batch, "completed", len(batch["lines"]))
        else:
            batch["done"] = len(batch["lines"]) * batch["polls"] // (self.polls_to_finish + 1)

    def _openai_finish(self, batch: dict, status: str, answered: int) -> None:
        out, err = [], []
        for n, line in enumerate(batch["lines"]):
            cid = line["custom_id"]
            if n >= answered:
                if status == "expired":
                    err.append({"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": cid, "response": None,
                                "error": {"code": "batch_expired", "message": "This request could not be "
                                          "executed before the completion window expired."}})
                continue  # cancelled: no line
            o = self.outcome(cid, line.get("body") or {})
            if o.kind == "missing":
                continue
            record = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": cid, "error": None}
            if o.kind == "error":
                record["response"] = {"status_code": o.status, "request_id": uuid.uuid4().hex,
                                      "body": {"error": {"message": o.message, "type": "invalid_request_error",
                                                         "param": None, "code": None}}}
                err.append(record)
                continue
            if o.kind == "expired":
                record.update(response=None, error={"code": "batch_expired", "message": "This request could "
                                                    "not be executed before the completion window expired."})
                err.append(record)
                continue
            text = o.content if isinstance(o.content, str) else json.dumps(o.content)
            if o.kind == "cut_off":
                text = text[: max(1, len(text) // 2)]
            message = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
            if o.kind == "refusal":
                message.update(content=None, refusal=o.content or "I can't help with that.")
            record["response"] = {"status_code": 200, "request_id": uuid.uuid4().hex, "body": {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": _now(),
                "model": (line.get("body") or {}).get("model"), "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "length" if o.kind == "cut_off" else "stop"}],
                "usage": {"prompt_tokens": o.input_tokens, "completion_tokens": o.output_tokens,
                          "total_tokens": o.input_tokens + o.output_tokens},
                "service_tier": "default"}}
            out.append(record)
            if o.kind == "duplicate":
                out.append(dict(record, id=f"batch_req_{uuid.uuid4().hex[:24]}"))
        self.random.shuffle(out)
        self.random.shuffle(err)
        if out:
            batch["output_file_id"] = self._add_file(b"".join(json.dumps(r).encode() + b"\n" for r in out),
                                                     "batch_output", "batch_output.jsonl")["id"]
        if err:
            batch["error_file_id"] = self._add_file(b"".join(json.dumps(r).encode() + b"\n" for r in err),
                                                    "batch_output", "batch_error.jsonl")["id"]
        batch["done"] = len(out)
        batch["failed"] = len(err)
        batch["status"] = status
        batch["times"][{"completed": "completed_at", "expired": "expired_at",
                        "cancelled": "cancelled_at"}[status]] = _now()
        if status == "completed":
            batch["times"]["finalizing_at"] = _now()

    def _openai_cancel(self, batch: dict):
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return self._error(409, f"Cannot cancel a batch with status '{batch['status']}'.", False)
        batch["status"] = "cancelling"
        batch["times"]["cancelling_at"] = _now()
        return self._json(self._openai_object(batch))

    def _openai_object(self, batch: dict) -> dict:
        created = batch["created_at"]
        total = len(batch["lines"]) if batch["status"] != "validating" else 0
        obj = {
            "id": batch["id"], "object": "batch", "endpoint": "/v1/chat/completions", "model": batch["model"],
            "errors": batch["errors"], "input_file_id": batch["input_file_id"], "completion_window": "24h",
            "status": batch["status"], "output_file_id": batch["output_file_id"],
            "error_file_id": batch["error_file_id"], "created_at": created, "expires_at": created + 86400,
            "in_progress_at": None, "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": total, "completed": batch["done"], "failed": batch["failed"]},
            "metadata": batch["metadata"],
        }
        obj.update(batch["times"])
        return obj

    # ------------------------------------------------------------ Anthropic
    def _anthropic_create(self, body: bytes, headers: dict):
        if len(body) > ANTHROPIC_MAX_BYTES:
            return self._error(413, "Request exceeds the maximum allowed number of bytes.", True)
        requests = json.loads(body or b"{}").get("requests") or []
        if len(requests) > ANTHROPIC_MAX_REQUESTS:
            return self._error(400, f"requests: at most {ANTHROPIC_MAX_REQUESTS} requests per batch.", True)
        seen = set()
        for n, r in enumerate(requests):
            cid = r.get("custom_id")
            if not isinstance(cid, str) or not _CUSTOM_ID.match(cid):
                return self._error(400, f"requests.{n}.custom_id: String should match pattern "
                                        "'^[a-zA-Z0-9_-]{1,64}$'", True)
            if cid in seen:
                return self._error(400, f"Duplicate custom_id {cid}: custom_id must be unique.", True)
            seen.add(cid)
            params = r.get("params") or {}
            if not params.get("model") or not params.get("max_tokens") or not params.get("messages"):
                return self._error(400, f"requests.{n}.params: model, max_tokens and messages are required", True)
        now = time.time()
        batch = {"id": f"msgbatch_{uuid.uuid4().hex[:24]}", "created_at": now, "status": "in_progress",
                 "polls": 0, "fate": self.next_batch_fate, "requests": requests, "results": [],
                 "ended_at": None, "cancel_initiated_at": None}
        self.next_batch_fate = None
        self.anthropic[batch["id"]] = batch
        return self._json(self._anthropic_object(batch, headers))

    def _anthropic_list(self, query: str, headers: dict):
        """Most recent first, ``limit`` 1-1000 (default 20), ``after_id`` pages to older batches."""
        from urllib.parse import parse_qs

        params = {k: v[0] for k, v in parse_qs(query).items()}
        limit = int(params.get("limit", 20))
        if not 1 <= limit <= 1000:
            return self._error(400, "limit: Input should be between 1 and 1000", True)
        ids = list(reversed(self.anthropic))
        if params.get("after_id") in self.anthropic:
            ids = ids[ids.index(params["after_id"]) + 1:]
        elif params.get("before_id") in self.anthropic:
            ids = ids[:ids.index(params["before_id"])][-limit:]
        page = [self._anthropic_object(self.anthropic[i], headers) for i in ids[:limit]]
        return self._json({"data": page, "has_more": len(ids) > limit,
                           "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None})

    def _anthropic_advance(self, batch: dict) -> None:
        if batch["status"] == "ended":
            return
        batch["polls"] += 1
        if batch["status"] == "canceling":
            self._anthropic_finish(batch, answered=len(batch["requests"]) // 2, rest="canceled")
        elif batch["polls"] >= self.polls_to_finish:
            if batch["fate"] == "expire":
                self._anthropic_finish(batch, answered=self.expire_after, rest="expired")
            else:
                self._anthropic_finish(batch, answered=len(batch["requests"]), rest="expired")

    def _anthropic_finish(self, batch: dict, *, answered: int, rest: str) -> None:
        results = []
        for n, r in enumerate(batch["requests"]):
            cid, params = r["custom_id"], r["params"]
            if n >= answered:
                results.append({"custom_id": cid, "result": {"type": rest}})
                continue
            o = self.outcome(cid, params)
            if o.kind == "missing":
                continue
            if o.kind == "error":
                results.append({"custom_id": cid, "result": {"type": "errored", "error": {
                    "type": "error", "error": {"type": "invalid_request_error", "message": o.message},
                    "request_id": f"req_{uuid.uuid4().hex[:20]}"}}})
                continue
            if o.kind == "expired":
                results.append({"custom_id": cid, "result": {"type": "expired"}})
                continue
            results.append({"custom_id": cid, "result": {"type": "succeeded",
                                                         "message": self._anthropic_message(params, o)}})
            if o.kind == "duplicate":
                results.append(results[-1])
        self.random.shuffle(results)
        batch.update(status="ended", results=results, ended_at=time.time())

    @staticmethod
    def _anthropic_message(params: dict, o: Outcome) -> dict:
        forced = (params.get("tool_choice") or {}).get("name")
        stop = "end_turn"
        if o.kind == "refusal":
            content = [{"type": "text", "text": o.content or "I can't help with that."}]
            stop = "refusal"
        elif o.kind == "prose" or isinstance(o.content, str):
            content = [{"type": "text", "text": o.content if isinstance(o.content, str) else str(o.content)}]
        elif forced:
            content = [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": forced,
                        "input": o.content}]
            stop = "tool_use"
        else:
            content = [{"type": "text", "text": json.dumps(o.content)}]
        if o.kind == "cut_off":
            text = json.dumps(o.content)
            content = [{"type": "text", "text": text[: max(1, len(text) // 2)]}]
            stop = "max_tokens"
        return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                "model": params.get("model"), "content": content, "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": o.input_tokens, "output_tokens": o.output_tokens,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}

    def _anthropic_cancel(self, batch: dict, headers: dict):
        if batch["status"] == "in_progress":
            batch["status"] = "canceling"
            batch["cancel_initiated_at"] = time.time()
        return self._json(self._anthropic_object(batch, headers))

    def _anthropic_object(self, batch: dict, headers: dict) -> dict:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if batch["status"] == "ended":
            for r in batch["results"]:
                counts[r["result"]["type"]] += 1
        else:
            counts["processing"] = len(batch["requests"])
        origin = f"http://{headers.get('host', 'api.anthropic.com')}"
        ended = batch["status"] == "ended"
        return {
            "id": batch["id"], "type": "message_batch", "processing_status": batch["status"],
            "request_counts": counts, "ended_at": _iso(batch["ended_at"]) if ended else None,
            "created_at": _iso(batch["created_at"]), "expires_at": _iso(batch["created_at"] + 86400),
            "archived_at": None,
            "cancel_initiated_at": _iso(batch["cancel_initiated_at"]) if batch["cancel_initiated_at"] else None,
            "results_url": f"{origin}/v1/messages/batches/{batch['id']}/results" if ended else None,
        }


class _HTTPHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeBatchAPI

    def log_message(self, format, *args):  # quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out_headers, payload = self.fake.handle(self.command, self.path, headers, body)
        truncate = out_headers.pop("x-fake-truncate", None)
        self.send_response(status)
        for name, value in out_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if truncate:  # half the body, then the connection drops
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _serve
