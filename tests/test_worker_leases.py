"""Several server processes sharing one state database.

Runs and index jobs carry the id of the process executing them and a
heartbeat it renews. Another process must leave them alone while the
heartbeat is fresh, and take them for dead once it is older than the lease.
The registries of live tasks are module globals, so "another process" is a
row stamped with another worker id.
"""

from __future__ import annotations

import time

import pytest

from datasette_llm_core import workers
from datasette_llm_core.state import state_db
from tests.fakes import Scripted

from .conftest import wait_for
from .extract_web_helpers import cookies, make_ds, rows_json, state_rows, wait_run
from .rag_web_helpers import cookies as rag_cookies
from .rag_web_helpers import make_datasette, post_json, rag_section
from .test_extract_runs import SCHEMA, TEXT, write_running_run

OTHER = "other-host:4242:abcd1234"


def test_abandoned_rule():
    now = 1000.0
    assert workers.abandoned(None, None, 45, now)  # rows from before leases
    assert workers.abandoned(OTHER, None, 45, now)
    assert not workers.abandoned(OTHER, now - 10, 45, now)
    assert workers.abandoned(OTHER, now - 46, 45, now)
    assert workers.heartbeat_seconds(45) == workers.HEARTBEAT_SECONDS
    assert workers.heartbeat_seconds(1.5) == 0.5  # three beats per lease at least
    assert workers.worker_id() == workers.worker_id() and str(__import__("os").getpid()) in workers.worker_id()


async def _stamp_run(ds, run_id: str, worker: str | None, heartbeat_at: float | None) -> None:
    db = await state_db(ds)
    await db.execute_write("update llm_extract_runs set worker_id = ?, heartbeat_at = ? where id = ?",
                           [worker, heartbeat_at, run_id], block=True)


async def _status(ds, run_id: str) -> str:
    return (await state_rows(ds, "select status from llm_extract_runs where id = ?", [run_id]))[0][0]


async def test_startup_and_page_views_leave_another_live_workers_runs_running(tmp_path, fake_models):
    ds = make_ds(tmp_path)
    await ds.invoke_startup()
    live = await write_running_run(ds, "0000000000000001")
    stale = await write_running_run(ds, "0000000000000002")
    legacy = await write_running_run(ds, "0000000000000003")  # no worker: written before leases
    await _stamp_run(ds, live, OTHER, time.time())
    await _stamp_run(ds, stale, OTHER, time.time() - workers.LEASE_SECONDS - 5)

    ds = make_ds(tmp_path)  # a second server process starts on the same state database
    await ds.invoke_startup()
    assert await _status(ds, live) == "running"
    assert await _status(ds, stale) == "interrupted"
    assert await _status(ds, legacy) == "interrupted"

    jar = cookies(ds, "root")
    r = await ds.client.get(f"/-/llm-extract/api/runs/{live}", cookies=jar)
    assert r.json()["status"] == "running"
    page = await ds.client.get(f"/-/llm-extract/runs/{live}", cookies=jar)
    assert page.status_code == 200 and await _status(ds, live) == "running"

    # The other process died: once its heartbeat is older than the lease, a page
    # view marks the run interrupted, and its event stream ends.
    await _stamp_run(ds, live, OTHER, time.time() - workers.LEASE_SECONDS - 1)
    events = await ds.client.get(f"/-/llm-extract/runs/{live}/events", cookies=jar)
    assert '"status": "interrupted"' in events.text
    r = await ds.client.get(f"/-/llm-extract/api/runs/{live}", cookies=jar)
    assert r.json()["status"] == "interrupted" and "server stopped" in r.json()["error"]


async def test_lease_setting_shortens_the_wait(tmp_path, fake_models):
    ds = make_ds(tmp_path, plugin={"lease_seconds": 2})
    await ds.invoke_startup()
    run_id = await write_running_run(ds)
    await _stamp_run(ds, run_id, OTHER, time.time() - 3)  # fresh for 45 s, lapsed for 2 s
    r = await ds.client.get(f"/-/llm-extract/api/runs/{run_id}", cookies=cookies(ds, "root"))
    assert r.json()["status"] == "interrupted"


async def test_cancelling_another_workers_run_asks_its_owner(tmp_path, fake_models):
    ds = make_ds(tmp_path)
    await ds.invoke_startup()
    run_id = await write_running_run(ds)
    await _stamp_run(ds, run_id, OTHER, time.time())
    jar = cookies(ds, "root")
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run_id}/cancel", json={}, cookies=jar)
    assert r.status_code == 200, r.text
    rows = await state_rows(ds, "select status, cancel_requested_at from llm_extract_runs where id = ?", [run_id])
    assert rows[0][0] == "running" and rows[0][1] is not None  # only the owner can stop its task
    # the run page says the cancel is waiting for the other process, with no second button
    page = await ds.client.get(f"/-/llm-extract/runs/{run_id}", cookies=jar)
    assert "Cancel requested" in page.text and 'id="llm-cancel-form"' not in page.text


@pytest.fixture
def fast_heartbeat(monkeypatch):
    monkeypatch.setattr(workers, "HEARTBEAT_SECONDS", 0.05)


