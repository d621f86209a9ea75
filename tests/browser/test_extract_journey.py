"""A journalist extracts clemency records: schema, streaming rows, review, insert, undo, images."""

from __future__ import annotations

import json
import re

import pytest

from ..fake_openai_server import Reply, all_text
from .conftest import EXPECT_TIMEOUT, ROOT
from .helpers import assert_labelled, assert_status

pytestmark = pytest.mark.browser
expect = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
).expect

PAGE = ROOT / "demo_data" / "raw" / "clemency" / "commutations-2016-08-03-01.txt"
RECEIPT = ROOT / "demo_data" / "raw" / "receipts" / "000.jpg"
EXTRACT_MARKER = "Extract every matching record"
REPAIR_MARKER = "failed validation"


def _people(text: str) -> list[dict]:
    """The three people on the page, as the model would extract them (one with a bad date)."""
    blocks = [b for b in text.split("\n\n")[1:] if b.strip()]
    rows = []
    for block in blocks:
        lines = block.strip().splitlines()
        fields = dict(line.split(": ", 1) for line in lines[1:])
        rows.append({
            "name": lines[0],
            "district": fields["District/Date"].split(";")[0],
            "sentence": fields["Sentence"],
            "granted_on": "2016-08-03",
            "source_quote": lines[0],
        })
    rows[1]["granted_on"] = "early August"  # fails date validation: flagged for review
    return rows


def _stream_of(rows: list[dict]) -> list[str]:
    """One chunk per row, so the page can show each row before the next one arrives."""
    pieces = ['{"rows": [']
    for i, row in enumerate(rows):
        pieces.append(json.dumps(row) + ("," if i < len(rows) - 1 else ""))
    pieces.append("]}")
    return pieces


def _submit_extraction(page) -> None:
    with page.expect_navigation():
        page.get_by_role("button", name="Extract rows").click()
    expect(page).to_have_url(re.compile(r"/-/llm-extract/runs/"))


def _rows_by_name(page) -> dict[str, str]:
    """Review grid: the value typed in each row's first column -> the row's data-idx."""
    return page.evaluate("""() => Object.fromEntries(
        [...document.querySelectorAll("#llm-grid-body tr")].map(
            (tr) => [tr.querySelector("[name$='-col-0']").value, tr.dataset.idx]))""")


def _decide(page, idx: str, decision: str, with_mouse: bool = False) -> None:
    """Choose a row's decision with the keyboard (focus the radio, press Space) or a mouse click."""
    radio = page.locator(f"#row-{idx}-{decision}")
    if with_mouse:
        # Focusing the row highlights its quote; that must not move the page
        # between mouse-down and mouse-up, or the click lands elsewhere.
        radio.click()
    else:
        radio.focus()
        page.keyboard.press("Space")
    expect(radio).to_be_checked()


def _fill_column(page, i: int, name: str, type_: str, required=False, key=False) -> None:
    page.locator(f"#col-{i}-name").fill(name)
    page.locator(f"#col-{i}-type").select_option(type_)
    if required:
        page.locator(f"#col-{i}-required").check()
    if key:
        page.locator(f"#col-{i}-key").check()


def _ensure_column_rows(page, count: int) -> None:
    add = page.get_by_role("button", name="Add a column")
    while page.locator("#llm-columns tbody tr").count() < count:
        before = page.locator("#llm-columns tbody tr").count()
        add.focus()
        page.keyboard.press("Enter")  # keyboard use: the button works without a mouse
        expect(page.locator("#llm-columns tbody tr")).to_have_count(before + 1)


