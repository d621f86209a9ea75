"""Models of the ``llm`` package (and its plugins) behind the suite's gateway.

``pip install 'datasette-llm-newsroom[llm]'`` adds Simon Willison's ``llm``;
its registered models (OpenAI by default, Gemini, Mistral, Ollama, Bedrock,
OpenRouter, local GGUF... through llm plugins) can then be used by id::

    models:
      - {id: gemini-flash, provider: llm, model: gemini-2.5-flash}

or all of them with ``llm_models: true``. Calls still go through the gateway
(retries, fallback, budgets, visitor limits, the call log), so this module
only translates:

- capabilities from what ``llm`` reports: ``can_stream`` -> streaming,
  ``supports_schema`` -> structured output, ``attachment_types`` -> images
  (checked per media type) and PDFs;
- a ``ChatRequest`` into ``model.prompt(...)`` (system, history, schema,
  attachments; ``max_tokens``/``temperature`` only when the model has such
  an option);
- llm's async models when the plugin offers one; a sync model runs in a
  worker thread, one chunk at a time, so the event loop never blocks;
- errors: a missing key -> ``ConfigError``; anything carrying an HTTP
  status (the exception itself or what it was raised from: vendor SDK
  errors, ``httpx``/``httpx2`` status errors) -> ``ModelError`` with status,
  retryability and Retry-After, worded like the built-in providers';
  timeouts and dropped connections -> retryable; anything else -> a
  non-retryable ``ModelError`` naming the exception.

Keys: ``api_key`` in the config (a ``$env`` value or a datasette-secrets
``{secret: NAME}``) is passed as ``key=``; otherwise llm finds the key as
it always does (``llm keys set NAME``, then the model's environment variable).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any, AsyncIterator, Iterable, Literal

import numpy as np

from ..calllog import redact, remember_secret
from ..config import ModelConfig, SecretRef, Settings
from ..errors import CapabilityError, ConfigError, ModelError
from ..models import ChatModel, EmbeddingModel
from ..types import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    PdfPart,
    StreamEnd,
    StreamEvent,
    TextDelta,
    TextPart,
    Usage,
)
from . import pricing
from .base import map_error

INSTALL = "pip install 'datasette-llm-newsroom[llm]'"
PROVIDER = "llm"
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")
#: Option names llm plugins use for the output cap, in order of preference.
MAX_TOKEN_OPTIONS = ("max_tokens", "max_output_tokens", "max_completion_tokens")
#: Seconds llm's model list is reused before plugins are asked again (some,
#: like llm-ollama, ask a server which models it has).
LIST_TTL = 60.0
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "STOP": "stop",
          "MAX_TOKENS": "length", "length": "length", "stop": "stop"}

# Sync llm models run here: their own small pool, so a slow local model
# cannot starve the default executor Datasette's other work uses.
_executor = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="llm-sync")


def import_llm():
    """The ``llm`` module, or ``ConfigError`` with the install command."""
    try:
        import llm
    except ImportError:
        raise ConfigError(
            f"The llm package is not installed. Run: {INSTALL} (then llm install "
            "llm-gemini, llm-ollama... for the models you want)."
        ) from None
    return llm


# ----------------------------------------------------------------- listing
_listed: dict[str, Any] = {"at": 0.0, "chat": None, "embed": None, "error": None}


def clear_cache() -> None:
    """Forget llm's model list (tests register plugins; the models page refreshes)."""
    _listed.update(at=0.0, chat=None, embed=None, error=None)


