"""JSON API, permission checks on every route, and bad input that must write nothing."""

from __future__ import annotations

import asyncio
import base64

import pytest
from datasette import hookimpl
from datasette.plugins import pm

from datasette_llm_core.errors import ModelError
from datasette_llm_core.permissions import IS_V1 as V1

from .extract_web_helpers import (
    cookies,
    db_bytes,
    make_ds,
    news_rows,
    post_form,
    rows_json,
    state_rows,
    wait_run,
)

PEOPLE = {"columns": [{"name": "name", "nullable": False}, {"name": "age", "type": "integer"}],
          "key_columns": ["name"]}
GRANTS = {"permissions": {"llm-extract": {"id": ["alice", "bob", "dave"]}}}
RULES = {"permissions": {"create-table": {"id": ["alice", "bob", "root"]},
                         "insert-row": {"id": ["alice", "bob", "root"]}}}


class DenyDaveWrites:
    """0.65 has no write permissions of its own: a plugin can still refuse them."""

    @hookimpl
    def permission_allowed(self, actor, action):
        if actor and actor.get("id") == "dave" and action in ("create-table", "insert-row"):
            return False
        return None


@pytest.fixture
async def ds(tmp_path, fake_models):
    ds = make_ds(tmp_path, plugin=GRANTS, rules=RULES if V1 else None)
    plugin = None
    if not V1:
        plugin = DenyDaveWrites()
        pm.register(plugin, name="deny-dave-writes")
    try:
        await ds.invoke_startup()
        yield ds
    finally:
        if plugin is not None:
            pm.unregister(name="deny-dave-writes")


async def start(ds, actor, scripted_model, answer, **body):
    scripted_model.enqueue(answer)
    payload = {"database": "news", "table": "people", "create": True, "schema": PEOPLE,
               "text": "Ann is 31. Bob is 40.", "model": "scripted", **body}
    return await ds.client.post("/-/llm-extract/api/runs", json=payload, cookies=cookies(ds, actor))


async def test_api_start_status_review_insert(ds, tmp_path, scripted_model):
    answer = rows_json({"name": "Ann", "age": 31, "source_quote": "Ann is 31"},
                       {"name": "Bob", "age": 40, "source_quote": "Bob is 40"},
                       {"name": "Ann", "age": 31, "source_quote": "Ann is 31"})
    r = await start(ds, "alice", scripted_model, answer)
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    assert r.json()["urls"]["events"].endswith(f"/runs/{run_id}/events")
    run = await wait_run(ds, run_id, cookies(ds, "alice"))
    assert run["status"] == "done" and len(run["rows"]) == 3
    assert run["rows"][2]["duplicate"] == "run"  # same key as an earlier row
    decisions = {"rows": {"0": {"decision": "accept", "values": {"age": "32"}}, "1": "reject", "2": "reject"}}
    # two reviewers pressing "insert" at once: one wins, the other is told, rows go in once
    first, second = await asyncio.gather(*[
        ds.client.post(f"/-/llm-extract/api/runs/{run_id}/insert", json=decisions, cookies=cookies(ds, "alice"))
        for _ in range(2)
    ])
    assert sorted([first.status_code, second.status_code]) == [200, 409], (first.text, second.text)
    r = first if first.status_code == 200 else second
    assert r.json()["inserted"] == 1 and r.json()["rejected"] == 2
    assert await news_rows(ds, "select name, age, _llm_run from people") == [("Ann", 32, run_id)]
    # a second insert from the same run is refused
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run_id}/insert", json=decisions, cookies=cookies(ds, "alice"))
    assert r.status_code == 409
    # someone else (not root) cannot undo it
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run_id}/undo", json={}, cookies=cookies(ds, "bob"))
    assert r.status_code == 404
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run_id}/undo", json={}, cookies=cookies(ds, "root"))
    assert r.status_code == 200 and r.json()["deleted"] == 1


