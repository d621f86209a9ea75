"""Crashes: SIGKILL in the middle of work, then restart and check nothing is half-done.

The process doing the work is killed with SIGKILL (no cleanup runs) once it has
committed part of its output; afterwards the data on disk must be consistent:
an interrupted index has whole batches only (every entry has its vector, the
sidecar passes SQLite's integrity check, ``verify`` reports only *missing*
rows) and a second run completes it.
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from http.cookies import SimpleCookie
from pathlib import Path

import pytest

from datasette_llm_rag.indexer import refresh_index, verify

from .fakes import HashEmbeddingModel
from .processes import free_port, stop_process, wait_until_serving

REPO = Path(__file__).resolve().parent.parent
ROWS = 12_000
RAG = {"databases": {"news": {"tables": {"articles": {"columns": ["body"], "title_column": "title"}}}}}

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def make_news_db(path: Path, rows: int = ROWS) -> None:
    conn = sqlite3.connect(path)
    conn.execute("create table articles (id integer primary key, title text, body text)")
    conn.executemany(
        "insert into articles (id, title, body) values (?, ?, ?)",
        (
            (i, f"Story {i}", f"Council meeting {i} discussed budget line {i % 97} and road {i % 13}.")
            for i in range(1, rows + 1)
        ),
    )
    conn.commit()
    conn.close()


INDEX_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    sys.path.insert(0, {repo!r})
    from tests.fakes import HashEmbeddingModel
    from datasette_llm_rag.indexer import refresh_index

    class SlowAfterFirstWrite(HashEmbeddingModel):
        done = 0
        async def embed(self, texts, *, kind):
            # Fast until the first write batch is committed, then slow, so the
            # kill always lands between two committed batches.
            await asyncio.sleep(0.05 if self.done >= 5000 else 0)
            self.done += len(texts)
            return self.embed_sync(texts)

    def progress(done, total):
        print(done, total, flush=True)

    asyncio.run(refresh_index({db!r}, "news", json.loads({rag!r}), SlowAfterFirstWrite(),
                              sidecar={side!r}, progress=progress))
    print("DONE", flush=True)
    """
)


