"""A journalist enriches a filtered table in Chromium: the table's action menu leads
to "Extract into new columns" with the filter kept, the estimate for the selected
rows shows before running, the sample stops for review, a correction and a
rejection are written, the rest runs and is written directly, and undo restores."""

from __future__ import annotations

import pytest

from ..enrich_helpers import answer, make_db, serving, table_rows
from .conftest import EXPECT_TIMEOUT
from .helpers import root_page_of

pytestmark = pytest.mark.browser
expect = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
).expect


@pytest.fixture(scope="module")
def enrich_server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("enrich-browser")
    db = tmp_path / "news.db"
    make_db(db, rows=30)
    with serving(tmp_path, db, answer) as server:
        yield server, db


def test_extract_into_new_columns_from_a_filtered_table(browser, enrich_server, problems):
    server, db = enrich_server
    context, page, base = root_page_of(browser, server, problems, EXPECT_TIMEOUT)
    try:
        page.goto(base + "/news/complaints?borough=Bronx")
        page.locator("details.actions-menu-links summary").first.click()
        page.locator("a", has_text="Extract into new columns").click()  # role menuitem on 1.0
        expect(page.locator(".llm-enrich-filter")).to_contain_text("borough=Bronx")

        page.get_by_role("checkbox", name="narrative", exact=True).check()
        page.get_by_label("Column 1 name").fill("reported")
        page.get_by_label("Column 1 type").select_option("date")
        page.get_by_label("Column 2 name").fill("fine")
        page.get_by_label("Column 2 type").select_option("number")
        page.locator("input[name=sample_size]").fill("3")
        page.get_by_role("button", name="Estimate").click()
        expect(page.locator(".llm-enrich-estimate")).to_contain_text("10 row(s) selected")
        expect(page.locator(".llm-enrich-estimate")).to_contain_text("the sample runs 3 first")
        assert "fine" not in [r[1] for r in table_rows(db, "pragma table_info(complaints)")]

        page.get_by_role("button", name="Start").click()
        expect(page.locator(".llm-enrich-status")).to_have_attribute("data-status", "review")
        # the table page shows the job's progress (1.0: top_table; 0.65: a script fetches it)
        job_page = page.url
        page.goto(base + "/news/complaints")
        expect(page.locator(".llm-enrich-banner")).to_contain_text("review, 3 done, 0 failed of 10")
        page.locator(".llm-enrich-banner a").click()
        assert page.url == job_page
        # the review grid of extraction: every row starts undecided
        rows = page.locator("#llm-grid-body tr.llm-row")
        expect(rows).to_have_count(3)
        expect(page.locator("#llm-undecided")).to_have_text("3 row(s) undecided")
        expect(page.locator(".llm-grid .llm-quote-text")).to_have_count(3)
        expect(page.locator(".llm-grid")).not_to_contain_text("Quote not found")
        first, second = (rows.nth(i).get_attribute("data-row-id") for i in range(2))
        page.get_by_role("button", name="Accept all valid rows").click()
        rows.nth(1).locator("input[type=radio][value=reject]").check()
        rows.nth(0).locator("[name$='-col-1']").fill("1234")
        page.locator("#llm-insert").click()
        expect(page.locator(".llm-enrich-message")).to_contain_text("2 row(s) written")
        values = dict(table_rows(db, "select id, fine from complaints where fine is not null"))
        assert values[int(first)] == 1234 and int(second) not in values and len(values) == 2

        page.get_by_role("button", name="Run the rest, write directly").click()
        expect(page.locator(".llm-enrich-status")).to_have_attribute("data-status", "done")
        expect(page.locator(".llm-enrich-progress")).to_contain_text("10 done")
        written = table_rows(db, "select count(*) from complaints where fine is not null")[0][0]
        assert written == 9  # every Bronx row but the rejected one

        page.get_by_role("button", name="Undo the writes").click()
        expect(page.locator(".llm-enrich-message")).to_contain_text("Undone: 9 row(s) restored")
        assert table_rows(db, "select count(*) from complaints where fine is not null")[0][0] == 0
    finally:
        context.close()
