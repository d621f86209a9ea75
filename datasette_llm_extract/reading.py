"""How each document reaches the model, and reading scans before a run.

A run chooses how images and PDFs are read (``read_as``):

- ``vision``: the file itself goes to a model that reads images / PDFs;
- ``ocr``: its text goes to any text model: a PDF's text layer where a page has
  one, local OCR (``ocr.py``) where it has none, OCR for images;
- ``both``: the file, with its text (layer or OCR) next to it as a hint;
- ``auto`` (default): ``vision`` when the model can read the file, else ``ocr``.

``read_documents`` runs before the model is asked: OCR per page in a worker
thread with a per-page and a total time limit and a page cap, yielding a
``PageRead`` event per page (progress) and a ``DocumentRead`` per document.
It also reads the positions of a PDF's text layer, so quotes can be boxed.
No Datasette imports here.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import asdict, dataclass

from .documents import Document
from .ocr import DEFAULT_SETTINGS, EngineSettings
from .pages import PAGE_BREAK, PageLayout, pdf_page_image, pdf_text_layout

READ_MODES = ("auto", "vision", "ocr", "both")
READ_MODE_LABELS = {
    "auto": "Automatic: the file to a model that reads it, else its text (OCR for scans)",
    "vision": "The scan itself, to a model that reads images or PDFs",
    "ocr": "Text read locally (OCR for scans), to any text model",
    "both": "The scan, with the OCR text next to it as a hint",
}
#: Input tokens of one page of OCR text, for estimates made before OCR ran (a dense A4 page).
OCR_PAGE_TOKENS = 700
#: Longest PDF sent natively in "auto" when it has a text layer (engine uses the same cap).
MAX_NATIVE_PDF_PAGES = 20


#: One OCR page at a time per event loop (the engine uses every core): a page's time limit
#: starts when its turn comes, not while it waits behind another run's page.
_GATES: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]" = weakref.WeakKeyDictionary()


def _gate() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    gate = _GATES.get(loop)
    if gate is None:
        gate = _GATES[loop] = asyncio.Semaphore(1)
    return gate


@dataclass
class OcrLimits:
    max_pages: int = 50
    page_timeout: float = 60.0
    timeout: float = 600.0
    #: PDF pages are rendered at this many pixels per PDF point before OCR (2 = 144 dpi).
    scale: float = 2.0
    #: How the OCR engine is set up (detection size, recognition batch, threads).
    engine: EngineSettings = DEFAULT_SETTINGS


@dataclass
class PageRead:
    document: int
    page: int
    pages: int
    source: str  # "text", "ocr", "none" or "skipped"
    seconds: float = 0.0
    chars: int = 0
    error: str | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "type": "PageRead"}


@dataclass
class DocumentRead:
    document: int
    pages: int
    ocr_pages: int
    text_pages: int
    chars: int
    seconds: float
    skipped: list[int]

    def to_dict(self) -> dict:
        return {**asdict(self), "type": "DocumentRead"}


def mode_for(doc: Document, read_as: str, model, native_pdfs: bool | None = None) -> str:
    """"text", "vision", "ocr" or "both" for one document of a run."""
    if doc.kind == "text":
        return "text"
    if read_as not in READ_MODES:
        raise ValueError(f"read_as must be one of {', '.join(READ_MODES)}, not {read_as!r}.")
    if read_as != "auto":
        return read_as
    if doc.kind == "image":
        return "vision" if model.supports_images else "ocr"
    if native_pdfs is not None:
        return "vision" if native_pdfs else "ocr"
    if model.supports_pdfs and (doc.pages <= MAX_NATIVE_PDF_PAGES or not doc.text.strip()):
        return "vision"
    return "ocr"


def page_texts(doc: Document) -> list[str]:
    """The text of each page of a PDF (empty for pages without a text layer)."""
    if doc.kind == "image":
        return [doc.text]
    pages = max(doc.pages, 1)
    if not doc.text:
        return [""] * pages
    texts = doc.text.split(PAGE_BREAK)
    # a text not split page by page (a page's own text held a break): take it as it is
    return texts if len(texts) == pages else [doc.text]


def pages_to_ocr(doc: Document, mode: str) -> list[int]:
    if mode not in ("ocr", "both") or doc.kind == "text":
        return []
    if doc.kind == "image":
        return [] if doc.layout else [0]
    return [p for p, t in enumerate(page_texts(doc)) if not t.strip()]


def needs_reading(doc: Document, mode: str) -> bool:
    return doc.kind == "pdf" and doc.layout is None or bool(pages_to_ocr(doc, mode))


def _read_pdf_page(doc: Document, page: int, ocr: bool, limits: OcrLimits) -> tuple[PageLayout, str]:
    if not ocr:
        return pdf_text_layout(doc.data, page), ""
    from .ocr import ocr_image

    return ocr_image(pdf_page_image(doc.data, page, limits.scale), page, limits.engine)


def _read_image(doc: Document, limits: OcrLimits) -> tuple[PageLayout, str]:
    from .ocr import ocr_image

    return ocr_image(doc.data, 0, limits.engine)


async def read_documents(documents: list[Document], modes: list[str], limits: OcrLimits | None = None):
    """OCR the pages that need it and read text-layer positions; yield progress events.

    Changes the documents in place: ``text`` gains the OCR text of pages without a
    text layer (pages stay joined by ``PAGE_BREAK``, so offsets of text-layer
    pages do not move) and ``layout`` holds every page read.
    """
    limits = limits or OcrLimits()
    deadline = time.monotonic() + limits.timeout
    ocr_budget = limits.max_pages
    for d, (doc, mode) in enumerate(zip(documents, modes, strict=True)):
        if not needs_reading(doc, mode):
            continue
        started = time.monotonic()
        to_ocr = set(pages_to_ocr(doc, mode))
        texts = page_texts(doc)
        layouts: list[PageLayout] = []
        skipped: list[int] = []
        ocr_pages = text_pages = 0
        for page in range(len(texts)):
            ocr = page in to_ocr
            if not ocr and doc.kind == "pdf" and page >= limits.max_pages:
                continue  # positions of very long PDFs: only the first pages
            if ocr and (ocr_budget <= 0 or time.monotonic() >= deadline):
                reason = (f"over the limit of {limits.max_pages} OCR pages per run" if ocr_budget <= 0
                          else f"OCR took longer than {limits.timeout:g} seconds in all")
                skipped.append(page)
                yield PageRead(d, page, len(texts), "skipped", error=f"Page {page + 1} was not read: {reason}.")
                continue
            if ocr:
                ocr_budget -= 1
            call = _read_image if doc.kind == "image" else _read_pdf_page
            args = (doc, limits) if doc.kind == "image" else (doc, page, ocr, limits)
            held = False
            result = error = None
            try:
                if ocr:
                    await _gate().acquire()
                    held = True
                timeout = min(limits.page_timeout, deadline - time.monotonic()) if ocr else None
                if timeout is not None and timeout <= 0:
                    raise asyncio.TimeoutError  # the run's OCR time ran out while this page waited
                result = await asyncio.wait_for(asyncio.to_thread(call, *args), timeout)
            except asyncio.TimeoutError:
                # the page's own limit, or what was left of the run's (then it says "in all")
                error = f"Page {page + 1} was not read: " + (
                    f"OCR took longer than {limits.page_timeout:g} seconds."
                    if timeout is not None and timeout >= limits.page_timeout
                    else f"OCR took longer than {limits.timeout:g} seconds in all.")
            except Exception as e:  # a damaged page: say so, read the others
                error = f"Page {page + 1} could not be read ({type(e).__name__})."
            finally:
                if held:
                    _gate().release()
            if result is None:
                skipped.append(page)
                yield PageRead(d, page, len(texts), "skipped", error=error)
                continue
            layout, text = result
            if ocr:
                texts[page] = text
                ocr_pages += 1 if text.strip() else 0
            else:
                text_pages += 1 if layout.lines else 0
            layouts.append(layout)
            yield PageRead(d, page, len(texts), layout.source if layout.lines else "none",
                           seconds=layout.seconds, chars=len(texts[page]))
        # offsets of every page in the new text; OCR lines move to document offsets
        doc.text = PAGE_BREAK.join(texts) if doc.kind == "pdf" else texts[0]
        starts, at = [], 0
        for t in texts:
            starts.append(at)
            at += len(t) + len(PAGE_BREAK)
        for layout in layouts:
            layout.text_start = starts[layout.page]
            layout.text_end = starts[layout.page] + len(texts[layout.page])
            if layout.source == "ocr":
                for line in layout.lines:
                    line.start += layout.text_start
                    line.end += layout.text_start
        doc.layout = layouts
        yield DocumentRead(d, len(texts), ocr_pages, text_pages, len(doc.text),
                           round(time.monotonic() - started, 3), skipped)
