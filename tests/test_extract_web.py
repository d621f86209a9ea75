"""Extraction pages end to end: builder -> run -> live rows -> review -> insert -> undo."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from datasette_llm_extract.prompts import PROMPT_VERSION
from tests.fakes import Scripted

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

ROOT = "root"

BUILDER = {
    "table": "people",
    "col-0-name": "name", "col-0-type": "text", "col-0-required": "on", "col-0-key": "on",
    "col-0-description": "Full name",
    "col-1-name": "age", "col-1-type": "integer",
    "col-2-name": "party", "col-2-type": "choice", "col-2-choices": "red, blue",
    "text": "Ann Lee (31, red) met Bob Stone (40, blue) and Cy Young, aged lots.",
    "instructions": "One row per person.",
    "model": "scripted",
}


@pytest.fixture
async def ds(tmp_path, fake_models):
    ds = make_ds(tmp_path)
    await ds.invoke_startup()
    return ds


async def start_builder_run(ds, scripted_model, answers, data=None):
    scripted_model.enqueue(*answers)
    jar = cookies(ds, ROOT)
    r = await post_form(ds, "/-/llm-extract/new/news", {**BUILDER, **(data or {})}, jar)
    assert r.status_code == 302, r.text[-2000:]
    run_id = r.headers["location"].rsplit("/", 1)[-1]
    return run_id, jar


async def test_action_menus_offer_extraction_to_allowed_users_only(ds):
    r = await ds.client.get("/news", cookies=cookies(ds, ROOT))
    assert "Extract data into a new table" in r.text
    assert "/-/llm-extract/new/news" in r.text
    r = await ds.client.get("/news/donors", cookies=cookies(ds, ROOT))
    assert "Extract data into this table" in r.text
    assert 'href="/-/llm-extract"' in r.text  # menu link to the runs page
    for actor in (None, "someone"):
        r = await ds.client.get("/news", cookies=cookies(ds, actor))
        assert "Extract data into a new table" not in r.text
        r = await ds.client.get("/news/donors", cookies=cookies(ds, actor))
        assert "Extract data into this table" not in r.text


async def test_builder_run_review_insert_provenance_undo(ds, tmp_path, scripted_model):
    first = rows_json(
        {"name": "Ann Lee", "age": 31, "party": "red", "source_quote": "Ann Lee (31, red)"},
        {"name": "Bob Stone", "age": 40, "party": "blue", "source_quote": "Bob Stone (40, blue)"},
        {"name": "Cy Young", "age": "lots", "party": None, "source_quote": "Cy Young, aged lots"},
    )
    reask = rows_json({"name": "Cy Young", "age": "many", "party": None, "source_quote": "Cy Young, aged lots"})
    run_id, jar = await start_builder_run(ds, scripted_model, [first, reask])
    run = await wait_run(ds, run_id, jar)
    assert run["status"] == "done", run
    # the invalid row was re-asked once, then flagged with the reason
    assert len(scripted_model.requests) == 2
    assert "failed validation" in json.dumps([p.text for p in scripted_model.requests[1].messages[-1].parts])
    by_name = {r["values"]["name"]: r for r in run["rows"]}
    assert by_name["Ann Lee"]["valid"] and by_name["Ann Lee"]["quote_found"]
    cy = by_name["Cy Young"]
    assert not cy["valid"] and any("age" in e for e in cy["errors"])
    # nothing written to the target yet: the table only exists after the insert
    assert not await news_rows(ds, "select 1 from sqlite_master where name = 'people'")

    page = await ds.client.get(f"/-/llm-extract/runs/{run_id}", cookies=jar)
    assert page.status_code == 200
    assert "Invalid:" in page.text and "Ann Lee (31, red)" in page.text

    ann, bob = by_name["Ann Lee"]["idx"], by_name["Bob Stone"]["idx"]
    form = {
        f"row-{ann}-decision": "accept", f"row-{ann}-col-0": "Ann B. Lee", f"row-{ann}-col-1": "31",
        f"row-{ann}-col-2": "red",
        f"row-{bob}-decision": "reject",
        f"row-{cy['idx']}-decision": "pending",
    }
    r = await post_form(ds, f"/-/llm-extract/runs/{run_id}/insert", form, jar,
                        token_page=f"/-/llm-extract/runs/{run_id}")
    assert r.status_code == 302, r.text[-3000:]
    rows = await news_rows(ds, "select rowid, name, age, party, _llm_run from people")
    assert rows == [(1, "Ann B. Lee", 31, "red", run_id)]
    types = {r[1]: r[2] for r in await news_rows(ds, "pragma table_info(people)")}
    assert types == {"name": "TEXT", "age": "INTEGER", "party": "TEXT", "_llm_run": "TEXT"}
    prov = await state_rows(ds, "select database_name, table_name, row_pk, run_id, quote from llm_extract_provenance")
    assert prov == [("news", "people", "[1]", run_id, "Ann Lee (31, red)")]
    labels = dict(await state_rows(ds, "select label, after_json from llm_extract_examples where run_id = ?",
                             [run_id]))
    assert set(labels) == {"edited", "rejected"}
    assert json.loads(labels["edited"])["name"] == "Ann B. Lee" and labels["rejected"] is None
    run_row = (await state_rows(ds, "select status, model_id, prompt_version, instructions, schema_json,"
                         " inserted_count, input_tokens from llm_extract_runs where id = ?", [run_id]))[0]
    assert run_row[0] == "inserted" and run_row[1] == "scripted" and run_row[2] == PROMPT_VERSION
    assert run_row[3] == "One row per person." and json.loads(run_row[4])["key_columns"] == ["name"]
    assert run_row[5] == 1 and run_row[6] > 0
    docs = await state_rows(ds, "select name, kind, text, sha256 from llm_extract_documents where run_id = ?", [run_id])
    assert docs[0][1] == "text" and docs[0][2] == BUILDER["text"] and len(docs[0][3]) == 64

    # the _llm_run cell links to the row's provenance card, which links to the run for its owner
    table_page = await ds.client.get("/news/people", cookies=jar)
    assert 'href="/-/llm-extract/provenance/news/people/1"' in table_page.text
    card = await ds.client.get("/-/llm-extract/provenance/news/people/1", cookies=jar)
    assert f'href="/-/llm-extract/runs/{run_id}"' in card.text

    # undo asks first, changing nothing; confirmed, it deletes the inserted rows in one go
    r = await post_form(ds, f"/-/llm-extract/runs/{run_id}/undo", {}, jar, token_page=f"/-/llm-extract/runs/{run_id}")
    assert r.status_code == 200 and "Yes, delete the 1 row(s)" in r.text
    assert await news_rows(ds, "select count(*) from people") == [(1,)]
    r = await post_form(ds, f"/-/llm-extract/runs/{run_id}/undo", {"confirm": "yes"}, jar,
                        token_page=f"/-/llm-extract/runs/{run_id}")
    assert r.status_code == 302
    assert await news_rows(ds, "select count(*) from people") == [(0,)]
    assert (await state_rows(ds, "select count(*) from llm_extract_provenance"))[0][0] == 0
    assert (await state_rows(ds, "select status from llm_extract_runs where id = ?", [run_id]))[0][0] == "undone"


async def test_invalid_accepted_row_is_refused_with_its_reason_and_nothing_is_written(ds, tmp_path, scripted_model):
    bad = rows_json({"name": "Ann", "age": "old", "party": "red", "source_quote": "Ann"})
    run_id, jar = await start_builder_run(ds, scripted_model, [bad, bad])
    run = await wait_run(ds, run_id, jar)
    idx = run["rows"][0]["idx"]
    before = db_bytes(tmp_path / "news.db")
    page = f"/-/llm-extract/runs/{run_id}"
    r = await post_form(ds, f"{page}/insert", {f"row-{idx}-decision": "accept", f"row-{idx}-col-0": "Ann",
                                               f"row-{idx}-col-1": "old", f"row-{idx}-col-2": "red"},
                        jar, token_page=page)
    assert r.status_code == 400
    assert "Nothing was saved" in r.text and "age" in r.text
    assert 'value="old"' in r.text  # the reviewer's edits are kept on the page
    assert db_bytes(tmp_path / "news.db") == before
    # fixing the value makes it insertable; the model's invalid value never reaches the table
    r = await post_form(ds, f"{page}/insert", {f"row-{idx}-decision": "accept", f"row-{idx}-col-0": "Ann",
                                               f"row-{idx}-col-1": "52", f"row-{idx}-col-2": "RED"},
                        jar, token_page=page)
    assert r.status_code == 302
    assert await news_rows(ds, "select name, age, party from people") == [("Ann", 52, "red")]


async def test_rows_stream_over_sse_as_they_arrive_and_replay_after_reload(ds, scripted_model):
    answer = rows_json(*[{"name": f"P{i}", "age": i, "party": "red", "source_quote": f"P{i}"} for i in range(3)])
    run_id, jar = await start_builder_run(ds, scripted_model, [Scripted(text=answer, chunks=12, delay=0.05)])
    arrivals: list[tuple[float, str]] = []
    body = []
    done = asyncio.Event()

    async def receive():
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.body" and message.get("body"):
            text = message["body"].decode()
            body.append(text)
            for line in text.splitlines():
                if line.startswith("event: "):
                    arrivals.append((time.monotonic(), line[7:]))
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    scope = {
        "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": f"/-/llm-extract/runs/{run_id}/events", "raw_path": f"/-/llm-extract/runs/{run_id}/events".encode(),
        "query_string": b"", "root_path": "",
        "headers": [(b"host", b"localhost"), (b"cookie", f"ds_actor={jar['ds_actor']}".encode())],
        "client": ("127.0.0.1", 1234), "server": ("localhost", 80),
    }
    await asyncio.wait_for(ds.app()(scope, receive, send), 30)
    kinds = [k for _, k in arrivals]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunStatus"
    assert kinds.count("RowExtracted") == 3
    times = {k: t for t, k in reversed(arrivals)}  # first arrival of each kind
    # the first row reached the client well before the run ended
    assert arrivals[-1][0] - times["RowExtracted"] > 0.1
    # reload: replay from the database after a given event id
    r = await ds.client.get(f"/-/llm-extract/runs/{run_id}/events?after=3", cookies=jar)
    replay = [line[4:] for line in r.text.splitlines() if line.startswith("id: ")]
    assert replay and int(replay[0]) == 4 and "RunStatus" in r.text


async def test_existing_table_prefill_and_leaving_columns_out(ds, tmp_path, scripted_model):
    jar = cookies(ds, ROOT)
    r = await ds.client.get("/-/llm-extract/into/news/donors", cookies=jar)
    assert r.status_code == 200
    for name in ("name", "amount", "party"):
        assert f'name="col-{["name", "amount", "party"].index(name)}-name" value="{name}"' in r.text
    assert '<option value="integer" selected>' in r.text
    scripted_model.enqueue(rows_json({"name": "New Donor", "amount": "$1,200", "source_quote": "New Donor gave $1,200"}))
    form = {"col-0-name": "name", "col-0-include-present": "1", "col-0-include": "on", "col-0-type": "text",
            "col-1-name": "amount", "col-1-include-present": "1", "col-1-include": "on", "col-1-type": "integer",
            "col-2-name": "party", "col-2-include-present": "1", "col-2-type": "text",
            "text": "New Donor gave $1,200.", "model": "scripted"}
    r = await post_form(ds, "/-/llm-extract/into/news/donors", {**form, "text": " "}, jar)
    assert r.status_code == 400 and "Nothing to extract" in r.text
    # the unticked column is still offered (unticked) when the form comes back
    assert 'value="party"' in r.text and 'id="col-2-include" name="col-2-include" >' in r.text
    r = await post_form(ds, "/-/llm-extract/into/news/donors", form, jar)
    assert r.status_code == 302, r.text[-2000:]
    run_id = r.headers["location"].rsplit("/", 1)[-1]
    run = await wait_run(ds, run_id, jar)
    assert [c["name"] for c in run["schema"]["columns"]] == ["name", "amount"]
    assert "party" not in json.dumps([p.text for p in scripted_model.requests[0].messages[-1].parts if hasattr(p, "text")])
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run_id}/insert", json={"accept": "all_valid"}, cookies=jar)
    assert r.status_code == 200, r.text
    assert await news_rows(ds, "select name, amount, party, _llm_run from donors where rowid = 2") == [
        ("New Donor", 1200, None, run_id)]
    # descriptions stored by the suite are offered next time
    r = await ds.client.get("/-/llm-extract/into/news/donors", cookies=jar)
    assert r.status_code == 200


async def test_model_text_is_escaped_on_the_run_page(ds, scripted_model):
    evil = '<script>alert(1)</script><img src=x onerror=alert(2)>'
    run_id, jar = await start_builder_run(
        ds, scripted_model, [rows_json({"name": evil, "age": 1, "party": "red", "source_quote": evil})])
    await wait_run(ds, run_id, jar)
    r = await ds.client.get(f"/-/llm-extract/runs/{run_id}", cookies=jar)
    assert evil not in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text


async def test_no_model_configured_page_explains_how(tmp_path):
    ds = make_ds(tmp_path)
    await ds.invoke_startup()
    r = await ds.client.get("/-/llm-extract/new/news", cookies=cookies(ds, ROOT))
    assert r.status_code == 200
    assert "OPENAI_API_KEY" in r.text and "ANTHROPIC_API_KEY" in r.text and "base_url" in r.text


async def test_estimate_endpoint_and_budget_cap(tmp_path, fake_models):
    ds = make_ds(tmp_path, extract={"max_tokens_per_run": 50})
    await ds.invoke_startup()
    jar = cookies(ds, ROOT)
    body = {"database": "news", "table": "donors", "text": "Ann gave $5.", "model": "scripted"}
    r = await ds.client.post("/-/llm-extract/estimate", json=body, cookies=jar)
    assert r.status_code == 400 and "limit of 50" in r.json()["error"]
    # the page's "Estimate cost" button posts the form itself (multipart, with its token)
    form = {"database": "news", "new_table": "1", "table": "gifts", "col-0-name": "giver", "model": "scripted"}
    r = await post_form(ds, "/-/llm-extract/estimate", form, jar, token_page="/-/llm-extract/new/news",
                        files={"files": ("gifts.txt", b"Ann gave $5. " * 40, "text/plain")})
    assert r.status_code == 400 and "limit of 50" in r.json()["error"]
    (tmp_path / "two").mkdir()
    ds2 = make_ds(tmp_path / "two")
    await ds2.invoke_startup()
    r = await ds2.client.post("/-/llm-extract/estimate", json=body, cookies=cookies(ds2, ROOT))
    data = r.json()
    assert r.status_code == 200 and data["ok"] and data["chunks"] == 1
    r = await post_form(ds2, "/-/llm-extract/estimate", form, cookies(ds2, ROOT), token_page="/-/llm-extract/new/news",
                        files={"files": ("gifts.txt", b"Ann gave $5. " * 40, "text/plain")})
    assert r.status_code == 200 and r.json()["documents"][0]["name"] == "gifts.txt"
    assert r.json()["input_tokens"] > data["input_tokens"]  # the file is longer than the pasted text
    assert data["input_tokens"] > 0 and data["cost"] is not None and data["model_id"] == "scripted"
