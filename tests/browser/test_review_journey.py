"""Reviewing extracted rows in Chromium: what the reviewer sees must be what the model did.

- invalid rows show as they arrive and are corrected in place, matched by id even when the
  model reorders, adds, leaves out and repeats rows in its re-ask answer;
- every row starts undecided; bulk and keyboard review; partly inserted runs; undo asks
  first and an undone run can be reviewed and inserted again; reviewer changes are kept,
  shown and exported; the next run into the table remembers key columns and instructions.
"""

from __future__ import annotations

import json
import re

import pytest

from ..fake_openai_server import REASK_MARKER, Reply, all_text, misanswered_reask
from .conftest import EXPECT_TIMEOUT
from .helpers import assert_labelled

pytestmark = pytest.mark.browser
expect = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
).expect

EXTRACT_MARKER = "Extract every matching record"
PEOPLE = [  # (name, date as the model first gives it, date in the document)
    ("Ada Brook", "early August", "2016-08-03"),
    ("Cal Dunn", "2016-08-04", "2016-08-04"),
    ("Bea Chan", "sometime", "2016-08-05"),
    ("Dov Ezra", "2016-08-06", "2016-08-06"),
    ("Eli Fox", "later", "2016-08-07"),
]
TEXT = "\n".join(f"{name} was granted clemency on {date}." for name, _, date in PEOPLE)


def _row(name: str, granted: str) -> dict:
    return {"name": name, "granted_on": granted,
            "source_quote": f"{name} was granted clemency on {dict((n, d) for n, _, d in PEOPLE)[name]}."}


def _start(page, server, table: str, columns: list[tuple], text: str, instructions: str = "") -> None:
    page.goto(server.url("/-/llm-extract/new/newsroom"))
    page.locator("#llm-table-name").fill(table)
    add = page.get_by_role("button", name="Add a column")
    while page.locator("#llm-columns tbody tr").count() < len(columns):
        add.click()
    for i, (name, type_, *rest) in enumerate(columns):
        page.locator(f"#col-{i}-name").fill(name)
        page.locator(f"#col-{i}-type").select_option(type_)
        if "key" in rest:
            page.locator(f"#col-{i}-key").check()
        if type_ == "choice":
            page.locator(f"#col-{i}-choices").fill(rest[-1])
    page.locator("#llm-text").fill(text)
    if instructions:
        page.locator("#llm-instructions").fill(instructions)
    with page.expect_navigation():
        page.get_by_role("button", name="Extract rows").click()
    expect(page).to_have_url(re.compile(r"/-/llm-extract/runs/[0-9a-f]{16}$"))