def _list_models() -> tuple[dict, dict]:
    """``({id or alias: (sync, async, aliases)}, {id or alias: embedding model})``."""
    if _listed["error"] is not None:
        raise ConfigError(_listed["error"])
    if _listed["chat"] is not None and time.monotonic() - _listed["at"] < LIST_TTL:
        return _listed["chat"], _listed["embed"]
    llm = import_llm()
    try:
        found_chat = llm.get_models_with_aliases()
        found_embed = llm.get_embedding_models_with_aliases()
    except Exception as e:  # noqa: BLE001 - a broken llm plugin, not our bug
        # llm marks its plugins loaded before loading them, so what it lists
        # after such a failure is partial: keep saying so until a restart.
        _listed["error"] = (
            f"llm could not list its models ({type(e).__name__}: {e}). One of its plugins is "
            "probably broken: run llm plugins, then reinstall or llm uninstall it and restart "
            "Datasette."
        )
        raise ConfigError(_listed["error"]) from e
    chat: dict[str, tuple] = {}
    for found in found_chat:
        model_id = (found.model or found.async_model).model_id
        entry = (found.model, found.async_model, list(found.aliases))
        chat[model_id] = entry
        for alias in found.aliases:
            chat.setdefault(alias, entry)
    embed: dict[str, Any] = {}
    for found in found_embed:
        embed[found.model.model_id] = found.model
        for alias in found.aliases:
            embed.setdefault(alias, found.model)
    _listed.update(at=time.monotonic(), chat=chat, embed=embed)
    return chat, embed


def _unique_chat(listed: dict) -> list[tuple[str, tuple]]:
    seen, out = set(), []
    for name, entry in listed.items():
        real = (entry[0] or entry[1]).model_id
        if real == name and real not in seen:
            seen.add(real)
            out.append((real, entry))
    return out


# ----------------------------------------------------------------- errors
class _StatusView(Exception):
    """An exception that carries an HTTP status, seen the way ``map_error``
    reads vendor SDK errors (``status_code``, ``response.headers``, ``body``)."""

    def __init__(self, status: int, response, body) -> None:
        super().__init__(status)
        self.status_code = status
        self.response = response
        self.body = body


def _status_of(error: BaseException) -> tuple[int | None, Any]:
    status = getattr(error, "status_code", None)
    response = getattr(error, "response", None)
    if status is None and response is not None:
        status = getattr(response, "status_code", None)
    if status is None:
        status = getattr(error, "status", None) if isinstance(getattr(error, "status", None), int) else None
    return (status if isinstance(status, int) else None), response


def _body_of(error: BaseException, response) -> Any:
    body = getattr(error, "body", None)
    if body is None and response is not None:
        try:
            body = response.json()
        except Exception:  # noqa: BLE001 - not JSON, or the body was streamed
            try:
                body = response.text
            except Exception:  # noqa: BLE001
                body = None
    return body


