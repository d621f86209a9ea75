"""Form bodies: urlencoded or multipart/form-data, read as they stream in.

Multipart bodies are parsed chunk by chunk as the server receives them
(``python-multipart``), files go to temporary files on disk, and every limit
is enforced while reading: the whole body, the fields (everything that is not
a file), each file, the number of files and the number of parts. The first
limit passed ends the request with a 413 saying which limit it was; nothing
larger than one network chunk is held in memory beyond the fields.

Works the same on Datasette 0.65 and 1.0 (0.65 has no multipart parser, 1.0
caps bodies at 2 MB by default). No Datasette imports here.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from python_multipart.multipart import MultipartParser, parse_options_header

from datasette_llm_core.bodies import (
    BodyError,
    declared_length,
    header,
    iter_body,
    media_type,
    read_limited,
    size_text,
    too_large,
)

#: Parts (fields and files) in one multipart body.
MAX_PARTS = 20_000
#: Bytes of one part's headers.
MAX_PART_HEADER_BYTES = 16 * 1024
#: Files on disk above this many bytes; smaller ones stay in memory.
SPOOL_BYTES = 256 * 1024
#: Bytes parsed between two yields to the event loop.
SLICE_BYTES = 4096


class BadForm(BodyError):
    """A body that is not a readable form (400)."""


@dataclass
class FormLimits:
    total: int  # the whole body
    fields: int  # all non-file parts together
    file: int  # one file
    files: int  # number of files
    parts: int = MAX_PARTS


@dataclass
class Upload:
    filename: str
    content_type: str
    file: object = None  # a (spooled) temporary file holding the bytes
    size: int = 0

    @property
    def data(self) -> bytes:
        if self.file is None:
            return b""
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


@dataclass
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[Upload]] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        values = self.fields.get(name)
        return values[0] if values else default

    def getlist(self, name: str) -> list[str]:
        return list(self.fields.get(name, []))

    def add(self, name: str, value: str) -> None:
        self.fields.setdefault(name, []).append(value)

    def close(self) -> None:
        for uploads in self.files.values():
            for upload in uploads:
                upload.close()


async def read_form(receive, headers, limits: FormLimits) -> Form:
    """The request's form; ``BodyError`` (400/413/415) when it cannot or may not be read."""
    content_type = header(headers, "content-type")
    media = media_type(content_type)
    declared = declared_length(headers)
    if media in ("application/x-www-form-urlencoded", ""):
        body = await read_limited(receive, limits.fields, declared)
        form = Form()
        for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
            form.add(key, value)
        return form
    if media != "multipart/form-data":
        raise BodyError(
            f"Send this form as multipart/form-data or application/x-www-form-urlencoded, not {media!r}.", 415
        )
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadForm("The form could not be read: its Content-Type has no boundary.")
    reader = _MultipartReader(boundary, limits)
    try:
        async for chunk in iter_body(receive, limits.total, declared):
            # python-multipart costs ~0.1 ms a part: parse in slices and let
            # other requests run in between, so a form of many tiny parts
            # cannot hold the event loop for seconds
            for start in range(0, len(chunk), SLICE_BYTES):
                reader.write(chunk[start:start + SLICE_BYTES])
                await asyncio.sleep(0)
        reader.finish()
    except BodyError:
        reader.form.close()
        raise
    except Exception:  # noqa: BLE001 - python-multipart raises several kinds on garbage
        reader.form.close()
        raise BadForm("The form could not be read (malformed multipart body).") from None
    return reader.form


class _MultipartReader:
    def __init__(self, boundary: bytes, limits: FormLimits) -> None:
        self.limits = limits
        self.form = Form()
        self.parts = 0
        self.field_bytes = 0
        self.files = 0
        self.ended = False
        self._headers: dict[str, str] = {}
        self._header_name = b""
        self._header_value = b""
        self._header_bytes = 0
        self._buffer: list[bytes] | None = None
        self._upload: Upload | None = None
        self._name: str | None = None
        self._skip = False
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_cb,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        })

    def write(self, chunk: bytes) -> None:
        self.parser.write(chunk)

    def finish(self) -> None:
        self.parser.finalize()
        if not self.ended:
            raise BadForm("The form could not be read: the body ended before the form did.")

    # --- callbacks
    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.limits.parts:
            raise BodyError(
                f"The form has more than {self.limits.parts:,} parts, the limit: send fewer fields or files.", 413
            )
        self._headers = {}
        self._header_name = self._header_value = b""
        self._header_bytes = 0

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise BodyError(f"A part of the form has more than {size_text(MAX_PART_HEADER_BYTES)} of headers.", 413)

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.decode("latin-1").lower()] = self._header_value.decode("latin-1")
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        name = params.get(b"name")
        self._name = name.decode("utf-8", "replace") if name is not None else None
        filename = params.get(b"filename")
        self._skip = self._name is None
        self._upload = None
        self._buffer = None
        if self._skip:
            return
        if filename is not None:
            self.files += 1
            self._upload = Upload(
                filename.decode("utf-8", "replace"),
                media_type(self._headers.get("content-type", "")) if "content-type" in self._headers else "",
                tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES),
            )
        else:
            self._buffer = []

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._skip:
            return
        n = end - start
        if self._upload is not None:
            self._upload.size += n
            if self._upload.size > self.limits.file:
                raise BodyError(
                    f"{self._upload.filename or 'A file'} is too large: the limit is {size_text(self.limits.file)} "
                    "per file. Split it into smaller files or reduce its resolution.",
                    413,
                )
            self._upload.file.write(data[start:end])
        else:
            self.field_bytes += n
            if self.field_bytes > self.limits.fields:
                raise too_large(self.limits.fields, "The form's text fields are")
            self._buffer.append(data[start:end])

    def _part_end(self) -> None:
        if self._skip:
            return
        if self._upload is not None:
            upload = self._upload
            self._upload = None
            if not upload.filename and not upload.size:
                upload.close()  # an empty file input
                self.files -= 1
                return
            if self.files > self.limits.files:
                upload.close()
                raise BodyError(f"At most {self.limits.files} files per form: remove some files.", 413)
            self.form.files.setdefault(self._name, []).append(upload)
        elif self._buffer is not None:
            charset = "utf-8"
            _, params = parse_options_header(self._headers.get("content-type", ""))
            if params.get(b"charset"):
                charset = params[b"charset"].decode("latin-1")
            try:
                value = b"".join(self._buffer).decode(charset, "replace")
            except LookupError:
                value = b"".join(self._buffer).decode("utf-8", "replace")
            self.form.add(self._name, value)
            self._buffer = None

    def _end(self) -> None:
        self.ended = True
