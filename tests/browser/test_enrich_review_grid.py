"""The enrichment sample is reviewed in the extraction grid, in Chromium against a real
``datasette serve``: rows start undecided, selecting a row highlights its quote in that
row's own source text (here a quote found only in the row's second source column), a
re-asked row says what the model first gave, keyboard accept/reject and an edit are
written, the rejected row's cells stay NULL and the undecided row stays for later."""

from __future__ import annotations

import json
import sqlite3

import pytest

from ..enrich_helpers import serving, table_rows
from ..fake_openai_server import Reply, all_text, last_user_text
from .conftest import EXPECT_TIMEOUT
from .helpers import root_page_of

pytestmark = pytest.mark.browser
expect = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
).expect

#: id -> (title, notes): the model reads both columns; every quote is in ``notes`` only.
INSPECTIONS = {
    1: ("Elm Street bakery", "Inspected 2024-05-01. The owner was fined 300 dollars."),
    2: ("Oak Avenue deli", "Inspected 2024-06-02. Penalty: two hundred fifty dollars."),
    3: ("Pine Road cafe", "Inspected 2024-07-03. The owner was fined 120 dollars."),
    4: ("Birch Lane grill", "Inspected 2024-08-04. The owner was fined 80 dollars."),
}
QUOTE_1 = "The owner was fined 300 dollars."
COLUMNS = [{"name": "fine", "type": "number", "description": "fine in dollars"},
           {"name": "inspected", "type": "date", "description": "inspection date"}]


def model(request: dict) -> Reply:
    """Answers from the row's own text; the deli's fine comes first as words (invalid), then
    as a number when re-asked; a one-to-many job gets two records of the bakery."""
    text = last_user_text(request)
    if "several records" in all_text(request):  # the one-to-many job: two records from row 1
        return Reply(content=json.dumps({"rows": [{"amount": 300, "source_quote": QUOTE_1},
                                                  {"amount": 1, "source_quote": "Inspected 2024-05-01."}]}))
    if "failed validation" in text:
        return Reply(content=json.dumps({"rows": [{"_llm_row_id": "R1", "fine": 250, "inspected": "2024-06-02"}]}))
    for title, notes in INSPECTIONS.values():
        if title in text:
            date = notes.split(" ")[1].rstrip(".")
            if "two hundred" in notes:
                return Reply(content=json.dumps({"rows": [{"fine": "two hundred fifty", "inspected": date,
                                                           "source_quote": "Penalty: two hundred fifty dollars."}]}))
            fine = int(notes.split("fined ")[1].split(" ")[0])
            return Reply(content=json.dumps({"rows": [{"fine": fine, "inspected": date,
                                                       "source_quote": f"The owner was fined {fine} dollars."}]}))
    return Reply(content='{"rows": []}')


@pytest.fixture(scope="module")
def review_server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("enrich-grid")
    db = tmp_path / "news.db"
    conn = sqlite3.connect(db)
    conn.execute("create table inspections (id integer primary key, title text, notes text)")
    conn.executemany("insert into inspections values (?, ?, ?)", [(i, t, n) for i, (t, n) in INSPECTIONS.items()])
    conn.commit()
    conn.close()
    with serving(tmp_path, db, model) as server:
        yield server, db


def sample_ready(server, **job) -> str:
    """Start a job on the inspections' title and notes; the job page's path once its sample is ready."""
    status, data = server.request("POST", "/-/llm-extract/enrich/api/jobs", {
        "database": "news", "table": "inspections", "source_columns": ["title", "notes"], **job})
    assert status == 201, data
    done = server.wait_job(data["id"], lambda j: j["status"] not in ("pending", "running"))
    assert done["status"] == "review", done
    return data["url"]


