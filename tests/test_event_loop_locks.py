"""No thread lock is taken on the event loop: a lock a worker thread holds for seconds
(PDFium rendering a page, OCR) would stop every request meanwhile (the class of the
browser-suite stall, docs/reliability.md)."""

from __future__ import annotations

import asyncio
import threading
import time

from datasette_llm_extract import kept, pages, service

from .test_extract_pages import text_pdf

HOLD = 1.5  # seconds a render holds PDFium's lock in another thread


async def _max_gap(work) -> tuple[float, object]:
    """Run ``work`` while ticking every 20 ms; the longest the loop went without a tick."""
    gaps, done = [0.0], asyncio.Event()

    async def tick():
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.02)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    try:
        result = await work
    finally:
        done.set()
        await ticker
    return max(gaps), result


async def test_restoring_a_kept_pdf_does_not_wait_for_pdfium_on_the_event_loop(monkeypatch):
    pdf = text_pdf([["Page one"], ["Page two"], ["Page three"]])

    async def get_file(state, run_id, idx):
        return "application/pdf", pdf

    monkeypatch.setattr(kept, "get_file", get_file)
    held = threading.Event()

    def render():  # a page image or an OCR page being rendered meanwhile
        with pages.PDFIUM_LOCK:
            held.set()
            time.sleep(HOLD)

    thread = threading.Thread(target=render)
    thread.start()
    held.wait(5)
    stored = {"kind": "pdf", "text": "Page one", "name": "a.pdf", "sha256": "x"}
    gap, document = await _max_gap(service._restored_document(None, {"id": "r"}, 0, stored, None))
    thread.join()
    assert document.pages == 3  # counted by PDFium, once the render let go of it
    assert gap < HOLD / 2, f"the event loop stood still for {gap:.2f} s"
