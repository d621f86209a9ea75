"""Base classes every chat and embedding model implements.

A *model* knows one vendor's request/response format; the authenticated
client, base URL and HTTP connection belong to its *provider* (see
``providers/``). Models declare capabilities as attributes and implement one
method (``stream`` for chat, ``embed`` for embeddings).
"""

from __future__ import annotations

import dataclasses
import math
from typing import AsyncIterator, ClassVar, Literal

import numpy as np

from .errors import CapabilityError, ModelError
from .types import ChatRequest, ChatResponse, StreamEnd, StreamEvent, TextDelta, Usage

CAPABILITY_LABELS = {
    "schema": "structured output",
    "images": "image input",
    "pdfs": "PDF input",
    "streaming": "streaming",
    "image_urls": "image URLs (fetched by the model's provider: accepts_urls)",
    "pdf_urls": "PDF URLs (fetched by the model's provider: accepts_urls)",
}


class ChatModel:
    """A chat model. Subclasses set the attributes and implement ``stream``."""

    #: Unique id used in configuration, the call log and the model picker.
    model_id: str = ""
    #: Provider name ("openai", "anthropic", "openai-compatible", "test", ...).
    provider: str = ""
    #: Human-readable name for the model picker.
    label: str = ""
    supports_streaming: ClassVar[bool] | bool = True
    supports_schema: ClassVar[bool] | bool = True
    supports_images: ClassVar[bool] | bool = False
    supports_pdfs: ClassVar[bool] | bool = False
    #: Images / PDFs given by ``https://`` URL, fetched by the provider (the suite never fetches).
    accepts_image_urls: ClassVar[bool] | bool = False
    accepts_pdf_urls: ClassVar[bool] | bool = False
    #: USD per million input / output tokens, for estimates; None if unknown.
    input_cost_per_mtok: float | None = None
    output_cost_per_mtok: float | None = None
    #: Context window in tokens (used to size chunks and ``max_tokens``).
    context_tokens: int = 128_000
    #: Output tokens to ask for per request; None sizes it from ``context_tokens``.
    max_output_tokens: int | None = None
    #: Requests allowed in flight at once (None: no limit of our own).
    concurrency: int | None = None
    #: Seconds a stream may take to start (None: the gateway's default).
    first_byte_timeout: float | None = None

    def capabilities(self) -> set[str]:
        caps = set()
        if self.supports_streaming:
            caps.add("streaming")
        if self.supports_schema:
            caps.add("schema")
        if self.supports_images:
            caps.add("images")
        if self.supports_pdfs:
            caps.add("pdfs")
        if self.supports_images and self.accepts_image_urls:
            caps.add("image_urls")
        if self.supports_pdfs and self.accepts_pdf_urls:
            caps.add("pdf_urls")
        return caps

    def check(self, request: ChatRequest) -> None:
        """Raise ``CapabilityError`` if this model cannot serve ``request``."""
        missing = request.needs() - self.capabilities()
        if missing:
            labels = ", ".join(sorted(CAPABILITY_LABELS.get(m, m) for m in missing))
            raise CapabilityError(
                f"Model {self.model_id!r} does not support {labels}. "
                "Pick a model that does, or configure one under "
                "plugins: datasette-llm-newsroom: models."
            )

    def estimate_cost(self, input_tokens: int, output_tokens: int) -> float | None:
        if self.input_cost_per_mtok is None or self.output_cost_per_mtok is None:
            return None
        return (
            input_tokens * self.input_cost_per_mtok
            + output_tokens * self.output_cost_per_mtok
        ) / 1_000_000

    async def stream(
        self, request: ChatRequest, *, timeout: float | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Yield ``TextDelta`` events, then exactly one ``StreamEnd``.

        Errors are raised as ``ModelError`` (wrapping the vendor exception).
        """
        raise NotImplementedError
        yield  # pragma: no cover

    async def complete(
        self, request: ChatRequest, *, timeout: float | None = None
    ) -> ChatResponse:
        """Run ``stream`` to the end and return the whole response."""
        pieces: list[str] = []
        end = StreamEnd()
        async for event in self.stream(request, timeout=timeout):
            if isinstance(event, TextDelta):
                pieces.append(event.text)
            elif isinstance(event, StreamEnd):
                end = event
        return ChatResponse(
            text="".join(pieces),
            usage=end.usage or Usage(),
            model_id=self.model_id,
            finish_reason=end.finish_reason,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_id}>"


DEFAULT_OUTPUT_TOKENS = 4096
MIN_OUTPUT_TOKENS = 256


def output_tokens_for(model) -> int:
    """Output tokens to ask ``model`` for: its ``max_output_tokens``, else a quarter of its
    context (at most 4,096), so prompt and answer fit a small local model's window."""
    configured = getattr(model, "max_output_tokens", None)
    if configured:
        return int(configured)
    context = getattr(model, "context_tokens", 0) or 0
    if not context:
        return DEFAULT_OUTPUT_TOKENS
    return max(MIN_OUTPUT_TOKENS, min(DEFAULT_OUTPUT_TOKENS, context // 4))


#: Prompt tokens are estimated as characters / 4; local tokenizers (and JSON) need more.
PROMPT_SAFETY = 1.25
#: A request that leaves less than this for the answer is refused before it is sent.
MIN_ROOM_TOKENS = 64


def prompt_tokens_estimate(request: ChatRequest) -> int:
    """A generous estimate of the tokens ``request`` takes in a model's context."""
    return math.ceil(request.text_length() / 4 * PROMPT_SAFETY) + 16 * (len(request.messages) + 1)


def fit_to_context(request: ChatRequest, model) -> ChatRequest:
    """``request`` with ``max_tokens`` no larger than the model's ``max_output_tokens`` and than
    what its context has left after the prompt; ``ModelError`` (``context_exceeded``, not
    retryable) when the prompt alone leaves no room, so nothing doomed is sent."""
    want = request.max_tokens
    cap = getattr(model, "max_output_tokens", None)
    if cap:
        want = min(want, int(cap))
    context = getattr(model, "context_tokens", 0) or 0
    if context:
        prompt = prompt_tokens_estimate(request)
        room = context - prompt
        if room < MIN_ROOM_TOKENS:
            raise ModelError(
                f"The prompt (about {prompt:,} tokens) does not fit the context of model "
                f"{model.model_id!r} ({context:,} tokens). Send less text at once (a smaller "
                "chunk_chars, fewer rows), or if the server's context is larger, set "
                "context_tokens for this model.",
                retryable=False,
                error_class="context_exceeded",
                model_id=model.model_id,
            )
        want = min(want, room)
    if want == request.max_tokens:
        return request
    return dataclasses.replace(request, max_tokens=max(1, want))


class EmbeddingModel:
    """An embedding model. Subclasses implement ``embed``."""

    model_id: str = ""
    provider: str = ""
    dimensions: int = 0
    #: How many texts one call to ``embed`` should carry at most.
    batch_size: int = 64
    input_cost_per_mtok: float | None = None

    async def embed(
        self, texts: list[str], *, kind: Literal["query", "document"]
    ) -> np.ndarray:
        """Return a float32 array of shape (len(texts), dimensions), L2-normalised.

        ``kind`` says whether the texts are search queries or documents to
        index; models that embed the two differently use it.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_id}>"
