"""Enrich existing rows against a real ``datasette serve`` process and a scripted
OpenAI-compatible server: sample, review, the rest written directly, undo, a filter,
and a kill -9 in the middle of a job (the restarted server resumes it: no row
answered twice, none lost)."""

from __future__ import annotations

import signal
import sqlite3
import time

import pytest

from .enrich_helpers import COLUMNS, EnrichServer, answer, complaint_ids, make_db, table_rows
from .fake_openai_server import FakeOpenAIServer

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("enrich")
    db = tmp_path / "news.db"
    make_db(db, rows=30)
    with FakeOpenAIServer(handler=answer, token_delay=0.0) as fake:
        server = EnrichServer(tmp_path, db, fake.base_url)
        server.start()
        try:
            yield server, fake, db, tmp_path
        finally:
            server.stop()


def start_job(server, **extra) -> str:
    body = {"database": "news", "table": "complaints", "source_columns": ["narrative"], "columns": COLUMNS,
            "instructions": "The fine is in dollars.", **extra}
    status, data = server.request("POST", "/-/llm-extract/enrich/api/jobs", body)
    assert status == 201, data
    return data["id"]


def test_sample_review_then_rest_written_then_undo(world):
    server, fake, db, _ = world
    fake.requests.clear()
    job_id = start_job(server, filter={"borough": "Bronx"}, sample_size=3, write_mode="review")
    job = server.wait_job(job_id, lambda j: j["status"] not in ("pending", "running"))
    assert job["status"] == "review" and job["phase"] == "sample", job
    assert job["rows_total"] == 10  # the filter: every third row is in the Bronx
    assert job["rows_done"] == 3 and job["cost"] > 0
    # nothing is written before review: the table has no new column yet
    assert "fine" not in [r[1] for r in table_rows(db, "pragma table_info(complaints)")]
    asked = {i for r in fake.chat_requests() for i in complaint_ids(r)}
    assert asked <= {i for i in range(1, 31) if i % 3 == 0}  # only Bronx rows were read
    status, data = server.request("GET", f"/-/llm-extract/enrich/jobs/{job_id}.json?_items=1")
    items = [i for i in data["items"] if i["status"] == "done"]
    assert len(items) == 3
    for item in items:
        assert item["valid"] and item["quote_found"], item
        assert item["values"]["fine"] in (100 + item["row_id"], 200)
    reasked = [i for i in items if i["row_id"] % 7 == 3]
    assert all(i["values"]["fine"] == 200 for i in reasked)  # corrected by the re-ask

    # accept two, correct one, write them
    first, second, third = (i["row_id"] for i in items)
    status, data = server.request("POST", f"/-/llm-extract/enrich/jobs/{job_id}/write", {"decisions": {
        str(first): {"decision": "accepted"}, str(second): {"decision": "rejected"},
        str(third): {"decision": "accepted", "values": {"reported": "2024-01-02", "fine": "17"}}}})
    assert status == 200 and data["written"] == 2, data
    rows = dict((r[0], r[1:]) for r in table_rows(db, "select id, reported, fine from complaints"))
    assert rows[third] == ("2024-01-02", 17.0)
    assert rows[second] == (None, None)
    assert rows[first][1] is not None

    # a corrected value that is not valid is refused, nothing saved
    status, data = server.request("POST", f"/-/llm-extract/enrich/jobs/{job_id}/write", {"decisions": {
        str(second): {"decision": "accepted", "values": {"reported": "not a date", "fine": "x"}}}})
    assert status == 400 and "nothing was saved" in data["error"], data

    status, data = server.request("POST", f"/-/llm-extract/enrich/jobs/{job_id}/rest", {"write_mode": "direct"})
    assert status == 200, data
    job = server.wait_job(job_id, lambda j: j["status"] not in ("pending", "running", "paused"))
    assert job["status"] == "done", job
    assert job["rows_done"] == 10
    written = table_rows(db, "select id, fine from complaints where fine is not null order by id")
    # every Bronx row but the rejected one; no other borough touched
    assert [r[0] for r in written] == [i for i in range(3, 31, 3) if i != second]
    sent = [i for r in fake.chat_requests() for i in complaint_ids(r)]
    assert len([i for i in sent if i % 7 != 3]) == len({i for i in sent if i % 7 != 3})  # none asked twice

    # someone edits one cell by hand; undo restores the others and leaves that one
    conn = sqlite3.connect(db)
    conn.execute("update complaints set fine = 999 where id = ?", [first])
    conn.commit()
    conn.close()
    status, data = server.request("POST", f"/-/llm-extract/enrich/jobs/{job_id}/undo", {})
    assert status == 200, data
    assert "1 changed since" in data["message"]
    left = table_rows(db, "select id, fine from complaints where fine is not null")
    assert left == [(first, 999.0)]
    status, job = server.request("GET", f"/-/llm-extract/enrich/jobs/{job_id}.json")
    assert job["status"] == "undone"


