"""Enrichment review in the extraction grid, below the browser: the grid rows built from
a job's items (quote offsets on exactly the text shown), the grid's form mapped back to
items (a forged or stale row refused whole, nothing saved), invalid rows not writable
until fixed, and one-to-many records decided one by one (the browser journey is
tests/browser/test_enrich_review_grid.py)."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from datasette_llm_extract import enrich_review
from datasette_llm_extract.enrich import row_document

from .conftest import wait_for
from .extract_web_helpers import cookies, make_ds, post_form

COLUMNS = [{"name": "fine", "type": "number"}, {"name": "seen", "type": "date"}]
NAMES = ["fine", "seen"]


def item(row_id, records, **extra):
    return {"row_id": row_id, "pk": [row_id], "status": "done", "records": records, "decision": "pending",
            "edited": None, "review": None, "written": 0, "model_id": "m", "error": None, **extra}


def record(fine, quote, valid=True, **extra):
    return {"values": {"fine": fine, "seen": None}, "quote": quote, "quote_found": True, "valid": valid,
            "errors": [] if valid else ["fine: not a number"], **extra}


# --- the grid rows --------------------------------------------------------------------

def test_quote_offsets_count_characters_of_the_text_shown():
    # CRLF in the row and an emoji before the quote: the page's <pre> holds canonical text,
    # and both sides count code points
    doc = row_document({"title": "Caf\u00e9 \U0001F600\r\nline two", "notes": "Paid 40 dollars."}, ["title", "notes"])
    rows, sources = enrich_review.grid([item(7, [record(40, "Paid 40 dollars.")])], {7: doc}, COLUMNS,
                                       linked=False, editable=True)
    text = sources[0]["text"]
    assert "\r" not in text
    row = rows[0]
    assert text[row["quote_start"]:row["quote_end"]] == "Paid 40 dollars."
    assert text.index("[notes]") < row["quote_start"]
    assert row["document"] == sources[0]["idx"] == 0 and row["default_decision"] == "pending"
    assert row["ref"] == "7:0" and row["editable"]
    assert row["model_id"] == "m"  # no job model given: every answer says its model
    rows, _ = enrich_review.grid([item(7, [record(40, "x")])], {7: doc}, COLUMNS, linked=False, editable=True,
                                 model_id="m")
    assert rows[0]["model_id"] is None  # the job's own model is not repeated on each row


def test_a_quote_missing_from_the_row_as_it_is_now_is_flagged_not_highlighted():
    rows, _ = enrich_review.grid([item(1, [record(5, "fined 5 dollars")])], {1: "[notes]\nsomething else"},
                                 COLUMNS, linked=False, editable=True)
    assert rows[0]["quote_start"] is None and rows[0]["quote_found"] is False


def test_reask_and_reviewer_changes_are_labelled():
    fixed = record(250, "Penalty", replaced={"fine": "two hundred fifty", "seen": None})
    rows, _ = enrich_review.grid([item(1, [fixed], edited={"fine": 260, "seen": None}, written=1,
                                       decision="accepted")], {1: "[notes]\nPenalty"}, COLUMNS, linked=False,
                                 editable=True)
    fine = rows[0]["cells"][0]
    assert fine["reask_from"] == "two hundred fifty" and fine["model_value"] == "250" and fine["text"] == "260"
    assert rows[0]["reask"] == "corrected" and not rows[0]["editable"] and rows[0]["decided_text"] == "written"


def test_linked_records_are_one_row_each_grouped_by_source_row():
    doc = "[notes]\nFines: 10 dollars and 20 dollars."
    items = [item(3, [record(10, "10 dollars"), record(20, "20 dollars")],
                  review=[{"decision": "accepted", "values": None}, {"decision": "pending", "values": None}]),
             item(4, [], status="failed", error="rate limited")]
    rows, sources = enrich_review.grid(items, {3: doc, 4: "[notes]\nx"}, COLUMNS, linked=True, editable=True)
    assert [r["ref"] for r in rows] == ["3:0", "3:1", "4:-"]
    assert [r["label"] for r in rows[:2]] == ["Row 3, record 1 of 2", "Row 3, record 2 of 2"]
    assert [r["default_decision"] for r in rows[:2]] == ["accept", "pending"]
    assert sources[0]["text"][rows[1]["quote_start"]:rows[1]["quote_end"]] == "20 dollars"
    assert rows[2]["failure"] == "rate limited" and not rows[2]["editable"]
    assert enrich_review.item_decision([{"decision": "accepted"}, {"decision": "pending"}]) == "pending"
    assert enrich_review.item_decision([{"decision": "rejected"}, {"decision": "accepted"}]) == "accepted"
    assert enrich_review.item_decision([{"decision": "rejected"}]) == "rejected"


# --- the form -> decisions ------------------------------------------------------------

def _rows():
    rows, _ = enrich_review.grid([item(5, [record(1, "a")]), item(9, [record(2, "b")], written=1)],
                                 {5: "a", 9: "b"}, COLUMNS, linked=False, editable=True)
    return rows


def test_the_form_maps_back_to_the_rows_shown():
    form = {"row-0-decision": ["accept"], "row-0-item": ["5:0"], "row-0-col-0": ["3"], "row-0-col-1": [""],
            "csrftoken": ["x"]}
    assert enrich_review.form_decisions(form, _rows(), NAMES) == {
        0: {"decision": "accepted", "values": {"fine": "3", "seen": ""}}}


@pytest.mark.parametrize("form, words, status", [
    ({"row-7-decision": ["accept"], "row-7-item": ["5:0"]}, "Row 8 is not part of this job", 400),
    ({"row-0-decision": ["accept"], "row-0-item": ["9:0"]}, "changed since the page was shown", 409),
    ({"row-0-decision": ["accept"]}, "changed since the page was shown", 409),
    ({"row-1-decision": ["accept"], "row-1-item": ["9:0"]}, "cannot be decided now", 409),
    ({"row-0-decision": ["maybe"], "row-0-item": ["5:0"]}, "accept, reject or pending", 400),
])
def test_forged_or_stale_forms_are_refused(form, words, status):
    with pytest.raises(enrich_review.ReviewError) as e:
        enrich_review.form_decisions(form, _rows(), NAMES)
    assert words in str(e.value) and "Nothing was saved" in str(e.value) and e.value.status == status


# --- against Datasette (in process) -----------------------------------------------------

TEXTS = {1: "Inspected 2024-01-02. Fined 100 dollars.", 2: "Inspected 2024-02-03. Fine: lots.",
         3: "Fines: 10 dollars and 20 dollars."}


def _answer(request) -> str:
    text = " ".join(p.text for m in request.messages for p in m.parts if hasattr(p, "text"))
    if "failed validation" in text:  # the re-ask does not help row 2: it stays invalid
        return json.dumps({"rows": [{"_llm_row_id": "R1", "fine": "still lots", "seen": "2024-02-03"}]})
    if "Fines: 10" in text:
        return json.dumps({"rows": [{"fine": 10, "source_quote": "10 dollars"},
                                    {"fine": 20, "source_quote": "20 dollars"}]})
    if "Fine: lots" in text:
        return json.dumps({"rows": [{"fine": "lots", "seen": "2024-02-03", "source_quote": "Fine: lots."}]})
    return json.dumps({"rows": [{"fine": 100, "seen": "2024-01-02", "source_quote": "Fined 100 dollars."}]})


@pytest.fixture
def enrich_ds(tmp_path, fake_models, scripted_model):
    ds = make_ds(tmp_path, plugin={"models": [], "defaults": {"extract": "scripted"}})
    conn = sqlite3.connect(tmp_path / "news.db")
    conn.execute("create table notes (id integer primary key, body text)")
    conn.executemany("insert into notes values (?, ?)", list(TEXTS.items()))
    conn.commit()
    conn.close()
    scripted_model.responder = _answer
    return ds, tmp_path


async def _job(ds, jar, **extra) -> dict:
    r = await ds.client.post("/-/llm-extract/enrich/api/jobs", json={
        "database": "news", "table": "notes", "source_columns": ["body"], "model": "scripted",
        "columns": COLUMNS, "sample_size": 3, **extra}, cookies=jar)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    async def stopped():
        data = (await ds.client.get(f"/-/llm-extract/enrich/jobs/{job_id}.json?_items=1", cookies=jar)).json()
        return data if data["status"] not in ("pending", "running") else None

    return await wait_for(stopped)


def _fields(html: str) -> dict[str, str]:
    """Row ref of each grid row: idx -> row-<idx>-item value."""
    return dict(re.findall(r'name="row-(\d+)-item" value="([^"]+)"', html))


def _values(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def _decisions(ds, jar, page):
    """row_id -> (decision, edited values, per-record review) as the job's JSON says."""
    data = (await ds.client.get(page + ".json?_items=1", cookies=jar)).json()
    return {i["row_id"]: (i["decision"], i["values"] if i["edited"] else None, i.get("review"))
            for i in data["items"]}