def test_sample_reviewed_in_the_extraction_grid(browser, review_server, problems, shots):
    server, db = review_server
    url = sample_ready(server, columns=COLUMNS, sample_size=4)
    context, page, base = root_page_of(browser, server, problems, EXPECT_TIMEOUT)
    try:
        page.goto(base + url)
        rows = page.locator("#llm-grid-body tr.llm-row")
        expect(rows).to_have_count(4)
        for i in range(4):  # nothing is accepted for the reviewer
            expect(rows.nth(i).locator("input[type=radio][value=pending]")).to_be_checked()
        expect(page.locator("#llm-undecided")).to_have_text("4 row(s) undecided")
        expect(page.locator(".llm-enrich-facts")).to_contain_text("fake")
        expect(page.locator(".llm-enrich-facts")).to_contain_text("prompt enrich-v1")

        row = {i: page.locator(f'#llm-grid-body tr.llm-row[data-row-id="{i}"]') for i in INSPECTIONS}
        # typed controls: a number box, a date picker
        expect(row[1].locator("input[name$='-col-1']")).to_have_attribute("type", "date")
        # the re-asked row says what the model first gave
        expect(row[2].locator(".llm-was-reask")).to_contain_text("two hundred fifty")

        # selecting the row highlights its quote inside that row's own source block
        row[1].locator(".llm-rownum").click()
        mark = page.locator("pre.llm-source mark")
        expect(mark).to_have_count(1)
        assert mark.text_content() == QUOTE_1
        doc = row[1].get_attribute("data-document")
        block = page.locator(f"#llm-source-{doc}")
        expect(block.locator("mark")).to_have_text(QUOTE_1)
        expect(block).to_contain_text("Elm Street bakery")  # the row's first source column is shown too
        shots(page, "enrich-review-grid", full_page=True)
        source_text = block.text_content()
        assert source_text.index("[notes]") < source_text.index(QUOTE_1)
        expect(page.locator(f"#llm-document-{doc} h3 a")).to_have_attribute("href", "/news/inspections/1")

        # keyboard: a accepts and moves on; e edits; r rejects
        row[1].focus()
        page.keyboard.press("a")
        expect(row[1].locator("input[type=radio][value=accept]")).to_be_checked()
        expect(row[2]).to_be_focused()
        page.keyboard.press("e")
        page.keyboard.press("Control+A")
        page.keyboard.type("260")
        page.keyboard.press("Escape")
        page.keyboard.press("a")
        expect(row[2].locator("input[type=radio][value=accept]")).to_be_checked()
        expect(row[3]).to_be_focused()
        page.keyboard.press("r")
        expect(row[3].locator("input[type=radio][value=reject]")).to_be_checked()
        expect(page.locator("#llm-undecided")).to_have_text("1 row(s) undecided")
        page.locator("#llm-insert").click()
        expect(page.locator(".llm-enrich-message")).to_contain_text("2 row(s) written")

        values = {r[0]: r[1:] for r in table_rows(db, "select id, fine, inspected from inspections")}
        assert values[1] == (300.0, "2024-05-01")
        assert values[2] == (260.0, "2024-06-02")  # the reviewer's edit
        assert values[3] == (None, None)  # rejected: nothing written
        assert values[4] == (None, None)  # undecided: stays for later

        # after the write: the edit is labelled, the undecided row can still be decided
        expect(row[2].locator(".llm-was-edit")).to_contain_text("250")
        expect(row[4].locator("input[type=radio][value=pending]")).to_be_checked()
        expect(page.locator("#llm-undecided")).to_have_text("1 row(s) undecided")
        expect(row[1].locator("input[type=radio]")).to_have_count(0)  # written rows are settled
    finally:
        context.close()


def test_linked_table_records_are_reviewed_one_by_one(browser, review_server, problems):
    """A row holding two records (a one-to-many job into a new linked table): one grid row
    each, under the source row's name, each decided and edited on its own."""
    server, db = review_server
    url = sample_ready(server, columns=[{"name": "amount", "type": "number"}], linked_table="amounts",
                       filter={"id": "1"}, sample_size=1)
    context, page, base = root_page_of(browser, server, problems, EXPECT_TIMEOUT)
    try:
        page.goto(base + url)
        rows = page.locator("#llm-grid-body tr.llm-row")
        expect(rows).to_have_count(2)
        expect(rows.nth(0).locator(".llm-rownum")).to_have_text("Row 1, record 1 of 2")
        expect(rows.nth(1).locator(".llm-rownum")).to_have_text("Row 1, record 2 of 2")
        rows.nth(1).locator(".llm-rownum").click()  # both records quote the same row's own text
        expect(page.locator("#llm-source-0 mark")).to_have_text("Inspected 2024-05-01.")
        rows.nth(0).locator("[name$='-col-0']").fill("301")
        rows.nth(0).locator("input[type=radio][value=accept]").check()
        rows.nth(1).locator("input[type=radio][value=reject]").check()
        expect(page.locator("#llm-undecided")).to_have_text("0 row(s) undecided")
        page.locator("#llm-insert").click()
        expect(page.locator(".llm-enrich-message")).to_contain_text("1 row(s) written")
        assert table_rows(db, "select _llm_source_row, amount, _llm_quote from amounts") == [(1, 301.0, QUOTE_1)]
    finally:
        context.close()
