"""Issue 10 items 5, 6, 12 and 13: what a request body can cost the server.

Against one real ``datasette serve`` process:

- item 5: large anonymous bodies (JSON, multipart, on the API, the estimate,
  the start page and ``ask.json``) are refused before they are read: the
  server's memory does not grow by their size, and a 20 MB form in 20,000
  parts does not stall other requests. A signed-in extractor's oversized or
  over-parted bodies end in a 413 that names the limit;
- item 6: a 46 KB PDF whose 20 pages each decompress to 750 KB of text
  operators (minutes of pypdf time) is refused at the configured time budget
  while other requests are served at once; the decompressed-size budget
  refuses it without interpreting a page;
- item 12: a private database's existing and missing tables get the same
  answer from ``api/runs`` and ``into/``;
- item 13: a lone surrogate in a JSON body is a 400 that says so.
"""

from __future__ import annotations

import base64
import io
import json
import selectors
import socket
import threading
import time
import zlib

import pytest

from datasette_llm_extract.documents import InputError, pdf_text

from ..fake_openai_server import FakeOpenAIServer
from .sec_http_server import extraction_reply, start_world

MB = 1024 * 1024
BIG = 40 * MB  # an attacker's body: large enough to see in RSS, small enough to stay fast
EXTRACT = {"max_json_bytes": 8 * MB, "max_upload_bytes": 4 * MB, "pdf_timeout": 3,
           "pdf_max_decompressed_bytes": 32 * MB}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sec-http-bodies")
    with FakeOpenAIServer(handler=extraction_reply) as fake:
        server = start_world(tmp_path, fake.base_url, EXTRACT)
        try:
            yield server
        finally:
            server.stop()


# ----------------------------------------------------------------- helpers

def send_streamed(server, path: str, content_type: str, size: int, *, cookie: str = "",
                  declared: bool = True, chunk: bytes = b"x", wait_before_body: float = 2.0):
    """POST a ``size``-byte body over a raw socket, the way an attacker would.

    With ``declared`` the headers carry Content-Length and the body is only
    sent if no answer came within ``wait_before_body`` seconds (a server that
    refuses on the headers never gets it); otherwise the body is chunked.
    Returns ``(status, body text, body_sent)``.
    """
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", f"Content-Type: {content_type}"]
    if cookie:
        head.append(f"Cookie: {cookie}")
    head.append(f"Content-Length: {size}" if declared else "Transfer-Encoding: chunked")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    piece = (chunk * (65536 // len(chunk) + 1))[:65536]
    sent = {"body": False}

    def pump():
        try:
            left = size
            sent["body"] = True
            while left > 0:
                n = min(left, len(piece))
                data = piece[:n]
                sock.sendall(data if declared else f"{n:x}\r\n".encode() + data + b"\r\n")
                left -= n
            if not declared:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed: the rest was never wanted

    with selectors.DefaultSelector() as selector:  # (select() fails on descriptors over 1023)
        selector.register(sock, selectors.EVENT_READ)
        ready = selector.select(wait_before_body if declared else 0)
    sender = None
    if not ready:
        sender = threading.Thread(target=pump, daemon=True)
        sender.start()
    import http.client

    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        status = response.status
        text = response.read().decode("utf-8", "replace")
    finally:
        sock.close()
        if sender is not None:
            sender.join(timeout=30)
    return status, text, sent["body"]


def many_parts(parts: int, total: int, boundary: str = "xyzzy") -> bytes:
    each = max(1, total // parts)
    one = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n".encode()
           + b"a" * each + b"\r\n")
    return one * parts + f"--{boundary}--\r\n".encode()


class Latency:
    """Times a cheap page over and over in a thread while something else runs."""

    def __init__(self, server, path="/-/versions.json"):
        self.server, self.path = server, path
        self.times: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                r = self.server.request("GET", self.path, timeout=10)
                if r.status != 200:
                    self.errors.append(str(r))
            except OSError as e:
                self.errors.append(repr(e))
            self.times.append(time.monotonic() - started)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=15)

    @property
    def worst(self) -> float:
        return max(self.times) if self.times else float("inf")


def hostile_pdf(pages: int = 20, ops_per_page: int = 30_000) -> bytes:
    """A small PDF whose pages each decompress to ``ops_per_page`` text operators."""
    content = b"BT /F1 12 Tf 72 712 Td " + b"(Hello world) Tj 0 -1 Td " * ops_per_page + b"ET"
    stream = zlib.compress(content, 9)
    font = 3 + 2 * pages
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{' '.join(f'{3 + 2 * i} 0 R' for i in range(pages))}] "
               f"/Count {pages} >>".encode()]
    for i in range(pages):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 {font} "
                       f"0 R >> >> /Contents {4 + 2 * i} 0 R >>".encode())
        objects.append(f"<< /Length {len(stream)} /Filter /FlateDecode >>\nstream\n".encode()
                       + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    out.write(b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets))
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