def test_bad_requests_write_nothing(world):
    server, fake, db, tmp_path = world
    cases = [
        ({"source_columns": ["nope"]}, "no column"),
        ({"columns": [{"name": "borough"}]}, "already has column"),
        ({"filter": {"missing__gt": "3"}}, "does not have"),
        ({"filter": {"borough": "Nowhere"}}, "No rows match"),
        ({"model": "unknown"}, "Unknown chat model"),
        ({"where": "id >"}, "could not be selected"),
    ]
    state = sqlite3.connect(tmp_path / "state.db")
    before = state.execute("select count(*) from llm_enrich_jobs").fetchone()[0]
    for extra, message in cases:
        body = {"database": "news", "table": "complaints", "source_columns": ["narrative"], "columns": COLUMNS,
                **extra}
        status, data = server.request("POST", "/-/llm-extract/enrich/api/jobs", body)
        assert status in (400, 404), (extra, data)
        assert message in data["error"], (extra, data)
    assert state.execute("select count(*) from llm_enrich_jobs").fetchone()[0] == before
    state.close()


def test_kill_9_mid_job_then_restart_resumes_without_repeats_or_losses(world):
    server, fake, db, tmp_path = world
    fake.requests.clear()
    fake.ttft = 0.4  # two answers at a time, 0.4 s each: the kill lands mid-job
    job_id = start_job(server, filter={"borough": "Queens"}, sample_size=0, write_mode="direct")
    job = server.wait_job(job_id, lambda j: j["rows_done"] >= 3)
    server.kill()
    killed_at = time.time()
    state = sqlite3.connect(tmp_path / "state.db")
    answered = {r[0] for r in state.execute(
        "select row_id from llm_enrich_items where job_id = ? and status != 'pending'", [job_id])}
    state.close()
    assert len(answered) < 10, "the job finished before the kill"
    sent_before = len(fake.chat_requests())
    fake.ttft = 0.0
    server.start()  # nobody asks: the restarted server takes the job over once the lease lapses
    job = server.wait_job(job_id, lambda j: j["status"] == "done", timeout=60)
    assert job["rows_total"] == 10 and job["rows_done"] == 10 and job["rows_failed"] == 0, job
    after = [i for r in fake.chat_requests()[sent_before:] for i in complaint_ids(r)
             if "failed validation" not in str(r)]
    assert not answered & set(after), "rows answered before the kill were sent again"
    assert len(after) == len(set(after))
    # every selected row written exactly once, with its own values
    rows = table_rows(db, "select id, fine from complaints where borough = 'Queens' order by id")
    assert all(fine is not None for _, fine in rows), rows
    assert all(fine in (100 + i, 200) for i, fine in rows)
    state = sqlite3.connect(tmp_path / "state.db")
    counts = state.execute("select count(*), sum(written) from llm_enrich_items where job_id = ?", [job_id]).fetchone()
    state.close()
    assert counts == (10, 10)
    assert time.time() - killed_at < 60
