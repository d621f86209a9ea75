"""Review integrity below the browser: canonical text, re-ask matching, streamed
corrections, where a run stands, controls per type, re-review after undo,
remembered key columns and instructions (the browser journeys are in
tests/browser/test_review_*.py)."""

from __future__ import annotations

import json

import pytest
from datasette.app import Datasette

from datasette_llm_core.gateway import llm_gateway
from datasette_llm_extract import review
from datasette_llm_extract.documents import Document, canonical_offset, canonical_text, load_upload
from datasette_llm_extract.engine import ExtractionJob, RowCorrected, RowExtracted, run_extraction
from datasette_llm_extract.reask import NO_CORRECTION, match_corrections
from datasette_llm_extract.schema import ROW_ID_FIELD, validate_table_spec

from .extract_web_helpers import (
    cookies,
    make_ds,
    news_rows,
    post_form,
    rows_json,
    state_rows,
    wait_run,
)
from .fake_openai_server import misanswered_reask

SPEC = validate_table_spec({"columns": [{"name": "name", "nullable": False}, {"name": "age", "type": "integer"}],
                            "key_columns": ["name"]})
IDS = ["R1", "R2", "R3"]
SENT = [{"name": "Ann", "age": "forty", "source_quote": "Ann is forty"},
        {"name": "Bob", "age": "fifty", "source_quote": "Bob is fifty"},
        {"name": "Cy", "age": "old", "source_quote": "Cy is old"}]
FIXED = {"Ann": 40, "Bob": 50, "Cy": 60}


# --- canonical text ---------------------------------------------------------------------

def test_text_is_canonical_wherever_it_enters():
    assert canonical_text("a\r\nb\rc\n") == "a\nb\nc\n"
    assert Document.from_text("a\r\nb").text == "a\nb"
    assert Document.from_text("a\r\nb", canonical=False).text == "a\r\nb"  # a resumed run's stored text
    doc = load_upload("notes.txt", "text/plain", "\ufeffZo\u00eb\r\n\t\U0001F600 x\r\n".encode())
    assert doc.text == "Zo\u00eb\n\t\U0001F600 x\n"


def test_offsets_into_crlf_text_move_to_the_canonical_text():
    old = "head\r\nAnn Lee\r\nBob\r\n"
    new = canonical_text(old)
    for quote in ("Ann Lee", "Bob", "Lee\r\nBob"):
        start = old.index(quote)
        got = new[canonical_offset(old, start):canonical_offset(old, start + len(quote))]
        assert got == quote.replace("\r\n", "\n")


# --- matching corrections -----------------------------------------------------------------

def _fixed(row, row_id=None, **extra):
    out = {**row, "age": FIXED[row["name"]], **extra}
    return {ROW_ID_FIELD: row_id, **out} if row_id else out


def test_corrections_match_by_id_whatever_the_order():
    answer = [_fixed(SENT[2], "R3"), _fixed(SENT[0], "r1"), _fixed(SENT[1], 2)]
    outcomes, warnings = match_corrections(SENT, answer, IDS)
    assert [o.fixed["age"] for o in outcomes] == [40, 50, 60] and not warnings
    assert all(ROW_ID_FIELD not in o.fixed for o in outcomes)


def test_omitted_added_and_conflicting_corrections_keep_the_first_values():
    extra = {"name": "Dee", "age": 9, "source_quote": "Dee is 9"}
    answer = [_fixed(SENT[0], "R1"), _fixed(SENT[1], "R2"), _fixed(SENT[1], "R2", age=51), extra,
              _fixed(SENT[0], "R9")]
    outcomes, warnings = match_corrections(SENT, answer, IDS)
    assert outcomes[0].fixed["age"] == 40
    assert outcomes[1].fixed is None and "2 different corrections" in outcomes[1].note
    assert outcomes[2].fixed is None and outcomes[2].note == NO_CORRECTION
    assert warnings == ["the re-ask answer had 2 row(s) that correct no row sent for correction; they were not used"]