def run_until(proc: subprocess.Popen, predicate, timeout: float) -> str | None:
    """Read the child's stdout lines until ``predicate(line)``; return that line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                return None
            if predicate(line.strip()):
                return line.strip()
    return None


async def test_index_killed_mid_run_is_consistent_and_resumes(tmp_path):
    import json

    db = tmp_path / "news.db"
    side = tmp_path / "news.llm-rag.db"
    make_news_db(db)
    script = tmp_path / "index.py"
    script.write_text(INDEX_SCRIPT.format(repo=str(REPO), db=str(db), side=str(side), rag=json.dumps(RAG)))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        line = run_until(proc, lambda out: out.split()[0].isdigit() and 5000 < int(out.split()[0]) < ROWS, 60)
        assert line, f"indexer never got past its first batch: {proc.stderr.read() if proc.poll() is not None else ''}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    # The sidecar on disk is a valid SQLite database with whole batches only.
    conn = sqlite3.connect(side)
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    entries = conn.execute("select count(*) from entries").fetchone()[0]
    without_vector = conn.execute(
        "select count(*) from entries where id not in (select entry_id from vectors)"
    ).fetchone()[0]
    conn.close()
    assert 0 < entries < ROWS
    assert without_vector == 0

    embedder = HashEmbeddingModel()
    report = await verify(str(db), "news", RAG, embedder, sidecar=str(side))
    assert report.orphaned == 0 and report.stale == 0 and report.model_ok
    assert report.missing == ROWS - entries
    assert not report.ok  # honest: the index is behind, not corrupt

    # Restart: a second run embeds only what is missing and completes the index.
    stats = await refresh_index(str(db), "news", RAG, embedder, sidecar=str(side))
    assert stats.added == ROWS - entries
    assert stats.unchanged == entries
    report = await verify(str(db), "news", RAG, embedder, sidecar=str(side))
    assert report.ok and report.entries == ROWS


# --------------------------------------------------- a real server killed mid-run

import json  # noqa: E402
import re  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402

from datasette_llm_core import permissions as P  # noqa: E402

from .fake_openai_server import FakeOpenAIServer, Reply, last_user_text  # noqa: E402

SECRET = "crash-test-secret"
COMPANIES = [f"Company{i:02d}" for i in range(1, 17)]


def document() -> str:
    # Four chunks of ~500 characters, four payments each.
    paragraphs = []
    for block in range(4):
        lines = [f"{name} paid {100 + i} dollars for works in district {block}."
                 for i, name in enumerate(COMPANIES[block * 4:(block + 1) * 4])]
        paragraphs.append(" ".join(lines) + " " + "Filler text about the council meeting. " * 6)
    return "\n\n".join(paragraphs)


def rows_for(request: dict) -> Reply:
    text = last_user_text(request)
    found = re.findall(r"(Company\d\d) paid (\d+) dollars", text)
    rows = [{"name": n, "amount": int(a), "source_quote": f"{n} paid {a} dollars"} for n, a in dict(found).items()]
    return Reply(content=json.dumps({"rows": rows}))


class Server:
    """``datasette serve`` in its own process, talked to over HTTP as root."""

    def __init__(self, tmp_path, db, base_url):
        plugin = {
            "state_database": str(tmp_path / "state.db"),
            "models": [{"id": "fake", "provider": "openai-compatible", "model": "fake-model", "base_url": base_url,
                        "supports": ["streaming", "schema"], "timeout": 30}],
            "defaults": {"extract": "fake"},
            "extract": {"chunk_chars": 500, "concurrency": 1},
            # The restarted server is a new process: it takes the killed one's runs and
            # jobs for dead once their heartbeat is this old (45 s by default).
            "lease_seconds": 1,
        }
        self.config = tmp_path / "config.json"
        self.config.write_text(json.dumps({"plugins": {"datasette-llm-newsroom": plugin}}))
        self.db = db
        self.log = tmp_path / "server.log"
        self.proc = None
        from itsdangerous import URLSafeSerializer

        self.cookie = "ds_actor=" + URLSafeSerializer(SECRET, "actor").dumps({"a": {"id": "root"}})

    def start(self):
        self.port = free_port()
        flag = "-c" if P.IS_V1 else "-m"
        cmd = [sys.executable, "-m", "datasette", "serve", str(self.db), flag, str(self.config),
               "-h", "127.0.0.1", "-p", str(self.port), "--secret", SECRET]
        if P.IS_V1:
            cmd.append("--root")
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "a"), stderr=subprocess.STDOUT, cwd=REPO)
        wait_until_serving(self.proc, f"http://127.0.0.1:{self.port}/-/versions.json",
                           lambda: self.log.read_text()[-2000:])

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"cookie": self.cookie, "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=20) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def csrf(self, page: str) -> tuple[str, str]:
        """(cookie header, CSRF token) for POSTs as root; the token is "" on 1.0."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{page}", headers={"cookie": self.cookie})
        with urllib.request.urlopen(request, timeout=20) as response:
            jar = SimpleCookie(response.headers.get("set-cookie") or "")
        token = jar["ds_csrftoken"].value if "ds_csrftoken" in jar else ""
        return self.cookie + (f"; ds_csrftoken={token}" if token else ""), token

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL

    def stop(self):
        stop_process(self.proc)

    def wait_run(self, run_id, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, run = self.request("GET", f"/-/llm-extract/api/runs/{run_id}")
            assert status == 200, run
            if predicate(run):
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} never reached the expected state: {run['status']}")


def target_count(db) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("select count(*) from target").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def crash_world(tmp_path):
    db = tmp_path / "news.db"
    conn = sqlite3.connect(db)
    conn.execute("create table target (id integer primary key, name text, amount integer)")
    conn.commit()
    conn.close()
    with FakeOpenAIServer(handler=rows_for, token_delay=0.03) as fake:
        server = Server(tmp_path, db, fake.base_url)
        server.start()
        try:
            yield server, fake, db
        finally:
            server.stop()


def start_run(server) -> str:
    status, body = server.request("POST", "/-/llm-extract/api/runs", {
        "database": "news", "table": "target", "text": document(), "columns": ["name", "amount"]})
    assert status == 201, body
    return body["id"]


