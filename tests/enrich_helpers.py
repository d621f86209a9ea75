"""Shared pieces of the enrichment tests: a complaints table, a scripted model that
answers like a real one (reads the row's own text, sometimes needs a re-ask), and
a ``datasette serve`` process configured for it."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time

from .fake_openai_server import FakeOpenAIServer, Reply, last_user_text
from .test_crash_recovery import Server

BOROUGHS = ["Bronx", "Queens", "Brooklyn"]


def narrative(i: int) -> str:
    if i % 7 == 3:  # the model first answers these with a fine it cannot give as a number
        return f"Complaint {i}: tenant reported no heat on 2024-03-{i % 28 + 1:02d}. Fine: two hundred dollars."
    return (f"Complaint {i}: tenant reported no heat on 2024-03-{i % 28 + 1:02d}. "
            f"Inspector issued a fine of {100 + i} dollars.")


def make_db(path, rows: int = 30) -> None:
    conn = sqlite3.connect(path)
    conn.execute("create table complaints (id integer primary key, borough text, narrative text)")
    conn.executemany("insert into complaints (id, borough, narrative) values (?, ?, ?)",
                     [(i, BOROUGHS[i % 3], narrative(i)) for i in range(1, rows + 1)])
    conn.commit()
    conn.close()


def answer(request: dict) -> Reply:
    """The row's date and fine, quoted from the row; 'two hundred' first as text, then fixed on re-ask."""
    text = last_user_text(request)
    date = re.search(r"on (\d{4}-\d\d-\d\d)", text)
    if "failed validation" in text:
        return Reply(content=json.dumps({"rows": [
            {"_llm_row_id": "R1", "reported": date.group(1) if date else None, "fine": 200,
             "source_quote": "Fine: two hundred dollars."}]}))
    if "Fine: two hundred" in text:
        return Reply(content=json.dumps({"rows": [
            {"reported": date.group(1), "fine": "two hundred", "source_quote": "Fine: two hundred dollars."}]}))
    fine = re.search(r"fine of (\d+) dollars", text)
    if not date or not fine:
        return Reply(content='{"rows": []}')
    return Reply(content=json.dumps({"rows": [
        {"reported": date.group(1), "fine": int(fine.group(1)),
         "source_quote": f"Inspector issued a fine of {fine.group(1)} dollars."}]}))


COLUMNS = [{"name": "reported", "type": "date", "description": "date of the complaint"},
           {"name": "fine", "type": "number", "description": "fine in dollars"}]


def complaint_ids(request: dict) -> list[int]:
    return [int(x) for x in re.findall(r"Complaint (\d+):", last_user_text(request))]


class EnrichServer(Server):
    """``datasette serve`` of the complaints database, model at ``base_url``."""

    def __init__(self, tmp_path, db, base_url, *, concurrency: int = 2, lease: float = 1):
        super().__init__(tmp_path, db, base_url)
        config = json.loads(self.config.read_text())
        plugin = config["plugins"]["datasette-llm-newsroom"]
        plugin["models"][0]["concurrency"] = concurrency
        plugin["models"][0].update(input_cost_per_mtok=1.0, output_cost_per_mtok=2.0)
        plugin["lease_seconds"] = lease
        self.config.write_text(json.dumps(config))

    def wait_job(self, job_id, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        job = None
        while time.monotonic() < deadline:
            status, job = self.request("GET", f"/-/llm-extract/enrich/jobs/{job_id}.json")
            assert status == 200, job
            if predicate(job):
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} never reached the expected state: {job}")


def table_rows(db, sql: str, params=()) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@contextlib.contextmanager
def serving(tmp_path, db, handler):
    """An ``EnrichServer`` of ``db`` whose model is a fake OpenAI server answering with ``handler``."""
    with FakeOpenAIServer(handler=handler) as fake:
        server = EnrichServer(tmp_path, db, fake.base_url)
        server.start()
        try:
            yield server
        finally:
            server.stop()
