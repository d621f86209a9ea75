"""A reviewer checks rows against the scan they came from; a signed-out reader opens a row's
provenance card (issues #11.3, #11.9, #15.2): real server, real Chromium, the fake model."""

from __future__ import annotations

import json
import re

import pytest

from ..fake_openai_server import all_text
from ..test_extract_pages import scan_png, text_pdf
from .helpers import assert_labelled

pytestmark = pytest.mark.browser
SLOW = 60_000  # ms: OCR shares two cores with the rest of the suite (and other work)
expect = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
).expect

def _document_lines(request: dict) -> list[str]:
    """The lines of the document the model was shown (its last fenced block)."""
    lines = all_text(request).splitlines()
    opens = [i for i, ln in enumerate(lines) if ln.strip() == "<document>"]
    if not opens:
        return []
    body = lines[opens[-1] + 1:]
    return body[:next((i for i, ln in enumerate(body) if ln.strip() == "</document>"), len(body))]


def copy_model(quote_containing: str):
    """The fake model copies what it is shown: the line holding ``quote_containing`` is the
    quote, the first line the company, the number after TOTAL the total."""
    def handler(request):
        lines = _document_lines(request)
        quote = next((ln for ln in lines if quote_containing in ln), None)
        if quote is None:
            return None
        total = re.search(r"TOTAL\s*([0-9.]+)", "\n".join(lines))
        return json.dumps({"rows": [{"company": lines[0].strip(), "total": float(total.group(1)) if total else None,
                                     "source_quote": quote.strip()}]})
    return handler


def _new_run(page, server, table: str, upload, read_as: str) -> str:
    page.goto(server.url("/-/llm-extract/new/newsroom"))
    page.locator("#llm-table-name").fill(table)
    page.locator("#col-0-name").fill("company")
    page.locator("#col-0-description").fill("Shop name at the top of the receipt")
    page.locator("#col-1-name").fill("total")
    page.locator("#col-1-type").select_option("number")
    page.locator("#llm-files").set_input_files(str(upload))
    page.locator("#llm-read-as").select_option(read_as)
    assert_labelled(page, ".llm-extract")
    with page.expect_navigation():
        page.get_by_role("button", name="Extract rows").click()
    expect(page).to_have_url(re.compile(r"/-/llm-extract/runs/"))
    expect(page.locator("#llm-status")).to_have_text("done", timeout=SLOW)  # OCR on a shared CPU
    return page.url.rstrip("/").split("/")[-1].split("?")[0]


def _status(page, url: str) -> int:
    """HTTP status of ``url`` fetched with the page's cookies (no navigation: Chromium logs
    a 4xx document as a console error), with room for a busy machine."""
    return page.request.get(url, max_redirects=0, timeout=SLOW).status


def _box_inside_image(page) -> dict:
    return page.evaluate("""() => {
        const img = document.getElementById("llm-page-image").getBoundingClientRect();
        const box = document.querySelector("#llm-page-boxes .llm-quote-box").getBoundingClientRect();
        return {img_w: img.width, img_h: img.height, left: (box.left - img.left) / img.width,
                top: (box.top - img.top) / img.height, right: (box.right - img.left) / img.width,
                bottom: (box.bottom - img.top) / img.height,
                natural: document.getElementById("llm-page-image").naturalWidth};
    }""")