def test_server_killed_during_extraction_resumes_without_duplicates(crash_world, tmp_path):
    server, fake, db = crash_world
    run_id = start_run(server)
    run = server.wait_run(run_id, lambda r: r["chunks_done"] >= 1 and r["status"] == "running")
    assert run["chunks_total"] >= 3
    server.kill()
    kept_before = len(run["rows"])

    server.start()
    run = server.wait_run(run_id, lambda r: r["status"] != "running", timeout=10)
    assert run["status"] == "interrupted"
    assert target_count(db) == 0  # nothing reached the table without review
    assert len(run["rows"]) >= kept_before >= 1  # what was extracted before the crash is kept
    state = sqlite3.connect(tmp_path / "state.db")
    assert state.execute("pragma integrity_check").fetchone()[0] == "ok"
    state.close()

    fake.token_delay = 0.0
    unfinished = run["chunks_total"] - run["chunks_done"]
    sent_before = len(fake.chat_requests())
    status, body = server.request("POST", f"/-/llm-extract/api/runs/{run_id}/resume", {})
    assert status == 200, body
    run = server.wait_run(run_id, lambda r: r["status"] not in ("pending", "running"))
    assert run["status"] == "done", run
    # only the parts that had not finished were sent again
    assert len(fake.chat_requests()) - sent_before == unfinished
    assert run["chunks_done"] == run["chunks_total"]
    names = [r["values"]["name"] for r in run["rows"] if r["valid"] and not r["duplicate"]]
    assert sorted(names) == sorted(COMPANIES)  # every company once: no chunk done twice
    status, body = server.request("POST", f"/-/llm-extract/api/runs/{run_id}/insert", {"accept": "all_valid"})
    assert status == 200, body
    assert target_count(db) == len(COMPANIES)


def test_server_killed_during_extraction_can_be_discarded(crash_world):
    server, fake, db = crash_world
    run_id = start_run(server)
    server.wait_run(run_id, lambda r: r["chunks_done"] >= 1 and r["status"] == "running")
    server.kill()
    server.start()
    run = server.wait_run(run_id, lambda r: r["status"] != "running", timeout=10)
    assert run["status"] == "interrupted"
    status, body = server.request("POST", f"/-/llm-extract/api/runs/{run_id}/discard", {})
    assert status == 200, body
    status, run = server.request("GET", f"/-/llm-extract/api/runs/{run_id}")
    assert run["status"] == "discarded"
    status, body = server.request("POST", f"/-/llm-extract/api/runs/{run_id}/insert", {"accept": "all_valid"})
    assert status == 409
    assert target_count(db) == 0


# ---------------------------------------------- a review batch is all or nothing

async def test_review_batch_failing_mid_insert_inserts_nothing(tmp_path, fake_models, scripted_model):
    """Row 2 of 3 breaks a CHECK constraint only SQLite knows: the whole batch rolls back."""
    from datasette.app import Datasette

    from datasette_llm_extract.runs import ACTIVE

    from .conftest import wait_for

    db = tmp_path / "news.db"
    conn = sqlite3.connect(db)
    conn.execute("create table target (id integer primary key, name text, amount integer check (amount < 1000))")
    conn.commit()
    conn.close()
    scripted_model.enqueue(json.dumps({"rows": [
        {"name": "Acme", "amount": 10, "source_quote": "Acme 10"},
        {"name": "Beta", "amount": 5000, "source_quote": "Beta 5000"},
        {"name": "Gamma", "amount": 30, "source_quote": "Gamma 30"},
    ]}))
    config = {"plugins": {"datasette-llm-newsroom": {"state_database": str(tmp_path / "state.db"),
                                                      "defaults": {"extract": "scripted"}}}}
    ds = Datasette([str(db)], config=config) if P.IS_V1 else Datasette([str(db)], metadata=config)
    if P.IS_V1:
        ds.root_enabled = True
    await ds.invoke_startup()
    cookies = {"ds_actor": ds.sign({"a": {"id": "root"}}, "actor")}
    r = await ds.client.post("/-/llm-extract/api/runs", cookies=cookies, json={
        "database": "news", "table": "target", "text": "Acme 10. Beta 5000. Gamma 30.", "columns": ["name", "amount"]})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]

    async def finished():
        got = (await ds.client.get(f"/-/llm-extract/api/runs/{run_id}", cookies=cookies)).json()
        return got if got["status"] not in ACTIVE else None

    run = await wait_for(finished, timeout=10)
    assert sum(1 for row in run["rows"] if row["valid"]) == 3
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run_id}/insert", cookies=cookies, json={"accept": "all_valid"})
    assert r.status_code == 409, r.text
    assert "Nothing was inserted" in r.json()["error"]
    assert target_count(db) == 0
    run = (await ds.client.get(f"/-/llm-extract/api/runs/{run_id}", cookies=cookies)).json()
    assert run["status"] == "done" and not any(row["inserted_pk"] for row in run["rows"])
    # Fix the bad row and the batch goes in whole.
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run_id}/insert", cookies=cookies, json={"rows": {
        "0": "accept", "1": {"decision": "accept", "values": {"name": "Beta", "amount": 500}}, "2": "accept"}})
    assert r.status_code == 200, r.text
    assert target_count(db) == 3