def test_identical_duplicates_count_once_and_quotes_match_rows_without_ids():
    answer = [_fixed(SENT[0], "R1"), _fixed(SENT[0], "R1"), _fixed(SENT[2])]  # Cy without an id
    outcomes, warnings = match_corrections(SENT, answer, IDS)
    assert outcomes[0].fixed["age"] == 40 and outcomes[1].fixed is None and outcomes[2].fixed["age"] == 60
    assert not warnings


@pytest.fixture
async def gateway(fake_models):
    ds = Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": {"state_database": ":memory:"}}})
    await ds.invoke_startup()
    return await llm_gateway(ds)


def _answer_all_rows_reversed(request):
    """What real models do when asked for N corrected rows: every row of the document,
    in another order (the issue's record-B-vanishes case when matched by position)."""
    as_openai = {"messages": [{"role": "user", "content": "\n".join(p.text for p in request.messages[-1].parts
                                                                   if hasattr(p, "text"))}]}
    return misanswered_reask(as_openai, lambda row: {**row, "age": FIXED[row["name"]]},
                             add=[{"name": "Dee", "age": 9, "source_quote": "Dee is 9"}], duplicate=("R2",))


@pytest.mark.parametrize("stream_invalid", [False, True])
async def test_a_reask_answering_with_every_row_loses_and_swaps_nothing(gateway, scripted_model, stream_invalid):
    text = "Ann is forty. Dee is 9. Bob is fifty. Cy is old."
    scripted_model.enqueue(rows_json(SENT[0], {"name": "Dee", "age": 9, "source_quote": "Dee is 9"}, *SENT[1:]))
    scripted_model.responder = _answer_all_rows_reversed
    job = ExtractionJob(spec=SPEC, documents=[Document.from_text(text)], stream_invalid=stream_invalid)
    events = [e async for e in run_extraction(gateway, job)]
    reask = scripted_model.requests[1]
    assert set(reask.json_schema["properties"]["rows"]["items"]["properties"][ROW_ID_FIELD]["enum"]) == set(IDS)
    assert '"_llm_row_id"' in reask.messages[-1].parts[-1].text
    final = {}
    for e in events:
        if isinstance(e, (RowExtracted, RowCorrected)):
            final[e.index] = e
    assert len(final) == 4, "a row was lost or added"
    by_name = {e.values["name"]: e for e in final.values()}
    assert {n: by_name[n].values["age"] for n in by_name} == {"Ann": 40, "Bob": 50, "Cy": 60, "Dee": 9}
    assert by_name["Bob"].replaced == {"name": "Bob", "age": "fifty"} and by_name["Dee"].replaced is None
    assert events[-1].rows_valid == 4 and events[-1].rows_invalid == 0
    kinds = [type(e).__name__ for e in events]
    if stream_invalid:
        # the invalid rows came first, flagged, then each was corrected in place
        first_ann = next(e for e in events if isinstance(e, RowExtracted) and e.values["name"] == "Ann")
        assert first_ann.reask_pending and not first_ann.valid
        assert kinds.index("RowExtracted") < kinds.index("RowCorrected")
        assert kinds.count("RowCorrected") == 3 and kinds.count("RowExtracted") == 4
    else:
        assert "RowCorrected" not in kinds and kinds.count("RowExtracted") == 4


async def test_api_rows_say_what_the_reask_did(tmp_path, fake_models, scripted_model):
    ds = make_ds(tmp_path)
    await ds.invoke_startup()
    jar = cookies(ds, "root")
    scripted_model.enqueue(rows_json(SENT[0], SENT[1]), rows_json(_fixed(SENT[0], "R1")))
    r = await ds.client.post("/-/llm-extract/api/runs", cookies=jar, json={
        "database": "news", "table": "ages", "create": True, "model": "scripted",
        "schema": {"columns": [{"name": "name"}, {"name": "age", "type": "integer"}]},
        "text": "Ann is forty.\r\nBob is fifty.\r\n"})
    assert r.status_code == 201, r.text
    stored = await state_rows(ds, "select text from llm_extract_documents where run_id = ?", [r.json()["id"]])
    assert stored == [("Ann is forty.\nBob is fifty.\n",)]  # canonical through the API too
    rows = {row["values"]["name"]: row for row in (await wait_run(ds, r.json()["id"], jar))["rows"]}
    assert rows["Ann"]["reask"] == "corrected" and rows["Ann"]["replaced"] == {"name": "Ann", "age": "forty"}
    assert rows["Ann"]["valid"] and rows["Ann"]["values"]["age"] == 40
    assert rows["Bob"]["reask"] == "uncorrected" and rows["Bob"]["reask_note"] == NO_CORRECTION
    assert not rows["Bob"]["valid"] and rows["Bob"]["values"]["age"] == "fifty"