async def test_permission_denied_on_every_route(ds, tmp_path, scripted_model):
    r = await start(ds, "alice", scripted_model, rows_json({"name": "Ann", "age": 31, "source_quote": "Ann"}))
    run_id = r.json()["id"]
    await wait_run(ds, run_id, cookies(ds, "alice"))
    run_routes = [
        ("GET", f"/-/llm-extract/runs/{run_id}", None),
        ("GET", f"/-/llm-extract/runs/{run_id}/events", None),
        ("GET", f"/-/llm-extract/api/runs/{run_id}", None),
        *[("POST", f"/-/llm-extract/api/runs/{run_id}/{a}", {"accept": "all_valid"})
          for a in ("insert", "cancel", "undo", "resume", "discard")],
    ]
    start_routes = [
        ("GET", "/-/llm-extract/new/news", None),
        ("GET", "/-/llm-extract/into/news/donors", None),
        ("POST", "/-/llm-extract/estimate", {"database": "news", "table": "donors", "text": "x"}),
        ("POST", "/-/llm-extract/api/runs", {"database": "news", "table": "donors", "text": "x"}),
        ("GET", "/-/llm-extract/examples/news/donors.jsonl", None),
        ("POST", "/-/llm-extract/templates", {"name": "t", "schema": {"columns": ["a"]}}),
    ]
    before = db_bytes(tmp_path / "news.db")
    for actor in (None, "carol"):  # anonymous, and signed in without a grant
        for method, path, body in start_routes + run_routes:
            r = await ds.client.request(method, path, json=body, cookies=cookies(ds, actor)) if body is not None \
                else await ds.client.request(method, path, cookies=cookies(ds, actor))
            assert r.status_code in (403, 404), (actor, path, r.status_code)
    for method, path, body in run_routes:  # bob may extract, but this is alice's run
        r = await ds.client.request(method, path, json=body, cookies=cookies(ds, "bob")) if body is not None \
            else await ds.client.request(method, path, cookies=cookies(ds, "bob"))
        assert r.status_code == 404, (path, r.status_code)
    assert db_bytes(tmp_path / "news.db") == before
    assert (await state_rows(ds, "select count(*) from llm_extract_runs"))[0][0] == 1
    # root may see any run
    r = await ds.client.get(f"/-/llm-extract/api/runs/{run_id}", cookies=cookies(ds, "root"))
    assert r.status_code == 200
    # llm-extract without Datasette's create-table / insert-row is not enough
    r = await start(ds, "dave", scripted_model, rows_json())
    assert r.status_code == 403 and "create tables" in r.json()["error"]
    r = await ds.client.post("/-/llm-extract/api/runs", cookies=cookies(ds, "dave"),
                             json={"database": "news", "table": "donors", "text": "x", "model": "scripted"})
    assert r.status_code == 403 and "insert rows" in r.json()["error"]


BAD_JSON = [
    ({"text": "   "}, 400, "Nothing to extract from"),
    ({"database": "nope"}, 404, "no database"),
    ({"create": False, "table": "missing", "schema": PEOPLE}, 404, "no table called"),
    ({"schema": {"columns": [{"name": "_llm_secret"}]}}, 400, "reserved"),
    ({"schema": {"columns": [{"name": "Name"}, {"name": "name"}]}}, 400, "used twice"),
    ({"schema": {"columns": [{"name": "a", "type": "money"}]}}, 400, "unknown type"),
    ({"table": "donors"}, 400, "already exists"),
    ({"direct_insert": True}, 400, "switched off"),
    ({"model": "no-such-model"}, 400, "Unknown chat model"),
    ({"files": [{"name": "a.txt", "data_base64": "not base64!"}]}, 400, "not valid base64"),
    ({"files": [{"name": "a.heic", "content_type": "image/heic", "data_base64": "AAAAGGZ0eXBoZWlj"}]}, 400, "HEIC"),
]


