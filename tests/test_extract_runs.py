"""Run lifecycle: interrupted-run recovery, resume, discard, cancel; feedback
examples reused in prompts and exported; saved and configured templates."""

from __future__ import annotations

import json
import time

from tests.fakes import Scripted

from .conftest import wait_for
from .extract_web_helpers import cookies, make_ds, post_form, rows_json, state_rows, wait_run

SCHEMA = {"columns": [{"name": "name"}, {"name": "age", "type": "integer"}], "key_columns": ["name"]}
TEXT = "Ann is 31. Bob is 40."


async def write_running_run(ds, run_id="0123456789abcdef", text=TEXT) -> str:
    """What a server that died mid-run leaves behind."""
    from datasette_llm_core.state import state_db

    now = time.time()

    def write(conn):
        with conn:
            conn.execute(
                "insert into llm_extract_runs (id, actor_id, created_at, updated_at, database_name, table_name,"
                " new_table, model_id, prompt_version, instructions, schema_json, options_json, status, chunks_total)"
                " values (?, 'root', ?, ?, 'news', 'people', 1, 'scripted', 'extract-v1', '', ?, ?, 'running', 1)",
                (run_id, now, now, json.dumps(SCHEMA), json.dumps({"chunk_chars": 12000, "overlap": 400})),
            )
            conn.execute(
                "insert into llm_extract_documents (run_id, idx, name, kind, media_type, size, sha256, text)"
                " values (?, 0, 'pasted text', 'text', 'text/plain', ?, 'x', ?)",
                (run_id, len(text), text),
            )

    await (await state_db(ds)).execute_write_fn(write, block=True)
    return run_id


async def test_interrupted_run_is_marked_then_resumed_or_discarded(tmp_path, fake_models, scripted_model):
    ds = make_ds(tmp_path)
    await ds.invoke_startup()  # creates the state tables
    run_id = await write_running_run(ds)
    other = await write_running_run(ds, "fedcba9876543210")
    ds = make_ds(tmp_path)  # "restart" the server
    await ds.invoke_startup()
    jar = cookies(ds, "root")
    r = await ds.client.get(f"/-/llm-extract/api/runs/{run_id}", cookies=jar)
    assert r.json()["status"] == "interrupted" and "server stopped" in r.json()["error"]
    page = await ds.client.get(f"/-/llm-extract/runs/{run_id}", cookies=jar)
    assert "Resume" in page.text and "Discard" in page.text
    # the SSE stream of an interrupted run ends instead of waiting forever
    events = await ds.client.get(f"/-/llm-extract/runs/{run_id}/events", cookies=jar)
    assert '"status": "interrupted"' in events.text

    scripted_model.enqueue(rows_json({"name": "Ann", "age": 31, "source_quote": "Ann is 31"}))
    r = await post_form(ds, f"/-/llm-extract/runs/{run_id}/resume", {}, jar, token_page=f"/-/llm-extract/runs/{run_id}")
    assert r.status_code == 302, r.text[-2000:]
    run = await wait_run(ds, run_id, jar)
    assert run["status"] == "done" and [r["values"]["name"] for r in run["rows"]] == ["Ann"]
    assert "Ann is 31. Bob is 40." in scripted_model.requests[0].messages[-1].parts[1].text

    r = await post_form(ds, f"/-/llm-extract/runs/{other}/discard", {}, jar, token_page=f"/-/llm-extract/runs/{other}")
    assert r.status_code == 302
    assert (await state_rows(ds, "select status from llm_extract_runs where id = ?", [other]))[0][0] == "discarded"
    r = await ds.client.post(f"/-/llm-extract/api/runs/{other}/insert", json={"accept": "all_valid"}, cookies=jar)
    assert r.status_code == 409


