"""RAG web side: index job from the page, search, similar rows, permissions, bad states.

Runs on both Datasette lines with the scripted chat model and hash embedder
registered through the suite's hooks, against a real SQLite file.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from datasette_llm_core import permissions as P
from datasette_llm_core.state import state_db

from .conftest import wait_for
from .fakes import FakeModelsPlugin, HashEmbeddingModel
from .rag_web_helpers import cookies, make_datasette, post_json, rag_section


def _rag(tmp_path, **extra):
    return rag_section(tmp_path, embedding_model="hash-embed", **extra)


async def build_index(ds, actor="root", **body):
    response = await post_json(ds, "/-/llm-rag/index/news", body, actor)
    assert response.status_code == 302, response.text

    async def finished():
        r = await ds.client.get("/-/llm-rag/index/news.json", cookies=cookies(ds, actor))
        job = r.json()["job"]
        return job if job and job["status"] not in ("queued", "running") else None

    return await wait_for(finished)


@pytest.fixture
async def ds(tmp_path, fake_models):
    ds = make_datasette(tmp_path, rag=_rag(tmp_path), state=str(tmp_path / "state.db"))
    await ds.invoke_startup()
    return ds


async def test_index_job_from_page_then_search_links_rows(ds, hash_embedder):
    missing = await ds.client.get("/-/llm-rag/news/search.json?q=bridge", cookies=cookies(ds, "root"))
    assert missing.status_code == 409
    assert missing.json()["error_kind"] == "no_index"
    assert "datasette llm-rag index" in missing.json()["error"]

    job = await build_index(ds)
    assert job["status"] == "done", job
    assert job["stats"]["added"] == 7 and job["done"] == job["total"] == 7
    assert ("document", 7) in [(k, n) for k, n in hash_embedder.calls] or sum(
        n for k, n in hash_embedder.calls if k == "document"
    ) == 7

    page = await ds.client.get("/-/llm-rag/index/news", cookies=cookies(ds, "root"))
    assert page.status_code == 200
    assert re.search(r'<a href="/news/articles">articles</a></td>\s*<td>4</td>\s*<td>4</td>',
                     page.text), page.text
    assert "done" in page.text

    r = await ds.client.get(
        "/-/llm-rag/news/search.json?q=bridge+repairs+budget", cookies=cookies(ds, "root")
    )
    assert r.status_code == 200
    rows = r.json()["rows"]
    assert rows[0]["url"] == "/news/articles/1"
    memo = next(row for row in rows if row["table"] == "memos")
    assert memo["url"] == "/news/memos/m~2F1~2Ea"  # tilde-encoded text primary key
    followed = await ds.client.get(memo["url"], cookies=cookies(ds, "root"))
    assert followed.status_code == 200 and "Secret bridge memo" in followed.text
    # table filter
    r = await ds.client.get(
        "/-/llm-rag/news/search.json?q=bridge&table=places", cookies=cookies(ds, "root")
    )
    assert {row["table"] for row in r.json()["rows"]} == {"places"}

    # query embeddings go through the gateway and are counted per day (purpose search),
    # not logged one row each
    state = await state_db(ds)
    counted = (await state.execute(
        "select sum(calls) from llm_call_totals where kind = 'embed' and purpose = 'search'"
    )).single_value()
    assert counted >= 2
    assert not (await state.execute(
        "select count(*) from llm_calls where purpose = 'search'")).single_value()


async def test_progress_is_live_and_survives_reload(tmp_path, fake_models):
    class Slow(HashEmbeddingModel):
        batch_size = 1

        async def embed(self, texts, *, kind):
            await asyncio.sleep(0.08)
            return await super().embed(texts, kind=kind)

    slow = Slow("slow-embed")
    name = "slow-embed-plugin"
    from datasette.plugins import pm

    pm.register(FakeModelsPlugin(embedding=[slow]), name=name)
    try:
        ds = make_datasette(
            tmp_path, rag=rag_section(tmp_path, embedding_model="slow-embed"),
            state=str(tmp_path / "state.db"),
        )
        await ds.invoke_startup()
        r = await post_json(ds, "/-/llm-rag/index/news", {}, "root")
        assert r.status_code == 302

        async def running():
            job = (await ds.client.get("/-/llm-rag/index/news.json",
                                       cookies=cookies(ds, "root"))).json()["job"]
            return job if job["status"] == "running" and job.get("total") == 7 else None

        job = await wait_for(running)
        assert job["done"] < 7
        # a fresh page load shows the job from the state database
        page = await ds.client.get("/-/llm-rag/index/news", cookies=cookies(ds, "root"))
        assert "running" in page.text and "data-job='" in page.text
        # a second start while running returns the same job
        again = await post_json(ds, "/-/llm-rag/index/news", {}, "root",
                                headers={"accept": "application/json"})
        assert again.json()["job"]["id"] == job["id"]

        async def done():
            j = (await ds.client.get("/-/llm-rag/index/news.json",
                                     cookies=cookies(ds, "root"))).json()["job"]
            return j if j["status"] == "done" else None

        final = await wait_for(done)
        assert final["done"] == 7
    finally:
        pm.unregister(name=name)


async def test_job_left_running_by_a_dead_server_is_interrupted(ds):
    state = await state_db(ds)
    await state.execute_write(
        "insert into rag_jobs (database_name, status, started_at, updated_at) "
        "values ('news', 'running', 0, 0)", block=True
    )
    r = await ds.client.get("/-/llm-rag/index/news.json", cookies=cookies(ds, "root"))
    assert r.json()["job"]["status"] == "interrupted"


async def test_viewer_of_one_table_never_sees_another(ds, scripted_model):
    await build_index(ds)
    alice = cookies(ds, "alice")
    assert not await P.can_view(ds, {"id": "alice"}, "news", "memos")
    sql_path = "/news/-/query.json" if P.IS_V1 else "/news.json"
    sql = await ds.client.get(sql_path + "?sql=select+1", cookies=alice)
    assert sql.status_code == 403  # alice cannot run SQL, yet search works for her
    r = await ds.client.get("/-/llm-rag/news/search.json?q=secret+bridge+memo+budget", cookies=alice)
    assert r.status_code == 200
    assert r.json()["rows"] and all(row["table"] != "memos" for row in r.json()["rows"])
    assert "memos" not in r.json()["tables"]
    # asking for the hidden table explicitly returns nothing
    r = await ds.client.get("/-/llm-rag/news/search.json?q=secret+memo&table=memos", cookies=alice)
    assert r.json()["rows"] == []
    # root does get the memo: the test would notice a filter that hides everything
    r = await ds.client.get("/-/llm-rag/news/search.json?q=secret+bridge+memo+budget",
                            cookies=cookies(ds, "root"))
    assert any(row["table"] == "memos" for row in r.json()["rows"])

    # similar rows from a visible row: no memos (root would get one)
    r = await ds.client.get("/-/llm-rag/similar/news/articles/1.json", cookies=alice)
    assert r.status_code == 200 and r.json()["rows"]
    assert all(row["table"] != "memos" for row in r.json()["rows"])
    r = await ds.client.get("/-/llm-rag/similar/news/articles/1.json", cookies=cookies(ds, "root"))
    assert any(row["table"] == "memos" for row in r.json()["rows"])
    # similar rows of the hidden row itself
    r = await ds.client.get("/-/llm-rag/similar/news/memos/m~2F1~2Ea.json", cookies=alice)
    assert r.status_code == 404
    assert "memo" not in str(r.json().get("rows", ""))

    # ask: the prompt sent to the model carries no memo text
    scripted_model.enqueue("The repairs were delayed [1].")
    r = await post_json(ds, "/-/llm-rag/news/ask.json",
                        {"q": "secret bridge memo budget repairs"}, "alice")
    assert r.status_code == 200, r.text
    assert all(row["table"] != "memos" for row in r.json()["rows"])
    prompt = scripted_model.requests[-1].messages[0].parts[0].text
    assert "Secret bridge memo" not in prompt and "cut by half" not in prompt
    assert "Bridge repairs delayed" in prompt


async def test_similar_rows_page_and_links(ds):
    await build_index(ds)
    r = await ds.client.get("/-/llm-rag/similar/news/articles/1", cookies=cookies(ds, "root"))
    assert r.status_code == 200
    assert 'href="/news/articles/1"' in r.text  # back to the row itself
    assert "/news/" in r.text and "similarity" in r.text
    # the row page links to it
    row = await ds.client.get("/news/articles/1", cookies=cookies(ds, "root"))
    if P.IS_V1:
        assert "/-/llm-rag/similar/news/articles/1" in row.text
    else:
        assert "llm_rag_box.js?similar=%2F-%2Fllm-rag%2Fsimilar%2Fnews%2Farticles%2F1" in row.text


async def test_question_box_on_pages(ds):
    root = cookies(ds, "root")
    for path, needle in (("/", None), ("/news", None), ("/news/articles", "articles")):
        page = await ds.client.get(path, cookies=root)
        assert page.status_code == 200
        if P.IS_V1:
            assert 'class="llm-rag-box"' in page.text, path
            assert 'action="/-/llm-ask' in page.text
            if needle:
                assert 'name="table" value="articles"' in page.text
        else:
            assert "llm_rag_box.js?ask=%2F-%2Fllm-ask" in page.text, path
    # not on a table that is not indexed-configured, nor for a hidden table
    page = await ds.client.get("/news/memos", cookies=cookies(ds, "alice"))
    assert "llm-rag-box" not in page.text and "llm_rag_box.js" not in page.text
    # the box target: the ask page
    page = await ds.client.get("/-/llm-ask/news", cookies=root)
    assert page.status_code == 200 and 'id="llm-rag-form"' in page.text
    assert 'for="llm-rag-q"' in page.text


async def test_index_needs_llm_index(ds):
    alice = cookies(ds, "alice")
    assert (await ds.client.get("/-/llm-rag/index/news", cookies=alice)).status_code == 403
    assert (await ds.client.get("/-/llm-rag/index/news.json", cookies=alice)).status_code == 403
    assert (await post_json(ds, "/-/llm-rag/index/news", {}, "alice")).status_code == 403
    assert (await ds.client.get("/-/llm-rag/index")).status_code == 403
    state = await state_db(ds)
    assert (await state.execute("select count(*) from rag_jobs")).single_value() == 0


async def test_model_mismatch_and_corrupt_index(tmp_path, fake_models):
    ds = make_datasette(tmp_path, rag=_rag(tmp_path), state=str(tmp_path / "state.db"))
    await ds.invoke_startup()
    await build_index(ds)
    other = HashEmbeddingModel("other-embed", dimensions=32)
    from datasette.plugins import pm

    pm.register(FakeModelsPlugin(embedding=[other]), name="other-embed-plugin")
    try:
        ds2 = make_datasette(tmp_path, rag=rag_section(tmp_path, embedding_model="other-embed"),
                             state=str(tmp_path / "state2.db"))
        await ds2.invoke_startup()
        r = await ds2.client.get("/-/llm-rag/news/search.json?q=bridge", cookies=cookies(ds2, "root"))
        assert r.status_code == 409
        assert r.json()["error_kind"] == "model_mismatch"
        assert "hash-embed" in r.json()["error"] and "--rebuild" in r.json()["error"]
        assert str(tmp_path) not in r.json()["error"]  # the file's name, not where it lives
        assert "news.llm-rag.db" in r.json()["error"]
        page = await ds2.client.get("/-/llm-ask/news?q=bridge", cookies=cookies(ds2, "root"))
        assert "--rebuild" in page.text
        # rebuilding from the index page fixes it
        job = await build_index(ds2, rebuild="1")
        assert job["status"] == "done"
        r = await ds2.client.get("/-/llm-rag/news/search.json?q=bridge", cookies=cookies(ds2, "root"))
        assert r.status_code == 200 and r.json()["rows"]
    finally:
        pm.unregister(name="other-embed-plugin")

    # a damaged sidecar: clear message, the server keeps serving
    tmp2 = tmp_path / "second"
    tmp2.mkdir()
    ds3 = make_datasette(tmp2, rag=_rag(tmp2), state=str(tmp2 / "state.db"))
    await ds3.invoke_startup()
    (tmp2 / "sidecars").mkdir()
    (tmp2 / "sidecars" / "news.llm-rag.db").write_bytes(b"this is not a database" * 100)
    r = await ds3.client.get("/-/llm-rag/news/search.json?q=bridge", cookies=cookies(ds3, "root"))
    assert r.status_code == 500 and r.json()["error_kind"] == "corrupt_index"
    assert "rebuild" in r.json()["error"].lower() or "delete" in r.json()["error"].lower()
    assert str(tmp2) not in r.json()["error"]
    assert (await ds3.client.get("/-/llm-ask/news", cookies=cookies(ds3, "root"))).status_code == 200


async def test_unknown_table_in_config_is_skipped(tmp_path, fake_models):
    rag = _rag(tmp_path)
    rag["databases"]["news"]["tables"]["ghost"] = {"columns": ["body"]}
    ds = make_datasette(tmp_path, rag=rag, state=str(tmp_path / "state.db"))
    await ds.invoke_startup()
    page = await ds.client.get("/-/llm-rag/index/news", cookies=cookies(ds, "root"))
    assert "<td>ghost</td>" in page.text and "Table not found in the database" in page.text
    job = await build_index(ds)
    assert job["status"] == "done", job
    r = await ds.client.get("/-/llm-rag/news/search.json?q=bridge", cookies=cookies(ds, "root"))
    assert r.status_code == 200 and "ghost" not in r.json()["tables"]


async def test_question_length_and_empty(ds):
    await build_index(ds)
    root = cookies(ds, "root")
    r = await ds.client.get("/-/llm-rag/news/search.json?q=" + "a" * 2001, cookies=root)
    assert r.status_code == 400 and "2,000" in r.json()["error"]
    r = await ds.client.get("/-/llm-rag/news/search.json?q=+", cookies=root)
    assert r.status_code == 400 and r.json()["error_kind"] == "empty_question"
    r = await post_json(ds, "/-/llm-rag/news/ask.json", {"q": "b" * 5000}, "root")
    assert r.status_code == 400 and r.json()["error_kind"] == "question_too_long"


async def test_every_route_refuses_an_actor_who_cannot_view_the_database(tmp_path, fake_models,
                                                                         scripted_model):
    from datasette.app import Datasette

    from .rag_web_helpers import make_source

    path = make_source(tmp_path / "news.db")
    plugin = {"state_database": str(tmp_path / "state.db"), "rag": _rag(tmp_path),
              "permissions": {"llm-ask": True, "llm-index": True}}
    rules = {"databases": {"news": {"allow": {"id": "root"}}}}
    key = "config" if P.IS_V1 else "metadata"
    ds = Datasette([path], **{key: {**rules, "plugins": {"datasette-llm-newsroom": plugin}}})
    await ds.invoke_startup()
    await build_index(ds)
    scripted_model.responder = lambda request: "Answer [1]."
    gets = ["/-/llm-ask/news", "/-/llm-ask/news?q=bridge", "/-/llm-rag/news/search.json?q=bridge",
            "/-/llm-rag/similar/news/articles/1", "/-/llm-rag/similar/news/articles/1.json",
            "/-/llm-rag/index/news", "/-/llm-rag/index/news.json"]
    for actor in (None, "alice"):
        for url in gets:
            r = await ds.client.get(url, cookies=cookies(ds, actor))
            assert r.status_code == 403, (actor, url, r.status_code)
        for url, body in (("/-/llm-rag/news/ask.json", {"q": "bridge"}),
                          ("/-/llm-rag/news/ask.json", {"q": "bridge", "stream": True}),
                          ("/-/llm-rag/index/news", {})):
            r = await post_json(ds, url, body, actor)
            assert r.status_code == 403, (actor, url, r.status_code)
        home = await ds.client.get("/-/llm-ask", cookies=cookies(ds, actor))
        assert "/-/llm-ask/news" not in home.text
    assert scripted_model.requests == []
    # root, for contrast, gets through
    r = await post_json(ds, "/-/llm-rag/news/ask.json", {"q": "bridge repairs"}, "root")
    assert r.status_code == 200 and r.json()["mode"] == "answer"


async def test_bad_api_input_gets_clear_errors(ds):
    await build_index(ds)
    r = await post_json(ds, "/-/llm-rag/news/ask.json", {"q": "", "stream": True}, "root")
    assert r.status_code == 400 and r.json()["error_kind"] == "empty_question"
    r = await post_json(ds, "/-/llm-rag/news/ask.json", {"q": "bridge", "tables": 5}, "root")
    assert r.status_code == 400 and "tables" in r.json()["error"]
    r = await post_json(ds, "/-/llm-rag/news/ask.json", {"q": ["bridge"]}, "root")
    assert r.status_code == 400
    r = await post_json(ds, "/-/llm-rag/feedback.json", {"answer_id": "x", "rating": ["up"]}, "root")
    assert r.status_code == 400
    r = await ds.client.get("/-/llm-rag/news/ask.json", cookies=cookies(ds, "root"))
    assert r.status_code == 405
    r = await ds.client.get("/-/llm-rag/nope/search.json?q=x", cookies=cookies(ds, "root"))
    assert r.status_code == 404


async def test_index_job_timeout_is_recorded(tmp_path, fake_models):
    from datasette.plugins import pm

    class Stuck(HashEmbeddingModel):
        async def embed(self, texts, *, kind):
            await asyncio.sleep(5)
            return await super().embed(texts, kind=kind)

    pm.register(FakeModelsPlugin(embedding=[Stuck("stuck-embed")]), name="stuck-plugin")
    try:
        ds = make_datasette(
            tmp_path, rag=rag_section(tmp_path, embedding_model="stuck-embed", index_timeout=0.2),
            state=str(tmp_path / "state.db"),
        )
        await ds.invoke_startup()
        job = await build_index(ds)
        assert job["status"] == "timeout" and "index_timeout" in job["message"]
        # the server still answers, and a new job can start
        again = await post_json(ds, "/-/llm-rag/index/news", {}, "root",
                                headers={"accept": "application/json"})
        assert again.json()["job"]["id"] == job["id"] + 1

        async def second_stopped():
            r = await ds.client.get("/-/llm-rag/index/news.json", cookies=cookies(ds, "root"))
            return r.json()["job"]["status"] == "timeout"

        await wait_for(second_stopped)
    finally:
        pm.unregister(name="stuck-plugin")


async def test_index_page_reports_changed_rows(ds, tmp_path):
    import sqlite3

    await build_index(ds)
    root = cookies(ds, "root")
    page = await ds.client.get("/-/llm-rag/index/news?verify=1", cookies=root)
    assert "0 changed since indexing, 0 not indexed yet" in page.text
    assert "up to date" in page.text
    conn = sqlite3.connect(tmp_path / "news.db")
    conn.execute("update articles set body = 'The bridge reopened.' where id = 1")
    conn.execute("insert into articles values (5, 'New', 'A new article about parks.')")
    conn.commit()
    conn.close()
    page = await ds.client.get("/-/llm-rag/index/news?verify=1", cookies=root)
    assert "1 changed since indexing, 1 not indexed yet" in page.text
    status = (await ds.client.get("/-/llm-rag/index/news.json?verify=1", cookies=root)).json()
    assert status["verify"]["stale"] == 1 and status["verify"]["missing"] == 1
    assert [t["state"] for t in status["tables"] if t["table"] == "articles"] == ["stale"]
    job = await build_index(ds)
    assert job["stats"]["updated"] == 1 and job["stats"]["added"] == 1
    page = await ds.client.get("/-/llm-rag/index/news?verify=1", cookies=root)
    assert "up to date" in page.text