def test_extract_review_insert_undo(root_page, datasette_server, fake_llm, shots):
    page = root_page
    text = PAGE.read_text(encoding="utf-8")
    rows = _people(text)

    def handler(request):
        body = all_text(request)
        if REPAIR_MARKER in body:
            return json.dumps({"rows": [rows[1]]})  # the model repeats its mistake
        if EXTRACT_MARKER in body:
            return Reply(chunks=_stream_of(rows), token_delay=0.8)
        return None

    fake_llm.handler = handler

    # 1. Build a schema for a new table
    page.goto(datasette_server.url("/-/llm-extract/new/newsroom"))
    expect(page.locator("h1")).to_contain_text("Extract data into a new table")
    page.locator("#llm-table-name").fill("clemency_grants")
    _ensure_column_rows(page, 4)
    _fill_column(page, 0, "name", "text", required=True, key=True)
    _fill_column(page, 1, "district", "text")
    _fill_column(page, 2, "sentence", "text")
    _fill_column(page, 3, "granted_on", "date")
    page.locator("#llm-text").fill(text)
    page.locator("#llm-instructions").fill("One row per person on the page.")
    assert_labelled(page, ".llm-extract")
    shots(page, "extract-form", readme=True, full_page=True)

    # 2. Run it and watch rows stream in before the run finishes
    _submit_extraction(page)
    grid_rows = page.locator("#llm-grid-body tr")
    expect(grid_rows.first).to_be_visible(timeout=EXPECT_TIMEOUT)
    assert grid_rows.count() < len(rows), "all rows arrived at once: nothing streamed"
    assert page.locator("#llm-status").inner_text() in ("pending", "running")
    expect(grid_rows).to_have_count(len(rows), timeout=EXPECT_TIMEOUT)
    expect(page.locator("#llm-status")).to_have_text("done", timeout=EXPECT_TIMEOUT)
    expect(page.locator("#llm-insert")).to_be_enabled()
    assert_labelled(page, ".llm-extract")

    # 3. Review: the bad date is flagged; fix it, reject the third row
    flagged = page.locator("#llm-grid-body tr.llm-row-invalid")
    expect(flagged).to_have_count(1)
    expect(flagged.locator(".llm-flag-invalid")).to_be_visible()
    by_name = _rows_by_name(page)
    assert flagged.get_attribute("data-idx") == by_name[rows[1]["name"]]
    shots(page, "review-grid", readme=True, full_page=True)
    idx = flagged.get_attribute("data-idx")
    date_input = page.locator(f"#row-{idx}-col-3")
    date_input.fill("2016-08-03")
    _decide(page, idx, "accept")
    third = by_name[rows[2]["name"]]
    _decide(page, third, "reject", with_mouse=True)
    expect(page.locator("#llm-undecided")).to_have_text("1 row(s) undecided")
    _decide(page, by_name[rows[0]["name"]], "accept")  # every row starts undecided
    expect(page.locator("#llm-undecided")).to_have_text("0 row(s) undecided")
    page.locator("#llm-insert").click()

    # 4. Inserted: the rows are in the new table, each with its run link
    expect(page.locator("#llm-status")).to_have_text("inserted", timeout=EXPECT_TIMEOUT)
    run_url = page.url
    run_id = run_url.rstrip("/").split("/")[-1].split("?")[0]
    expect(page.locator(".llm-provenance li")).to_have_count(2)
    page.goto(datasette_server.url("/newsroom/clemency_grants"))
    table = page.locator("table.rows-and-columns")
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table).to_contain_text(rows[0]["name"])
    expect(table).to_contain_text(rows[1]["name"])
    expect(table).not_to_contain_text(rows[2]["name"])
    expect(table).to_contain_text("2016-08-03")
    # the _llm_run cell opens the row's provenance card; for the run's owner it links to the run
    card_link = table.locator('a[title^="Where this row came from"]').first
    expect(card_link).to_be_visible()
    card_link.click()
    expect(page.locator("h1")).to_contain_text("Where this row came from")
    page.locator(f'a[href*="{run_id}"]').click()
    expect(page.locator("h1")).to_contain_text("clemency_grants")

    # 5. Undo the run: the rows are gone
    page.get_by_role("button", name="Undo").click()
    expect(page.locator("#llm-confirm-undo")).to_be_visible()  # asked first
    page.get_by_role("button", name="Yes, delete").click()
    expect(page.locator("#llm-status")).to_have_text("undone", timeout=EXPECT_TIMEOUT)
    page.goto(datasette_server.url("/newsroom/clemency_grants"))
    expect(page.locator("table.rows-and-columns tbody tr")).to_have_count(0)