def _chain(error: BaseException) -> Iterable[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def map_llm_error(error: BaseException, *, model_id: str, secrets: list[str]) -> Exception:
    """Translate whatever an llm model raised into ``ConfigError`` or ``ModelError``."""
    if isinstance(error, (ModelError, ConfigError, CapabilityError)):
        return error
    try:
        import llm
    except ImportError:  # pragma: no cover - we only get here through llm
        llm = None
    if llm is not None and isinstance(error, llm.NeedsKeyException):
        return ConfigError(
            f"Model {model_id!r} (llm) has no API key: {redact(str(error), secrets)}, or add "
            "api_key for it under plugins: datasette-llm-newsroom: models."
        )
    for cause in _chain(error):
        status, response = _status_of(cause)
        if status is not None:
            view = _StatusView(status, response, _body_of(cause, response))
            return map_error(view, provider=PROVIDER, model_id=model_id,
                             key_hint="check the key llm uses for this model (llm keys list)",
                             secrets=secrets)
        kind = type(cause).__name__
        if "Timeout" in kind or isinstance(cause, TimeoutError):
            return ModelError(f"llm model {model_id!r} did not answer in time", retryable=True,
                              error_class="timeout", model_id=model_id)
        if any(word in kind for word in ("Connect", "RemoteProtocol", "ReadError")):
            return ModelError(
                f"could not reach the server of llm model {model_id!r} ({kind}): check the "
                "network and, for a local server, that it is running",
                retryable=True, error_class="connection", model_id=model_id)
    detail = redact(str(error), secrets) or type(error).__name__
    return ModelError(f"llm model {model_id!r} failed: {detail}", retryable=False,
                      error_class="model_error", model_id=model_id)


# ----------------------------------------------------------------- chat
def _finish(response) -> str | None:
    data = getattr(response, "response_json", None)
    if not isinstance(data, dict):
        return None
    value = data.get("finish_reason") or data.get("stop_reason")
    choices = data.get("choices")
    if value is None and isinstance(choices, list) and choices and isinstance(choices[0], dict):
        value = choices[0].get("finish_reason")
    return FINISH.get(value, value) if isinstance(value, str) else None


def _usage(input_tokens, output_tokens) -> Usage:
    return Usage(int(input_tokens or 0), int(output_tokens or 0))


class LlmChatModel(ChatModel):
    """One ``llm`` chat model (sync and/or async) behind the suite's interface."""

    provider = PROVIDER

    def __init__(
        self,
        model_id: str,
        *,
        llm_model_id: str,
        sync_model=None,
        async_model=None,
        key: str | None = None,
        secret_name: str | None = None,
        label: str | None = None,
        supports: set[str] | None = None,
        input_cost_per_mtok: float | None = None,
        output_cost_per_mtok: float | None = None,
        context_tokens: int | None = None,
        timeout: float | None = None,
        problem: str | None = None,
    ) -> None:
        self.model_id = model_id
        self.llm_model_id = llm_model_id
        self.sync_model = sync_model
        self.async_model = async_model
        self.key = key
        self.secret_name = secret_name
        self.problem = problem
        self.label = label or (llm_model_id if llm_model_id == model_id else f"{model_id} ({llm_model_id})")
        ref = async_model or sync_model
        types = frozenset(getattr(ref, "attachment_types", None) or ()) if ref else frozenset()
        self.attachment_types = types
        reported = set()
        if ref is not None:
            if getattr(ref, "can_stream", False):
                reported.add("streaming")
            if getattr(ref, "supports_schema", False):
                reported.add("schema")
            if types & set(IMAGE_TYPES):
                reported.add("images")
            if "application/pdf" in types:
                reported.add("pdfs")
        # Configuration may only narrow what llm reports: claiming more would
        # make llm refuse the request after the budget and log saw it.
        caps = reported & set(supports) if supports is not None else reported
        self.supports_streaming = "streaming" in caps
        self.supports_schema = "schema" in caps
        self.supports_images = "images" in caps
        self.supports_pdfs = "pdfs" in caps
        info = pricing.chat_info(llm_model_id)
        self.input_cost_per_mtok = (input_cost_per_mtok if input_cost_per_mtok is not None
                                    else (info.input_cost_per_mtok if info else None))
        self.output_cost_per_mtok = (output_cost_per_mtok if output_cost_per_mtok is not None
                                     else (info.output_cost_per_mtok if info else None))
        if context_tokens or info:
            self.context_tokens = context_tokens or info.context_tokens
        self.timeout = timeout

    # --- readiness -------------------------------------------------------
    def set_secret_key(self, value: str | None) -> None:
        """The key read from datasette-secrets for this request (None: let llm find one)."""
        self.key = value

    def _resolved_key(self) -> str | None:
        model = self.async_model or self.sync_model
        if getattr(model, "needs_key", None) is None:
            return None
        try:
            key = model.get_key(self.key)
        except Exception as e:  # llm.NeedsKeyException
            hint = ""
            if self.secret_name:
                hint = (f"; an admin can set the secret {self.secret_name} at "
                        f"/-/secrets/{self.secret_name}, or set the {self.secret_name} "
                        "environment variable")
            raise ConfigError(
                f"Model {self.model_id!r} (llm: {self.llm_model_id}) has no API key: "
                f"{redact(str(e), self.secrets())}{hint}."
            ) from None
        remember_secret(key)  # from llm's key store: redact it like ours
        return key

    def ensure_ready(self) -> None:
        if self.problem:
            raise ConfigError(self.problem)
        self._resolved_key()

    def secrets(self) -> list[str]:
        from ..calllog import secret_values

        return ([self.key] if self.key else []) + secret_values()

    def check(self, request: ChatRequest) -> None:
        super().check(request)
        for message in request.messages:
            for part in message.parts:
                if isinstance(part, ImagePart) and part.media_type not in self.attachment_types:
                    accepted = ", ".join(sorted(t for t in self.attachment_types if t.startswith("image/")))
                    raise CapabilityError(
                        f"Model {self.model_id!r} (llm: {self.llm_model_id}) does not accept "
                        f"{part.media_type} images (it takes {accepted or 'none'}). Convert "
                        "the image, or pick another model."
                    )

    # --- the request -------------------------------------------------------
    def _options(self, model, request: ChatRequest) -> dict:
        fields = set(getattr(model.Options, "model_fields", {}) or {})
        options: dict[str, Any] = {}
        for name in MAX_TOKEN_OPTIONS:
            if name in fields:
                options[name] = request.max_tokens
                break
        if request.temperature is not None and "temperature" in fields:
            options["temperature"] = request.temperature
        try:
            model.Options(**options)
        except Exception as e:  # noqa: BLE001 - pydantic's ValidationError: a value out of the plugin's range
            errors = e.errors() if hasattr(e, "errors") else []
            rejected = {err["loc"][0] for err in errors if err.get("loc")} or set(options)
            options = {k: v for k, v in options.items() if k not in rejected}  # the plugin's default
        return options

    def _prompt_kwargs(self, model, request: ChatRequest, stream: bool) -> dict:
        llm = import_llm()

        def attachments(parts) -> list:
            out = []
            for part in parts:
                if isinstance(part, ImagePart):
                    out.append(llm.Attachment(type=part.media_type, content=part.data))
                elif isinstance(part, PdfPart):
                    out.append(llm.Attachment(type="application/pdf", content=part.data))
            return out

        def text(parts) -> str:
            return "".join(p.text for p in parts if isinstance(p, TextPart))

        *history, last = request.messages
        prompt_text = text(last.parts)
        if history and not getattr(model, "supports_conversation", True):
            # A single-turn model: earlier turns (few-shot examples) go into the prompt as text.
            earlier = "\n\n".join(f"{m.role.capitalize()}: {text(m.parts)}" for m in history)
            prompt_text = f"Earlier messages:\n{earlier}\n\nNow:\n{prompt_text}"
            history = []
        kwargs: dict[str, Any] = dict(
            prompt=prompt_text or None,
            attachments=attachments(last.parts) or None,
            system=request.system,
            stream=stream,
            **self._options(model, request),
        )
        if history:
            # Earlier turns as llm messages; the last user turn stays the prompt
            # so plugins that read prompt.prompt see it.
            chain = [llm.system(request.system)] if request.system else []
            for message in history:
                build = llm.user if message.role == "user" else llm.assistant
                items = [text(message.parts)] + attachments(message.parts)
                chain.append(build(*[i for i in items if i]))
            kwargs["messages"] = chain
        if request.json_schema is not None:
            kwargs["schema"] = request.json_schema
        key = self._resolved_key()
        if key is not None:
            kwargs["key"] = key
        return kwargs

    async def _run(self, request: ChatRequest, stream: bool) -> AsyncIterator[StreamEvent]:
        if self.problem:
            raise ConfigError(self.problem)
        try:
            if self.async_model is not None:
                response = self.async_model.prompt(**self._prompt_kwargs(self.async_model, request, stream))
                events = response.astream_events()
                try:
                    async for event in events:
                        if getattr(event, "type", "text") == "text" and event.chunk:
                            yield TextDelta(event.chunk)
                finally:
                    await events.aclose()
                used = await response.usage()
            else:
                kwargs = self._prompt_kwargs(self.sync_model, request, stream)
                response = await _in_thread(lambda: self.sync_model.prompt(**kwargs))
                async for event in _iterate_in_thread(response.stream_events):
                    if getattr(event, "type", "text") == "text" and event.chunk:
                        yield TextDelta(event.chunk)
                used = await _in_thread(response.usage)
        except (GeneratorExit, asyncio.CancelledError):
            raise
        except Exception as e:
            mapped = map_llm_error(e, model_id=self.model_id, secrets=self.secrets())
            if mapped is e:
                raise
            raise mapped from e
        yield StreamEnd(usage=_usage(used.input, used.output), finish_reason=_finish(response))

    async def stream(self, request: ChatRequest, *, timeout: float | None = None) -> AsyncIterator[StreamEvent]:
        async for event in self._run(request, stream=True):
            yield event

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> ChatResponse:
        pieces, end = [], StreamEnd()
        events = self._run(request, stream=False)
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    pieces.append(event.text)
                else:
                    end = event
        finally:
            await events.aclose()
        return ChatResponse(text="".join(pieces), usage=end.usage, model_id=self.model_id,
                            finish_reason=end.finish_reason)


# ----------------------------------------------------------------- threads
async def _in_thread(function):
    return await asyncio.wrap_future(_executor.submit(function))


_DONE = object()


def _next(iterator):
    try:
        return next(iterator)
    except StopIteration:
        return _DONE


async def _iterate_in_thread(make_iterable) -> AsyncIterator[Any]:
    """Iterate a blocking iterable one item per worker-thread hop.

    If the reader goes away (timeout, cancel, ``aclose``) while an item is
    being produced, the iterator is closed in the worker once that item is
    done, so the model's generator (and its HTTP response) is released.
    """
    iterator = await _in_thread(lambda: iter(make_iterable()))
    pending: concurrent.futures.Future | None = None
    finished = False
    try:
        while True:
            pending = _executor.submit(_next, iterator)
            item = await asyncio.wrap_future(pending)
            pending = None
            if item is _DONE:
                finished = True
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None and not finished:
            if pending is not None and not pending.done():
                pending.add_done_callback(lambda _f: _close_quietly(close))
            else:
                _executor.submit(_close_quietly, close)


def _close_quietly(close) -> None:
    try:
        close()
    except Exception:  # noqa: BLE001 - a plugin's cleanup error must not surface here
        pass


# ----------------------------------------------------------------- embeddings
class LlmEmbeddingModel(EmbeddingModel):
    """One ``llm`` embedding model; vectors are L2-normalised float32."""

    provider = PROVIDER

    def __init__(self, model_id: str, *, llm_model_id: str, model=None, key: str | None = None,
                 secret_name: str | None = None, dimensions: int | None = None,
                 batch_size: int | None = None, input_cost_per_mtok: float | None = None,
                 label: str | None = None, timeout: float | None = None,
                 problem: str | None = None) -> None:
        self.model_id = model_id
        self.llm_model_id = llm_model_id
        self.model = model
        self.key = key
        self.secret_name = secret_name
        self.dimensions = dimensions or 0
        self.batch_size = batch_size or getattr(model, "batch_size", None) or 32
        self.input_cost_per_mtok = input_cost_per_mtok
        self.label = label or llm_model_id
        self.timeout = timeout
        self.problem = problem

    set_secret_key = LlmChatModel.set_secret_key

    def secrets(self) -> list[str]:
        return [self.key] if self.key else []

    def ensure_ready(self) -> None:
        if self.problem:
            raise ConfigError(self.problem)
        if getattr(self.model, "needs_key", None) is None:
            return
        try:
            self.model.get_key(self.key)
        except Exception as e:  # llm.NeedsKeyException
            raise ConfigError(
                f"Embedding model {self.model_id!r} (llm: {self.llm_model_id}) has no API key: "
                f"{redact(str(e), self.secrets())}."
            ) from None

    async def embed(self, texts: list[str], *, kind: Literal["query", "document"]) -> np.ndarray:
        self.ensure_ready()
        try:
            rows = await _in_thread(lambda: list(self.model.embed_multi(texts, key=self.key)))
        except Exception as e:
            mapped = map_llm_error(e, model_id=self.model_id, secrets=self.secrets())
            if mapped is e:
                raise
            raise mapped from e
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)
        if not self.dimensions:
            self.dimensions = int(vectors.shape[1])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1.0, norms)