async def test_cancel_stops_a_running_run_and_keeps_its_rows(tmp_path, fake_models, scripted_model):
    ds = make_ds(tmp_path)
    await ds.invoke_startup()
    jar = cookies(ds, "root")
    answer = rows_json(*[{"name": f"P{i}", "age": i, "source_quote": f"P{i}"} for i in range(20)])
    scripted_model.enqueue(Scripted(text=answer, chunks=200, delay=0.02))
    r = await ds.client.post("/-/llm-extract/api/runs", cookies=jar, json={
        "database": "news", "table": "people", "create": True, "schema": SCHEMA, "text": TEXT, "model": "scripted"})
    run_id = r.json()["id"]

    async def some_rows():
        got = await ds.client.get(f"/-/llm-extract/api/runs/{run_id}", cookies=jar)
        return len(got.json()["rows"]) >= 1

    await wait_for(some_rows)
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run_id}/cancel", json={}, cookies=jar)
    assert r.status_code == 200
    run = await wait_run(ds, run_id, jar)
    assert run["status"] == "cancelled" and 1 <= len(run["rows"]) < 20
    # the kept rows can still be reviewed and inserted
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run_id}/insert", json={"accept": "all_valid"}, cookies=jar)
    assert r.status_code == 200 and r.json()["inserted"] == len(run["rows"])


async def test_feedback_examples_in_later_prompts_and_jsonl_export(tmp_path, fake_models, scripted_model):
    ds = make_ds(tmp_path, extract={"max_examples": 2})
    await ds.invoke_startup()
    jar = cookies(ds, "root")
    scripted_model.enqueue(rows_json({"name": "Ann", "amount": 30, "source_quote": "Ann is 31"},
                                     {"name": "Bob", "amount": 40, "source_quote": "Bob is 40"}))
    r = await ds.client.post("/-/llm-extract/api/runs", cookies=jar, json={
        "database": "news", "table": "donors", "schema": {"columns": [{"name": "name"}, {"name": "amount", "type": "integer"}]},
        "text": "Ann gave 31. Bob gave 40.", "model": "scripted"})
    run_id = r.json()["id"]
    await wait_run(ds, run_id, jar)
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run_id}/insert", cookies=jar, json={
        "rows": {"0": {"decision": "accept", "values": {"amount": 31}}, "1": "reject"}})
    assert r.status_code == 200, r.text
    export = await ds.client.get("/-/llm-extract/examples/news/donors.jsonl", cookies=jar)
    assert export.status_code == 200 and "attachment" in export.headers["content-disposition"]
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert len(lines) == 1  # one source document
    assert lines[0]["text"] == "Ann gave 31. Bob gave 40."
    assert lines[0]["records"] == [{"name": "Ann", "amount": 31}]
    assert lines[0]["rejected"] == [{"name": "Bob", "amount": 40}]
    # the evaluate command reads it as gold
    from datasette_llm_extract.evaluate import load_gold

    (tmp_path / "gold.jsonl").write_text(export.text)
    gold = load_gold(tmp_path / "gold.jsonl")
    assert gold[0].records == [{"name": "Ann", "amount": 31}] and gold[0].text.startswith("Ann gave")

    page = await ds.client.get("/-/llm-extract/into/news/donors", cookies=jar)
    assert "1 available" in page.text
    for use in (False, True):
        scripted_model.enqueue(rows_json())
        r = await ds.client.post("/-/llm-extract/api/runs", cookies=jar, json={
            "database": "news", "table": "donors", "text": "Cy gave 5.", "model": "scripted", "use_examples": use})
        await wait_run(ds, r.json()["id"], jar)
    without, with_examples = scripted_model.requests[-2], scripted_model.requests[-1]
    assert len(with_examples.messages) == len(without.messages) + 2
    assert "Ann is 31" in with_examples.messages[0].parts[0].text
    assert '"amount": 31' in with_examples.messages[1].parts[0].text


