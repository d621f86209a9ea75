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
from pathlib import Path

import pytest

from datasette_llm_rag.indexer import refresh_index, verify

from .fakes import HashEmbeddingModel

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
        line = run_until(proc, lambda l: l.split()[0].isdigit() and 5000 < int(l.split()[0]) < ROWS, 60)
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
