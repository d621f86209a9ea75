"""OpenAI embeddings (also any OpenAI-compatible ``/v1/embeddings`` server).

OpenAI's embedding models embed queries and documents the same way, so
``kind`` only matters for logging. Vectors come back L2-normalised float32,
in input order whatever order the server lists them in.
"""

from __future__ import annotations

import numpy as np

from ..models import EmbeddingModel
from ..providers.base import timeout_kwargs
from ..providers.openai_models import OpenAIProvider


class OpenAIEmbeddingModel(EmbeddingModel):
    def __init__(
        self,
        model_id: str,
        *,
        connection: OpenAIProvider,
        model_name: str | None = None,
        dimensions: int | None = None,
        request_dimensions: bool = False,
        input_cost_per_mtok: float | None = None,
        batch_size: int = 128,
        timeout: float | None = None,
        label: str | None = None,
    ) -> None:
        self.model_id = model_id
        self.connection = connection
        self.provider = connection.name
        self.model_name = model_name or model_id
        self.dimensions = dimensions or 0
        #: Ask the API for shortened vectors (text-embedding-3 models only).
        self.request_dimensions = request_dimensions
        self.input_cost_per_mtok = input_cost_per_mtok
        self.batch_size = batch_size
        self.timeout = timeout
        self.label = label or self.model_name

    def ensure_ready(self) -> None:
        self.connection.client(self.model_id)

    async def embed_with_usage(self, texts: list[str], *, kind: str) -> tuple[np.ndarray, int | None]:
        """Vectors plus the input tokens the API counted."""
        import openai

        client = self.connection.client(self.model_id)
        kwargs = {"input": list(texts), "model": self.model_name, "encoding_format": "float"}
        if self.request_dimensions and self.dimensions:
            kwargs["dimensions"] = self.dimensions
        try:
            response = await client.embeddings.create(**kwargs, **timeout_kwargs(self.timeout))
        except openai.APIError as e:
            raise self.connection.model_error(e, self.model_id) from e
        ordered = sorted(response.data, key=lambda d: d.index)
        vectors = np.asarray([d.embedding for d in ordered], dtype=np.float32)
        if vectors.shape[0] != len(texts):
            from ..errors import ModelError

            raise ModelError(
                f"{self.model_id} returned {vectors.shape[0]} vectors for {len(texts)} texts",
                retryable=True,
                error_class="invalid_response",
                model_id=self.model_id,
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        vectors = vectors / norms
        if not self.dimensions:
            self.dimensions = int(vectors.shape[1])
        usage = getattr(response, "usage", None)
        return vectors.astype(np.float32), (usage.prompt_tokens if usage is not None else None)

    async def embed(self, texts: list[str], *, kind) -> np.ndarray:
        vectors, _ = await self.embed_with_usage(texts, kind=kind)
        return vectors