async def test_bad_json_input_writes_nothing(ds, tmp_path, scripted_model):
    before = db_bytes(tmp_path / "news.db")
    for change, status, message in BAD_JSON:
        payload = {"database": "news", "table": "people", "create": True, "schema": PEOPLE,
                   "text": "Ann is 31.", "model": "scripted", **change}
        r = await ds.client.post("/-/llm-extract/api/runs", json=payload, cookies=cookies(ds, "root"))
        assert r.status_code == status, (change, r.text)
        assert message.lower() in r.json()["error"].lower(), (change, r.text)
    assert db_bytes(tmp_path / "news.db") == before
    assert (await state_rows(ds, "select count(*) from llm_extract_runs"))[0][0] == 0
    assert scripted_model.requests == []


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
HEIC = b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64


BAD_UPLOADS = [
    ("notes.txt", "text/plain", PNG, "is really image/png"),
    ("photo.heic", "image/heic", HEIC, "HEIC"),
    ("big.txt", "text/plain", b"a" * 5000, "the limit is"),
    ("empty.txt", "text/plain", b"", "is empty"),
]


async def test_bad_uploads_write_nothing(tmp_path, fake_models, scripted_model):
    ds = make_ds(tmp_path, extract={"max_upload_bytes": 4000})
    await ds.invoke_startup()
    before = db_bytes(tmp_path / "news.db")
    for filename, content_type, data, message in BAD_UPLOADS:
        form = {"table": "scans", "col-0-name": "name", "col-0-type": "text", "model": "scripted"}
        r = await post_form(ds, "/-/llm-extract/new/news", form, cookies(ds, "root"),
                            files={"files": (filename, data, content_type)})
        assert r.status_code == 400, (filename, r.text[-1500:])
        assert message in r.text and "Nothing was saved" in r.text, filename
    assert db_bytes(tmp_path / "news.db") == before
    assert (await state_rows(ds, "select count(*) from llm_extract_runs"))[0][0] == 0
    assert scripted_model.requests == []


@pytest.mark.skipif(V1, reason="1.0 checks Sec-Fetch-Site/Origin instead of form tokens")
async def test_multipart_form_without_its_token_is_refused(ds, tmp_path):
    form = {"table": "people", "col-0-name": "name", "text": "Ann", "model": "scripted", "csrftoken": "forged"}
    jar = {**cookies(ds, "root"), "ds_csrftoken": "something-else"}
    r = await ds.client.post("/-/llm-extract/new/news", data=form, files={"files": ("a.txt", b"Ann", "text/plain")},
                             cookies=jar)
    assert r.status_code == 403
    assert (await state_rows(ds, "select count(*) from llm_extract_runs"))[0][0] == 0


async def test_immutable_database_is_refused_clearly(tmp_path, fake_models):
    (tmp_path / "ro").mkdir()
    from .extract_web_helpers import make_news_db

    ro = make_news_db(tmp_path / "ro" / "archive.db")
    ds = make_ds(tmp_path, immutable=[ro])
    await ds.invoke_startup()
    r = await ds.client.post("/-/llm-extract/api/runs", cookies=cookies(ds, "root"), json={
        "database": "archive", "table": "donors", "text": "x", "model": "scripted"})
    assert r.status_code == 400 and "read-only" in r.json()["error"]
    r = await ds.client.get("/archive", cookies=cookies(ds, "root"))
    assert "Extract data into a new table" not in r.text


async def test_provider_error_and_non_json_output_fail_clearly(tmp_path, fake_models, scripted_model):
    ds = make_ds(tmp_path, plugin={"retries": {"max_attempts": 1}})
    await ds.invoke_startup()
    jar = cookies(ds, "root")
    scripted_model.enqueue(ModelError("The provider is overloaded (HTTP 529): try again later.", status=529))
    r = await ds.client.post("/-/llm-extract/api/runs", cookies=jar, json={
        "database": "news", "table": "people", "create": True, "schema": PEOPLE, "text": "Ann", "model": "scripted"})
    run = await wait_run(ds, r.json()["id"], jar)
    assert run["status"] == "failed" and run["rows"] == []
    page = await ds.client.get(f"/-/llm-extract/runs/{run['id']}", cookies=jar)
    assert "Resume" in page.text and "Discard" in page.text
    events = await ds.client.get(f"/-/llm-extract/runs/{run['id']}/events", cookies=jar)
    assert "overloaded" in events.text and "ChunkFailed" in events.text

    scripted_model.enqueue("I'm sorry, I can't produce JSON today.")
    r = await ds.client.post("/-/llm-extract/api/runs", cookies=jar, json={
        "database": "news", "table": "people2", "create": True, "schema": PEOPLE, "text": "Ann", "model": "scripted"})
    run = await wait_run(ds, r.json()["id"], jar)
    events = await ds.client.get(f"/-/llm-extract/runs/{run['id']}/events", cookies=jar)
    assert run["status"] == "failed" and "could not be read as rows" in events.text
    assert not await news_rows(ds, "select 1 from sqlite_master where name in ('people', 'people2')")


