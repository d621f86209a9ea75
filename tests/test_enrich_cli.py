"""``datasette llm-extract enrich`` as a real command: writes directly, resumes after
kill -9 without asking the model twice about a row, --since-last runs only new rows,
bad input exits non-zero with a message and writes nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from .enrich_helpers import COLUMNS, answer, complaint_ids, make_db, narrative, table_rows
from .fake_openai_server import FakeOpenAIServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def world(tmp_path):
    db = tmp_path / "news.db"
    make_db(db, rows=24)
    schema = tmp_path / "fines.json"
    schema.write_text(json.dumps({"columns": COLUMNS, "instructions": "The fine is in dollars."}))
    with FakeOpenAIServer(handler=answer) as fake:
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"plugins": {"datasette-llm-newsroom": {
            "state_database": str(tmp_path / "state.db"), "lease_seconds": 1,
            "models": [{"id": "fake", "provider": "openai-compatible", "model": "fake-model",
                        "base_url": fake.base_url, "supports": ["streaming", "schema"], "concurrency": 2}],
            "defaults": {"extract": "fake"}}}}))
        yield tmp_path, db, schema, config, fake


def enrich(tmp_path, *args, wait=True):
    cmd = [sys.executable, "-m", "datasette", "llm-extract", "enrich", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_enrich_writes_filtered_rows_then_since_last_runs_only_new_ones(world):
    tmp_path, db, schema, config, fake = world
    base = [db, "complaints", "--source", "narrative", "--schema", schema, "-c", config,
            "--where", "borough = 'Bronx'", "--since-last"]
    done = enrich(tmp_path, *base)
    assert done.returncode == 0, done.stderr
    assert "8 row(s) answered, 0 failed, 8 written of 8" in done.stdout
    rows = table_rows(db, "select id, fine from complaints order by id")
    assert [i for i, fine in rows if fine is not None] == list(range(3, 25, 3))
    assert all(fine in (100 + i, 200) for i, fine in rows if fine is not None)

    conn = sqlite3.connect(db)
    conn.executemany("insert into complaints (id, borough, narrative) values (?, ?, ?)",
                     [(i, "Bronx" if i % 2 else "Queens", narrative(i)) for i in (25, 26, 27)])
    conn.commit()
    conn.close()
    fake.requests.clear()
    again = enrich(tmp_path, *base)
    assert again.returncode == 0, again.stderr
    asked = sorted({i for r in fake.chat_requests() for i in complaint_ids(r)})
    assert asked == [25, 27]  # only the new Bronx rows
    nothing = enrich(tmp_path, *base)
    assert nothing.returncode == 0 and "nothing to do" in nothing.stdout


@pytest.mark.parametrize("args, message", [
    (["--source", "nope"], "no column"),
    (["--source", "narrative", "--where", "id >"], "could not be selected"),
    (["--source", "narrative", "--model", "missing"], "Unknown chat model"),
])
def test_bad_input_exits_non_zero_and_writes_nothing(world, args, message):
    tmp_path, db, schema, config, fake = world
    result = enrich(tmp_path, db, "complaints", "--schema", schema, "-c", config, *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "fine" not in [r[1] for r in table_rows(db, "pragma table_info(complaints)")]
    assert not fake.chat_requests()


def test_missing_database_and_template_are_clear_errors(world):
    tmp_path, db, schema, config, fake = world
    result = enrich(tmp_path, tmp_path / "nope.db", "complaints", "--source", "x", "--schema", schema, "-c", config)
    assert result.returncode != 0 and "no database file" in result.stderr
    assert not (tmp_path / "nope.db").exists()
    result = enrich(tmp_path, db, "complaints", "--source", "narrative", "--template", "Nope", "-c", config)
    assert result.returncode != 0 and "No template named 'Nope'" in result.stderr


def test_killed_command_resumes_where_it_stopped(world):
    tmp_path, db, schema, config, fake = world
    fake.ttft = 0.3
    args = [db, "complaints", "--source", "narrative", "--schema", schema, "-c", config]
    proc = enrich(tmp_path, *args, wait=False)
    try:
        deadline = time.monotonic() + 60
        done = 0
        while time.monotonic() < deadline and done < 4:
            time.sleep(0.2)
            try:
                state = sqlite3.connect(tmp_path / "state.db")
                done = state.execute("select coalesce(sum(rows_done), 0) from llm_enrich_jobs").fetchone()[0]
                state.close()
            except sqlite3.OperationalError:
                pass
        assert done >= 4, proc.stderr.read() if proc.poll() is not None else "too slow"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    state = sqlite3.connect(tmp_path / "state.db")
    answered = {r[0] for r in state.execute("select row_id from llm_enrich_items where status != 'pending'")}
    state.close()
    assert len(answered) < 24, "the command finished before the kill"
    fake.requests.clear()
    fake.ttft = 0.0
    result = enrich(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "Resumed job" in result.stdout and "24 row(s) answered" in result.stdout
    asked = [i for r in fake.chat_requests() for i in complaint_ids(r) if "failed validation" not in str(r)]
    assert not answered & set(asked)
    assert len(asked) == len(set(asked)) == 24 - len(answered)
    assert all(fine is not None for _, fine in table_rows(db, "select id, fine from complaints"))