# ----------------------------------------------------------------- building
def _key_and_secret(config: ModelConfig) -> tuple[str | None, str | None]:
    if isinstance(config.api_key, SecretRef):
        return None, config.api_key.secret
    return (config.api_key if isinstance(config.api_key, str) else None), None


def _known_ids(listed: dict) -> list[str]:
    """Model ids (no aliases), those of installed llm plugins before llm's built-in ones."""
    ids = {}
    for name, entry in listed.items():
        model = entry if not isinstance(entry, tuple) else (entry[0] or entry[1])
        if name == model.model_id:
            ids[name] = type(model).__module__.startswith("llm.default_plugins")
    return sorted(ids, key=lambda n: (ids[n], n))


def _missing(kind: str, config: ModelConfig, listed: dict) -> str:
    names = _known_ids(listed)
    listing = (", ".join(names[:20]) + (" ..." if len(names) > 20 else "")) if names else "none"
    return (f"{kind} {config.id!r}: llm has no model {config.model or config.id!r} (llm knows: "
            f"{listing}). Run llm models to list them, or llm install the plugin that adds it.")


def chat_models(settings: Settings) -> list[ChatModel]:
    """``provider: llm`` chat models of the config, then (``llm_models: true``) every other one."""
    configured = [c for c in settings.models if c.provider == "llm"]
    if not configured and not settings.llm_models:
        return []
    try:
        listed, _ = _list_models()
    except ConfigError as e:
        return [LlmChatModel(c.id, llm_model_id=c.model or c.id, problem=str(e)) for c in configured]
    out: list[ChatModel] = []
    for config in configured:
        name = config.model or config.id
        key, secret = _key_and_secret(config)
        entry = listed.get(name)
        common = dict(llm_model_id=name, key=key, secret_name=secret, label=config.label,
                      supports=set(config.supports) if config.supports is not None else None,
                      input_cost_per_mtok=config.input_cost_per_mtok,
                      output_cost_per_mtok=config.output_cost_per_mtok,
                      context_tokens=config.context_tokens, timeout=config.timeout)
        if entry is None:
            out.append(LlmChatModel(config.id, problem=_missing("Model", config, listed), **common))
        else:
            out.append(LlmChatModel(config.id, sync_model=entry[0], async_model=entry[1], **common))
    if settings.llm_models:
        taken = {c.id for c in settings.models}
        for model_id, (sync_model, async_model, _aliases) in _unique_chat(listed):
            if model_id not in taken:
                out.append(LlmChatModel(model_id, llm_model_id=model_id, sync_model=sync_model,
                                        async_model=async_model))
    return out


