"""Models built from configuration (and from environment variables).

``plugins: datasette-llm-newsroom: models:`` lists chat models and
``embedding_models:`` embedding models, each with a ``provider`` of
``openai``, ``anthropic`` or ``openai-compatible``. With no ``models``
configured (and ``auto_models`` left on) the suite registers sensible
defaults from the environment:

- ``OPENAI_API_KEY`` -> ``gpt-4.1-mini`` (and ``text-embedding-3-small``)
- ``ANTHROPIC_API_KEY`` -> ``claude-haiku-4-5``
- ``DATASETTE_LLM_BASE_URL`` (+ ``DATASETTE_LLM_MODEL``, optional
  ``DATASETTE_LLM_API_KEY`` and ``DATASETTE_LLM_SUPPORTS``, a comma list
  such as ``streaming,schema,images``; ``DATASETTE_LLM_CONTEXT_TOKENS``,
  ``DATASETTE_LLM_MAX_OUTPUT_TOKENS`` and ``DATASETTE_LLM_CONCURRENCY``
  for a small local server) -> an OpenAI-compatible model for a local
  Ollama, llama.cpp server or vLLM.

Built models are cached per Datasette instance (weakly) and rebuilt when
the configuration or those environment variables change.
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from typing import Any

from ..config import ModelConfig, SecretRef, Settings
from ..errors import ConfigError
from ..models import ChatModel, EmbeddingModel
from . import pricing
from .anthropic_models import AnthropicChatModel, AnthropicProvider
from .openai_models import OpenAIChatModel, OpenAICompatibleProvider, OpenAIProvider

ENV_VARS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "DATASETTE_LLM_BASE_URL",
    "DATASETTE_LLM_MODEL",
    "DATASETTE_LLM_API_KEY",
    "DATASETTE_LLM_SUPPORTS",
    "DATASETTE_LLM_CONTEXT_TOKENS",
    "DATASETTE_LLM_MAX_OUTPUT_TOKENS",
    "DATASETTE_LLM_CONCURRENCY",
)
#: Whole-number settings of the environment route, and the model field each sets.
ENV_NUMBERS = {
    "DATASETTE_LLM_CONTEXT_TOKENS": "context_tokens",
    "DATASETTE_LLM_MAX_OUTPUT_TOKENS": "max_output_tokens",
    "DATASETTE_LLM_CONCURRENCY": "concurrency",
}
DEFAULT_LOCAL_MODEL = "llama3.2"


def make_http_client(config: ModelConfig) -> Any:
    """The ``httpx2.AsyncClient`` SDK clients use; None lets the SDK make its own.

    Tests replace this function to route config-built models through an
    ``httpx2.MockTransport``.
    """
    return None


def default_model_configs(environ) -> list[ModelConfig]:
    configs = []
    if environ.get("OPENAI_API_KEY"):
        configs.append(ModelConfig(id=pricing.DEFAULT_OPENAI_MODEL, provider="openai"))
    if environ.get("ANTHROPIC_API_KEY"):
        configs.append(ModelConfig(id=pricing.DEFAULT_ANTHROPIC_MODEL, provider="anthropic"))
    base_url = environ.get("DATASETTE_LLM_BASE_URL")
    if base_url:
        supports = [
            s.strip()
            for s in (environ.get("DATASETTE_LLM_SUPPORTS") or "streaming,schema").split(",")
            if s.strip()
        ]
        numbers = {}
        for name, field in ENV_NUMBERS.items():
            value = (environ.get(name) or "").strip()
            if value:
                try:
                    numbers[field] = int(value)
                except ValueError:
                    raise ConfigError(f"{name} must be a whole number (got {value!r}).") from None
        try:
            configs.append(
                ModelConfig(
                    id=environ.get("DATASETTE_LLM_MODEL") or DEFAULT_LOCAL_MODEL,
                    provider="openai-compatible",
                    base_url=base_url,
                    api_key_env="DATASETTE_LLM_API_KEY" if environ.get("DATASETTE_LLM_API_KEY") else None,
                    supports=supports,
                )
            )
            configs[-1] = ModelConfig.model_validate({**configs[-1].model_dump(exclude_unset=True), **numbers})
        except ValueError as e:
            if numbers and "supports" not in str(e):
                raise ConfigError(
                    "DATASETTE_LLM_CONTEXT_TOKENS (256 or more), DATASETTE_LLM_MAX_OUTPUT_TOKENS (16 or "
                    f"more) or DATASETTE_LLM_CONCURRENCY (1-256) is out of range: {e}"
                ) from e
            raise ConfigError(
                "DATASETTE_LLM_SUPPORTS may list only streaming, schema, images, pdfs "
                f"(got {environ.get('DATASETTE_LLM_SUPPORTS')!r})."
            ) from e
    return configs


def default_embedding_configs(environ) -> list[ModelConfig]:
    if environ.get("OPENAI_API_KEY"):
        return [ModelConfig(id=pricing.DEFAULT_OPENAI_EMBEDDING, provider="openai")]
    return []


def _connection(config: ModelConfig, environ, default_timeout: float | None):
    secret = config.api_key.secret if isinstance(config.api_key, SecretRef) else None
    connection = _provider(config, environ, default_timeout, secret)
    connection.secret_name = secret
    return connection


def _provider(config: ModelConfig, environ, default_timeout: float | None, secret: str | None):
    kwargs = dict(
        # A secret's value is set per request (secrets.apply_secret_keys); its
        # environment variable, when set, wins.
        api_key=config.api_key if secret is None else None,
        api_key_env=config.api_key_env or secret,
        base_url=config.base_url,
        timeout=config.timeout or default_timeout,
        http_client=make_http_client(config),
        environ=environ,
    )
    if config.provider == "openai":
        return OpenAIProvider(**kwargs)
    if config.provider == "anthropic":
        return AnthropicProvider(**kwargs)
    if not config.base_url:
        raise ConfigError(
            f"Model {config.id!r} (openai-compatible) needs base_url, e.g. "
            "http://127.0.0.1:11434/v1 for Ollama or http://127.0.0.1:8080/v1 for llama.cpp."
        )
    return OpenAICompatibleProvider(**kwargs)


def build_chat_model(config: ModelConfig, environ=None, default_timeout: float | None = None) -> ChatModel:
    environ = os.environ if environ is None else environ
    name = config.model or config.id
    info = pricing.chat_info(name) if config.provider != "openai-compatible" else None
    supports = set(config.supports) if config.supports is not None else (
        set(info.supports) if info else None
    )
    if supports is None and config.provider == "openai-compatible":
        supports = {"streaming", "schema"}
    common = dict(
        connection=_connection(config, environ, default_timeout),
        model_name=name,
        label=config.label or (info.label if info else None),
        supports=supports,
        input_cost_per_mtok=config.input_cost_per_mtok
        if config.input_cost_per_mtok is not None
        else (info.input_cost_per_mtok if info else None),
        output_cost_per_mtok=config.output_cost_per_mtok
        if config.output_cost_per_mtok is not None
        else (info.output_cost_per_mtok if info else None),
        context_tokens=config.context_tokens or (info.context_tokens if info else None),
        timeout=config.timeout,
    )
    if config.provider == "anthropic":
        model = AnthropicChatModel(config.id, structured_output=config.structured_output,
                                   accepts_urls=config.accepts_urls, **common)
    else:
        model = OpenAIChatModel(config.id, max_tokens_param=config.max_tokens_param,
                                accepts_urls=config.accepts_urls, **common)
    model.max_output_tokens = config.max_output_tokens
    model.concurrency = config.concurrency
    model.first_byte_timeout = config.first_byte_timeout
    return model


def build_embedding_model(
    config: ModelConfig, environ=None, default_timeout: float | None = None
) -> EmbeddingModel:
    from ..embeddings.openai_embed import OpenAIEmbeddingModel

    environ = os.environ if environ is None else environ
    if config.provider == "anthropic":
        raise ConfigError(
            f"Embedding model {config.id!r}: Anthropic has no embedding API. Use provider: "
            "openai or openai-compatible, or the built-in local model."
        )
    name = config.model or config.id
    known = pricing.embedding_info(name)
    return OpenAIEmbeddingModel(
        config.id,
        connection=_connection(config, environ, default_timeout),
        model_name=name,
        dimensions=config.dimensions or (known[1] if known else None),
        request_dimensions=config.dimensions is not None and name.startswith("text-embedding-3"),
        input_cost_per_mtok=config.input_cost_per_mtok
        if config.input_cost_per_mtok is not None
        else (known[0] if known else None),
        batch_size=config.batch_size or 128,
        timeout=config.timeout,
        label=config.label,
    )


def chat_configs(settings: Settings, environ) -> list[ModelConfig]:
    if settings.models:  # provider: llm entries are built by providers/llm_plugin.py
        return [c for c in settings.models if c.provider != "llm"]
    return default_model_configs(environ) if settings.auto_models else []


def embedding_configs(settings: Settings, environ) -> list[ModelConfig]:
    if settings.embedding_models:
        return [c for c in settings.embedding_models if c.provider != "llm"]
    return default_embedding_configs(environ) if settings.auto_models else []


_cache: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _fingerprint(settings: Settings, environ) -> str:
    return json.dumps(
        [
            settings.model_dump(include={"models", "embedding_models", "auto_models", "timeout",
                                         "first_byte_timeout"}),
            [environ.get(name) for name in ENV_VARS],
            [environ.get(c.api_key_env) for c in settings.models + settings.embedding_models if c.api_key_env],
            id(make_http_client),
        ],
        sort_keys=True,
        default=str,
    )


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _cached(datasette, settings: Settings, kind: str, build):
    """Models for ``datasette``, rebuilt when config, env or the event loop change.

    SDK clients hold connection pools bound to the loop they were used on, so a
    new loop (a CLI calling ``asyncio.run`` twice) gets new clients.
    """
    environ = os.environ
    key = _fingerprint(settings, environ)
    loop = _running_loop()
    try:
        entry = _cache.setdefault(datasette, {})
    except TypeError:  # not weak-referenceable: build every time
        return build(environ)
    cached = entry.get(kind)
    if cached is None or cached[0] != key or cached[1]() is not loop:
        loop_ref = weakref.ref(loop) if loop is not None else (lambda: None)
        entry[kind] = (key, loop_ref, build(environ))
    return list(entry[kind][2])


def chat_models_for(datasette, settings: Settings) -> list[ChatModel]:
    return _cached(
        datasette,
        settings,
        "chat",
        lambda env: [build_chat_model(c, env, settings.timeout) for c in chat_configs(settings, env)],
    )


def embedding_models_for(datasette, settings: Settings) -> list[EmbeddingModel]:
    return _cached(
        datasette,
        settings,
        "embed",
        lambda env: [
            build_embedding_model(c, env, settings.timeout) for c in embedding_configs(settings, env)
        ],
    )
