"""With datasette-enrichments 0.5.1 installed (Datasette 0.65: it calls
``datasette.permission_allowed``, which 1.0 alphas removed), its "Enrich selected
data" page lists this suite's enrichment, and submitting its form with a table
filter starts the suite's own job: sample, review, quotes, undo.

The package is not installed in the test venv itself: its asgi_wrapper lists every
database's tables on a server's first request, concurrently with Datasette's own
schema refresh, which made unrelated in-process tests fail now and then with
"database table is locked: sqlite_master". ``make test`` puts it (and WTForms) in
``<venv>/enrichments-plugin`` and only this test's server process has it on its path."""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from datasette_llm_core import permissions as P

from .enrich_helpers import EnrichServer, answer, make_db
from .fake_openai_server import FakeOpenAIServer

PLUGIN_DIR = Path(os.environ.get("ENRICHMENTS_PLUGIN_DIR") or Path(sys.prefix) / "enrichments-plugin")
pytestmark = [
    pytest.mark.skipif(P.IS_V1, reason="datasette-enrichments 0.5.1 runs on Datasette 0.65 only"),
    pytest.mark.skipif(not (PLUGIN_DIR / "datasette_enrichments").exists(),
                       reason=f"datasette-enrichments not in {PLUGIN_DIR} (make test puts it there)"),
]


def test_enrichments_menu_starts_the_suites_job(tmp_path, monkeypatch):
    path = [p for p in (os.environ.get("PYTHONPATH") or "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([*path, str(PLUGIN_DIR)]))
    db = tmp_path / "news.db"
    make_db(db, rows=12)
    with FakeOpenAIServer(handler=answer) as fake:
        server = EnrichServer(tmp_path, db, fake.base_url)
        server.start()
        try:
            page = "/-/enrich/news/complaints?borough=Bronx"
            cookie, token = server.csrf(page)
            request = urllib.request.Request(f"http://127.0.0.1:{server.port}{page}", headers={"cookie": cookie})
            with urllib.request.urlopen(request, timeout=20) as response:
                html = response.read().decode()
            assert "Extract into new columns (LLM, with review)" in html

            form = urllib.parse.urlencode([
                ("csrftoken", token), ("source_columns", "narrative"),
                ("new_columns", "reported: date: date of the complaint\nfine: number: fine in dollars"),
                ("instructions", "The fine is in dollars."), ("sample_size", "2")])
            url = f"http://127.0.0.1:{server.port}/-/enrich/news/complaints/llm-newsroom-columns?borough=Bronx"
            request = urllib.request.Request(url, data=form.encode(), method="POST", headers={
                "cookie": cookie, "content-type": "application/x-www-form-urlencoded"})

            class NoRedirect(urllib.request.HTTPRedirectHandler):
                def redirect_request(self, *args, **kwargs):
                    return None

            try:
                urllib.request.build_opener(NoRedirect).open(request, timeout=20)
                raise AssertionError("expected a redirect")
            except urllib.error.HTTPError as e:
                assert e.code == 302, e.read()
                job_id = re.search(r"_enrichment_job=([0-9a-f]{16})", e.headers["location"]).group(1)
            job = server.wait_job(job_id, lambda j: j["status"] == "review")
            assert job["rows_total"] == 4 and job["rows_done"] == 2  # the filter's Bronx rows, sample of 2
            assert [c["name"] for c in job["columns"]] == ["reported", "fine"]
            request = urllib.request.Request(f"http://127.0.0.1:{server.port}/-/llm-extract",
                                             headers={"cookie": server.cookie})
            with urllib.request.urlopen(request, timeout=20) as response:
                assert f"/-/llm-extract/enrich/jobs/{job_id}" in response.read().decode()  # listed
        finally:
            server.stop()