def embedding_models(settings: Settings) -> list[EmbeddingModel]:
    configured = [c for c in settings.embedding_models if c.provider == "llm"]
    if not configured and not settings.llm_models:
        return []
    try:
        _, listed = _list_models()
    except ConfigError as e:
        return [LlmEmbeddingModel(c.id, llm_model_id=c.model or c.id, problem=str(e)) for c in configured]
    out: list[EmbeddingModel] = []
    for config in configured:
        name = config.model or config.id
        key, secret = _key_and_secret(config)
        model = listed.get(name)
        out.append(LlmEmbeddingModel(
            config.id, llm_model_id=name, model=model, key=key, secret_name=secret,
            dimensions=config.dimensions, batch_size=config.batch_size,
            input_cost_per_mtok=config.input_cost_per_mtok, label=config.label,
            timeout=config.timeout,
            problem=None if model is not None else _missing("Embedding model", config, listed)))
    if settings.llm_models:
        taken = {c.id for c in settings.embedding_models}
        seen = set()
        for name, model in listed.items():
            if name == model.model_id and name not in taken and name not in seen:
                seen.add(name)
                out.append(LlmEmbeddingModel(name, llm_model_id=name, model=model))
    return out


async def chat_models_async(settings: Settings) -> list[ChatModel]:
    """``chat_models`` with llm's plugins asked in a thread (some list models over HTTP)."""
    return await _in_thread(lambda: chat_models(settings))


async def embedding_models_async(settings: Settings) -> list[EmbeddingModel]:
    return await _in_thread(lambda: embedding_models(settings))


def _wanted(settings: Settings, kind: str) -> bool:
    configs = settings.models if kind == "chat" else settings.embedding_models
    return settings.llm_models or any(c.provider == "llm" for c in configs)


def registered_chat_models(datasette):
    """What the suite's ``register_llm_models`` hook returns for llm (an awaitable, or [])."""
    from ..config import plugin_settings
    from ..secrets import apply_secret_keys

    settings = plugin_settings(datasette)
    if not _wanted(settings, "chat"):
        return []

    async def inner():
        return await apply_secret_keys(datasette, await chat_models_async(settings))

    return inner()


def registered_embedding_models(datasette):
    from ..config import plugin_settings
    from ..secrets import apply_secret_keys

    settings = plugin_settings(datasette)
    if not _wanted(settings, "embed"):
        return []

    async def inner():
        return await apply_secret_keys(datasette, await embedding_models_async(settings))

    return inner()
