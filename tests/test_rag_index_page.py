"""The search-index pages: one readable table per database, times in words and
UTC, stale status, refresh/check buttons; server paths only ever shown to root."""

from __future__ import annotations

import re
import sqlite3
import time

import pytest

from datasette_llm_rag.display import format_time, relative_time
from datasette_llm_rag.views import _hide_paths

from .conftest import wait_for
from .rag_web_helpers import cookies, make_datasette, post_json, rag_section

GRANTS = {"llm-index": {"id": "editor"}, "databases": {"news": {"llm-ask": {"id": "alice"}}}}


@pytest.fixture
async def ds(tmp_path, fake_models):
    datasette = make_datasette(tmp_path, rag=rag_section(tmp_path, embedding_model="hash-embed"),
                               grants=GRANTS, state=str(tmp_path / "state.db"))
    await datasette.invoke_startup()
    return datasette


async def _build(ds):
    r = await post_json(ds, "/-/llm-rag/index/news", {}, "root")
    assert r.status_code == 302

    async def finished():
        job = (await ds.client.get("/-/llm-rag/index/news.json",
                                   cookies=cookies(ds, "root"))).json()["job"]
        return job if job and job["status"] not in ("queued", "running") else None

    assert (await wait_for(finished))["status"] == "done"


def test_relative_and_absolute_times():
    now = 1_800_000_000.0
    assert relative_time(now - 5, now) == "just now"
    assert relative_time(now - 60, now) == "1 minute ago"
    assert relative_time(now - 3 * 3600 - 5, now) == "3 hours ago"
    assert relative_time(now - 2 * 86400, now) == "2 days ago"
    assert format_time(now) == "2027-01-15 08:00 UTC"
    assert format_time(now, iso=True) == "2027-01-15T08:00:00Z"


def test_hide_paths_keeps_file_names():
    paths = ["/srv/data/news.llm-rag.db", "/srv/data"]
    assert _hide_paths("cannot open /srv/data/news.llm-rag.db: locked", paths) == \
        "cannot open news.llm-rag.db: locked"
    assert _hide_paths({"m": ["in /srv/data/x.db"]}, paths) == {"m": ["in data/x.db"]}


async def test_only_root_sees_the_index_files_full_path(ds, tmp_path):
    await _build(ds)
    sidecar = str(tmp_path / "sidecars" / "news.llm-rag.db")
    root_page = await ds.client.get("/-/llm-rag/index/news", cookies=cookies(ds, "root"))
    assert f"<code>{sidecar}</code>" in root_page.text
    for path in ("/-/llm-rag/index/news", "/-/llm-rag/index", "/-/llm-rag/index/news.json",
                 "/-/llm-rag/index/news?verify=1"):
        r = await ds.client.get(path, cookies=cookies(ds, "editor"))
        assert r.status_code == 200, path
        assert str(tmp_path) not in r.text, path
        assert "news.llm-rag.db" in r.text, path
    info = (await ds.client.get("/-/llm-rag/index/news.json",
                                cookies=cookies(ds, "editor"))).json()["info"]
    assert info["sidecar"] == "news.llm-rag.db"