# ----------------------------------------------------------------- item 5

ANONYMOUS_BODIES = [
    ("/-/llm-extract/api/runs", "application/json", ""),
    ("/-/llm-extract/estimate", "application/json", ""),
    ("/-/llm-extract/estimate", "multipart/form-data; boundary=xyzzy", ""),
    ("/-/llm-extract/new/news", "multipart/form-data; boundary=xyzzy", ""),
    # a cookie (any cookie) made 0.65's CSRF layer read urlencoded bodies whole
    ("/-/llm-rag/news/ask.json", "application/x-www-form-urlencoded", "ds_csrftoken=x"),
    ("/-/llm-rag/news/ask.json", "application/json", "ds_csrftoken=x"),
]


def test_large_anonymous_bodies_are_refused_before_they_are_read(world):
    before = world.rss_mb()
    for path, content_type, cookie in ANONYMOUS_BODIES:
        status, text, body_sent = send_streamed(world, path, content_type, BIG, cookie=cookie)
        assert status in (403, 413, 415), (path, content_type, status, text[:300])
        assert not body_sent, f"{path} ({content_type}) waited for a {BIG // MB} MB anonymous body"
        if status == 413:
            assert "256 KB" in text, text  # the limit is in the message
    grown = world.rss_mb() - before
    print(f"\n{len(ANONYMOUS_BODIES)} anonymous {BIG // MB} MB bodies refused; server RSS {before:.0f} -> "
          f"{before + grown:.0f} MB")
    assert grown < 20, f"server memory grew by {grown:.0f} MB for {len(ANONYMOUS_BODIES)} refused bodies"


def test_signed_in_bodies_over_their_cap_get_413_with_the_limit(world):
    token = world.csrf_token("alice")
    cookie = world.cookie("alice", token or None)
    before = world.rss_mb()
    # declared too large: refused on the headers
    status, text, body_sent = send_streamed(world, "/-/llm-extract/api/runs", "application/json", BIG,
                                            cookie=cookie)
    assert (status, body_sent) == (413, False), text
    assert "8 MB" in json.loads(text)["error"]
    # not declared (chunked): refused once the cap is passed, the rest never read
    status, text, _ = send_streamed(world, "/-/llm-extract/api/runs", "application/json", BIG,
                                    cookie=cookie, declared=False)
    assert status == 413 and "8 MB" in text, (status, text[:300])
    # a multipart file over the per-file limit: streamed to disk, stopped at the limit
    boundary = "xyzzy"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"csrftoken\"\r\n\r\n{token}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.txt\"\r\n"
            "Content-Type: text/plain\r\n\r\n").encode()
    r = world.request("POST", "/-/llm-extract/estimate", head + b"a" * (6 * MB) + f"\r\n--{boundary}--\r\n".encode(),
                      actor="alice", csrf=token or None, content_type=f"multipart/form-data; boundary={boundary}")
    assert r.status == 413, r
    assert "4 MB" in r.json()["error"] and "big.txt" in r.json()["error"]
    grown = world.rss_mb() - before
    print(f"\nsigned-in bodies over their caps refused; server RSS {before:.0f} -> {before + grown:.0f} MB")
    assert grown < 30, f"server memory grew by {grown:.0f} MB"


def test_a_form_in_20000_parts_stalls_nobody(world):
    body = many_parts(20_000, 20 * MB)
    with Latency(world) as latency:
        r = world.request("POST", "/-/llm-extract/new/news", body,
                          content_type="multipart/form-data; boundary=xyzzy", timeout=60)
        assert r.status == 403, r  # anonymous: refused before reading
        token = world.csrf_token("alice")
        parts = many_parts(25_000, 1 * MB).replace(
            b"--xyzzy\r\n", f"--xyzzy\r\nContent-Disposition: form-data; name=\"csrftoken\"\r\n\r\n{token}\r\n"
            "--xyzzy\r\n".encode(), 1)
        r = world.request("POST", "/-/llm-extract/estimate", parts, actor="alice", csrf=token or None,
                          content_type="multipart/form-data; boundary=xyzzy", timeout=60)
        assert r.status == 413, r
        assert "20,000 parts" in r.json()["error"]
        time.sleep(0.3)
    assert not latency.errors, latency.errors
    print(f"\n20,000- and 25,000-part forms: slowest other request {latency.worst * 1000:.0f} ms")
    assert latency.worst < 1.5, f"a page took {latency.worst:.1f}s while the forms were posted"


