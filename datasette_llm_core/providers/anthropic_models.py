"""Anthropic Messages format.

Structured output uses one forced tool whose ``input_schema`` is the wanted
JSON schema. The tool is only an output shape: nothing is ever executed and
the model is given no other tool. Its ``input_json_delta`` pieces are
streamed as ``TextDelta`` so incremental JSON parsing downstream works the
same as with OpenAI. A model configured with ``structured_output: native``
uses the Messages API's ``output_config`` JSON-schema format instead (the
JSON then streams as ordinary text). Images go as base64 image blocks, PDFs
as base64 document blocks.

Anthropic-compatible servers (llama.cpp's ``/v1/messages``) may answer a
forced tool call with a plain text block, and may ignore ``output_config``.
A text block holding a JSON object is then used as the output; a text block
without one is an ``ignored_tool`` error quoting what the model said; native
output that does not start as a JSON object is a ``structured_output_ignored``
error raised before any of it is passed on.
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any, AsyncIterator

from ..errors import CapabilityError, OutputError
from ..models import ChatModel
from ..types import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    ImageUrlPart,
    PdfPart,
    PdfUrlPart,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)
from .base import Provider, connection_lost
from .base import timeout_kwargs as _timeout

_NAME_OK = re.compile(r"[^a-zA-Z0-9_-]")

FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "refusal",
    "pause_turn": "stop",
}


class AnthropicProvider(Provider):
    name = "anthropic"
    default_key_env = "ANTHROPIC_API_KEY"

    def build_client(self, api_key: str | None):
        import anthropic

        return anthropic.AsyncAnthropic(**self.client_kwargs(api_key))


def _input_tokens(usage) -> int:
    """Input tokens including prompt-cache reads and writes."""
    return (
        (getattr(usage, "input_tokens", None) or 0)
        + (getattr(usage, "cache_creation_input_tokens", None) or 0)
        + (getattr(usage, "cache_read_input_tokens", None) or 0)
    )


def json_in_text(text: str) -> str | None:
    """The first JSON object inside ``text`` (prose, Markdown fences around it), re-serialised."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return json.dumps(value, ensure_ascii=False)
        start = text.find("{", start + 1)
    return None


def _said(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return json.dumps(text[:limit] + ("…" if len(text) > limit else ""), ensure_ascii=False)


def tool_name(name: str) -> str:
    cleaned = _NAME_OK.sub("_", name or "output")[:64]
    return cleaned or "output"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def to_anthropic_messages(request: ChatRequest) -> list[dict]:
    messages: list[dict] = []
    for message in request.messages:
        blocks: list[dict] = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                blocks.append(
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": part.media_type, "data": _b64(part.data)},
                    }
                )
            elif isinstance(part, ImageUrlPart):
                blocks.append({"type": "image", "source": {"type": "url", "url": part.url}})
            elif isinstance(part, PdfUrlPart):
                blocks.append({"type": "document", "source": {"type": "url", "url": part.url},
                               "title": part.filename})
            elif isinstance(part, PdfPart):
                blocks.append(
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": _b64(part.data)},
                        "title": part.filename,
                    }
                )
            elif part.text:
                blocks.append({"type": "text", "text": part.text})
        if messages and messages[-1]["role"] == message.role:
            messages[-1]["content"].extend(blocks)  # the API wants alternating roles
        else:
            messages.append({"role": message.role, "content": blocks})
    return messages