async def test_list_page_is_a_table_per_database_with_actions(ds):
    before = await ds.client.get("/-/llm-rag/index", cookies=cookies(ds, "editor"))
    assert "Not built yet" in before.text and "never" in before.text
    assert "Check for changed rows" not in before.text  # nothing to compare yet
    await _build(ds)
    page = await ds.client.get("/-/llm-rag/index", cookies=cookies(ds, "editor"))
    text = page.text
    assert '<table class="rows-and-columns llm-rag-index-tables">' in text
    assert '<a href="/-/llm-rag/index/news">news</a>' in text
    # rows indexed per table, the model, when, and the status
    assert re.search(r'<a href="/news/articles">articles</a></td>\s*<td>4</td>\s*<td>4</td>', text)
    # the editor may not view memos: it is neither listed nor counted (#10.11)
    assert "in 2 tables" in text and "memos" not in text and "hash-embed" in text
    root_page = await ds.client.get("/-/llm-rag/index", cookies=cookies(ds, "root"))
    assert "7 in 3 tables" in root_page.text
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT[\d:]+Z" title="[^"]+ UTC">just now</time>',
                     text), text
    assert "Up to date (row counts match, no writes since the last refresh)" in text
    # the actions are buttons: refresh (POST to the database's page) and check
    assert re.search(r'<form method="post" action="/-/llm-rag/index/news"[^>]*>\s*'
                     r'<input type="hidden" name="csrftoken"[^>]*>\s*'
                     r'<input type="submit" class="core" value="Refresh index">', text)
    assert re.search(r'<form method="get" action="/-/llm-rag/index/news"[^>]*>\s*'
                     r'<input type="hidden" name="verify" value="1">\s*'
                     r'<input type="submit" class="core" value="Check for changed rows">', text)


async def test_stale_tables_are_said_in_words(ds, tmp_path):
    await _build(ds)
    conn = sqlite3.connect(tmp_path / "news.db")
    conn.execute("insert into articles values (5, 'New', 'A new article about parks.')")
    conn.execute("insert into articles values (6, 'Newer', 'Another one.')")
    conn.commit()
    conn.close()
    page = await ds.client.get("/-/llm-rag/index/news", cookies=cookies(ds, "root"))
    assert "Out of date: 2 rows not indexed yet" in page.text
    assert "Needs a refresh" in page.text
    status = (await ds.client.get("/-/llm-rag/index/news.json", cookies=cookies(ds, "root"))).json()
    assert status["overall"] == "stale"
    assert [t["state"] for t in status["tables"] if t["table"] == "articles"] == ["stale"]
    assert status["refreshed_absolute"].endswith("UTC")
    assert time.time() - 120 < status["info"]["refreshed"] <= time.time() + 1


async def test_an_edit_with_the_same_row_count_is_noticed(ds, tmp_path):
    await _build(ds)
    status = (await ds.client.get("/-/llm-rag/index/news.json", cookies=cookies(ds, "root"))).json()
    assert status["overall"] == "ok"
    time.sleep(0.01)
    conn = sqlite3.connect(tmp_path / "news.db")
    conn.execute("update articles set body = 'Rewritten after indexing.' where id = 1")
    conn.commit()
    conn.close()
    status = (await ds.client.get("/-/llm-rag/index/news.json", cookies=cookies(ds, "root"))).json()
    assert status["overall"] == "stale"
    assert [t["state"] for t in status["tables"] if t["table"] == "articles"] == ["changed"]
    page = await ds.client.get("/-/llm-rag/index/news", cookies=cookies(ds, "root"))
    assert "rows may have been edited" in page.text
    await _build(ds)  # a refresh takes it back to up to date
    status = (await ds.client.get("/-/llm-rag/index/news.json", cookies=cookies(ds, "root"))).json()
    assert status["overall"] == "ok"


async def test_a_job_that_finishes_while_being_read_is_not_called_interrupted(ds):
    # The race CI once hit: the page read the job as "queued", the job then
    # finished and its task ended, and the liveness check declared it interrupted.
    from datasette_llm_core.state import state_db
    from datasette_llm_rag import jobs

    await _build(ds)
    db = await state_db(ds)
    done = dict((await db.execute("select * from rag_jobs order by id desc limit 1")).first())
    assert done["status"] == "done"
    stale = dict(done, status="queued")  # what a read just before the finish saw
    checked = await jobs._check_alive(ds, db, stale)
    assert checked["status"] == "done"
    # a job really left behind by a dead server (its heartbeat long lapsed) is still marked interrupted
    await db.execute_write("update rag_jobs set status = 'running', heartbeat_at = 0 where id = ?",
                           [done["id"]], block=True)
    checked = await jobs._check_alive(ds, db, dict(done, status="running"))
    assert checked["status"] == "interrupted"
