"""Scans and provenance: kept files, page images, local OCR, quote -> page -> box,
provenance cards for readers, column descriptions on table pages (issues #11.3, #11.9, #15)."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image, ImageDraw, ImageFont

from datasette_llm_core.types import ImagePart, PdfPart, TextPart
from datasette_llm_extract.pages import (
    PAGE_BREAK,
    boxes_for_quote,
    page_of_offset,
    pdf_text_layout,
    quote_place,
)

from .extract_web_helpers import (
    cookies,
    make_ds,
    news_rows,
    rows_json,
    state_rows,
    wait_run,
)
from .test_extract_documents import pdf_bytes

SCHEMA = {"columns": [{"name": "company", "description": "Who issued it"},
                      {"name": "total", "type": "number", "description": "Amount paid"}]}
LINES = ["ACME HARDWARE LTD", "Invoice 4471", "Date 2018-12-25", "TOTAL 12.50"]


def scan_png(lines=LINES, size=(700, 420)) -> bytes:
    """A clean scan of a short receipt: big black text on white."""
    font = ImageFont.load_default(size=32)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for i, text in enumerate(lines):
        draw.text((50, 40 + i * 90), text, fill="black", font=font)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def scan_pdf(png: bytes) -> bytes:
    """A one-page PDF holding only an image: no text layer (a scan)."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, "PDF", resolution=100)
    return buf.getvalue()


