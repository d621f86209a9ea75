"""Enrichment job controls against a real ``datasette serve``: pause and resume, cancel,
the per-job budget, the row limit, one-to-many into a linked table (and its undo),
and who may see a job (its owner and root, nobody else)."""

from __future__ import annotations

import json
import re
import signal
import urllib.error
import urllib.request

import pytest
from itsdangerous import URLSafeSerializer

from datasette_llm_core import permissions as P

from .enrich_helpers import COLUMNS, EnrichServer, answer, make_db, table_rows
from .fake_openai_server import FakeOpenAIServer, Reply, last_user_text
from .test_crash_recovery import SECRET

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # enough for the suite's sniffing; the fake model never decodes it


def respond(request: dict) -> Reply:
    content = request["messages"][-1]["content"]
    if isinstance(content, list) and any(p.get("type") == "image_url" for p in content):
        return Reply(content=json.dumps({"rows": [{"reported": "2024-05-01", "fine": 50,
                                                   "source_quote": "FINE: $50"}]}))
    text = last_user_text(request)
    if "several records" in text:  # the linked-table prompt: one record per fine mentioned
        fines = re.findall(r"fine of (\d+) dollars", text) or []
        return Reply(content=json.dumps({"rows": [
            {"amount": int(f), "source_quote": f"fine of {f} dollars"} for f in fines]}))
    return answer(request)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("enrich-controls")
    db = tmp_path / "news.db"
    make_db(db, rows=30)
    with FakeOpenAIServer(handler=respond) as fake:
        server = EnrichServer(tmp_path, db, fake.base_url, concurrency=1)
        config = json.loads(server.config.read_text())
        config["plugins"]["datasette-llm-newsroom"]["permissions"] = {"llm-extract": {"id": ["maria", "sam"]}}
        config["plugins"]["datasette-llm-newsroom"]["models"].append(
            {**config["plugins"]["datasette-llm-newsroom"]["models"][0], "id": "vision",
             "supports": ["streaming", "schema", "images"]})
        if P.IS_V1:  # 1.0: Datasette's own write permission for changing rows
            config["permissions"] = {"update-row": {"id": ["maria", "sam", "root"]}}
        server.config.write_text(json.dumps(config))
        server.start()
        try:
            yield server, fake, db
        finally:
            server.stop()


