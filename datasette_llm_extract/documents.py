"""Uploaded documents: sniffed, checked and turned into text or model parts.

``load_upload`` trusts the file's bytes, not its name or declared type: it
recognises JPEG, PNG, WebP, GIF, PDF and UTF-8 text by their first bytes and
refuses anything else (or anything mislabelled) with an ``InputError`` that
says what to do. No Datasette imports here.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from datasette_llm_core.types import ImagePart, Part, PdfPart, TextPart

MAX_MEGAPIXELS = 40
DEFAULT_MAX_BYTES = 20 * 1024 * 1024

IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp", "image/gif"}
TEXT_TYPES = {"text/plain", "text/markdown", "text/csv", "text/html", "application/json", "text/tab-separated-values"}
EXTENSIONS = {
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
    "gif": "image/gif", "pdf": "application/pdf", "txt": "text/plain", "md": "text/markdown",
    "csv": "text/csv", "tsv": "text/tab-separated-values", "html": "text/html", "htm": "text/html",
    "json": "application/json", "heic": "image/heic", "heif": "image/heif",
}


class InputError(ValueError):
    """An uploaded file cannot be used; the message says what to do instead."""


def canonical_text(text: str) -> str:
    """The one form of a document's text that is stored, sent to the model and shown.

    Line breaks become ``\n``: browsers submit a textarea with CRLF, Windows files
    carry CRLF or lone CR, while an HTML page shows LF only. Quote offsets are
    computed on this text, so the page's copy must be exactly it.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def canonical_offset(text: str, offset: int) -> int:
    """Where ``offset`` into ``text`` lands in ``canonical_text(text)`` (runs stored before
    text was made canonical kept CRLF, and their quote offsets count the CRs)."""
    return offset - text.count("\r\n", 0, offset + 1 if text[offset:offset + 1] == "\n" else offset)


@dataclass
class Document:
    name: str
    kind: Literal["text", "image", "pdf"]
    text: str = ""
    data: bytes = b""
    media_type: str = "text/plain"
    sha256: str = ""
    pages: int = 0
    width: int = 0
    height: int = 0
    #: Set for PDFs whose text layer was empty (scans): they need a PDF-capable model.
    warnings: list[str] = field(default_factory=list)
    #: Pages read before the run (``pages.PageLayout``: OCR or text-layer lines with boxes).
    layout: list | None = None

    @classmethod
    def from_text(cls, text: str, name: str = "pasted text", *, canonical: bool = True) -> "Document":
        """A text document; ``canonical=False`` keeps the text exactly (a resumed run's stored text)."""
        if canonical:
            text = canonical_text(text)
        data = text.encode("utf-8")
        return cls(name=name, kind="text", text=text, data=b"", media_type="text/plain",
                   sha256=hashlib.sha256(data).hexdigest())

    def parts(self, *, native: bool) -> list[Part]:
        """Model input for this document: native image/PDF parts, or its text."""
        if self.kind == "image":
            return [ImagePart(self.data, self.media_type)]
        if self.kind == "pdf" and native:
            return [PdfPart(self.data, self.name or "document.pdf")]
        return [TextPart(self.text)]

    def summary(self) -> dict:
        return {"name": self.name, "kind": self.kind, "media_type": self.media_type,
                "sha256": self.sha256, "bytes": len(self.data) or len(self.text.encode()),
                "pages": self.pages, "warnings": list(self.warnings)}


def sniff(data: bytes) -> str | None:
    """Media type from magic bytes, or None when unrecognised (maybe text)."""
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:1024].lstrip(b"\xef\xbb\xbf\r\n\t ").startswith(b"%PDF-") or (
        b"%PDF-" in data[:1024] and not _is_utf8(data[:4096])
    ):  # a text that merely mentions "%PDF-" stays text
        return "application/pdf"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif"):
        return "image/heic" if head[8:12] != b"avif" else "image/avif"
    return None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(data) - 3  # only a character cut at the end
    return True


_KIND_NAMES = {"image": "an image", "pdf": "a PDF", "text": "text"}


def _kind_of(media_type: str) -> str | None:
    media_type = (media_type or "").split(";")[0].strip().lower()
    if media_type in IMAGE_TYPES or media_type in ("image/jpg", "image/pjpeg"):
        return "image"
    if media_type == "application/pdf":
        return "pdf"
    if media_type.startswith("text/") or media_type in TEXT_TYPES:
        return "text"
    if media_type in ("image/heic", "image/heif"):
        return "heic"
    return None


