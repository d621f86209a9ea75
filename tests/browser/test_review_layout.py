"""The review grid and the extraction form at 1280 px (a laptop) and 390 px (a phone).

Nothing may run off the page sideways, every value must be readable in full in its
control, dates, yes/no and one-of-a-list columns get their own kind of control, and
each row's checks stay on screen. Screenshots of both widths are kept in the test's
temporary folder (and printed) to look at.
"""

from __future__ import annotations

import json

import pytest

from ..fake_openai_server import all_text
from .conftest import EXPECT_TIMEOUT
from .helpers import assert_labelled

pytestmark = pytest.mark.browser
expect = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
).expect

LONG = ("The defendant, a former deputy director of procurement for the county water authority, "
        "admitted steering contracts worth $2.4 million to a firm owned by a relative between 2011 "
        "and 2014; see https://example.org/court-records/2016/case-00412-water-authority-procurement")
COLUMNS = [
    {"name": "summary_of_the_case", "type": "text"},
    {"name": "defendant_full_name", "type": "text", "nullable": False},
    {"name": "sentence_months", "type": "integer"},
    {"name": "fine_usd", "type": "number"},
    {"name": "sentenced_on", "type": "date"},
    {"name": "pleaded_guilty", "type": "boolean"},
    {"name": "court_level", "type": "choice", "choices": ["district", "appeals", "supreme"]},
    {"name": "notes_from_the_docket", "type": "text"},
]
ROWS = [
    {"summary_of_the_case": LONG, "defendant_full_name": "Maria-Fernanda Oyelaran-Van der Westhuizen",
     "sentence_months": 240, "fine_usd": 1250000.5, "sentenced_on": "2016-08-03", "pleaded_guilty": True,
     "court_level": "district", "notes_from_the_docket": "Commuted to 120 months; remaining fine waived.",
     "source_quote": "admitted steering contracts worth $2.4 million"},
    {"summary_of_the_case": "Short.", "defendant_full_name": "Li Wu", "sentence_months": "about ten years",
     "fine_usd": None, "sentenced_on": "the spring of 2009", "pleaded_guilty": None, "court_level": "federal",
     "notes_from_the_docket": None, "source_quote": "Li Wu"},
]
TEXT = LONG + "\nLi Wu was sentenced in the spring of 2009."

OVERFLOW_JS = """
() => {
  const width = document.documentElement.clientWidth;
  const problems = [];
  if (document.documentElement.scrollWidth > width + 1)
    problems.push(`page is ${document.documentElement.scrollWidth}px wide in a ${width}px window`);
  const off = (el) => { const r = el.getBoundingClientRect(); return r.left < -1 || r.right > width + 1; };
  const name = (el) => el.id || el.className || el.tagName;
  for (const el of document.querySelectorAll(
      ".llm-extract input:not([type=hidden]), .llm-extract select, .llm-extract textarea, "
      + ".llm-checks, .llm-quote, .llm-extract button, .llm-cell-label")) {
    if (!el.offsetParent) continue;
    if (off(el)) problems.push(`${name(el)} runs off the side`);
  }
  for (const el of document.querySelectorAll(".llm-grid .llm-value")) {
    if (el.tagName === "SELECT") {
      const option = el.options[el.selectedIndex];
      const probe = document.createElement("span");
      probe.style.cssText = "position:absolute;visibility:hidden;white-space:pre;font:" + getComputedStyle(el).font;
      probe.textContent = option ? option.text : "";
      document.body.appendChild(probe);
      if (probe.offsetWidth > el.clientWidth) problems.push(`${el.id}: "${probe.textContent}" is cut off`);
      probe.remove();
    } else if (el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1) {
      problems.push(`${el.id}: its value "${el.value.slice(0, 30)}..." is cut off`);
    }
  }
  return problems;
}
"""


def _start_run(page, server) -> str:
    response = page.request.post(server.url("/-/llm-extract/api/runs"), data=json.dumps({
        "database": "newsroom", "table": "layout_check", "create": True,
        "schema": {"columns": COLUMNS}, "text": TEXT}), headers={"content-type": "application/json"})
    assert response.status == 201, response.text()
    return response.json()["urls"]["page"]


@pytest.mark.parametrize("width", [1280, 390])
def test_grid_and_form_fit_and_show_every_value(root_page, datasette_server, fake_llm, shots, width):
    page = root_page
    page.set_viewport_size({"width": width, "height": 900})
    fake_llm.handler = lambda r: json.dumps({"rows": ROWS}) if "Extract every" in all_text(r) else None
    page.goto(datasette_server.url(_start_run(page, datasette_server)))
    expect(page.locator("#llm-status")).to_have_text("done", timeout=EXPECT_TIMEOUT)
    expect(page.locator("#llm-grid-body tr.llm-row")).to_have_count(2)
    first = page.locator("#llm-grid-body tr.llm-row").first
    assert first.locator("[name$='-col-4']").get_attribute("type") == "date"
    expect(first.locator("[name$='-col-4']")).to_have_value("2016-08-03")
    expect(first.locator("select[name$='-col-5']")).to_have_value("true")
    expect(first.locator("select[name$='-col-6']")).to_have_value("district")
    expect(first.locator("textarea[name$='-col-0']")).to_have_value(LONG)
    second = page.locator("#llm-grid-body tr.llm-row").nth(1)
    # values a control cannot hold stay visible as the model wrote them, flagged
    expect(second.locator("[name$='-col-4']")).to_have_value("the spring of 2009")
    expect(second.locator("select[name$='-col-6'] option:checked")).to_have_text("federal (not allowed)")
    expect(second.locator(".llm-flag-invalid")).to_be_visible()
    page.wait_for_timeout(200)  # let text areas size to their content
    problems = page.evaluate(OVERFLOW_JS)
    path = shots(page, f"review-grid-{width}", full_page=True)
    print(f"\nreview grid at {width}px: {path}")
    assert not problems, "\n".join(problems)
    assert_labelled(page, ".llm-extract")

    page.goto(datasette_server.url("/-/llm-extract/new/newsroom"))
    page.get_by_role("button", name="Add a column").click()
    page.locator("#col-0-name").fill("a_rather_long_column_name_for_a_phone")
    problems = page.evaluate(OVERFLOW_JS)
    path = shots(page, f"extract-form-{width}", full_page=True)
    print(f"extraction form at {width}px: {path}")
    assert not problems, "\n".join(problems)
