"""Plain data types passed between the plugins and model providers.

Nothing here imports Datasette or a vendor SDK.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, Union


@dataclass
class TextPart:
    text: str


@dataclass
class ImagePart:
    data: bytes
    media_type: str  # image/jpeg, image/png, image/webp, image/gif


@dataclass
class PdfPart:
    data: bytes
    filename: str = "document.pdf"


def _shown_url(url: str) -> str:
    from .calllog import redact_url

    return redact_url(url) or ""


@dataclass(repr=False)
class ImageUrlPart:
    """An image the model's provider fetches itself (an ``https://`` URL): the suite never
    fetches it. Sent only to a model that accepts URLs (``accepts_image_urls``)."""

    url: str

    def __repr__(self) -> str:  # never a URL's credentials in a log or traceback
        return f"ImageUrlPart({_shown_url(self.url)!r})"


@dataclass(repr=False)
class PdfUrlPart:
    """A PDF the model's provider fetches itself (``accepts_pdf_urls``)."""

    url: str
    filename: str = "document.pdf"

    def __repr__(self) -> str:
        return f"PdfUrlPart({_shown_url(self.url)!r})"


Part = Union[TextPart, ImagePart, PdfPart, ImageUrlPart, PdfUrlPart]
#: Parts that are not text: files, sent as data or by URL.
FILE_PARTS = (ImagePart, PdfPart, ImageUrlPart, PdfUrlPart)


@dataclass
class Message:
    role: Literal["user", "assistant"]
    parts: list[Part]

    @classmethod
    def user(cls, *parts: Part | str) -> "Message":
        return cls("user", [TextPart(p) if isinstance(p, str) else p for p in parts])

    @classmethod
    def assistant(cls, text: str) -> "Message":
        return cls("assistant", [TextPart(text)])


@dataclass
class ChatRequest:
    """One call to a chat model.

    ``json_schema`` asks for structured output matching that JSON schema; the
    provider uses its vendor's native mechanism (OpenAI ``response_format``,
    Anthropic forced tool / structured output) and the text of the response is
    then the JSON document.
    """

    messages: list[Message]
    system: str | None = None
    json_schema: dict | None = None
    schema_name: str = "output"
    max_tokens: int = 4096
    temperature: float | None = 0.0

    def needs(self) -> set[str]:
        """Capabilities a model must declare to serve this request."""
        needed: set[str] = set()
        if self.json_schema is not None:
            needed.add("schema")
        for message in self.messages:
            for part in message.parts:
                if isinstance(part, ImagePart):
                    needed.add("images")
                elif isinstance(part, PdfPart):
                    needed.add("pdfs")
                elif isinstance(part, ImageUrlPart):
                    needed |= {"images", "image_urls"}
                elif isinstance(part, PdfUrlPart):
                    needed |= {"pdfs", "pdf_urls"}
        return needed

    def text_length(self) -> int:
        """Characters of text in the request, for rough token estimates."""
        total = len(self.system or "")
        for message in self.messages:
            for part in message.parts:
                if isinstance(part, TextPart):
                    total += len(part.text)
        return total


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
        )


@dataclass
class TextDelta:
    """A piece of streamed output text."""

    text: str


@dataclass
class StreamEnd:
    """Last event of a stream: token usage and why the model stopped."""

    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None  # "stop", "length", "tool_use", ...
    #: Id of the call-log row of this call (set by the gateway).
    call_id: str | None = None
    #: Model that answered (set by the gateway; differs from the one asked after a fallback).
    model_id: str | None = None


StreamEvent = Union[TextDelta, StreamEnd]


@dataclass
class ChatResponse:
    text: str
    usage: Usage
    model_id: str
    finish_reason: str | None = None
    #: Id of the call-log row of this call (set by the gateway).
    call_id: str | None = None

    def json(self):
        """Parse the text as JSON (raises ``json.JSONDecodeError``)."""
        return json.loads(self.text)