def _check_image(data: bytes, media_type: str, name: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            width, height = img.size
    except Image.DecompressionBombError:  # Pillow refuses far-too-large images itself
        raise InputError(
            f"{name}: the image has far more than {MAX_MEGAPIXELS} megapixels, the limit. "
            "Resize it (e.g. to 3000 pixels on the longest side) and upload again."
        ) from None
    except Exception:
        raise InputError(
            f"{name}: the image could not be read (the file may be damaged). "
            "Open it in an image viewer and save it again as JPEG or PNG."
        ) from None
    if width * height > MAX_MEGAPIXELS * 1_000_000:
        raise InputError(
            f"{name}: the image is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); "
            f"the limit is {MAX_MEGAPIXELS}. Resize it (e.g. to 3000 pixels on the longest side) and upload again."
        )
    return width, height


#: Seconds to read one PDF's text layer, and the page content it may decompress to.
PDF_TIMEOUT = 20.0
PDF_MAX_DECOMPRESSED = 64 * 1024 * 1024
#: Address space of the child process that reads a PDF.
PDF_CHILD_MEMORY = 2 * 1024 * 1024 * 1024
#: PDFs read at the same time (each in its own process).
_PDF_SLOTS = threading.BoundedSemaphore(2)


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


def pdf_text(data: bytes, *, name: str = "The PDF", timeout: float = PDF_TIMEOUT,
             max_decompressed: int = PDF_MAX_DECOMPRESSED) -> tuple[str, int]:
    """Text of every page (pages separated by form feeds) and the page count.

    pypdf runs in a child process (``pdf_worker.py``) that is killed after
    ``timeout`` seconds and stops once the pages' content streams decompress
    to more than ``max_decompressed`` bytes, so a hostile PDF costs at most
    that much time and memory, and never blocks the caller's event loop
    (call this from a thread). Raises ``InputError`` saying what to do.
    """
    worker = Path(__file__).with_name("pdf_worker.py")
    cmd = [sys.executable, str(worker), str(max_decompressed), str(PDF_CHILD_MEMORY)]
    with _PDF_SLOTS:
        try:
            done = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise InputError(
                f"{name}: reading the PDF's text took longer than {timeout:g} seconds, the limit "
                "(its pages are unusually complex). Print it to a new PDF or paste its text instead."
            ) from None
    try:
        result = json.loads(done.stdout or b"{}")
    except ValueError:
        result = {}
    if result.get("ok"):
        pages = [str(p) for p in result.get("pages", [])]
        return canonical_text("\n\f\n".join(p.strip() for p in pages)), len(pages)
    error = result.get("error")
    if error == "encrypted":
        raise InputError(f"{name} is password-protected: remove the password and upload it again.")
    if error == "too_big" or done.returncode < 0 and not result:
        raise InputError(
            f"{name}: the PDF's pages decompress to more than {_size(max_decompressed)}, the limit for one "
            "document. Split it into smaller PDFs or paste its text instead."
        )
    detail = result.get("detail") or "unreadable"
    raise InputError(
        f"{name}: the PDF could not be read ({detail}). Re-save or print it to PDF and try again."
    )


def load_upload(
    filename: str,
    declared_content_type: str | None,
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    pdf_timeout: float = PDF_TIMEOUT,
    pdf_max_decompressed: int = PDF_MAX_DECOMPRESSED,
) -> Document:
    """Check one uploaded file and return it as a ``Document``.

    Raises ``InputError`` for empty, oversized, unsupported, mislabelled or
    damaged files, HEIC photos, images over ``MAX_MEGAPIXELS`` and text that is
    not UTF-8.
    """
    name = (filename or "upload").replace("\\", "/").rsplit("/", 1)[-1][:200] or "upload"
    if not data:
        raise InputError(f"{name} is empty (0 bytes): choose the file again or check it was saved.")
    if len(data) > max_bytes:
        raise InputError(
            f"{name} is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB. "
            "Split it into smaller files or reduce its resolution."
        )
    sniffed = sniff(data)
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    declared = (declared_content_type or "").split(";")[0].strip().lower()
    if declared in ("", "application/octet-stream", "binary/octet-stream"):
        declared = EXTENSIONS.get(extension, "")
    declared_kind = _kind_of(declared)
    if sniffed in ("image/heic", "image/avif") or declared_kind == "heic":
        raise InputError(
            f"{name} is a HEIC/HEIF/AVIF photo, which models cannot read: convert it to JPEG first "
            "(on an iPhone: Settings > Camera > Formats > Most Compatible; on a Mac: Preview > Export as JPEG)."
        )
    sha = hashlib.sha256(data).hexdigest()
    if sniffed is None:
        # Not a known binary format: it must be UTF-8 text.
        if declared_kind not in (None, "text"):
            raise InputError(
                f"{name} is labelled {declared} but its contents are not {_KIND_NAMES.get(declared_kind, declared_kind)}: "
                "check you picked the right file, or re-save it in that format."
            )
        if b"\x00" in data[:4096]:
            raise InputError(
                f"{name} is not a supported file type: upload JPEG, PNG, WebP or GIF images, PDFs or UTF-8 text."
            )
        try:
            text = canonical_text(data.decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise InputError(
                f"{name} is not valid UTF-8 text: open it in a text editor and save it with UTF-8 encoding."
            ) from None
        return Document(name=name, kind="text", text=text, media_type="text/plain", sha256=sha)
    sniffed_kind = _kind_of(sniffed)
    if declared_kind is not None and declared_kind != sniffed_kind:
        raise InputError(
            f"{name} is labelled as {declared or extension} but is really {sniffed}: "
            "rename it with the right extension or export it again in the intended format."
        )
    if sniffed_kind == "image":
        width, height = _check_image(data, sniffed, name)
        return Document(name=name, kind="image", data=data, media_type=sniffed, sha256=sha,
                        width=width, height=height)
    text, pages = pdf_text(data, name=name, timeout=pdf_timeout, max_decompressed=pdf_max_decompressed)
    doc = Document(name=name, kind="pdf", text=text, data=data, media_type="application/pdf",
                   sha256=sha, pages=pages)
    if not text.strip():
        doc.warnings.append(
            "This PDF has no text layer (probably a scan): its pages are read by local OCR, "
            "or pick a model that reads PDFs."
        )
    return doc