async def test_config_and_saved_templates_prefill_the_builder(tmp_path, fake_models, scripted_model):
    template = {"name": "Court filings", "instructions": "One row per filing.",
                "columns": [{"name": "case_number", "description": "Docket number"}, {"name": "filed", "type": "date"}]}
    ds = make_ds(tmp_path, extract={"templates": [template]})
    await ds.invoke_startup()
    jar = cookies(ds, "root")
    page = await ds.client.get("/-/llm-extract/new/news", cookies=jar)
    assert "Court filings (built in)" in page.text
    page = await ds.client.get("/-/llm-extract/new/news?template=config-0", cookies=jar)
    assert 'value="case_number"' in page.text and "Docket number" in page.text and "One row per filing." in page.text
    r = await ds.client.post("/-/llm-extract/templates", cookies=jar, json={
        "name": "Salaries", "shared": True, "instructions": "Yearly pay.",
        "schema": {"columns": [{"name": "employee"}, {"name": "salary", "type": "number"}]}})
    assert r.status_code == 201, r.text
    template_id = r.json()["id"]
    r = await ds.client.post("/-/llm-extract/templates", cookies=jar, json={"name": "Bad", "schema": {"columns": []}})
    assert r.status_code == 400
    page = await ds.client.get(f"/-/llm-extract/new/news?template={template_id}", cookies=jar)
    assert 'value="employee"' in page.text and "Yearly pay." in page.text
    rows = await state_rows(ds, "select name, owner_id, shared from llm_extract_templates")
    assert rows == [("Salaries", "root", 1)]
    # "save as template" on the form: only when the run really starts
    form = {"table": "filings", "col-0-name": "case_number", "col-0-type": "text", "text": " ",
            "model": "scripted", "save_template": "on", "template_name": "Mine", "instructions": "Mine too."}
    r = await post_form(ds, "/-/llm-extract/new/news", form, jar)
    assert r.status_code == 400
    assert (await state_rows(ds, "select count(*) from llm_extract_templates"))[0][0] == 1
    scripted_model.enqueue(rows_json())
    r = await post_form(ds, "/-/llm-extract/new/news", {**form, "text": "Case 12-345 filed 2020-01-02."}, jar)
    assert r.status_code == 302
    await wait_run(ds, r.headers["location"].rsplit("/", 1)[-1], jar)
    rows = await state_rows(ds, "select name, shared, instructions, schema_json from llm_extract_templates"
                                " where name = 'Mine'")
    assert rows[0][:3] == ("Mine", 0, "Mine too.") and "case_number" in rows[0][3]


async def test_multi_part_run_reports_progress_and_failed_parts(tmp_path, fake_models, scripted_model):
    from datasette_llm_core.errors import ModelError

    ds = make_ds(tmp_path, extract={"chunk_chars": 500, "overlap": 0},
                 plugin={"retries": {"max_attempts": 1}})
    await ds.invoke_startup()
    jar = cookies(ds, "root")
    paragraphs = [f"Person {i} is {20 + i} years old. " * 17 for i in range(3)]
    text = "\n\n".join(p.strip() for p in paragraphs)

    def responder(request):
        body = " ".join(p.text for m in request.messages for p in m.parts if hasattr(p, "text"))
        if "part 2 of" in body:
            return Scripted(error=ModelError("The provider timed out.", status=504))
        n = next(i for i in range(3) if f"Person {i} is" in body.split("Document to extract from")[-1])
        return rows_json({"name": f"Person {n}", "age": 20 + n, "source_quote": f"Person {n} is {20 + n} years old."})

    scripted_model.responder = responder
    r = await ds.client.post("/-/llm-extract/api/runs", cookies=jar, json={
        "database": "news", "table": "people", "create": True, "schema": SCHEMA, "text": text, "model": "scripted"})
    assert r.status_code == 201, r.text
    run = await wait_run(ds, r.json()["id"], jar)
    assert run["chunks_total"] >= 3
    assert run["chunks_failed"] == 1 and run["chunks_done"] == run["chunks_total"] - 1
    assert run["status"] == "done" and len(run["rows"]) == run["chunks_done"]
    page = await ds.client.get(f"/-/llm-extract/runs/{run['id']}", cookies=jar)
    assert f"{run['chunks_done']} of {run['chunks_total']} part(s) done, 1 failed" in page.text
    events = await ds.client.get(f"/-/llm-extract/runs/{run['id']}/events", cookies=jar)
    assert events.text.count("event: ChunkFailed") == 1 and "timed out" in events.text
