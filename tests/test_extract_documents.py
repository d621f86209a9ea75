import io
import struct
import zlib

import pytest
from PIL import Image

from datasette_llm_core.types import ImagePart, PdfPart, TextPart
from datasette_llm_extract.documents import InputError, load_upload, sniff


def image_bytes(fmt="PNG", size=(20, 10)):
    buf = io.BytesIO()
    Image.new("RGB", size, "white").save(buf, fmt)
    return buf.getvalue()


def make_pdf(text="Hello receipt TOTAL 9.00"):
    """A one-page PDF with a text layer, built by hand (no writer dependency)."""
    stream = f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    return pdf_bytes(objects)


def pdf_bytes(objects: list[bytes]) -> bytes:
    """A PDF file of ``objects`` (object 1 is the catalog), with its cross-reference table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(f"{i} 0 obj\n".encode() + obj + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for off in offsets:
        out.write(f"{off:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


@pytest.mark.parametrize("fmt, media", [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                         ("WEBP", "image/webp"), ("GIF", "image/gif")])
def test_images_sniffed(fmt, media):
    data = image_bytes(fmt)
    assert sniff(data) == media
    doc = load_upload(f"scan.{fmt.lower()}", media, data)
    assert doc.kind == "image" and doc.media_type == media and (doc.width, doc.height) == (20, 10)
    assert isinstance(doc.parts(native=True)[0], ImagePart)
    assert len(doc.sha256) == 64


def test_pdf_text_and_pages():
    doc = load_upload("r.pdf", "application/pdf", make_pdf())
    assert doc.kind == "pdf" and doc.pages == 1 and "TOTAL 9.00" in doc.text
    assert isinstance(doc.parts(native=True)[0], PdfPart)
    assert isinstance(doc.parts(native=False)[0], TextPart)


def test_text_upload_and_octet_stream_uses_extension():
    doc = load_upload("notes.txt", "application/octet-stream", "caf\u00e9 12".encode())
    assert doc.kind == "text" and doc.text == "caf\u00e9 12"


@pytest.mark.parametrize(
    "name, ctype, data, fragment",
    [
        ("a.txt", "text/plain", b"", "empty"),
        ("a.txt", "text/plain", b"\xff\xfe bad \xc3", "not valid UTF-8"),
        ("a.jpg", "image/jpeg", make_pdf(), "is really application/pdf"),
        ("a.pdf", "application/pdf", b"just text", "not a PDF"),
        ("a.png", "image/png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "could not be read"),
        ("photo.heic", "image/heic", b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40, "convert it to JPEG"),
        ("photo.jpg", "", b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40, "convert it to JPEG"),
        ("x.bin", "application/zip", b"PK\x03\x04\x00\x00", "not a"),
        ("broken.pdf", "application/pdf", b"%PDF-1.4\ngarbage", "could not be read"),
    ],
)
def test_refused_uploads(name, ctype, data, fragment):
    with pytest.raises(InputError) as e:
        load_upload(name, ctype, data)
    assert fragment in str(e.value)


def test_oversized():
    with pytest.raises(InputError, match="limit is"):
        load_upload("a.txt", "text/plain", b"x" * 101, max_bytes=100)


def png_header_only(width, height):
    """A PNG whose header claims huge dimensions (an image bomb): tiny file."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 100)
    data += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return data + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def test_image_bomb_refused_without_decoding():
    data = png_header_only(8_000, 8_000)
    assert len(data) < 1000
    with pytest.raises(InputError, match="64 megapixels"):
        load_upload("big.png", "image/png", data)
    # far beyond Pillow's own bomb limit
    with pytest.raises(InputError, match="megapixels"):
        load_upload("bomb.png", "image/png", png_header_only(30_000, 30_000))
    # just under the limit is fine (the header is all that is read)
    assert load_upload("ok.png", "image/png", png_header_only(6_000, 6_000)).width == 6_000


def test_text_mentioning_pdf_header_stays_text():
    doc = load_upload("notes.txt", "text/plain", b"Files start with %PDF-1.7 as their header.")
    assert doc.kind == "text"
    with pytest.raises(InputError, match="not a PDF"):
        load_upload("fake.pdf", "application/pdf", b"Files start with %PDF-1.7 as their header.")
    with pytest.raises(InputError, match="not an image"):
        load_upload("fake.jpg", "image/jpeg", b"hello")
