"""#10.8: an insert whose state write fails, or whose server dies between the
two writes, leaves a run that can be finished or undone.

Insert writes the state database (claim + plan), then the target table, then
the state database again (provenance, status). The state database sits on a
small tmpfs that the test fills at chosen moments (a pause point the server
reaches only when ``DATASETTE_LLM_TEST_POINT`` says so); the kill -9 cases use
the same point with ``kill``. A real ``datasette serve``, both lines.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time

import pytest

from ..fake_openai_server import FakeOpenAIServer
from .sec_data_helpers import Server
from .test_sec_data_undo import ROOT, config_for, rows_for

NAMES = ["Ruth", "Omar", "Lena"]


def can_mount_tmpfs(path) -> bool:
    if os.geteuid() != 0:
        return False
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(path)],
                            capture_output=True)
    return result.returncode == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("statewrites")
    statefs = tmp / "statefs"
    if not can_mount_tmpfs(statefs):
        pytest.skip("needs root and mount -t tmpfs to give the state database a disk that fills up")
    pause = tmp / "pause"
    pause.mkdir()
    db = tmp / "news.db"
    sqlite3.connect(db).close()
    try:
        with FakeOpenAIServer(handler=rows_for) as fake:
            config = config_for(tmp, fake.base_url)
            config["plugins"]["datasette-llm-newsroom"]["state_database"] = str(statefs / "state.db")
            server = Server(tmp, [db], config,
                            env={"DATASETTE_LLM_TEST_POINT": f"after-target-insert:pause:{pause}"})
            server.start()
            try:
                yield server, db, statefs, pause
            finally:
                server.stop()
    finally:
        subprocess.run(["umount", "-l", str(statefs)], capture_output=True)


def start_done_run(server, table: str, create: bool) -> str:
    from .test_sec_data_undo import SCHEMA

    text = " ".join(f"{n} paid {10 + i} dollars." for i, n in enumerate(NAMES))
    body = {"database": "news", "table": table, "text": text}
    body.update({"create": True, "schema": SCHEMA} if create else {"columns": ["name", "amount"]})
    status, run = server.json("POST", "/-/llm-extract/api/runs", body, actor=ROOT)
    assert status == 201, run
    return wait_status(server, run["id"], lambda s: s not in ("pending", "running"))["id"]


def wait_status(server, run_id, predicate, timeout=20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, run = server.json("GET", f"/-/llm-extract/api/runs/{run_id}", actor=ROOT)
        assert status == 200, run
        if predicate(run["status"]):
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id}: {run['status']}")


def count(db, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"select count(*) from {table}").fetchone()[0]
    finally:
        conn.close()


def fill_disk(statefs) -> None:
    """Checkpoint the state database's WAL to zero bytes (so the next write must
    grow it), then fill what is left of the tmpfs."""
    conn = sqlite3.connect(statefs / "state.db", timeout=10)
    for _ in range(50):
        busy, _log, _done = conn.execute("pragma wal_checkpoint(truncate)").fetchone()
        if not busy:
            break
        time.sleep(0.1)
    conn.close()
    with open(statefs / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def free_disk(statefs) -> None:
    os.remove(statefs / "filler")


def test_full_disk_before_the_insert_changes_nothing(world):
    server, db, statefs, pause = world
    run_id = start_done_run(server, "first", create=True)
    (pause / "resume").touch()  # do not stop at the pause point this time
    fill_disk(statefs)
    try:
        status, text, headers = server.request("POST", f"/-/llm-extract/api/runs/{run_id}/insert",
                                               {"accept": "all_valid"}, actor=ROOT)
        assert headers.get("content-type", "").startswith("application/json"), (status, text[:300])
        assert status == 503 and "nothing was changed" in text, (status, text[:300])
        conn = sqlite3.connect(db)
        assert conn.execute("select count(*) from sqlite_master where name = 'first'").fetchone()[0] == 0
        conn.close()
    finally:
        free_disk(statefs)
    assert wait_status(server, run_id, lambda s: True)["status"] == "done"
    status, body = server.json("POST", f"/-/llm-extract/api/runs/{run_id}/insert", {"accept": "all_valid"},
                               actor=ROOT)
    assert status == 200 and body["inserted"] == 3, body
    assert count(db, "first") == 3


def test_full_disk_between_the_writes_leaves_a_run_that_finishes(world):
    server, db, statefs, pause = world
    run_id = start_done_run(server, "second", create=True)
    for leftover in ("paused", "resume"):
        if (pause / leftover).exists():
            (pause / leftover).unlink()
    answer = {}

    def insert():
        answer["reply"] = server.request("POST", f"/-/llm-extract/api/runs/{run_id}/insert",
                                         {"accept": "all_valid"}, actor=ROOT)

    thread = threading.Thread(target=insert)
    thread.start()
    deadline = time.monotonic() + 20
    while not (pause / "paused").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (pause / "paused").exists(), "the insert never reached the point between its two writes"
    fill_disk(statefs)
    try:
        (pause / "resume").touch()
        thread.join(30)
        status, text, headers = answer["reply"]
        assert headers.get("content-type", "").startswith("application/json"), (status, text[:300])
        assert status == 503 and "rows were inserted" in text, (status, text[:300])
        assert count(db, "second") == 3  # committed before the failure
        # Still unwritable: the run is shown as it is, without an error page.
        status, run = server.json("GET", f"/-/llm-extract/api/runs/{run_id}", actor=ROOT)
        assert status == 200 and run["status"] == "inserting", run
    finally:
        free_disk(statefs)
    run = wait_status(server, run_id, lambda s: s == "inserted", timeout=5)
    assert run["inserted_count"] == 3
    status, body = server.json("POST", f"/-/llm-extract/api/runs/{run_id}/undo", {}, actor=ROOT)
    assert status == 200 and body["deleted"] == 3, body
    assert count(db, "second") == 0


def restart_with_point(server, point: str | None, original_env: dict) -> None:
    server.env = dict(original_env)
    if point:
        server.env["DATASETTE_LLM_TEST_POINT"] = f"{point}:kill"
    server.start()


def post_and_die(server, path: str, body: dict) -> None:
    try:
        server.request("POST", path, body, actor=ROOT)
    except OSError:
        pass  # the connection died with the server
    server.proc.wait(timeout=10)
    assert server.proc.returncode == -9, server.log.read_text()[-2000:]


def test_kill_between_the_writes_leaves_a_run_that_finishes(world):
    server, db, statefs, pause = world
    run_id = start_done_run(server, "third", create=True)
    original_env = dict(server.env)
    server.stop()
    # kill -9 after the rows are committed, before the insert is recorded
    restart_with_point(server, "after-target-insert", original_env)
    post_and_die(server, f"/-/llm-extract/api/runs/{run_id}/insert", {"accept": "all_valid"})
    assert count(db, "third") == 3
    # kill -9 after the undo's delete is committed, before it is recorded
    restart_with_point(server, "after-target-delete", original_env)
    run = wait_status(server, run_id, lambda s: s == "inserted", timeout=10)  # once the 1 s lease lapsed
    assert run["inserted_count"] == 3
    post_and_die(server, f"/-/llm-extract/api/runs/{run_id}/undo", {})
    assert count(db, "third") == 0
    restart_with_point(server, None, original_env)
    wait_status(server, run_id, lambda s: s == "undone", timeout=10)
