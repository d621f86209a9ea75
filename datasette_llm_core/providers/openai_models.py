"""OpenAI chat format: OpenAI itself and every OpenAI-compatible server.

One model class (``OpenAIChatModel``) speaks the Chat Completions format;
the provider decides where it goes: ``OpenAIProvider`` (api.openai.com, key
required) or ``OpenAICompatibleProvider`` (Ollama, llama.cpp server, vLLM...
at ``base_url``, key optional).

Structured output uses ``response_format: json_schema`` (strict when the
schema allows it), streams ask for ``stream_options.include_usage``, images
go as data URLs and PDFs as base64 ``file`` parts; an image URL goes as an
``image_url`` part with that URL (OpenAI fetches it; Chat Completions takes no
PDF by URL, so PDF URLs are refused before sending).
"""

from __future__ import annotations

import base64
import re
import time
from typing import Any, AsyncIterator

from ..errors import OutputError
from ..models import ChatModel
from ..types import (
    FILE_PARTS,
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
#: Reasoning model families that reject any temperature but the default.
NO_TEMPERATURE = re.compile(r"^(o\d|gpt-5)")


class OpenAIProvider(Provider):
    name = "openai"
    default_key_env = "OPENAI_API_KEY"

    def build_client(self, api_key: str | None):
        import openai

        return openai.AsyncOpenAI(**self.client_kwargs(api_key))


class OpenAICompatibleProvider(OpenAIProvider):
    name = "openai-compatible"
    default_key_env = None
    key_required = False

    def build_client(self, api_key: str | None):
        # Local servers ignore the key, but the SDK insists on one.
        return super().build_client(api_key or "not-needed")


def schema_name(name: str) -> str:
    cleaned = _NAME_OK.sub("_", name or "output")[:64]
    return cleaned or "output"


def is_strict_compatible(schema: Any) -> bool:
    """Whether OpenAI strict mode accepts ``schema`` as it is.

    Strict mode needs every object to list all its properties as required
    and to forbid additional properties.
    """
    if isinstance(schema, list):
        return all(is_strict_compatible(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    props = schema.get("properties")
    if schema.get("type") == "object" or isinstance(props, dict):
        props = props if isinstance(props, dict) else {}
        if schema.get("additionalProperties", True) is not False:
            return False
        if set(schema.get("required", [])) != set(props):
            return False
    children: list = list(props.values()) if isinstance(props, dict) else []
    for key in ("items", "anyOf", "allOf", "oneOf", "prefixItems"):
        if key in schema:
            children.append(schema[key])
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            children.extend(schema[key].values())
    return all(is_strict_compatible(child) for child in children)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def to_openai_messages(request: ChatRequest) -> list[dict]:
    messages: list[dict] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for message in request.messages:
        if message.role == "assistant" or all(not isinstance(p, FILE_PARTS) for p in message.parts):
            # Parts are separate paragraphs (task, document, reply format): a
            # blank line between them, never glued ("...it.Document to...").
            text = "\n\n".join(t for t in (getattr(p, "text", "") for p in message.parts) if t)
            messages.append({"role": message.role, "content": text})
            continue
        content = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                content.append(
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:{part.media_type};base64,{_b64(part.data)}"},
                    }
                )
            elif isinstance(part, ImageUrlPart):
                content.append({"type": "image_url", "image_url": {"url": part.url}})
            elif isinstance(part, PdfUrlPart):
                raise ValueError("The Chat Completions format takes PDFs as file data only, not by URL.")
            elif isinstance(part, PdfPart):
                content.append(
                    {
                        "type": "file",
                        "file": {
                            "filename": part.filename,
                            "file_data": f"data:application/pdf;base64,{_b64(part.data)}",
                        },
                    }
                )
            else:
                content.append({"type": "text", "text": part.text})
        messages.append({"role": "user", "content": content})
    return messages


class OpenAIChatModel(ChatModel):
    """Chat Completions models, for OpenAI and OpenAI-compatible servers."""

    def __init__(
        self,
        model_id: str,
        *,
        connection: OpenAIProvider,
        model_name: str | None = None,
        label: str | None = None,
        supports: set[str] | frozenset[str] | None = None,
        input_cost_per_mtok: float | None = None,
        output_cost_per_mtok: float | None = None,
        context_tokens: int | None = None,
        timeout: float | None = None,
        max_tokens_param: str | None = None,
        accepts_urls: bool | None = None,
    ) -> None:
        self.model_id = model_id
        self.connection = connection
        self.provider = connection.name
        self.model_name = model_name or model_id
        self.label = label or self.model_name
        caps = set(supports) if supports is not None else {"streaming", "schema", "images"}
        self.supports_streaming = "streaming" in caps
        self.supports_schema = "schema" in caps
        self.supports_images = "images" in caps
        self.supports_pdfs = "pdfs" in caps
        # OpenAI fetches image URLs itself; another server at base_url only when its config says so.
        vendor = connection.name == "openai" and not connection.base_url
        self.accepts_image_urls = vendor if accepts_urls is None else accepts_urls
        self.accepts_pdf_urls = False  # Chat Completions: PDFs as file data only
        self.input_cost_per_mtok = input_cost_per_mtok
        self.output_cost_per_mtok = output_cost_per_mtok
        if context_tokens:
            self.context_tokens = context_tokens
        self.timeout = timeout
        # OpenAI wants max_completion_tokens (reasoning models refuse max_tokens);
        # most compatible servers only know max_tokens.
        self.max_tokens_param = max_tokens_param or (
            "max_completion_tokens" if connection.name == "openai" else "max_tokens"
        )

    def ensure_ready(self) -> None:
        self.connection.client(self.model_id)

    def params(self, request: ChatRequest) -> dict:
        params: dict[str, Any] = {
            "model": self.model_name,
            "messages": to_openai_messages(request),
            self.max_tokens_param: request.max_tokens,
        }
        if request.temperature is not None and not NO_TEMPERATURE.match(self.model_name):
            params["temperature"] = request.temperature
        if request.json_schema is not None:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": schema_name(request.schema_name),
                    "schema": request.json_schema,
                    "strict": is_strict_compatible(request.json_schema),
                },
            }
        return params

    def _refused(self, refusal: str) -> OutputError:
        return OutputError(
            f"{self.model_id} declined to answer: {refusal[:300]}",
            retryable=False,
            error_class="refusal",
            model_id=self.model_id,
        )

    async def stream(
        self, request: ChatRequest, *, timeout: float | None = None
    ) -> AsyncIterator[StreamEvent]:
        import openai

        client = self.connection.client(self.model_id)
        usage = Usage()
        finish = None
        refusal = []
        produced = False
        opened = None  # when the server answered: later connection errors are a broken stream
        chars = 0
        try:
            stream = await client.chat.completions.create(
                **self.params(request),
                stream=True,
                stream_options={"include_usage": True},
                **_timeout(timeout or self.timeout),
            )
            opened = time.monotonic()
            try:
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = Usage(
                            chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0
                        )
                    for choice in chunk.choices or []:
                        delta = choice.delta
                        if delta is not None and delta.content:
                            produced = True
                            chars += len(delta.content)
                            yield TextDelta(delta.content)
                        if delta is not None and getattr(delta, "refusal", None):
                            refusal.append(delta.refusal)
                        if choice.finish_reason:
                            finish = choice.finish_reason
            finally:
                await stream.close()
        except openai.APIError as e:
            if opened is not None and type(e) is openai.APIConnectionError:
                raise connection_lost(self.connection, self.model_id, e, seconds=time.monotonic() - opened,
                                      chars=chars) from e
            raise self.connection.model_error(e, self.model_id) from e
        if refusal and not produced:
            raise self._refused("".join(refusal))
        if finish is None:
            # Every OpenAI-format server ends a stream with a finish_reason; a
            # stream without one was cut off (or was not a stream at all).
            raise OutputError(
                f"The answer from {self.model_id} broke off before the model finished "
                "(the stream ended without a finish reason). Try again; if it keeps "
                "happening, check the server at the model's base_url.",
                retryable=True,
                error_class="truncated_stream",
                model_id=self.model_id,
            )
        yield StreamEnd(usage=usage, finish_reason=finish)

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> ChatResponse:
        import openai

        client = self.connection.client(self.model_id)
        try:
            response = await client.chat.completions.create(
                **self.params(request), **_timeout(timeout or self.timeout)
            )
        except openai.APIError as e:
            raise self.connection.model_error(e, self.model_id) from e
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content if choice and choice.message else None) or ""
        refusal = getattr(choice.message, "refusal", None) if choice and choice.message else None
        if refusal and not text:
            raise self._refused(refusal)
        usage = Usage()
        if response.usage is not None:
            usage = Usage(response.usage.prompt_tokens or 0, response.usage.completion_tokens or 0)
        return ChatResponse(
            text=text,
            usage=usage,
            model_id=self.model_id,
            finish_reason=choice.finish_reason if choice else None,
        )
