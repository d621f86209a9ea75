"""Run lifecycle: interrupted-run recovery, resume, discard, cancel; feedback
examples reused in prompts and exported; saved and configured templates."""

from __future__ import annotations

import json
import re
import time

import pytest

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


# ---------------------------------------------- resume re-runs only unfinished chunks

PEOPLE = [["Ann", "Bob"], ["Carl", "Dora"], ["Eve", "Ann"]]  # Ann again in the last part
FILLER = "Filler text about the council meeting. " * 10


def three_part_text() -> str:
    return "\n\n".join(" ".join(f"{n} is {30 + i} years old." for i, n in enumerate(names)) + " " + FILLER
                       for names in PEOPLE)


def chunk_text_of(request) -> str:
    return " ".join(getattr(p, "text", "") for p in request.messages[-1].parts)


def people_in(request) -> list[dict]:
    return [{"name": n, "age": int(a), "source_quote": f"{n} is {a} years old"}
            for n, a in re.findall(r"(\w+) is (\d+) years old", chunk_text_of(request))]


def three_part_plan():
    from datasette_llm_extract.documents import Document
    from datasette_llm_extract.engine import ExtractionJob, plan_units
    from datasette_llm_extract.schema import validate_table_spec
    from tests.fakes import ScriptedChatModel

    job = ExtractionJob(spec=validate_table_spec(SCHEMA), documents=[Document.from_text(three_part_text())],
                        chunk_chars=500, overlap=0)
    units = plan_units(job, ScriptedChatModel())
    # the test relies on one paragraph (two people) per part
    assert [re.findall(r"(\w+) is \d+ years old", u.chunk.text) for u in units] == PEOPLE
    return job, units


async def test_resume_runs_only_unfinished_chunks_and_keeps_finished_rows(tmp_path, fake_models, scripted_model):
    from datasette_llm_core import calllog
    from datasette_llm_core.state import state_db
    from datasette_llm_core.types import Usage

    _, units = three_part_plan()
    ds = make_ds(tmp_path, extract={"chunk_chars": 500, "overlap": 0, "concurrency": 1})
    await ds.invoke_startup()
    jar = cookies(ds, "root")
    slow = {"on": True}

    def respond(request):
        rows = rows_json(*people_in(request))
        if slow["on"] and "Carl is" in chunk_text_of(request):  # cut off after its first row
            return Scripted(text=rows, chunks=60, delay=0.05, usage=Usage(100, 10))
        return Scripted(text=rows, usage=Usage(100, 10))

    scripted_model.responder = respond
    r = await ds.client.post("/-/llm-extract/api/runs", cookies=jar, json={
        "database": "news", "table": "people", "create": True, "schema": SCHEMA, "text": three_part_text(),
        "model": "scripted"})
    run_id = r.json()["id"]

    async def carl_streamed():
        return await state_rows(ds, "select idx from llm_extract_rows where run_id = ? and values_json like '%Carl%'",
                                [run_id])

    await wait_for(carl_streamed)
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run_id}/cancel", json={}, cookies=jar)
    assert r.status_code == 200
    run = await wait_run(ds, run_id, jar)
    assert run["status"] == "cancelled" and run["chunks_done"] == 1
    before = {r["values"]["name"]: r["idx"] for r in run["rows"]}
    assert set(before) == {"Ann", "Bob", "Carl"}  # Carl: a row of the part cut off
    # a reviewer's edit and decision on a kept row
    state = await state_db(ds)
    await state.execute_write(
        "update llm_extract_rows set edited_json = ?, decision = 'accepted' where run_id = ? and idx = ?",
        [json.dumps({"name": "Bob", "age": 41}), run_id, before["Bob"]], block=True)
    await calllog.flush_pending()

    slow["on"] = False
    sent_before = len(scripted_model.requests)
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run_id}/resume", json={}, cookies=jar)
    assert r.status_code == 200, r.text
    run = await wait_run(ds, run_id, jar)
    assert run["status"] == "done", run
    resent = [chunk_text_of(q) for q in scripted_model.requests[sent_before:]]
    assert len(resent) == 2 and not any("Bob is" in t for t in resent)  # the finished part is not paid twice
    assert run["chunks_done"] == run["chunks_total"] == 3 and run["chunks_failed"] == 0
    # both attempts cut the text at the same places: the parts recorded are the plan's, once each
    (done_json,), = await state_rows(ds, "select done_chunks_json from llm_extract_runs where id = ?", [run_id])
    assert sorted(json.loads(done_json)) == [[0, u.chunk.start, u.index] for u in units]

    rows = {r["idx"]: r for r in run["rows"]}
    assert len(rows) == len(run["rows"])  # row numbers stay unique
    assert rows[before["Ann"]]["values"]["name"] == "Ann"
    bob = rows[before["Bob"]]
    assert bob["edited"] == {"name": "Bob", "age": 41} and bob["decision"] == "accepted"
    assert before["Carl"] not in rows  # the cut-off part's row was removed, not kept twice
    new = [r for r in run["rows"] if r["idx"] > max(before.values())]
    assert sorted(r["values"]["name"] for r in new) == ["Ann", "Carl", "Dora", "Eve"]
    ann_again = next(r for r in new if r["values"]["name"] == "Ann")
    assert ann_again["duplicate"] == "run"  # of the kept Ann, as in one uninterrupted run
    chunks = dict(await state_rows(ds, "select idx, chunk from llm_extract_rows where run_id = ?", [run_id]))
    assert chunks[before["Ann"]] == 0 and chunks[ann_again["idx"]] == 2  # the first attempt's part numbers
    events = (await ds.client.get(f"/-/llm-extract/runs/{run_id}/events", cookies=jar)).text
    assert f'"duplicate_of": {before["Ann"]}' in events and "event: RunResumed" in events

    # tokens and cost: the first attempt's (from the call log) plus the resumed one's
    await calllog.flush_pending()
    logged = await calllog.usage_for_ref(ds, run_id)
    assert run["input_tokens"] == logged["input_tokens"] >= 300
    assert run["output_tokens"] == logged["output_tokens"]
    assert run["cost"] == pytest.approx(logged["cost_usd"])