class AnthropicChatModel(ChatModel):
    supports_streaming = True
    supports_schema = True
    supports_images = True
    supports_pdfs = True

    def __init__(
        self,
        model_id: str,
        *,
        connection: AnthropicProvider,
        model_name: str | None = None,
        label: str | None = None,
        supports: set[str] | frozenset[str] | None = None,
        input_cost_per_mtok: float | None = None,
        output_cost_per_mtok: float | None = None,
        context_tokens: int | None = None,
        timeout: float | None = None,
        structured_output: str | None = None,
        accepts_urls: bool | None = None,
    ) -> None:
        self.model_id = model_id
        #: "tool" (forced output-only tool) or "native" (output_config json_schema).
        self.structured_output = structured_output or "tool"
        self.connection = connection
        self.provider = connection.name
        self.model_name = model_name or model_id
        self.label = label or self.model_name
        if supports is not None:
            self.supports_streaming = "streaming" in supports
            self.supports_schema = "schema" in supports
            self.supports_images = "images" in supports
            self.supports_pdfs = "pdfs" in supports
        # Anthropic fetches image and PDF URLs itself (``source: {type: url}``); another server
        # at base_url (llama.cpp's /v1/messages) only when its config says so.
        vendor = not connection.base_url
        self.accepts_image_urls = self.accepts_pdf_urls = vendor if accepts_urls is None else accepts_urls
        self.input_cost_per_mtok = input_cost_per_mtok
        self.output_cost_per_mtok = output_cost_per_mtok
        if context_tokens:
            self.context_tokens = context_tokens
        self.timeout = timeout

    def ensure_ready(self) -> None:
        self.connection.client(self.model_id)

    def check(self, request: ChatRequest) -> None:
        super().check(request)
        schema = request.json_schema
        if schema is not None and schema.get("type", "object") != "object":
            raise CapabilityError(
                f"Model {self.model_id!r} returns structured output as a JSON object: wrap the "
                "schema in an object with one property."
            )

    def params(self, request: ChatRequest) -> dict:
        params: dict[str, Any] = {
            "model": self.model_name,
            "max_tokens": request.max_tokens,
            "messages": to_anthropic_messages(request),
        }
        if request.system:
            params["system"] = request.system
        # No temperature: the current Messages API and SDK no longer take sampling
        # parameters; the forced output tool keeps extraction on schema.
        if request.json_schema is not None and self.structured_output == "native":
            params["output_config"] = {"format": {"type": "json_schema", "schema": request.json_schema}}
        elif request.json_schema is not None:
            name = tool_name(request.schema_name)
            params["tools"] = [
                {
                    "name": name,
                    "description": "Record the answer. Its input is the whole output, in this shape.",
                    "input_schema": request.json_schema,
                }
            ]
            params["tool_choice"] = {"type": "tool", "name": name}
        return params

    async def stream(
        self, request: ChatRequest, *, timeout: float | None = None
    ) -> AsyncIterator[StreamEvent]:
        import anthropic

        client = self.connection.client(self.model_id)
        # Native structured output arrives as ordinary text deltas.
        structured = request.json_schema is not None and self.structured_output == "tool"
        native = request.json_schema is not None and self.structured_output == "native"
        input_tokens = output_tokens = 0
        stop_reason = None
        in_tool = False
        tool_seen = False
        held: list[str] = []  # text blocks of a tool-mode answer; native output before its first character
        checked = not native
        opened = None
        chars = 0
        try:
            stream = await client.messages.create(
                **self.params(request), stream=True, **_timeout(timeout or self.timeout)
            )
            opened = time.monotonic()
            try:
                async for event in stream:
                    kind = event.type
                    if kind == "message_start":
                        usage = event.message.usage
                        input_tokens = _input_tokens(usage)
                        output_tokens = usage.output_tokens or 0
                    elif kind == "content_block_start":
                        in_tool = event.content_block.type == "tool_use"
                        tool_seen = tool_seen or in_tool
                    elif kind == "content_block_delta":
                        delta = event.delta
                        if delta.type == "text_delta" and delta.text:
                            chars += len(delta.text)
                            if structured:
                                held.append(delta.text)  # the tool was ignored, or a preamble
                            elif not checked:
                                held.append(delta.text)
                                said = "".join(held)
                                if said.strip():
                                    if not said.lstrip().startswith("{"):
                                        raise self._native_ignored(said)
                                    checked = True
                                    held.clear()
                                    yield TextDelta(said)
                            else:
                                yield TextDelta(delta.text)
                        elif delta.type == "input_json_delta" and structured and in_tool:
                            if delta.partial_json:
                                chars += len(delta.partial_json)
                                yield TextDelta(delta.partial_json)
                    elif kind == "content_block_stop":
                        in_tool = False
                    elif kind == "message_delta":
                        stop_reason = event.delta.stop_reason or stop_reason
                        if event.usage is not None and event.usage.output_tokens is not None:
                            output_tokens = event.usage.output_tokens
                        # Newer API versions repeat the (cumulative) input count here.
                        if event.usage is not None and getattr(event.usage, "input_tokens", None):
                            input_tokens = _input_tokens(event.usage)
            finally:
                await stream.close()
        except anthropic.APIError as e:
            if opened is not None and type(e) is anthropic.APIConnectionError:
                raise connection_lost(self.connection, self.model_id, e, seconds=time.monotonic() - opened,
                                      chars=chars) from e
            raise self.connection.model_error(e, self.model_id) from e
        if structured and not tool_seen:
            yield TextDelta(self._json_from_text("".join(held)))
        elif held and "".join(held).strip():
            raise self._native_ignored("".join(held))
        yield StreamEnd(
            usage=Usage(input_tokens, output_tokens),
            finish_reason=FINISH.get(stop_reason, stop_reason),
        )

    def _json_from_text(self, text: str) -> str:
        """A forced tool call answered with a text block: its JSON object, else an error."""
        found = json_in_text(text)
        if found is not None:
            return found
        return self._raise_ignored_tool(text)

    def _raise_ignored_tool(self, text: str):
        said = f": it said {_said(text)}" if text.strip() else " and said nothing"
        raise OutputError(
            f"{self.model_id} ignored the output tool it was told to use and answered in plain "
            f"text with no JSON object{said}. The server may not support forced tool calls "
            "(tool_choice): pick another model, or for a server that follows a JSON schema set "
            "structured_output: native.",
            retryable=False,
            error_class="ignored_tool",
            model_id=self.model_id,
        )

    def _native_ignored(self, text: str) -> OutputError:
        return OutputError(
            f"{self.model_id} did not follow the JSON schema sent as output_config (native "
            f"structured output): it answered {_said(text)}. The server probably ignores "
            "output_config: set structured_output: tool for this model (or remove the setting).",
            retryable=False,
            error_class="structured_output_ignored",
            model_id=self.model_id,
        )

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> ChatResponse:
        import anthropic

        client = self.connection.client(self.model_id)
        try:
            message = await client.messages.create(
                **self.params(request), **_timeout(timeout or self.timeout)
            )
        except anthropic.APIError as e:
            raise self.connection.model_error(e, self.model_id) from e
        said = "".join(b.text for b in message.content if b.type == "text")
        if request.json_schema is not None and self.structured_output == "tool":
            tool_inputs = [b.input for b in message.content if b.type == "tool_use"]
            if tool_inputs:
                text = json.dumps(tool_inputs[0], ensure_ascii=False)
            else:
                text = self._json_from_text(said)
        else:
            text = said
            if request.json_schema is not None and text.strip() and not text.lstrip().startswith("{"):
                raise self._native_ignored(text)
        return ChatResponse(
            text=text,
            usage=Usage(_input_tokens(message.usage), message.usage.output_tokens or 0),
            model_id=self.model_id,
            finish_reason=FINISH.get(message.stop_reason, message.stop_reason),
        )