async def test_streamed_row_without_a_correction_stays_invalid_with_the_reason(gateway, scripted_model):
    scripted_model.enqueue(rows_json(SENT[0]), rows_json({"name": "Zed", "age": 1, "source_quote": "Zed"}))
    job = ExtractionJob(spec=SPEC, documents=[Document.from_text("Ann is forty.")], stream_invalid=True)
    events = [e async for e in run_extraction(gateway, job)]
    corrected = [e for e in events if isinstance(e, RowCorrected)]
    assert len(corrected) == 1 and not corrected[0].valid and corrected[0].reask_note == NO_CORRECTION
    assert corrected[0].values == {"name": "Ann", "age": "forty"}
    assert events[-1].rows_invalid == 1 and "correct no row sent" in " ".join(
        w for e in events if type(e).__name__ == "ChunkDone" for w in e.warnings)


# --- what the grid shows ------------------------------------------------------------------------

def test_controls_fit_the_type_and_never_hide_a_value():
    assert review.control({"type": "date"}, "2016-08-03") == {"kind": "input", "type": "date", "value": "2016-08-03"}
    assert review.control({"type": "date"}, "early August")["type"] == "text"
    boolean = review.control({"type": "boolean"}, "maybe")
    assert boolean["kind"] == "select" and ("maybe", "maybe (not allowed)") in boolean["options"]
    choice = review.control({"type": "choice", "choices": ["a", "b"]}, "b")
    assert choice["value"] == "b" and [v for v, _ in choice["options"]] == ["", "a", "b"]
    assert review.control({"type": "text"}, "x" * 500)["kind"] == "textarea"


@pytest.mark.parametrize("status, counts, words", [
    ("running", {"rows": 2, "pending": 2}, "extracting: 2 row(s) so far"),
    ("done", {"rows": 3, "pending": 3}, "awaiting review: 3 row(s)"),
    ("interrupted", {"rows": 3, "pending": 3}, "interrupted; 3 of 3 row(s) awaiting review"),
    ("failed", {}, "failed"),
    ("inserted", {"rows": 3, "pending": 1, "inserted": 1, "rejected": 1},
     "partly inserted: 1 row(s) inserted, 1 of 3 row(s) awaiting review"),
    ("inserted", {"rows": 3, "pending": 0, "inserted": 2, "rejected": 1}, "inserted: 2 row(s), 1 rejected"),
    ("undone", {"rows": 3}, "undone: its rows were deleted; review them and insert again if you want"),
])
def test_run_state_says_where_a_run_stands(status, counts, words):
    assert review.run_state({"status": status}, counts)[1] == words


# --- through Datasette: re-review after undo, partial insert, remembered settings ----------------

BUILDER = {"table": "people", "col-0-name": "name", "col-0-type": "text", "col-0-key": "on",
           "col-1-name": "age", "col-1-type": "integer", "text": "Ann is 31. Bob is 40. Cy is 9.",
           "instructions": "Adults only.", "model": "scripted"}


