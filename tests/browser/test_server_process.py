"""The browser session's server keeps answering however much it writes (the stall of
docs/reliability.md, "A server stall after OCR + insert"), and an error page writes no
traceback with local variables (Datasette prints one per 404/403 when ``rich`` can be
imported, and this suite's dependencies install rich).

The server is started exactly as the browser session starts it (``conftest._start``), on
empty databases: no Chromium needed, a few seconds per server.
"""

from __future__ import annotations

import sqlite3
import time
import urllib.error
import urllib.request

import pytest

from .conftest import DATABASES, _start, _stop, write_metadata

pytestmark = pytest.mark.browser

#: A signed-out reader asks for a run's page image: the request the stalled session left unanswered.
PAGE_IMAGE = "/-/llm-extract/runs/{run:016x}/documents/0/pages/0"
#: No route matches it (run ids are 16 hex digits): Datasette's own 404 path.
NO_ROUTE = "/-/llm-extract/runs/not-a-run/documents/0/pages/0"


def _status(url: str, timeout: float = 10.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("server-process")
    for name in DATABASES:
        sqlite3.connect(path / f"{name}.db").close()
    return path


def _serve(workdir, name: str):
    return _start(workdir, write_metadata(workdir, name, []), name)


def test_server_keeps_answering_after_many_verbose_error_pages(workdir, monkeypatch):
    """With Datasette's rich tracebacks switched back on (about 20 KB of output per 404),
    12 error pages write far more than an operating-system pipe holds (64 KB): the old
    harness's server stopped answering at the 7th. The server must answer every one, and
    then a plain request, each within 10 seconds."""
    monkeypatch.setenv("DATASETTE_LLM_RICH_TRACEBACKS", "1")
    server = _serve(workdir, "verbose")
    try:
        started = time.monotonic()
        for n in range(12):
            url = server.url(NO_ROUTE if n % 2 else PAGE_IMAGE.format(run=n))
            try:
                status = _status(url)
            except OSError as e:  # the stall: nothing answers any more
                pytest.fail(f"request {n + 1} of 12 ({url}) got no answer: {e!r}")
            assert status in (404, 500), (n, url, status)
        assert _status(server.url("/-/versions.json")) == 200
        assert time.monotonic() - started < 60
        written = server.log_path.stat().st_size
        assert written > 64 * 1024, f"only {written} bytes written: the test no longer fills a pipe"
    finally:
        _stop(server)


def test_error_pages_write_no_traceback_and_a_missing_page_is_a_404(workdir):
    server = _serve(workdir, "quiet")
    try:
        before = server.log_path.stat().st_size
        for n in range(5):
            assert _status(server.url(PAGE_IMAGE.format(run=n))) == 404
        # Datasette's own 404 (no route): rich's traceback of an exception that was never
        # raised failed and turned it into a 500
        assert _status(server.url(NO_ROUTE)) == 404
        assert _status(server.url("/-/versions.json")) == 200
        time.sleep(0.3)  # the access log line of the last request
        log = server.log()
        written = len(log.encode()) - before
        assert "Traceback" not in log and "locals" not in log, log[-3000:]
        assert written < 6 * 300, f"{written} bytes of output for 7 requests"
        assert " 404 " in log  # the access log is still there
    finally:
        _stop(server)