def test_a_scan_read_by_ocr_is_shown_beside_its_rows_and_a_reader_opens_the_card(
        root_page, anon_page, datasette_server, fake_llm, tmp_path, shots):
    page = root_page
    scan = tmp_path / "receipt-scan.png"
    scan.write_bytes(scan_png())
    fake_llm.handler = copy_model("4471")
    run_id = _new_run(page, datasette_server, "scanned_receipts", scan, "ocr")

    # the model saw OCR text, not the image
    sent = fake_llm.chat_requests()[-1]
    assert "Invoice 4471" in all_text(sent) or "4471" in all_text(sent)
    assert not [p for m in sent["messages"] if isinstance(m.get("content"), list)
                for p in m["content"] if p.get("type") == "image_url"]

    # 1. the reviewer selects the row: its page is shown beside the grid, the quote boxed
    row = page.locator("#llm-grid-body tr").first
    expect(row).to_contain_text("4471")
    row.locator("td.llm-quote").click()
    viewer = page.locator("#llm-pages")
    expect(viewer).to_be_visible()
    expect(page.locator("#llm-page-image")).to_be_visible()
    expect(page.locator("#llm-page-caption")).to_contain_text("quote marked")
    expect(page.locator("#llm-page-caption")).to_contain_text("text read by OCR")
    expect(page.locator("#llm-page-boxes .llm-quote-box")).to_have_count(1)
    geometry = _box_inside_image(page)
    assert geometry["natural"] == 700  # the uploaded scan itself, served from the state database
    # "Invoice 4471" is the second of four lines, at the left of the scan
    assert 0.03 < geometry["left"] < 0.2 and 0.2 < geometry["top"] < 0.45 and geometry["right"] < 0.6
    grid_box = page.locator("#llm-grid").bounding_box()
    viewer_box = viewer.bounding_box()
    assert viewer_box["x"] > grid_box["x"], "the page is not beside the rows at 1280 px"
    shots(page, "review-scan", readme=True)

    # 2. insert it; the run page is not for readers
    page.get_by_role("button", name="Accept all valid rows").click()  # rows start undecided
    page.locator("#llm-insert").click()
    expect(page.locator("#llm-status")).to_have_text("inserted", timeout=SLOW)
    assert _status(anon_page, datasette_server.url(f"/-/llm-extract/runs/{run_id}")) == 404
    assert _status(anon_page, datasette_server.url(f"/-/llm-extract/runs/{run_id}/documents/0/pages/0")) == 404

    # 3. a signed-out reader of the table follows the row's link to its provenance card
    reader = anon_page
    reader.goto(datasette_server.url("/newsroom/scanned_receipts"))
    expect(reader.locator("body")).to_contain_text("Shop name at the top of the receipt")  # column description
    link = reader.locator('table.rows-and-columns a[title^="Where this row came from"]')
    expect(link).to_have_count(1)
    link.click()
    expect(reader.locator("h1")).to_have_text("Where this row came from")
    expect(reader.locator("#llm-card-document")).to_have_text("receipt-scan.png")
    expect(reader.locator("#llm-card-page")).to_have_text("1")
    expect(reader.locator("#llm-card-quote")).to_contain_text("4471")
    expect(reader.locator("#llm-card-changed")).to_have_text("no")
    card = reader.locator("#llm-provenance-card")
    expect(card).to_contain_text("fake")  # the model
    expect(card).not_to_contain_text(run_id[:8])
    expect(card).not_to_contain_text("root")  # actor ids are not public unless the operator says so
    expect(reader.locator("#llm-card-image")).to_have_count(0)  # public_provenance: quote (the default)


def test_a_pdf_page_is_rendered_on_the_server_with_the_quote_boxed(root_page, datasette_server, fake_llm,
                                                                   tmp_path):
    page = root_page
    pdf = tmp_path / "two-pages.pdf"
    pdf.write_bytes(text_pdf([["ACME HARDWARE LTD", "Invoice 4471"],
                              ["Continued from page 1", "TOTAL 12.50", "Thank you"]]))
    fake_llm.handler = copy_model("TOTAL")
    _new_run(page, datasette_server, "pdf_receipts", pdf, "auto")  # the model reads no PDFs: text layer
    page.locator("#llm-grid-body tr td.llm-quote").first.click()
    image = page.locator("#llm-page-image")
    expect(image).to_have_attribute("src", re.compile(r"/documents/0/pages/1$"))
    expect(image).to_be_visible()
    expect(page.locator("#llm-page-caption")).to_contain_text("page 2 of 2")
    expect(page.locator("#llm-page-boxes .llm-quote-box")).to_have_count(1)
    geometry = _box_inside_image(page)
    assert geometry["natural"] > 600  # rendered by pypdfium2 on the server
    # TOTAL is the second line from the top of a letter page, 40 pt from its left edge
    assert 0.04 < geometry["left"] < 0.09 and 0.04 < geometry["top"] < 0.08
    page.get_by_role("button", name="Previous page").click()
    expect(image).to_have_attribute("src", re.compile(r"/documents/0/pages/0$"))
    expect(page.locator("#llm-page-boxes .llm-quote-box")).to_have_count(0)