def text_pdf(pages: list[list[str]]) -> bytes:
    """A PDF with a text layer: each page a list of lines, 14 pt Helvetica, 20 pt apart."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", None]
    kids = []
    font_obj = 3 + 2 * len(pages)
    for p, lines in enumerate(pages):
        body = "".join(f"BT /F1 14 Tf 40 {760 - 20 * i} Td ({line}) Tj ET\n" for i, line in enumerate(lines))
        stream = body.encode()
        page_no, content_no = 3 + 2 * p, 4 + 2 * p
        kids.append(f"{page_no} 0 R")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_no} 0 R "
                       f"/Resources << /Font << /F1 {font_obj} 0 R >> >> >>".encode())
        objects.append(b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode()
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    return pdf_bytes(objects)


def file_json(name: str, content_type: str, data: bytes) -> dict:
    return {"name": name, "content_type": content_type, "data_base64": base64.b64encode(data).decode()}


def shown_text(request) -> str:
    return "\n".join(p.text for m in request.messages for p in m.parts if isinstance(p, TextPart))


def copy_line(containing: str):
    """A scripted model that copies what it is shown: the line holding ``containing`` is the
    quote, and the company and total are read off the document it was sent."""
    def respond(request):
        text = shown_text(request)
        line = next((ln for ln in text.splitlines() if containing.lower() in ln.lower()), None)
        total = re.search(r"TOTAL\s*([0-9.]+)", text)
        company = next((ln for ln in text.splitlines() if "ACME" in ln), None)
        return rows_json({"company": company, "total": float(total.group(1)) if total else None,
                          "source_quote": line})
    return respond


@pytest.fixture
async def ds(tmp_path, fake_models):
    ds = make_ds(tmp_path, rules={"databases": {"news": {"tables": {"hidden": {"allow": {"id": "root"}}}}}})
    await ds.invoke_startup()
    return ds


async def start(ds, files, *, read_as="auto", table="receipts", text="", actor="root"):
    jar = cookies(ds, actor)
    r = await ds.client.post("/-/llm-extract/api/runs", json={
        "database": "news", "table": table, "create": True, "schema": SCHEMA, "text": text,
        "files": files, "model": "scripted", "read_as": read_as}, cookies=jar)
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    return run_id, await wait_run(ds, run_id, jar, timeout=90)


async def insert_all(ds, run_id, actor="root", values=None):
    rows = {"0": {"decision": "accept", **({"values": values} if values else {})}}
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run_id}/insert", json={"rows": rows},
                             cookies=cookies(ds, actor))
    assert r.status_code == 200, r.text
    return r.json()


# --- pure: pages, text layer, where a quote sits ----------------------------------------------

def test_text_layer_positions_and_quote_boxes():
    pdf = text_pdf([["Clemency grants, page one", "Name: Ann Lee"], ["Name: Bob Stone", "Sentence: 10 years"]])
    layout = pdf_text_layout(pdf, 1)
    assert layout.source == "text" and [ln.text for ln in layout.lines] == ["Name: Bob Stone", "Sentence: 10 years"]
    # the second line sits below the first, both at the left margin of a letter page
    (a, b) = layout.lines
    assert a.box[1] < b.box[1] and a.box[0] == pytest.approx(40 / 612, abs=0.01)
    boxes = boxes_for_quote(layout, "sentence:  10 YEARS")  # case and spacing differ from the layer
    assert len(boxes) == 1 and boxes[0][1] == pytest.approx(b.box[1]) and boxes[0][3] == pytest.approx(b.box[3])
    # a quote across two lines gets a box on each
    assert len(boxes_for_quote(layout, "Bob Stone Sentence")) == 2
    assert boxes_for_quote(layout, "Carla") == []
    text = "page one" + PAGE_BREAK + "Name: Bob Stone" + PAGE_BREAK + "three"
    start = text.index("Bob")
    assert page_of_offset(text, start) == 1 and page_of_offset(text, 0) == 0
    page, found = quote_place(text, [layout], start, start + 9, "Bob Stone", "pdf")
    assert page == 1 and len(found) == 1 and found[0][0] > a.box[0]  # "Bob" starts after "Name: "


# --- OCR: a scanned PDF extracted by a text-only model ------------------------------------------

async def test_scanned_pdf_is_read_by_ocr_and_the_quote_boxed(ds, scripted_model):
    scripted_model.supports_images = scripted_model.supports_pdfs = False  # a text-only (local) model
    scripted_model.responder = copy_line("invoice")
    png = scan_png()
    run_id, run = await start(ds, [file_json("scan.pdf", "application/pdf", scan_pdf(png))])
    assert run["status"] == "done", run
    # the model was sent text only: what OCR read from the scan
    request = scripted_model.requests[-1]
    parts = [p for m in request.messages for p in m.parts]
    assert not any(isinstance(p, (ImagePart, PdfPart)) for p in parts)
    assert "4471" in shown_text(request) and "12.50" in shown_text(request)
    row = run["rows"][0]
    assert row["values"]["total"] == 12.5 and "4471" in row["source_quote"] and row["quote_found"]
    # quote -> page -> box: the "Invoice 4471" line is the second of four, at the left
    assert row["quote_page"] == 0
    (box,) = row["quote_boxes"]
    assert 0.05 < box[0] < 0.15 and 0.2 < box[1] < 0.45 and box[2] < 0.6
    # the OCR text and its lines are stored with the document
    docs = await state_rows(ds, "select text from llm_extract_documents where run_id = ?", [run_id])
    assert "4471" in docs[0][0]
    pages = await state_rows(ds, "select page, source, lines_json from llm_extract_pages where run_id = ?", [run_id])
    assert [(p, s) for p, s, _ in pages] == [(0, "ocr")] and len(json.loads(pages[0][2])) == 4
    # progress events say which page was read, and how
    events = await state_rows(ds, "select data_json from llm_extract_events where run_id = ? and type = 'PageRead'",
                              [run_id])
    assert [json.loads(e[0])["source"] for e in events] == ["ocr"]

    # the page image is rendered on the server for the run's owner (and root) only
    page = await ds.client.get(f"/-/llm-extract/runs/{run_id}/documents/0/pages/0", cookies=cookies(ds, "root"))
    assert page.status_code == 200 and page.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(page.content)).width > 500
    for who in (None, "intern"):
        other = await ds.client.get(f"/-/llm-extract/runs/{run_id}/documents/0/pages/0", cookies=cookies(ds, who))
        assert other.status_code == 404 and other.headers["content-type"] != "image/png"
    missing = await ds.client.get(f"/-/llm-extract/runs/{run_id}/documents/0/pages/3", cookies=cookies(ds, "root"))
    assert missing.status_code == 404

    # the review page shows the page with the row's place
    html = (await ds.client.get(f"/-/llm-extract/runs/{run_id}", cookies=cookies(ds, "root"))).text
    viewer = re.search(r'id="llm-pages"[^>]*data-documents="([^"]*)" data-places="([^"]*)"', html)
    assert viewer, "no page viewer on the run page"
    import html as html_lib

    places = json.loads(html_lib.unescape(viewer.group(2)))
    assert places["0"]["page"] == 0 and places["0"]["boxes"] == [box]
    documents = json.loads(html_lib.unescape(viewer.group(1)))
    assert documents[0]["kept"] and documents[0]["ocr_pages"] == [0]

    # the provenance card names the page
    await insert_all(ds, run_id)
    card = await ds.client.get("/-/llm-extract/provenance/news/receipts/1.json")
    assert card.status_code == 200
    assert card.json()["page"] == 1 and card.json()["document"] == "scan.pdf"


async def test_read_as_both_sends_the_scan_with_its_ocr_text_and_the_estimate_follows(ds, scripted_model):
    png = scan_png(["ACME HARDWARE LTD", "TOTAL 12.50"], size=(600, 200))
    files = [file_json("receipt.png", "image/png", png)]
    jar = cookies(ds, "root")

    async def estimate(read_as):
        r = await ds.client.post("/-/llm-extract/estimate", json={
            "database": "news", "table": "receipts", "create": True, "schema": SCHEMA, "files": files,
            "model": "scripted", "read_as": read_as}, cookies=jar)
        return r

    answers = {m: (await estimate(m)).json() for m in ("vision", "ocr", "both")}
    tokens = {m: a["input_tokens"] for m, a in answers.items()}
    assert [answers[m]["ocr_pages"] for m in ("vision", "ocr", "both")] == [0, 1, 1]
    assert answers["ocr"]["documents"][0]["read_as"] == "ocr"
    from datasette_llm_extract.engine import IMAGE_TOKENS
    from datasette_llm_extract.reading import OCR_PAGE_TOKENS

    assert tokens["both"] - tokens["vision"] == pytest.approx(OCR_PAGE_TOKENS, abs=5)
    assert tokens["vision"] - tokens["ocr"] == pytest.approx(IMAGE_TOKENS - OCR_PAGE_TOKENS, abs=5)
    bad = await estimate("telepathy")
    assert bad.status_code == 400 and "auto, vision, ocr, both" in bad.json()["error"]
    scripted_model.supports_images = False
    refused = await estimate("vision")
    assert refused.status_code == 400 and "cannot read images" in refused.json()["error"]
    assert (await estimate("auto")).status_code == 200  # a text model reads the scan through OCR
    scripted_model.supports_images = True

    scripted_model.responder = copy_line("12.50")
    run_id, run = await start(ds, files, read_as="both")
    parts = [p for m in scripted_model.requests[-1].messages for p in m.parts]
    assert any(isinstance(p, ImagePart) for p in parts)
    assert "12.50" in shown_text(scripted_model.requests[-1])
    row = run["rows"][0]
    assert row["quote_page"] == 0 and row["quote_boxes"] and row["quote_boxes"][0][1] > 0.4  # second line


# --- kept files: served, expire, capped ----------------------------------------------------------

async def test_uploaded_files_are_kept_for_review_then_deleted(ds, scripted_model, tmp_path):
    png = scan_png(["X"], size=(120, 80))
    scripted_model.enqueue(rows_json({"company": "Acme", "total": 1, "source_quote": "X"}))
    run_id, run = await start(ds, [file_json("photo.png", "image/png", png)], read_as="vision")
    row = run["rows"][0]
    assert row["quote_page"] == 0 and row["quote_boxes"] is None  # no text to place the quote in
    page = await ds.client.get(f"/-/llm-extract/runs/{run_id}/documents/0/pages/0", cookies=cookies(ds, "root"))
    assert page.status_code == 200 and page.content == png and page.headers["content-type"] == "image/png"
    assert page.headers["x-content-type-options"] == "nosniff"
    html = (await ds.client.get(f"/-/llm-extract/runs/{run_id}", cookies=cookies(ds, "root"))).text
    assert "shown beside the rows" in html and "Only the file's hash was kept" not in html

    # after keep_documents_days the file is deleted (at startup, or when another run keeps files)
    from datasette_llm_core.state import state_db
    from datasette_llm_extract import kept

    state = await state_db(ds)
    await state.execute_write("update llm_extract_files set keep_until = 1 where run_id = ?", [run_id])
    assert await kept.purge_expired(state) == 1
    gone = await ds.client.get(f"/-/llm-extract/runs/{run_id}/documents/0/pages/0", cookies=cookies(ds, "root"))
    assert gone.status_code == 404 and "keep_documents_days" in gone.text
    assert await state_rows(ds, "select count(*) from llm_extract_files") == [(0,)]


async def test_kept_files_have_a_size_cap_and_can_be_switched_off(tmp_path, fake_models, scripted_model):
    folder = tmp_path / "kept"
    ds = make_ds(tmp_path, extract={"keep_documents_max_bytes": 3000, "documents_folder": str(folder)})
    await ds.invoke_startup()
    small = scan_png(["A"], size=(60, 40))
    buf = io.BytesIO()
    Image.effect_noise((200, 200), 80).save(buf, "PNG")  # noise: does not compress
    big = buf.getvalue()
    assert len(small) < 1500 < 3000 < len(big)
    for _ in range(3):
        scripted_model.enqueue(rows_json({"company": "Acme", "total": 1, "source_quote": "A"}))
    first, _ = await start(ds, [file_json("a.png", "image/png", small)], read_as="vision", table="t1")
    assert [p.name for p in folder.iterdir()] == [f"{first}-0.bin"]  # in the folder, not the database
    assert await state_rows(ds, "select data is null from llm_extract_files") == [(1,)]
    second, _ = await start(ds, [file_json("b.png", "image/png", small)], read_as="vision", table="t2")
    third, _ = await start(ds, [file_json("c.png", "image/png", big)], read_as="vision", table="t3")
    html = (await ds.client.get(f"/-/llm-extract/runs/{third}", cookies=cookies(ds, "root"))).text
    assert "over keep_documents_max_bytes" in html
    # two small files fit under the cap together; the big one was refused, nothing else lost
    kept_runs = {r[0] for r in await state_rows(ds, "select run_id from llm_extract_files")}
    assert kept_runs == {first, second}
    off = make_ds(tmp_path, extract={"keep_documents_days": 0})
    await off.invoke_startup()
    scripted_model.enqueue(rows_json({"company": "Acme", "total": 1, "source_quote": "A"}))
    fourth, _ = await start(off, [file_json("d.png", "image/png", small)], read_as="vision", table="t4")
    html = (await off.client.get(f"/-/llm-extract/runs/{fourth}", cookies=cookies(off, "root"))).text
    assert "keep_documents_days: 0" in html


# --- provenance cards ---------------------------------------------------------------------------

async def test_a_signed_out_reader_opens_the_provenance_card(ds, scripted_model):
    scripted_model.enqueue(rows_json({"company": "Acme Ltd", "total": 12.5, "source_quote": "Acme Ltd paid 12.50"}))
    text = "Receipts\n\nAcme Ltd paid 12.50 on 25 December."
    run_id, run = await start(ds, [], text=text)
    await insert_all(ds, run_id, values={"company": "ACME Ltd", "total": "12.5"})  # the reviewer fixes a value
    table = await ds.client.get("/news/receipts")
    link = re.search(r'<a href="([^"]+)" title="Where this row came from[^"]*">source', table.text)
    assert link and link.group(1) == "/-/llm-extract/provenance/news/receipts/1"
    # the run page itself stays private
    assert (await ds.client.get(f"/-/llm-extract/runs/{run_id}")).status_code == 404

    card = await ds.client.get(link.group(1))
    assert card.status_code == 200
    from datasette_llm_extract.prompts import PROMPT_VERSION

    for shown in ("pasted text", "Acme Ltd paid 12.50", "scripted", PROMPT_VERSION, "Changed by the reviewer",
                  "company (the model said “Acme Ltd”)"):
        assert shown in card.text, shown
    data = (await ds.client.get(link.group(1) + ".json")).json()
    assert data["quote"] == "Acme Ltd paid 12.50" and data["page"] == 1 and data["changed_by_reviewer"]
    assert data["extracted_by"] is None and data["reviewed_by"] is None  # actor ids are not public by default
    assert "run" not in data and "page_text" not in data and "cost" not in json.dumps(data)
    assert run_id not in card.text  # nothing leads a reader to the run, its other rows or its cost
    owner = (await ds.client.get(link.group(1) + ".json", cookies=cookies(ds, "root"))).json()
    assert owner["run"]["id"] == run_id and owner["extracted_by"] == "root" and "Receipts" in owner["page_text"]
    assert (await ds.client.get("/-/llm-extract/provenance/news/receipts/2")).status_code == 404
    assert (await ds.client.get("/-/llm-extract/provenance/news/donors/1")).status_code == 404


@pytest.mark.parametrize("level", ["off", "document"])
async def test_public_provenance_setting(tmp_path, fake_models, scripted_model, level):
    ds = make_ds(tmp_path, extract={"public_provenance": False if level == "off" else level,  # YAML's `off`
                                    "public_provenance_actors": True},
                 rules={"databases": {"news": {"tables": {"hidden": {"allow": {"id": "root"}}}}}})
    await ds.invoke_startup()
    for table in ("receipts", "hidden"):
        scripted_model.enqueue(rows_json({"company": "Acme", "total": 3, "source_quote": "Acme 3"}))
        run_id, _ = await start(ds, [], text="Line one\nAcme 3", table=table)
        await insert_all(ds, run_id)
    card = await ds.client.get("/-/llm-extract/provenance/news/receipts/1.json")
    if level == "off":
        assert card.status_code == 404 and "public_provenance: off" in card.text
        assert (await ds.client.get("/-/llm-extract/provenance/news/receipts/1.json",
                                    cookies=cookies(ds, "root"))).status_code == 200
    else:
        data = card.json()
        assert data["page_text"] == "Line one\nAcme 3" and data["extracted_by"] == "root" and "run" not in data
    # a row the reader may not view has no card, whatever the setting
    hidden = await ds.client.get("/-/llm-extract/provenance/news/hidden/1")
    assert hidden.status_code == 404 and "Acme" not in hidden.text


async def test_column_descriptions_show_on_the_table_page(tmp_path, fake_models, scripted_model):
    ds = make_ds(tmp_path)
    await ds.invoke_startup()
    scripted_model.enqueue(rows_json({"company": "Acme", "total": 3, "source_quote": "Acme 3"}))
    run_id, _ = await start(ds, [], text="Acme 3")
    await insert_all(ds, run_id)
    page = await ds.client.get("/news/receipts")
    assert "Who issued it" in page.text and "Amount paid" in page.text
    # a restarted server shows them too (they come from the state database)
    again = make_ds(tmp_path)
    await again.invoke_startup()
    assert "Who issued it" in (await again.client.get("/news/receipts")).text
    assert await news_rows(again, "select company from receipts") == [("Acme",)]


# --- OCR limits -----------------------------------------------------------------------------------

async def test_ocr_page_cap_and_time_limits_skip_pages_with_a_reason(monkeypatch):
    import time as time_mod

    from datasette_llm_extract import ocr
    from datasette_llm_extract.documents import load_upload
    from datasette_llm_extract.pages import Line, PageLayout
    from datasette_llm_extract.reading import DocumentRead, OcrLimits, PageRead, read_documents

    calls = []

    def fake_ocr(source, page=0, settings=None):
        calls.append(page)
        if page == 1:
            time_mod.sleep(4.0)  # a page far slower than its limit
        text = f"text of page {page + 1}"
        line = Line(text, [0.1, 0.1, 0.9, 0.2], 0, len(text))
        return PageLayout(page=page, width=10, height=10, source="ocr", lines=[line]), text

    monkeypatch.setattr(ocr, "ocr_image", fake_ocr)
    two_pages = io.BytesIO()
    first, second = (Image.new("RGB", (60, 80), "white") for _ in range(2))
    first.save(two_pages, "PDF", save_all=True, append_images=[second])
    doc = load_upload("scan.pdf", "application/pdf", two_pages.getvalue())
    assert doc.pages == 2 and not doc.text.strip()
    events = [e async for e in read_documents([doc], ["ocr"], OcrLimits(page_timeout=1.5))]
    reads = [e for e in events if isinstance(e, PageRead)]
    assert [(e.page, e.source) for e in reads] == [(0, "ocr"), (1, "skipped")], reads
    assert reads[1].error == "Page 2 was not read: OCR took longer than 1.5 seconds.", reads
    done = events[-1]
    assert isinstance(done, DocumentRead) and done.skipped == [1] and done.ocr_pages == 1
    assert doc.text == "text of page 1" + PAGE_BREAK  # page 2 stays empty, page offsets hold

    doc = load_upload("scan.pdf", "application/pdf", two_pages.getvalue())
    events = [e async for e in read_documents([doc], ["ocr"], OcrLimits(max_pages=1))]
    skipped = [e for e in events if isinstance(e, PageRead) and e.source == "skipped"]
    assert [e.page for e in skipped] == [1] and "limit of 1 OCR pages per run" in skipped[0].error
    # a document that needs no OCR (a text model reads the text layer; vision sends the file) is not read
    text_doc = load_upload("t.pdf", "application/pdf", text_pdf([["Hello"]]))
    calls.clear()
    events = [e async for e in read_documents([text_doc], ["ocr"], OcrLimits())]
    assert calls == [] and [e.source for e in events if isinstance(e, PageRead)] == ["text"]


def test_a_huge_pdf_page_is_rendered_within_bounds():
    from datasette_llm_extract.pages import MAX_RENDER_SIDE, pdf_page_image, render_pdf_page

    pdf = text_pdf([["tiny"]]).replace(b"/MediaBox [0 0 612 792]", b"/MediaBox [0 0 14400 14400]")
    png, width, height = render_pdf_page(pdf, 0)
    assert max(width, height) <= MAX_RENDER_SIDE and png.startswith(b"\x89PNG")
    assert max(pdf_page_image(pdf, 0, 2.0).size) <= MAX_RENDER_SIDE


async def test_a_page_waiting_for_the_ocr_engine_is_not_timed_out(monkeypatch):
    """Two runs OCR at once: the second page's time limit starts when the engine is free."""
    import asyncio
    import time as time_mod

    from datasette_llm_extract import ocr
    from datasette_llm_extract.documents import Document
    from datasette_llm_extract.pages import Line, PageLayout
    from datasette_llm_extract.reading import OcrLimits, PageRead, read_documents

    def slow_ocr(source, page=0, settings=None):
        with ocr.OCR_LOCK:  # the engine takes one page at a time
            time_mod.sleep(1.0)
        return PageLayout(page=0, width=1, height=1, source="ocr", lines=[Line("x", [0, 0, 1, 1], 0, 1)]), "x"

    monkeypatch.setattr(ocr, "ocr_image", slow_ocr)

    async def read(name):
        doc = Document(name=name, kind="image", data=b"png", media_type="image/png")
        return [e async for e in read_documents([doc], ["ocr"], OcrLimits(page_timeout=1.6))]

    first, second = await asyncio.gather(read("a.png"), read("b.png"))
    for events in (first, second):
        assert [e.source for e in events if isinstance(e, PageRead)] == ["ocr"], events


async def test_a_failed_run_on_a_kept_image_can_be_resumed(ds, scripted_model):
    """Before files were kept, an unfinished image could not be resumed ("only its hash was kept")."""
    from datasette_llm_core.errors import ModelError
    from tests.fakes import Scripted

    png = scan_png(["A"], size=(80, 50))
    scripted_model.enqueue(Scripted(error=ModelError("overloaded", status=400, retryable=False)))
    run_id, run = await start(ds, [file_json("photo.png", "image/png", png)], read_as="vision")
    assert run["status"] == "failed" and run["rows"] == []
    scripted_model.enqueue(rows_json({"company": "Acme", "total": 2, "source_quote": "A"}))
    jar = cookies(ds, "root")
    r = await ds.client.post(f"/-/llm-extract/api/runs/{run_id}/resume", json={}, cookies=jar)
    assert r.status_code == 200, r.text
    run = await wait_run(ds, run_id, jar)
    assert run["status"] == "done" and run["rows"][0]["values"]["company"] == "Acme"
    parts = [p for m in scripted_model.requests[-1].messages for p in m.parts]
    assert any(isinstance(p, ImagePart) and p.data == png for p in parts)  # the kept file itself
