"""The demo instance as a newcomer meets it: homepage note, described tables, sign-in."""

import pytest

from .conftest import EXPECT_TIMEOUT
from .helpers import assert_labelled

pytestmark = pytest.mark.browser
expect = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
).expect


def test_homepage_explains_the_demo(anon_page, datasette_server, shots):
    page = anon_page
    page.goto(datasette_server.url("/"))
    note = page.locator("section.demo-note")
    expect(note).to_contain_text("This is the demo newsroom")
    expect(page.get_by_role("heading", name="congress")).to_be_visible()
    assert_labelled(page)
    # keyboard: tab to the clemency link inside the note and follow it with Enter
    link = note.get_by_role("link", name="clemency page")
    link.focus()
    expect(link).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(datasette_server.url("/documents/clemency_pages"),
                             timeout=EXPECT_TIMEOUT)
    expect(page.locator("h1")).to_contain_text("Clemency pages")
    shots(page, "clemency-pages")


def test_table_pages_show_source_and_license(anon_page, datasette_server):
    page = anon_page
    page.goto(datasette_server.url("/documents/trump_lawsuits"))
    expect(page.locator("h1")).to_contain_text("Lawsuits involving Donald Trump")
    expect(page.get_by_role("link", name="CC BY 4.0").first).to_be_visible()
    expect(page.locator("table.rows-and-columns tbody tr").first).to_be_visible()
    # Datasette's own filter controls are not ours to label; the row page is checked whole
    page.locator("table.rows-and-columns tbody tr a").first.click()
    expect(page.locator("h1")).to_contain_text("trump_lawsuits: ")
    assert_labelled(page)


def test_root_login_link_signs_in(root_page, datasette_server):
    page = root_page
    page.goto(datasette_server.url("/-/actor.json"))
    assert '"id": "root"' in page.content()