def test_extract_from_an_uploaded_image(root_page, datasette_server, fake_llm):
    page = root_page
    reply = {"rows": [{"company": "BOOK TA .K (TAMAN DAYA) SDN BHD", "date": "2018-12-25",
                       "address": "NO.53 55,57 & 59, JALAN SAGU 18, TAMAN DAYA",
                       "total": 9.0, "source_quote": "BOOK TA .K(TAMAN DAYA) SDN BND"}]}
    fake_llm.on(None, json.dumps(reply), ttft=1.0)  # a model takes a moment to answer

    page.goto(datasette_server.url("/-/llm-extract/new/newsroom"))
    page.locator("#llm-table-name").fill("receipt_totals")
    _ensure_column_rows(page, 4)
    _fill_column(page, 0, "company", "text", required=True, key=True)
    _fill_column(page, 1, "date", "date")
    _fill_column(page, 2, "address", "text")
    _fill_column(page, 3, "total", "number")
    page.locator("#llm-files").set_input_files(str(RECEIPT))
    _submit_extraction(page)
    expect(page.locator("#llm-grid-body tr")).to_have_count(1, timeout=EXPECT_TIMEOUT)
    expect(page.locator("#llm-status")).to_have_text("done", timeout=EXPECT_TIMEOUT)
    expect(page.locator(".llm-document h3")).to_contain_text(RECEIPT.name)

    # the image itself reached the model, as an image part
    sent = fake_llm.chat_requests()[-1]
    parts = [p for m in sent["messages"] if isinstance(m.get("content"), list) for p in m["content"]]
    images = [p for p in parts if p.get("type") == "image_url"]
    assert images and images[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def _extract_links(page, url: str):
    """Links to the extraction pages anywhere in the page (menus included, open or not)."""
    page.goto(url)
    expect(page.locator("h1")).to_be_visible()
    return page.locator('a[href*="/-/llm-extract/"]')


def test_without_permission_no_extract_menu_and_403(root_page, page_as, anon_page,
                                                     datasette_server):
    # positive control: root sees the action on the database and the table page;
    # on the (empty) newsroom database also as a visible button, not only in the
    # actions menu (1.0: top_database; 0.65: added by llm_extract_db_button.js)
    expect(_extract_links(root_page, datasette_server.url("/newsroom"))).to_have_count(2)
    button = root_page.get_by_role("link", name="Extract data into a new table").and_(
        root_page.locator("a.llm-newsroom-button"))
    expect(button).to_be_visible()
    assert button.get_attribute("href").endswith("/-/llm-extract/new/newsroom")
    # a table: "Extract data into this table" and "Extract into new columns" (enrichment)
    expect(_extract_links(root_page, datasette_server.url("/documents/receipts"))).to_have_count(2)
    expect(root_page.locator('a[href*="/-/llm-extract/enrich/new/documents/receipts"]')).to_have_count(1)
    for page in (anon_page, page_as({"id": "intern"})):
        expect(_extract_links(page, datasette_server.url("/newsroom"))).to_have_count(0)
        expect(_extract_links(page, datasette_server.url("/documents/receipts"))).to_have_count(0)
        assert_status(page, datasette_server.url("/-/llm-extract/new/newsroom"), 403)
        assert_status(page, datasette_server.url("/-/llm-extract/into/documents/receipts"), 403)
        assert_status(page, datasette_server.url("/-/llm-extract/"), 403)


def test_demo_templates_fill_the_form(root_page, datasette_server):
    """The extraction templates in metadata.yml appear in the picker and fill the column builder."""
    page = root_page
    page.goto(datasette_server.url("/-/llm-extract/new/newsroom"))
    picker = page.get_by_label("Start from a template")
    options = picker.locator("option").all_inner_texts()
    assert any("Clemency grants" in o for o in options), options
    assert any("Receipts" in o for o in options), options
    picker.select_option(label=next(o for o in options if "Clemency grants" in o))
    page.get_by_role("button", name="Use template").click()
    expect(page.locator("#col-0-name")).to_have_value("name")
    expect(page.locator("#col-3-name")).to_have_value("sentenced_on")
    expect(page.locator("#col-3-type")).to_have_value("date")
    expect(page.locator("#col-5-type")).to_have_value("boolean")
    expect(page.locator("#llm-instructions")).to_contain_text("Each person on the page is one row")
    assert_labelled(page, ".llm-extract")
