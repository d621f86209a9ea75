"""Test doubles: scripted models registered through the suite's own hooks.

Like llm's MockModel: a test enqueues what the model will answer, the code
under test calls the gateway as it would in production, and the test reads
back what the model was asked. These never ship with the product.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
from datasette import hookimpl

from datasette_llm_core.errors import ModelError
from datasette_llm_core.models import ChatModel, EmbeddingModel
from datasette_llm_core.types import ChatRequest, StreamEnd, TextDelta, Usage


@dataclass
class Scripted:
    """One scripted answer: text streamed in ``chunks`` pieces, or an error."""

    text: str = ""
    chunks: int = 4
    delay: float = 0.0  # seconds between chunks
    error: Exception | None = None
    finish_reason: str = "stop"
    usage: Usage | None = None


class ScriptedChatModel(ChatModel):
    provider = "test"
    supports_images = True
    supports_pdfs = True
    input_cost_per_mtok = 1.0
    output_cost_per_mtok = 2.0

    def __init__(self, model_id: str = "scripted", **capabilities):
        self.model_id = model_id
        self.label = f"Scripted test model ({model_id})"
        for name, value in capabilities.items():
            setattr(self, name, value)
        self.queue: list[Scripted] = []
        self.requests: list[ChatRequest] = []
        #: Called with the request when the queue is empty; returns str or Scripted.
        self.responder = None

    def enqueue(self, *answers: str | Scripted | Exception) -> "ScriptedChatModel":
        for answer in answers:
            if isinstance(answer, Exception):
                answer = Scripted(error=answer)
            elif isinstance(answer, str):
                answer = Scripted(text=answer)
            self.queue.append(answer)
        return self

    async def stream(self, request: ChatRequest, *, timeout=None):
        self.requests.append(request)
        if self.queue:
            answer = self.queue.pop(0)
        elif self.responder is not None:
            answer = self.responder(request)
            if isinstance(answer, str):
                answer = Scripted(text=answer)
        else:
            raise ModelError(
                f"ScriptedChatModel {self.model_id!r} has nothing queued",
                status=500,
                retryable=False,
            )
        if answer.error is not None:
            raise answer.error
        text = answer.text
        n = max(1, answer.chunks)
        size = max(1, -(-len(text) // n))
        for i in range(0, len(text), size):
            if answer.delay:
                await asyncio.sleep(answer.delay)
            yield TextDelta(text[i : i + size])
        usage = answer.usage or Usage(
            input_tokens=max(1, request.text_length() // 4),
            output_tokens=max(1, len(text) // 4),
        )
        yield StreamEnd(usage=usage, finish_reason=answer.finish_reason)


class HashEmbeddingModel(EmbeddingModel):
    """Deterministic bag-of-words embeddings: fast, and similar texts score higher."""

    provider = "test"

    def __init__(self, model_id: str = "hash-embed", dimensions: int = 64):
        self.model_id = model_id
        self.dimensions = dimensions
        self.calls: list[tuple[str, int]] = []

    def embed_sync(self, texts):
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
                out[row, h % self.dimensions] += 1.0
            norm = np.linalg.norm(out[row])
            if norm:
                out[row] /= norm
        return out

    async def embed(self, texts, *, kind):
        self.calls.append((kind, len(texts)))
        return self.embed_sync(texts)


@dataclass(eq=False)  # hashable: pluggy keeps plugins in a set
class FakeModelsPlugin:
    """A Datasette plugin object providing the fakes through the suite's hooks."""

    __name__ = "tests.fakes.FakeModelsPlugin"  # Datasette lists plugins by __name__

    chat: list[ChatModel] = field(default_factory=list)
    embedding: list[EmbeddingModel] = field(default_factory=list)

    @hookimpl
    def register_llm_models(self, datasette):
        return self.chat

    @hookimpl
    def register_embedding_models(self, datasette):
        return self.embedding