async def write_interrupted_run(ds, run_id: str, text: str, done_chunks: list, *, input_tokens: int = 0):
    from datasette_llm_core.state import state_db

    await write_running_run(ds, run_id, text)
    await (await state_db(ds)).execute_write(
        "update llm_extract_runs set status = 'interrupted', options_json = ?, done_chunks_json = ?,"
        " chunks_done = ?, chunks_total = 3, input_tokens = ? where id = ?",
        [json.dumps({"chunk_chars": 500, "overlap": 0}), json.dumps(done_chunks), len(done_chunks),
         input_tokens, run_id], block=True)


async def test_resume_budget_counts_what_the_run_spent_and_parts_must_match(tmp_path, fake_models, scripted_model):
    from datasette_llm_extract.engine import estimate
    from tests.fakes import ScriptedChatModel

    job, units = three_part_plan()
    job.done_units = {(0, units[0].chunk.start)}
    left = estimate(job, ScriptedChatModel())
    left_tokens = left["input_tokens"] + left["output_tokens"]
    cap = 2 * left_tokens
    ds = make_ds(tmp_path, extract={"chunk_chars": 500, "overlap": 0, "max_tokens_per_run": cap})
    await ds.invoke_startup()
    jar = cookies(ds, "root")
    done = [[0, units[0].chunk.start, 0]]
    # what is left fits the cap, but not on top of what the first attempt spent
    await write_interrupted_run(ds, "a" * 16, three_part_text(), done, input_tokens=cap - left_tokens // 2)
    r = await ds.client.post(f"/-/llm-extract/api/runs/{'a' * 16}/resume", json={}, cookies=jar)
    assert r.status_code == 400 and "already spent" in r.text and "max_tokens_per_run" in r.text, r.text
    assert scripted_model.requests == []

    # a finished part that the same settings no longer produce: refused, nothing sent
    await write_interrupted_run(ds, "b" * 16, three_part_text(), [[0, units[0].chunk.start + 7, 0]])
    r = await ds.client.post(f"/-/llm-extract/api/runs/{'b' * 16}/resume", json={}, cookies=jar)
    assert r.status_code == 400 and "same parts" in r.text, r.text

    # within the budget: only the two unfinished parts are sent
    await write_interrupted_run(ds, "c" * 16, three_part_text(), done, input_tokens=10)
    scripted_model.responder = lambda request: rows_json(*people_in(request))
    r = await ds.client.post(f"/-/llm-extract/api/runs/{'c' * 16}/resume", json={}, cookies=jar)
    assert r.status_code == 200, r.text
    run = await wait_run(ds, "c" * 16, jar)
    assert run["status"] == "done" and len(scripted_model.requests) == 2
    assert run["input_tokens"] > 10  # added to what was spent, not replaced
    assert sorted(r["values"]["name"] for r in run["rows"]) == ["Ann", "Carl", "Dora", "Eve"]