def as_actor(server, actor_id: str, method: str, path: str, body=None):
    cookie = "ds_actor=" + URLSafeSerializer(SECRET, "actor").dumps({"a": {"id": actor_id}})
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=data, method=method,
                                 headers={"cookie": cookie, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def start(server, **extra) -> str:
    body = {"database": "news", "table": "complaints", "source_columns": ["narrative"], "columns": COLUMNS,
            "sample_size": 0, "write_mode": "direct", **extra}
    status, data = server.request("POST", "/-/llm-extract/enrich/api/jobs", body)
    assert status == 201, data
    return data["id"]


def test_pause_resume_and_cancel(world):
    server, fake, db = world
    fake.ttft = 0.3  # one answer at a time (concurrency 1): about 3 s for the 10 rows
    job_id = start(server, filter={"borough": "Queens"})
    job = server.wait_job(job_id, lambda j: j["rows_done"] >= 1)
    assert job["status"] == "running" and 0 < job["time_left_seconds"] < 60, job  # about 0.3 s a row
    status, data = server.request("POST", f"/-/llm-extract/enrich/jobs/{job_id}/pause", {})
    assert status == 200, data
    job = server.wait_job(job_id, lambda j: j["status"] == "paused")
    assert 1 <= job["rows_done"] < 10
    done_at_pause = job["rows_done"]
    status, data = server.request("POST", f"/-/llm-extract/enrich/jobs/{job_id}/pause", {})
    assert status == 409 and "not running" in data["error"]
    status, data = server.request("POST", f"/-/llm-extract/enrich/jobs/{job_id}/resume", {})
    assert status == 200, data
    server.wait_job(job_id, lambda j: j["rows_done"] > done_at_pause)
    status, data = server.request("POST", f"/-/llm-extract/enrich/jobs/{job_id}/cancel", {})
    assert status == 200, data
    job = server.wait_job(job_id, lambda j: j["status"] == "cancelled")
    assert job["rows_done"] < 10
    fake.ttft = 0.0
    # what was answered before the cancel is kept (and written: this job writes directly)
    written = table_rows(db, "select count(*) from complaints where fine is not null")[0][0]
    assert written == job["rows_written"] > 0


def test_budget_pauses_the_job_and_a_larger_one_lets_it_finish(world):
    server, fake, db = world
    # each call reserves its worst case (about $0.0025 with 1,024 output tokens) and costs about
    # $0.0005: a $0.003 budget runs out after a few rows
    job_id = start(server, filter={"borough": "Brooklyn"}, max_cost=0.003)
    job = server.wait_job(job_id, lambda j: j["status"] not in ("pending", "running"))
    assert job["status"] == "paused", job
    assert "budget" in job["error"] and job["rows_done"] < 10
    assert 0 < job["cost"] <= 0.003
    status, data = server.request("POST", f"/-/llm-extract/enrich/jobs/{job_id}/resume", {"max_cost": 1.0})
    assert status == 200, data
    job = server.wait_job(job_id, lambda j: j["status"] not in ("pending", "running"))
    assert job["status"] == "done" and job["rows_done"] == 10 and job["rows_failed"] == 0, job


def test_row_limit_and_one_to_many_into_a_linked_table_then_undo(world):
    server, fake, db = world
    job_id = start(server, row_limit=4, linked_table="complaint_fines",
                   columns=[{"name": "amount", "type": "number"}], instructions="Every fine mentioned.")
    job = server.wait_job(job_id, lambda j: j["status"] not in ("pending", "running"))
    assert job["status"] == "done" and job["rows_total"] == 4, job
    linked = table_rows(db, 'select "_llm_source_row", amount, "_llm_quote" from complaint_fines order by 1')
    # rows 1, 2 and 4 mention one fine each; row 3 ("two hundred") none
    assert [(r[0], r[1]) for r in linked] == [(1, 101.0), (2, 102.0), (4, 104.0)]
    assert linked[0][2] == "fine of 101 dollars"
    status, data = server.request("POST", f"/-/llm-extract/enrich/jobs/{job_id}/undo", {})
    assert status == 200 and "3 row(s) restored" in data["message"], data
    assert table_rows(db, "select count(*) from complaint_fines") == [(0,)]


def test_a_job_is_seen_by_its_owner_and_root_only(world):
    server, fake, db = world
    status, body = as_actor(server, "maria", "POST", "/-/llm-extract/enrich/api/jobs", {
        "database": "news", "table": "complaints", "source_columns": ["narrative"], "row_limit": 2,
        "columns": [{"name": "reported_m", "type": "date"}], "sample_size": 2})
    assert status == 201, body
    job_id = json.loads(body)["id"]
    for actor, expected in (("maria", 200), ("sam", 404), ("root", 200)):
        assert as_actor(server, actor, "GET", f"/-/llm-extract/enrich/jobs/{job_id}.json")[0] == expected, actor
        assert as_actor(server, actor, "GET", f"/-/llm-extract/enrich/jobs/{job_id}")[0] == expected, actor
    status, _ = as_actor(server, "sam", "POST", f"/-/llm-extract/enrich/jobs/{job_id}/cancel", {})
    assert status == 404
    status, _ = as_actor(server, "outsider", "POST", "/-/llm-extract/enrich/api/jobs", {
        "database": "news", "table": "complaints", "source_columns": ["narrative"], "columns": COLUMNS})
    assert status == 403


def test_images_stored_as_blobs_are_sent_to_a_model_that_reads_them(world):
    server, fake, db = world
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("create table if not exists tickets (id integer primary key, photo blob)")
    conn.executemany("insert or replace into tickets values (?, ?)", [(1, PNG), (2, PNG)])
    conn.commit()
    conn.close()
    body = {"database": "news", "table": "tickets", "source_columns": ["photo"], "columns": COLUMNS,
            "sample_size": 0, "write_mode": "direct"}
    status, data = server.request("POST", "/-/llm-extract/enrich/api/jobs", body)  # the default model: text only
    assert status == 400 and "cannot read images" in data["error"], data
    status, data = server.request("POST", "/-/llm-extract/enrich/api/jobs", {**body, "model": "vision"})
    assert status == 201, data
    job = server.wait_job(data["id"], lambda j: j["status"] not in ("pending", "running"))
    assert job["status"] == "done" and job["rows_written"] == 2, job
    assert table_rows(db, "select id, reported, fine from tickets") == [(1, "2024-05-01", 50.0),
                                                                       (2, "2024-05-01", 50.0)]
    status, data = server.request("GET", f"/-/llm-extract/enrich/jobs/{data['id']}.json?_items=1")
    assert all(i["quote_found"] is None for i in data["items"])  # no text to check an image's quote in