def _names(page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll("#llm-grid-body tr.llm-row")].map(
        (tr) => tr.querySelector("[name$='-col-0']")?.value ?? tr.querySelector(".llm-value-text").textContent)""")


def _row_for(page, name: str):
    """The grid row whose first value is ``name`` (by its row number, which stays put)."""
    idx = page.evaluate("""(name) => {
        const tr = [...document.querySelectorAll("#llm-grid-body tr.llm-row")].find(
            (tr) => tr.querySelector("[name$='-col-0']")?.value === name
                 || tr.querySelector(".llm-value-text")?.textContent === name);
        return tr ? tr.dataset.idx : null; }""", name)
    assert idx is not None, f"no row for {name!r}; rows: {_names(page)}"
    return page.locator(f'#llm-grid-body tr.llm-row[data-idx="{idx}"]')


def test_invalid_rows_stream_and_reask_corrections_land_on_their_rows(root_page, datasette_server, fake_llm):
    page = root_page
    first = [_row(name, given) for name, given, _ in PEOPLE]

    def model(request):
        body = all_text(request)
        if REASK_MARKER in body:
            # every row of the document, reversed, Ada's correction twice, Eli's left out
            fixed = {name: date for name, _, date in PEOPLE}
            answer = misanswered_reask(
                request, lambda row: {**row, "granted_on": fixed[row["name"]]},
                add=[_row("Cal Dunn", "2016-08-04"), _row("Dov Ezra", "2016-08-06")],
                omit=("R3",), duplicate=("R1",))
            return Reply(answer, ttft=2.0)
        if EXTRACT_MARKER in body:
            pieces = ['{"rows": [']
            pieces += [json.dumps(r) + ("," if i < len(first) - 1 else "") for i, r in enumerate(first)]
            return Reply(chunks=pieces + ["]}"], token_delay=0.5)
        return None

    fake_llm.handler = model
    _start(page, datasette_server, "reask_check", [("name", "text", "key"), ("granted_on", "date")], TEXT)

    # the invalid first row is shown at once, flagged, while the model is still answering
    rows = page.locator("#llm-grid-body tr.llm-row")
    expect(rows.first).to_be_visible(timeout=EXPECT_TIMEOUT)
    assert _names(page)[0] == "Ada Brook"
    assert rows.count() < len(PEOPLE), "every row arrived at once: nothing streamed"
    ada = _row_for(page, "Ada Brook")
    expect(ada).to_have_class(re.compile("llm-row-reasking"))
    expect(ada.locator(".llm-flag-reasking")).to_contain_text("Asking the model to correct it")
    ada_idx = ada.get_attribute("data-idx")
    expect(rows).to_have_count(len(PEOPLE), timeout=EXPECT_TIMEOUT)
    assert page.locator("#llm-status").inner_text() in ("pending", "running")  # all 5 before the re-ask ends

    # the corrections replace their own rows, in place
    expect(page.locator("#llm-status")).to_have_text("done", timeout=EXPECT_TIMEOUT)
    expect(page.locator("tr.llm-row-reasking")).to_have_count(0)
    for check in range(2):  # live, then as the server renders it
        assert _names(page) == [p[0] for p in PEOPLE], "a row was dropped, added or moved"
        ada = _row_for(page, "Ada Brook")
        assert ada.get_attribute("data-idx") == ada_idx
        expect(ada.locator("input[name$='-col-1']")).to_have_value("2016-08-03")
        expect(ada.locator(".llm-was-reask")).to_contain_text("early August")
        bea = _row_for(page, "Bea Chan")
        expect(bea.locator("input[name$='-col-1']")).to_have_value("2016-08-05")
        expect(bea.locator(".llm-was-reask")).to_contain_text("sometime")
        eli = _row_for(page, "Eli Fox")
        expect(eli).to_have_class(re.compile("llm-row-invalid"))
        expect(eli.locator(".llm-flag-invalid")).to_contain_text("no correction for this row")
        expect(eli.locator("input[name$='-col-1']")).to_have_value("later")  # the model's value, kept
        for name in ("Cal Dunn", "Dov Ezra"):
            expect(_row_for(page, name).locator(".llm-was")).to_have_count(0)
        if not check:
            page.reload()
    assert_labelled(page, ".llm-extract")


def test_review_undecided_keyboard_partial_insert_undo_again_and_remembered(
        root_page, datasette_server, fake_llm):
    page = root_page
    people = [
        {"name": "Ann Lee", "born": "1970-01-02", "active": True, "kind": "a", "source_quote": "Ann Lee"},
        {"name": "Bob Stone", "born": "1980-03-04", "active": False, "kind": "b", "source_quote": "Bob Stone"},
        {"name": "Cy Young", "born": None, "active": None, "kind": "a", "source_quote": "Cy Young"},
    ]
    fake_llm.handler = lambda r: json.dumps({"rows": people}) if EXTRACT_MARKER in all_text(r) else None
    _start(page, datasette_server, "review_flow",
           [("name", "text", "key"), ("born", "date"), ("active", "boolean"), ("kind", "choice", "a, b")],
           "Ann Lee, Bob Stone and Cy Young.", instructions="One row per person named.")
    expect(page.locator("#llm-status")).to_have_text("done", timeout=EXPECT_TIMEOUT)
    run_url = page.url

    # every row starts undecided, each value in the control of its type
    expect(page.locator("#llm-grid-body input[value=pending]:checked")).to_have_count(3)
    expect(page.locator("#llm-undecided")).to_have_text("3 row(s) undecided")
    expect(page.locator("#llm-insert")).to_have_text("Insert the accepted rows (0)")
    ann = _row_for(page, "Ann Lee")
    assert ann.locator("input[name$='-col-1']").get_attribute("type") == "date"
    expect(ann.locator("select[name$='-col-2']")).to_have_value("true")
    expect(ann.locator("select[name$='-col-3']")).to_have_value("a")
    assert_labelled(page, ".llm-extract")

    # keyboard: edit row 1 and accept it, reject row 2, move back and forth, leave row 3
    ann.focus()
    page.keyboard.press("e")
    expect(ann.locator("textarea[name$='-col-0']")).to_be_focused()
    page.keyboard.press("End")
    page.keyboard.type(" Jr")
    page.keyboard.press("Escape")
    expect(ann).to_be_focused()
    page.keyboard.press("a")
    bob = _row_for(page, "Bob Stone")
    expect(bob).to_be_focused()
    page.keyboard.press("r")
    cy = _row_for(page, "Cy Young")
    expect(cy).to_be_focused()
    page.keyboard.press("k")
    expect(bob).to_be_focused()
    page.keyboard.press("j")
    expect(cy).to_be_focused()
    expect(page.locator("#llm-undecided")).to_have_text("1 row(s) undecided")
    expect(page.locator("#llm-insert")).to_have_text("Insert the accepted rows (1)")
    page.locator("#llm-insert").click()

    # partly inserted: one row in, one rejected, one still to review; the edit is kept and shown
    expect(page.locator("#llm-status")).to_have_text("inserted", timeout=EXPECT_TIMEOUT)
    expect(page.locator("#llm-state")).to_contain_text("partly inserted")
    edited = page.locator("#llm-grid-body tr.llm-row").first
    expect(edited.locator(".llm-value-text").first).to_have_text("Ann Lee Jr")
    expect(edited.locator(".llm-was-edit del")).to_have_text("Ann Lee")
    expect(page.locator("#llm-reviewer-changes")).to_contain_text("1 value(s) changed")
    page.goto(datasette_server.url("/-/llm-extract"))
    listed = page.locator("tr", has=page.locator(f'a[href$="{run_url.rsplit("/", 1)[-1]}"]'))
    expect(listed.locator(".llm-state")).to_contain_text("partly inserted: 1 row(s) inserted, 1 of 3")
    page.goto(run_url)
    page.get_by_role("button", name="Accept all valid rows").click()
    expect(page.locator("#llm-undecided")).to_have_text("0 row(s) undecided")
    page.locator("#llm-insert").click()
    expect(page.locator("#llm-state")).to_have_text("inserted: 2 row(s), 1 rejected", timeout=EXPECT_TIMEOUT)

    # the evaluation set carries the model's and the reviewer's values
    examples = page.request.get(datasette_server.url("/-/llm-extract/examples/newsroom/review_flow.jsonl"))
    line = json.loads(examples.text().splitlines()[0])
    changed = [r for r in line["reviews"] if r["label"] == "edited"]
    assert changed and changed[0]["model"]["name"] == "Ann Lee" and changed[0]["reviewer"]["name"] == "Ann Lee Jr"
    assert changed[0]["changed"] == ["name"]

    # undo asks first; then the rows can be reviewed and inserted again
    page.get_by_role("button", name=re.compile("^Undo")).click()
    expect(page.locator("#llm-confirm-undo")).to_contain_text("Delete the 2 row(s)")
    page.get_by_role("link", name="No, keep them").click()
    expect(page.locator("#llm-status")).to_have_text("inserted")
    page.get_by_role("button", name=re.compile("^Undo")).click()
    page.get_by_role("button", name="Yes, delete the 2 row(s)").click()
    expect(page.locator("#llm-status")).to_have_text("undone", timeout=EXPECT_TIMEOUT)
    expect(page.locator("#llm-state")).to_contain_text("review them and insert again")
    expect(_row_for(page, "Ann Lee Jr").locator("input[value=accept]")).to_be_checked()
    expect(page.locator("#llm-insert")).to_have_text("Insert the accepted rows (2)")
    page.locator("#llm-insert").click()
    expect(page.locator("#llm-status")).to_have_text("inserted", timeout=EXPECT_TIMEOUT)
    page.goto(datasette_server.url("/newsroom/review_flow"))
    expect(page.locator("table.rows-and-columns tbody tr")).to_have_count(2)

    # the next extraction into the table remembers its key column and instructions
    page.goto(datasette_server.url("/-/llm-extract/into/newsroom/review_flow"))
    names = page.locator("#llm-columns input[name$='-name']")
    key_of = {names.nth(i).input_value(): page.locator(f"#col-{i}-key").is_checked() for i in range(names.count())}
    assert key_of["name"] is True and key_of["born"] is False
    expect(page.locator("#llm-instructions")).to_have_value("One row per person named.")
    note = page.locator("#llm-remembered")
    expect(note).to_contain_text("key column(s) name")
    assert note.get_by_role("link").get_attribute("href").endswith(run_url.rsplit("/", 1)[-1])