async def test_direct_insert_for_trusted_pipelines(tmp_path, fake_models, scripted_model):
    ds = make_ds(tmp_path, extract={"direct_insert": True})
    await ds.invoke_startup()
    scripted_model.enqueue(rows_json({"name": "Ann", "age": 31, "source_quote": "Ann is 31"},
                                     {"name": None, "age": 3, "source_quote": "three"},
                                     {"name": None, "age": 3, "source_quote": "three"}))
    r = await ds.client.post("/-/llm-extract/api/runs", cookies=cookies(ds, "root"), json={
        "database": "news", "table": "people", "create": True, "schema": PEOPLE, "model": "scripted",
        "files": [{"name": "notes.txt", "content_type": "text/plain",
                   "data_base64": base64.b64encode(b"Ann is 31, three").decode()}],
        "direct_insert": True})
    assert r.status_code == 201, r.text

    async def inserted():
        got = await ds.client.get(f"/-/llm-extract/api/runs/{r.json()['id']}", cookies=cookies(ds, "root"))
        return got.json()["status"] == "inserted"

    from .conftest import wait_for

    await wait_for(inserted)
    # only the valid row went in; the invalid one (name is required) did not
    assert await news_rows(ds, "select name, age from people") == [("Ann", 31)]
    assert await state_rows(ds, "select name, kind, text from llm_extract_documents") == [
        ("notes.txt", "text", "Ann is 31, three")]


async def test_insert_is_all_or_nothing(ds, tmp_path, scripted_model):
    await ds.databases["news"].execute_write_script(
        "create table codes (code text primary key, n integer); insert into codes values ('A', 1);")
    before = db_bytes(tmp_path / "news.db")
    scripted_model.enqueue(rows_json({"code": "B", "n": 2, "source_quote": "B 2"},
                                     {"code": "A", "n": 3, "source_quote": "A 3"}))
    jar = cookies(ds, "root")
    r = await ds.client.post("/-/llm-extract/api/runs", cookies=jar, json={
        "database": "news", "table": "codes", "text": "B 2, A 3", "model": "scripted"})
    run = await wait_run(ds, r.json()["id"], jar)
    assert [row["duplicate"] for row in run["rows"]] == [None, "table"]
    # accepting the duplicate anyway hits the primary key: nothing at all is written
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run['id']}/insert", cookies=jar,
                             json={"rows": {"0": "accept", "1": "accept"}})
    assert r.status_code == 409 and "UNIQUE" in r.json()["error"] and "Nothing was inserted" in r.json()["error"]
    assert r.json()["row_errors"] == {"1": [r.json()["error"]]}
    assert db_bytes(tmp_path / "news.db") == before  # no row B, no _llm_run column
    assert (await state_rows(ds, "select status from llm_extract_runs"))[0][0] == "done"
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run['id']}/insert", cookies=jar,
                             json={"rows": {"0": "accept", "1": "reject"}})
    assert r.status_code == 200 and r.json()["pks"] == [["B"]]
    assert await news_rows(ds, "select code, n, _llm_run from codes order by code") == [
        ("A", 1, None), ("B", 2, run["id"])]
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run['id']}/undo", cookies=jar, json={})
    assert r.status_code == 200 and r.json()["deleted"] == 1
    assert await news_rows(ds, "select code from codes") == [("A",)]