async def test_forged_row_refused_invalid_row_not_written_until_fixed(enrich_ds):
    ds, tmp_path = enrich_ds
    jar = cookies(ds, "root")
    job = await _job(ds, jar)
    assert job["status"] == "review"
    page = f"/-/llm-extract/enrich/jobs/{job['id']}"
    html = (await ds.client.get(page, cookies=jar)).text
    refs = _fields(html)
    idx = {ref.split(":")[0]: int(i) for i, ref in refs.items()}
    assert set(idx) == {"1", "2", "3"} and html.count('value="pending" checked') == 3
    before = await _decisions(ds, jar, page)

    # a row index the job does not have: refused, nothing saved
    forged = {f"row-{idx['1']}-decision": "accept", f"row-{idx['1']}-item": refs[str(idx["1"])],
              "row-99-decision": "accept", "row-99-item": "1:0"}
    r = await post_form(ds, page + "/write", forged, jar, token_page=page)
    assert r.status_code == 400 and "Row 100 is not part of this job" in r.text
    assert await _decisions(ds, jar, page) == before
    assert "fine" not in [c[1] for c in _values(tmp_path / "news.db", "pragma table_info(notes)")]

    i1, i2 = idx["1"], idx["2"]
    # a form for a list that changed since (row 1's place now holds row 2): refused, not put back on the page
    r = await post_form(ds, page + "/write", {f"row-{i1}-decision": "reject", f"row-{i1}-item": refs[str(i2)]}, jar,
                        token_page=page)
    assert r.status_code == 409 and "changed since the page was shown" in r.text
    assert r.text.count('value="pending" checked') == 3 and 'value="reject" checked' not in r.text
    assert await _decisions(ds, jar, page) == before

    # an invalid row accepted as the model gave it: refused with its reason, the choices kept
    form = {f"row-{i1}-decision": "accept", f"row-{i1}-item": refs[str(i1)], f"row-{i1}-col-0": "100",
            f"row-{i1}-col-1": "2024-01-02",
            f"row-{i2}-decision": "accept", f"row-{i2}-item": refs[str(i2)], f"row-{i2}-col-0": "still lots",
            f"row-{i2}-col-1": "2024-02-03"}
    r = await post_form(ds, page + "/write", form, jar, token_page=page)
    assert r.status_code == 400 and "invalid values" in r.text and "Nothing was saved" in r.text
    assert 'id="row-%d-accept" name="row-%d-decision" value="accept" checked' % (i2, i2) in r.text
    assert await _decisions(ds, jar, page) == before
    assert "fine" not in [c[1] for c in _values(tmp_path / "news.db", "pragma table_info(notes)")]

    # fixed by the reviewer: written, the edit kept as the reviewer's, row 3 stays undecided
    form[f"row-{i2}-col-0"] = "75"
    r = await post_form(ds, page + "/write", form, jar, token_page=page)
    assert r.status_code == 302, r.text
    assert _values(tmp_path / "news.db", "select id, fine, seen from notes order by id") == [
        (1, 100.0, "2024-01-02"), (2, 75.0, "2024-02-03"), (3, None, None)]
    stored = await _decisions(ds, jar, page)
    assert stored[1][:2] == ("accepted", None) and stored[3][0] == "pending"
    assert stored[2][:2] == ("accepted", {"fine": 75.0, "seen": "2024-02-03"})
    html = (await ds.client.get(page, cookies=jar)).text
    assert "Reviewer changed it; the model said" in html and html.count('value="pending" checked') == 1
    # the JSON API still reads the job
    data = (await ds.client.get(page + ".json?_items=1", cookies=jar)).json()
    assert data["ok"] and {i["row_id"]: i["written"] for i in data["items"]} == {1: True, 2: True, 3: False}


