"""Request bodies: size-capped reading and multipart/form-data parsing.

Works the same on Datasette 0.65 and 1.0 (neither line's helpers are used:
0.65 has no multipart parser, 1.0 caps bodies at 2 MB by default). No
Datasette imports here.
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass, field
from urllib.parse import parse_qsl


class BodyTooLarge(Exception):
    pass


class BadForm(Exception):
    pass


@dataclass
class Upload:
    filename: str
    content_type: str
    data: bytes


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


async def read_body(receive, max_bytes: int) -> bytes:
    """Read an ASGI request body, refusing more than ``max_bytes``."""
    chunks = []
    total = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadForm("The browser closed the connection before the upload finished.")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > max_bytes:
            raise BodyTooLarge(
                f"The upload is larger than {max_bytes / 1e6:.0f} MB in total: send fewer or smaller files."
            )
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def parse_form(content_type: str, body: bytes) -> Form:
    """Parse an urlencoded or multipart body into fields and files."""
    form = Form()
    media = (content_type or "").split(";")[0].strip().lower()
    if media == "application/x-www-form-urlencoded" or not media:
        for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
            form.add(key, value)
        return form
    if media != "multipart/form-data":
        raise BadForm(f"Unsupported form encoding {media!r}.")
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise BadForm("The form could not be read (malformed multipart body).")
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        filename = part.get_filename()
        payload = part.get_payload(decode=True) or b""
        if filename is not None:
            if not filename and not payload:
                continue  # an empty file input
            form.files.setdefault(name, []).append(
                Upload(filename, part.get_content_type() if part.get("content-type") else "", payload)
            )
        else:
            charset = part.get_content_charset() or "utf-8"
            form.add(name, payload.decode(charset, "replace"))
    return form
