"""The quote a row is highlighted with is exactly the quote the model gave, whatever the text.

Pasted text (browsers submit a textarea with CRLF), an uploaded text file with CRLF, tabs,
a leading blank line and characters outside the BMP, and a two-page PDF go into one run;
the scripted model quotes lines from what it was sent; clicking each row in Chromium must
mark exactly that quote in the source shown on the page.
"""

from __future__ import annotations

import json
import re

import pytest

from ..fake_openai_server import all_text
from ..test_extract_documents import pdf_bytes
from .conftest import EXPECT_TIMEOUT

pytestmark = pytest.mark.browser
expect = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
).expect

PASTED = (
    "Clemency page\n\nAnn Lee\nOffense: Possession\nSentence: 240 months\n\n"
    "Bob Stone\nOffense: Conspiracy\tto distribute\nSentence: Life imprisonment\n"
)
#: CRLF line ends, a leading blank line, tabs, accents and characters outside the BMP.
UPLOADED = (
    "\r\nRecords \U0001F600 from the clerk\u2019s office\r\n\tZo\u00eb \u00d1\u00fa\u00f1ez\r\n"
    "\U0001D504\U0001D505 caf\u00e9\tcr\u00e8me\r\nCarl \u00d8stergaard\tfined $40\r\n"
)
PDF_PAGES = [["Court docket one", "Dana Ortiz was fined 20"], ["Second page", "Eve Park was fined 30"]]

#: name -> the line the model quotes for that row.
QUOTES = {
    "Bob Stone": "Offense: Conspiracy\tto distribute",
    "Ann Lee": "Sentence: 240 months",
    "Zoe": "\tZo\u00eb \u00d1\u00fa\u00f1ez",
    "Carl": "Carl \u00d8stergaard\tfined $40",
    "Dana": "Dana Ortiz was fined 20",
    "Eve": "Eve Park was fined 30",
}
MARKERS = {"Clemency page": ["Bob Stone", "Ann Lee"], "from the clerk": ["Zoe", "Carl"],
           "Court docket one": ["Dana", "Eve"]}


def make_pdf(pages: list[list[str]]) -> bytes:
    """A PDF with one text line per entry on each page, built by hand (no writer dependency)."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for lines in pages:
        ops = " T* ".join(f"({line}) Tj" for line in lines)
        stream = f"BT /F1 12 Tf 14 TL 20 160 Td {ops} ET".encode()
        page_no = len(objects) + 1
        kids.append(f"{page_no} 0 R")
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents "
                       + f"{page_no + 1} 0 R".encode() + b" /Resources << /Font << /F1 FONT 0 R >> >> >>")
        objects.append(b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    font = str(len(objects)).encode()
    objects = [o.replace(b"FONT", font) for o in objects]
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>".encode()
    return pdf_bytes(objects)


def quoting_model(request):
    """Answers for whichever document the request carries, quoting lines of it verbatim."""
    body = all_text(request)
    if "Extract every matching record" not in body:
        return None
    for marker, names in MARKERS.items():
        if marker in body:
            return json.dumps({"rows": [{"name": n, "source_quote": QUOTES[n]} for n in names]})
    return json.dumps({"rows": []})


def test_quote_highlight_is_the_quote(root_page, datasette_server, fake_llm, tmp_path):
    page = root_page
    fake_llm.handler = quoting_model
    text_file = tmp_path / "clerk.txt"
    text_file.write_bytes(UPLOADED.encode("utf-8"))
    pdf_file = tmp_path / "docket.pdf"
    pdf_file.write_bytes(make_pdf(PDF_PAGES))

    page.goto(datasette_server.url("/-/llm-extract/new/newsroom"))
    page.locator("#llm-table-name").fill("quote_check")
    page.locator("#col-0-name").fill("name")
    page.locator("#llm-text").fill(PASTED)
    page.locator("#llm-files").set_input_files([str(text_file), str(pdf_file)])
    with page.expect_navigation():
        page.get_by_role("button", name="Extract rows").click()
    expect(page).to_have_url(re.compile(r"/-/llm-extract/runs/"))
    expect(page.locator("#llm-status")).to_have_text("done", timeout=EXPECT_TIMEOUT)

    for reload in (False, True):  # rows added live, then the page rendered by the server
        if reload:
            page.reload()
        rows = page.locator("#llm-grid-body tr.llm-row")
        expect(rows).to_have_count(len(QUOTES))
        seen = {}
        for i in range(rows.count()):
            row = rows.nth(i)
            name = row.locator("[name$='-col-0']").input_value()
            row.locator("th").click()
            marks = page.locator("pre.llm-source mark")
            expect(marks).to_have_count(1)
            seen[name] = marks.first.evaluate("m => m.textContent")
            assert seen[name] == row.locator(".llm-quote-text").evaluate("q => q.textContent")
        # the row's quote is what the model sent, trimmed of surrounding whitespace
        assert seen == {name: quote.strip() for name, quote in QUOTES.items()}
    # the model was sent the same canonical text: no CR anywhere
    assert all("\r" not in all_text(r) for r in fake_llm.chat_requests())