async def test_partial_insert_undo_reinsert_and_remembered_keys(tmp_path, fake_models, scripted_model):
    ds = make_ds(tmp_path)
    await ds.invoke_startup()
    jar = cookies(ds, "root")
    scripted_model.enqueue(rows_json(*({"name": n, "age": a, "source_quote": f"{n} is {a}"}
                                       for n, a in (("Ann", 31), ("Bob", 40), ("Cy", 9)))))
    r = await post_form(ds, "/-/llm-extract/new/news", BUILDER, jar)
    run_id = r.headers["location"].rsplit("/", 1)[-1]
    run = await wait_run(ds, run_id, jar)
    idx = {row["values"]["name"]: row["idx"] for row in run["rows"]}
    page = f"/-/llm-extract/runs/{run_id}"
    html = (await ds.client.get(page, cookies=jar)).text
    assert html.count('value="pending" checked') == 3 and "3 row(s) undecided" in html

    # insert Ann (edited), reject Bob, leave Cy undecided: partly inserted, Cy still reviewable
    form = {f"row-{idx['Ann']}-decision": "accept", f"row-{idx['Ann']}-col-0": "Ann",
            f"row-{idx['Ann']}-col-1": "32", f"row-{idx['Bob']}-decision": "reject",
            f"row-{idx['Cy']}-decision": "pending"}
    assert (await post_form(ds, f"{page}/insert", form, jar, token_page=page)).status_code == 302
    html = (await ds.client.get(page, cookies=jar)).text
    assert "partly inserted: 1 row(s) inserted, 1 of 3 row(s) awaiting review" in html
    assert f'name="row-{idx["Cy"]}-decision"' in html and f'name="row-{idx["Bob"]}-decision"' not in html
    assert "the model said <del>31</del>" in html and "(the reviewer changed age)" in html
    listing = (await ds.client.get("/-/llm-extract", cookies=jar)).text
    assert "partly inserted" in listing
    # deciding Bob again is ignored: only undecided rows can be decided now
    form = {f"row-{idx['Cy']}-decision": "accept", f"row-{idx['Bob']}-decision": "accept"}
    assert (await post_form(ds, f"{page}/insert", form, jar, token_page=page)).status_code == 302
    assert await news_rows(ds, "select name, age from people order by name") == [("Ann", 32), ("Cy", 9)]
    assert (await state_rows(ds, "select inserted_count from llm_extract_runs where id = ?", [run_id]))[0][0] == 2

    # undo (confirmed), then review and insert again: one label per row in the evaluation set
    r = await post_form(ds, f"{page}/undo", {"confirm": "yes"}, jar, token_page=page)
    assert r.status_code == 302 and await news_rows(ds, "select count(*) from people") == [(0,)]
    html = (await ds.client.get(page, cookies=jar)).text
    listing = (await ds.client.get("/-/llm-extract", cookies=jar)).text
    assert "undone: its rows were deleted" in listing and "<td>0</td></tr>" in listing
    assert "undone: its rows were deleted" in html and (f'id="row-{idx["Ann"]}-accept" name="row-{idx["Ann"]}-decision" value="accept" checked') in html
    form = {f"row-{idx['Ann']}-decision": "accept", f"row-{idx['Ann']}-col-0": "Ann",
            f"row-{idx['Ann']}-col-1": "32", f"row-{idx['Bob']}-decision": "reject",
            f"row-{idx['Cy']}-decision": "reject"}
    assert (await post_form(ds, f"{page}/insert", form, jar, token_page=page)).status_code == 302
    assert await news_rows(ds, "select name, age from people") == [("Ann", 32)]
    labels = await state_rows(ds, "select row_idx, label from llm_extract_examples where run_id = ? order by row_idx",
                              [run_id])
    assert labels == [(idx["Ann"], "edited"), (idx["Bob"], "rejected"), (idx["Cy"], "rejected")]
    export = (await ds.client.get("/-/llm-extract/examples/news/people.jsonl", cookies=jar)).text
    reviews = json.loads(export.splitlines()[0])["reviews"]
    assert {"row": idx["Ann"], "label": "edited", "model": {"name": "Ann", "age": 31},
            "reviewer": {"name": "Ann", "age": 32}, "changed": ["age"]} in reviews

    # "Extract data into this table": the key column and instructions come back, with their source
    html = (await ds.client.get("/-/llm-extract/into/news/people", cookies=jar)).text
    assert 'id="col-0-key" name="col-0-key" checked' in html
    assert ">Adults only.</textarea>" in html and f'href="/-/llm-extract/runs/{run_id}"' in html
    api = await ds.client.post("/-/llm-extract/estimate", json={"database": "news", "table": "people",
                                                                "text": "Dan is 5."}, cookies=jar)
    assert api.status_code == 200, api.text