# ----------------------------------------------------------------- item 6

def test_hostile_pdf_is_refused_at_its_time_budget_without_blocking_others(world):
    pdf = hostile_pdf()
    assert len(pdf) < 60_000
    body = {"database": "news", "table": "target", "columns": ["name", "amount"],
            "files": [{"name": "slow.pdf", "content_type": "application/pdf",
                       "data_base64": base64.b64encode(pdf).decode()}]}
    with Latency(world) as latency:
        r = world.request("POST", "/-/llm-extract/estimate", body, actor="alice", timeout=60)
    assert r.status == 400, r
    message = r.json()["error"]
    assert "slow.pdf" in message and "3 seconds" in message and "limit" in message, message
    assert r.elapsed < 15, r.elapsed
    print(f"\nhostile PDF refused after {r.elapsed:.1f}s; slowest other request meanwhile "
          f"{latency.worst * 1000:.0f} ms ({len(latency.times)} requests)")
    assert not latency.errors, latency.errors
    assert len(latency.times) >= 5 and latency.worst < 1.0, (
        f"other requests waited up to {latency.worst:.1f}s while the PDF was parsed")


def test_pdf_decompressed_size_budget():
    pdf = hostile_pdf()  # 20 pages x 750 KB of page content
    started = time.monotonic()
    with pytest.raises(InputError) as e:
        pdf_text(pdf, name="big.pdf", timeout=60, max_decompressed=4 * MB)
    assert time.monotonic() - started < 10  # refused before interpreting pages
    assert "big.pdf" in str(e.value) and "4 MB" in str(e.value) and "limit" in str(e.value)


# ----------------------------------------------------------------- item 12

def _same_answer(a, b, name_a: str, name_b: str) -> bool:
    """Same status and body, but for the table's name and the page's (per-visit) form token."""
    import re

    def norm(r, name):
        return re.sub(r'name="csrftoken" value="[^"]*"', "", r.text.replace(name, "T"))

    return a.status == b.status and norm(a, name_a) == norm(b, name_b)


@pytest.mark.parametrize("actor", [None, "bob"])
def test_private_tables_have_no_existence_oracle(world, actor):
    for create in (False, True):
        answers = []
        for table in ("payroll", "no_such_table"):
            answers.append(world.request("POST", "/-/llm-extract/api/runs", {
                "database": "private", "table": table, "text": "Dana paid 1 dollars.", "create": create,
                "schema": {"columns": [{"name": "name"}]}}, actor=actor))
        assert answers[0].status == 403, answers[0]
        assert _same_answer(answers[0], answers[1], "payroll", "no_such_table"), answers
    pages = [world.request("GET", f"/-/llm-extract/into/private/{t}", actor=actor)
             for t in ("payroll", "no_such_table")]
    assert pages[0].status == 403, pages[0]
    assert _same_answer(pages[0], pages[1], "payroll", "no_such_table"), pages
    # nor for the private database itself against one that does not exist
    answers = [world.request("POST", "/-/llm-extract/api/runs", {
        "database": db, "table": "t", "text": "x", "create": True, "schema": {"columns": [{"name": "a"}]}},
        actor=actor) for db in ("private", "no_such_db")]
    assert _same_answer(answers[0], answers[1], "private", "no_such_db"), answers
    pages = [world.request("GET", f"/-/llm-extract/new/{db}", actor=actor) for db in ("private", "no_such_db")]
    assert pages[0].status == 403 and _same_answer(pages[0], pages[1], "private", "no_such_db"), pages


# ----------------------------------------------------------------- item 13

def test_lone_surrogate_in_json_is_a_clear_400(world):
    run_body = '{"database": "news", "table": "target", "columns": ["name"], "text": "Acme \\ud800 paid 3 dollars."}'
    ask_body = '{"q": "road \\ud800 budgets"}'
    feedback_body = '{"answer_id": "\\udfff", "rating": "up"}'
    for path, body in (("/-/llm-extract/api/runs", run_body), ("/-/llm-rag/news/ask.json", ask_body),
                       ("/-/llm-rag/feedback.json", feedback_body)):
        r = world.request("POST", path, body, actor="alice", content_type="application/json")
        assert r.status == 400, (path, r)
        assert "surrogate" in r.json()["error"], r
    # a real pair (an emoji written as two escapes) is text, and fine
    r = world.request("POST", "/-/llm-rag/news/ask.json", '{"q": "road budgets \\ud83d\\ude00"}', actor="alice",
                      content_type="application/json")
    assert r.status == 200, r
