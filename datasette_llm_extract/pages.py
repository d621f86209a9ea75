"""Pages of a document: rendering, text lines with positions, and where a quote sits.

A document's text joins its pages with ``PAGE_BREAK`` (as ``documents.pdf_text``
does), so the page of a character offset is the number of breaks before it.
A page's *layout* is its size and its lines of text, each with a box in
fractions of the page (0..1 from the top left), from OCR or from a PDF's text
layer (read with pypdfium2). ``quote_boxes`` finds a quote's boxes on a page.

PDFs are opened with pypdfium2 (PDFium, Apache-2.0/BSD); PDFium is not
thread-safe, so every call holds ``PDFIUM_LOCK``. No Datasette imports here.
"""

from __future__ import annotations

import io
import re
import threading
from dataclasses import asdict, dataclass, field

PAGE_BREAK = "\n\f\n"
PDFIUM_LOCK = threading.Lock()
#: Width in pixels page images are rendered at (before the scale caps below).
RENDER_WIDTH = 1100
#: Longest side of any rendered page, in pixels (OCR reads at most 2000 px anyway).
MAX_RENDER_SIDE = 2400


@dataclass
class Line:
    text: str
    #: [x0, y0, x1, y1] in fractions of the page, origin top left.
    box: list[float]
    #: Offsets of this line in the document's text, when the text was built from these lines (OCR).
    start: int | None = None
    end: int | None = None


@dataclass
class PageLayout:
    page: int
    width: float = 0.0
    height: float = 0.0
    #: "text" (the PDF's text layer), "ocr", or "none" (no text found).
    source: str = "none"
    #: Offsets of the page's text in the document's text.
    text_start: int = 0
    text_end: int = 0
    lines: list[Line] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PageLayout":
        lines = [Line(**line) for line in data.get("lines") or []]
        return cls(**{**{k: v for k, v in data.items() if k != "lines"}, "lines": lines})


def page_of_offset(text: str, offset: int | None) -> int | None:
    """Page number (0-based) of character ``offset`` in a text whose pages are joined by PAGE_BREAK."""
    if offset is None:
        return None
    return text.count("\f", 0, max(0, offset))


def page_starts(text: str) -> list[int]:
    """Offset in ``text`` where each page's text begins."""
    starts = [0]
    for m in re.finditer(re.escape(PAGE_BREAK), text):
        starts.append(m.end())
    return starts


# --- PDFs ---------------------------------------------------------------------------

def _pdfium():
    try:
        import pypdfium2
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise RuntimeError("pypdfium2 is missing: pip install pypdfium2") from e
    return pypdfium2


def pdf_page_count(data: bytes) -> int:
    pdfium = _pdfium()
    with PDFIUM_LOCK:
        pdf = pdfium.PdfDocument(data)
        try:
            return len(pdf)
        finally:
            pdf.close()


def render_pdf_page(data: bytes, page: int, width: int = RENDER_WIDTH) -> tuple[bytes, int, int]:
    """PNG of one page, about ``width`` pixels wide (at most 3x, and never more than
    ``MAX_RENDER_SIDE`` pixels on a side: a PDF page may claim to be 200 inches wide)."""
    pdfium = _pdfium()
    with PDFIUM_LOCK:
        pdf = pdfium.PdfDocument(data)
        try:
            if page < 0 or page >= len(pdf):
                raise IndexError(f"the PDF has {len(pdf)} page(s)")
            p = pdf[page]
            scale = _scale(p, min(3.0, width / max(1.0, p.get_width())))
            image = p.render(scale=scale).to_pil()
            p.close()
        finally:
            pdf.close()
    return png_bytes(image), image.width, image.height


def _scale(page, wanted: float) -> float:
    longest = max(1.0, page.get_width(), page.get_height())
    return max(0.01, min(wanted, MAX_RENDER_SIDE / longest))


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "PNG", optimize=False)
    return buf.getvalue()


def pdf_page_image(data: bytes, page: int, scale: float = 2.0):
    """One page as a PIL image (for OCR), ``scale`` pixels per point, capped like ``render_pdf_page``."""
    pdfium = _pdfium()
    with PDFIUM_LOCK:
        pdf = pdfium.PdfDocument(data)
        try:
            p = pdf[page]
            image = p.render(scale=_scale(p, scale)).to_pil()
            p.close()
        finally:
            pdf.close()
    return image