async def _slow_run(ds, scripted_model) -> str:
    answer = rows_json(*[{"name": f"P{i}", "age": i, "source_quote": f"P{i}"} for i in range(20)])
    scripted_model.enqueue(Scripted(text=answer, chunks=200, delay=0.01))
    r = await ds.client.post("/-/llm-extract/api/runs", cookies=cookies(ds, "root"), json={
        "database": "news", "table": "people", "create": True, "schema": SCHEMA, "text": TEXT, "model": "scripted"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def test_a_running_run_renews_its_heartbeat(tmp_path, fake_models, scripted_model, fast_heartbeat):
    ds = make_ds(tmp_path)
    await ds.invoke_startup()
    run_id = await _slow_run(ds, scripted_model)
    sql = "select status, worker_id, heartbeat_at from llm_extract_runs where id = ?"

    async def running():
        row = (await state_rows(ds, sql, [run_id]))[0]
        return row if row[0] == "running" and row[2] else None

    first = await wait_for(running)
    assert first[1] == workers.worker_id()

    async def renewed():
        row = (await state_rows(ds, sql, [run_id]))[0]
        return row if row[2] > first[2] else None

    later = await wait_for(renewed, timeout=1.5)
    assert later[0] == "running"
    run = await wait_run(ds, run_id, cookies(ds, "root"))
    assert run["status"] == "done"


async def test_owner_stops_a_run_when_another_process_asked(tmp_path, fake_models, scripted_model, fast_heartbeat):
    ds = make_ds(tmp_path)
    await ds.invoke_startup()
    run_id = await _slow_run(ds, scripted_model)
    jar = cookies(ds, "root")

    async def some_rows():
        return len((await ds.client.get(f"/-/llm-extract/api/runs/{run_id}", cookies=jar)).json()["rows"]) >= 1

    await wait_for(some_rows)
    db = await state_db(ds)
    await db.execute_write("update llm_extract_runs set cancel_requested_at = ? where id = ?",
                           [time.time(), run_id], block=True)  # what the other process's cancel writes
    run = await wait_run(ds, run_id, jar, timeout=5)
    assert run["status"] == "cancelled" and len(run["rows"]) < 20


# --------------------------------------------------------------------------- index jobs

@pytest.fixture
async def rag_ds(tmp_path, fake_models):
    ds = make_datasette(tmp_path, rag=rag_section(tmp_path, embedding_model="hash-embed"),
                        state=str(tmp_path / "state.db"))
    await ds.invoke_startup()
    return ds


async def _job_status(ds) -> str:
    r = await ds.client.get("/-/llm-rag/index/news.json", cookies=rag_cookies(ds, "root"))
    return r.json()["job"]["status"]


async def test_index_job_of_another_live_worker_is_left_running(rag_ds):
    db = await state_db(rag_ds)
    await db.execute_write(
        "insert into rag_jobs (database_name, status, started_at, updated_at, worker_id, heartbeat_at) "
        "values ('news', 'running', 0, 0, ?, ?)", [OTHER, time.time()], block=True)
    assert await _job_status(rag_ds) == "running"
    page = await rag_ds.client.get("/-/llm-rag/index/news", cookies=rag_cookies(rag_ds, "root"))
    assert page.status_code == 200
    assert await _job_status(rag_ds) == "running"
    # its owner stopped renewing the lease: now it is dead
    await db.execute_write("update rag_jobs set heartbeat_at = ?",
                           [time.time() - workers.LEASE_SECONDS - 1], block=True)
    assert await _job_status(rag_ds) == "interrupted"


async def test_index_job_renews_its_heartbeat(tmp_path, fake_models, fast_heartbeat):
    import asyncio

    from datasette.plugins import pm

    from .fakes import FakeModelsPlugin, HashEmbeddingModel

    class Slow(HashEmbeddingModel):
        batch_size = 1

        async def embed(self, texts, *, kind):
            await asyncio.sleep(0.08)
            return await super().embed(texts, kind=kind)

    name = "lease-slow-embed-plugin"
    pm.register(FakeModelsPlugin(embedding=[Slow("slow-embed")]), name=name)
    try:
        ds = make_datasette(tmp_path, rag=rag_section(tmp_path, embedding_model="slow-embed"),
                            state=str(tmp_path / "state.db"))
        await ds.invoke_startup()
        r = await post_json(ds, "/-/llm-rag/index/news", {}, "root")
        assert r.status_code == 302
        db = await state_db(ds)
        sql = "select status, worker_id, heartbeat_at from rag_jobs order by id desc limit 1"

        async def running():
            row = tuple((await db.execute(sql)).first())
            return row if row[0] == "running" else None

        first = await wait_for(running)
        assert first[1] == workers.worker_id()

        async def renewed():
            row = tuple((await db.execute(sql)).first())
            return row if row[2] > first[2] else None

        later = await wait_for(renewed, timeout=1.5)
        assert later[0] == "running"

        async def finished():
            return await _job_status(ds) == "done"

        await wait_for(finished)
    finally:
        pm.unregister(name=name)