async def test_linked_records_are_decided_one_by_one(enrich_ds):
    ds, tmp_path = enrich_ds
    jar = cookies(ds, "root")
    job = await _job(ds, jar, columns=[{"name": "fine", "type": "number"}], linked_table="fines",
                     filter={"id__in": "1,3"}, sample_size=2)
    page = f"/-/llm-extract/enrich/jobs/{job['id']}"
    html = (await ds.client.get(page, cookies=jar)).text
    refs = {ref: int(i) for i, ref in _fields(html).items()}
    assert set(refs) == {"1:0", "3:0", "3:1"}
    assert "Row 3, record 2 of 2" in html

    def decide(ref, decision, fine):
        i = refs[ref]
        return {f"row-{i}-decision": decision, f"row-{i}-item": ref, f"row-{i}-col-0": fine}

    # row 3: its first record edited and accepted, its second rejected; row 1 left undecided
    form = {**decide("3:0", "accept", "11"), **decide("3:1", "reject", "20"), **decide("1:0", "pending", "100")}
    r = await post_form(ds, page + "/write", form, jar, token_page=page)
    assert r.status_code == 302, r.text
    assert _values(tmp_path / "news.db", "select _llm_source_row, fine, _llm_quote from fines") == [
        (3, 11.0, "10 dollars")]
    stored = await _decisions(ds, jar, page)
    assert stored[1][0] == "pending" and stored[3][0] == "accepted"
    assert [d["decision"] for d in stored[3][2]] == ["accepted", "rejected"]