def pdf_text_layout(data: bytes, page: int) -> PageLayout:
    """The text layer of one page as lines with boxes (PDFium's text rectangles)."""
    pdfium = _pdfium()
    with PDFIUM_LOCK:
        pdf = pdfium.PdfDocument(data)
        try:
            p = pdf[page]
            width, height = p.get_width(), p.get_height()
            textpage = p.get_textpage()
            lines: list[Line] = []
            for i in range(textpage.count_rects()):
                left, bottom, right, top = textpage.get_rect(i)
                text = textpage.get_text_bounded(left, bottom, right, top).strip()
                if not text:
                    continue
                lines.append(Line(text, _norm_box(left, height - top, right, height - bottom, width, height)))
            textpage.close()
            p.close()
        finally:
            pdf.close()
    return PageLayout(page=page, width=width, height=height, source="text" if lines else "none", lines=lines)


def _norm_box(x0: float, y0: float, x1: float, y1: float, width: float, height: float) -> list[float]:
    w, h = max(width, 1e-6), max(height, 1e-6)
    return [round(min(max(v, 0.0), 1.0), 4) for v in (x0 / w, y0 / h, x1 / w, y1 / h)]


def box_from_points(points, width: float, height: float) -> list[float]:
    """A polygon (OCR's four corners) -> its bounding box in page fractions."""
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    return _norm_box(min(xs), min(ys), max(xs), max(ys), width, height)


# --- where a quote sits -----------------------------------------------------------------

def _part_box(line: Line, a: float, b: float) -> list[float]:
    """The part of ``line``'s box covering characters a..b of it (by share of characters)."""
    n = max(1, len(line.text))
    x0, y0, x1, y1 = line.box
    left = x0 + (x1 - x0) * max(0.0, a) / n
    right = x0 + (x1 - x0) * min(n, b) / n
    return [round(left, 4), y0, round(max(right, left + 0.002), 4), y1]


def boxes_for_span(layout: PageLayout, start: int, end: int) -> list[list[float]]:
    """Boxes of document-text offsets start..end, for lines that know their offsets (OCR)."""
    out = []
    for line in layout.lines:
        if line.start is None or line.end is None or line.end <= start or line.start >= end:
            continue
        out.append(_part_box(line, max(start, line.start) - line.start, min(end, line.end) - line.start))
    return out


_SPACE = re.compile(r"\s+")


def _squash(text: str) -> tuple[str, list[int]]:
    """Lower-cased text without whitespace, and the source index of each kept character."""
    chars, index = [], []
    for i, ch in enumerate(text):
        if ch.isspace():
            continue
        chars.append(ch.lower())
        index.append(i)
    return "".join(chars), index


def boxes_for_quote(layout: PageLayout, quote: str) -> list[list[float]]:
    """Boxes of ``quote`` found in the page's lines, ignoring case and whitespace
    (a text layer and the text the model saw may break lines differently)."""
    needle, _ = _squash(quote or "")
    if not needle or not layout.lines:
        return []
    joined_parts, owners, offsets = [], [], []
    for n, line in enumerate(layout.lines):
        squashed, index = _squash(line.text)
        for k, ch in enumerate(squashed):
            joined_parts.append(ch)
            owners.append(n)
            offsets.append(index[k])
    haystack = "".join(joined_parts)
    at = haystack.find(needle)
    if at < 0:
        return []
    spans: dict[int, list[int]] = {}
    for k in range(at, at + len(needle)):
        line_no, pos = owners[k], offsets[k]
        lo_hi = spans.setdefault(line_no, [pos, pos + 1])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], pos), max(lo_hi[1], pos + 1)
    return [_part_box(layout.lines[n], a, b) for n, (a, b) in sorted(spans.items())]


def quote_place(text: str, layouts: list[PageLayout] | None, start: int | None, end: int | None,
                quote: str | None, kind: str) -> tuple[int | None, list[list[float]]]:
    """``(page, boxes)`` of a row's quote: the page from its offset in the text (an image
    is page 0), the boxes from the page's layout when there is one."""
    if kind == "image":
        page = 0
    elif start is not None:
        page = page_of_offset(text, start)
    else:
        page = None
    if page is None or not layouts:
        return page, []
    layout = next((p for p in layouts if p.page == page), None)
    if layout is None:
        return page, []
    boxes = boxes_for_span(layout, start, end) if start is not None and end is not None else []
    if not boxes and quote:
        boxes = boxes_for_quote(layout, quote)
    return page, boxes