# ------------------------------------------ a real server killed while indexing

def test_server_killed_during_index_job_is_interrupted_and_verify_is_consistent(tmp_path, monkeypatch):
    from . import fake_openai_server as fos

    real_embeddings = fos._RequestHandler._embeddings

    def slow_embeddings(self, body):
        time.sleep(0.03)  # ~1,000 texts a second: the job takes several seconds
        return real_embeddings(self, body)

    monkeypatch.setattr(fos._RequestHandler, "_embeddings", slow_embeddings)
    db = tmp_path / "news.db"
    make_news_db(db)
    side = tmp_path / "news.llm-rag.db"
    with FakeOpenAIServer() as fake:
        server = Server(tmp_path, db, fake.base_url)
        plugin = json.loads(server.config.read_text())
        settings = plugin["plugins"]["datasette-llm-newsroom"]
        settings["embedding_models"] = [{"id": "fake-embed", "provider": "openai-compatible",
                                         "model": "fake-embedding", "base_url": fake.base_url, "dimensions": 64}]
        settings["defaults"]["embed"] = "fake-embed"
        settings["rag"] = {"embedding_model": "fake-embed",
                           "databases": {"news": {"sidecar": str(side), **RAG["databases"]["news"]}}}
        server.config.write_text(json.dumps(plugin))
        server.start()
        try:
            # Start the job the way the index page does (form POST with the CSRF token on 0.65).
            cookie, token = server.csrf("/-/llm-rag/index/news")
            req = urllib.request.Request(
                f"http://127.0.0.1:{server.port}/-/llm-rag/index/news", method="POST",
                data=f"csrftoken={token}".encode(),
                headers={"cookie": cookie, "accept": "application/json",
                         "content-type": "application/x-www-form-urlencoded"})
            with urllib.request.urlopen(req, timeout=20) as response:
                assert response.status == 200
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status, info = server.request("GET", "/-/llm-rag/index/news.json")
                job = info.get("job") or info.get("latest_job") or {}
                if (job.get("done") or 0) > 5500:
                    break
                assert job.get("status") in ("queued", "running", None), job
                time.sleep(0.1)
            assert (job.get("done") or 0) > 5500, job
            assert job["status"] == "running"
            server.kill()
            server.start()
            # Interrupted once the dead process's lease (1 s here) has lapsed.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                status, info = server.request("GET", "/-/llm-rag/index/news.json")
                job = info.get("job") or info.get("latest_job") or {}
                if job.get("status") != "running":
                    break
                time.sleep(0.2)
            assert job["status"] == "interrupted", job
        finally:
            server.stop()

        # The sidecar on disk: whole batches only, and verify says "behind", not "broken".
        conn = sqlite3.connect(side)
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        entries = conn.execute("select count(*) from entries").fetchone()[0]
        conn.close()
        assert 0 < entries < ROWS
        flag = "-c" if P.IS_V1 else "-m"
        verify_cmd = [sys.executable, "-m", "datasette", "llm-rag", "index", str(db), flag, str(server.config),
                      "--verify"]
        out = subprocess.run(verify_cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"missing: {ROWS - entries}" in out.stdout and "orphaned: 0" in out.stdout and "stale: 0" in out.stdout
        # Re-running the index (CLI) finishes the job; verify is then clean.
        monkeypatch.setattr(fos._RequestHandler, "_embeddings", real_embeddings)
        subprocess.run(verify_cmd[:-1], capture_output=True, text=True, timeout=300, cwd=REPO, check=True)
        out = subprocess.run(verify_cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"entries: {ROWS}" in out.stdout
