"""The one door every model call goes through.

``llm_gateway(datasette)`` returns a ``Gateway`` that resolves models (from
the ``register_llm_models`` / ``register_embedding_models`` hooks), checks
capabilities before sending, retries with backoff (honouring the provider's
Retry-After), falls back along the configured chain, enforces timeouts and
budgets, and writes one call-log row per attempt (``attempts.py`` plans the
attempts of a call and logs each; ``calllog.py`` stores the rows).

Plugins never call a model directly.

Timeouts: ``complete`` and ``embed`` bound each attempt as a whole; ``stream``
bounds the wait for each event after the first with ``timeout``, so a long
answer that keeps streaming is never cut, but a stalled one is. The first
event (connecting, waiting in the server's queue, reading the prompt) has
its own, longer ``first_byte_timeout``; when it runs out the server is
taken to be queueing: the model's limiter (``limiter.py``) lowers how many
requests it sends at once and the attempt is retried after the backoff.
Each model's ``concurrency`` caps its requests in flight; waiting for a
free place is not timed. ``max_tokens`` is fitted to the model's context.

Streams fall back to the next model only while nothing has been emitted;
after the first delta an error ends the stream with ``ModelError``.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import AsyncIterator, Awaitable, Callable, Iterator, Literal

import numpy as np
from datasette.utils import await_me_maybe

from .attempts import Attempt, CallPlan, describe
from .budget import Budget, estimate, estimate_embedding, text_tokens
from .calllog import redact, secret_values
from .config import Settings, plugin_settings
from .errors import CapabilityError, ConfigError, ModelError
from .limiter import limiter_for
from .models import ChatModel, EmbeddingModel, fit_to_context
from .types import ChatRequest, ChatResponse, StreamEnd, StreamEvent, TextDelta, Usage

__all__ = ["Gateway", "Budget", "estimate", "llm_gateway", "no_model_message"]

DEFAULT_EMBEDDING_MODEL = "bge-small-en-v1.5"  # see datasette_llm_core/embeddings
#: Seconds a stream may take to start when neither the model nor the settings say.
DEFAULT_FIRST_BYTE_TIMEOUT = 300.0

Sleep = Callable[[float], Awaitable[None]]


async def _collect(datasette, hook_name: str) -> list:
    from datasette.plugins import pm

    hook = getattr(pm.hook, hook_name)
    found = []
    for result in hook(datasette=datasette):
        result = await await_me_maybe(result)
        found.extend(result or [])
    return found


class Gateway:
    def __init__(
        self,
        datasette,
        settings: Settings,
        chat: list[ChatModel],
        embed: list[EmbeddingModel],
        *,
        sleep: Sleep | None = None,
    ):
        self.datasette = datasette
        self.settings = settings
        self._chat = {m.model_id: m for m in chat}
        self._embed = {m.model_id: m for m in embed}
        #: Awaitable used between retries; tests replace it to record delays.
        self.sleep: Sleep = sleep or asyncio.sleep
        self.secrets = secret_values(settings)

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

    def unavailable_reason(self, model) -> str | None:
        """Why ``model`` cannot be called right now (e.g. its API key is not set), else None.

        For model pickers: show the model greyed out with this text.
        """
        try:
            _ensure_ready(model)
        except ConfigError as e:
            return str(e)
        return None

    def new_budget(self) -> Budget:
        """A ``Budget`` with the configured per-run caps (``budgets:``)."""
        caps = self.settings.budgets
        return Budget(max_cost=caps.max_cost_per_run, max_tokens=caps.max_tokens_per_run)

    def redact(self, text: str | None) -> str | None:
        return redact(text, self.secrets)

    def fallback_models(self, purpose: str, primary: ChatModel, request: ChatRequest) -> list[ChatModel]:
        """The chain tried for ``purpose``: ``primary`` then capable, usable fallbacks."""
        chain = [primary]
        for model_id in self.settings.fallback_chain(purpose):
            if model_id == primary.model_id or any(m.model_id == model_id for m in chain):
                continue
            if model_id not in self._chat:
                known = ", ".join(sorted(self._chat))
                raise ConfigError(
                    f"The fallback chain for {purpose!r} names {model_id!r}, which is not a "
                    f"registered chat model (available: {known}). Fix plugins: "
                    "datasette-llm-newsroom: fallback, or set the API key that enables it."
                )
            model = self._chat[model_id]
            try:
                model.check(request)
                _ensure_ready(model)
            except (CapabilityError, ConfigError):
                continue  # cannot serve this request: not worth an attempt
            chain.append(model)
        return chain

    # --- policy ---------------------------------------------------------
    def _timeout(self, model, timeout: float | None) -> float:
        return timeout or getattr(model, "timeout", None) or self.settings.timeout

    def _first_byte_timeout(self, model, timeout: float | None, limit: float) -> float:
        """The wait for a stream's first event: the model's or the settings'
        ``first_byte_timeout``, else 300 s (never less than ``limit``). A timeout passed
        for this one call bounds it too."""
        if timeout:
            return limit
        configured = getattr(model, "first_byte_timeout", None) or self.settings.first_byte_timeout
        return configured or max(limit, DEFAULT_FIRST_BYTE_TIMEOUT)

    def _retry_delay(self, error: BaseException, attempt: int) -> float | None:
        """Seconds to wait before retrying, or None when not worth retrying."""
        retries = self.settings.retries
        if attempt >= retries.max_attempts:
            return None
        if isinstance(error, ModelError):
            if not error.retryable:
                return None
            if error.retry_after is not None:
                if error.retry_after > retries.max_backoff:
                    return None  # the provider asks for a longer wait: fall back instead
                return max(0.0, error.retry_after)
        elif not isinstance(error, (asyncio.TimeoutError, TimeoutError)):
            return None
        return min(retries.max_backoff, retries.backoff * (2 ** (attempt - 1)))

    def chosen_chat_model(self, purpose: str, model_id: str | None = None) -> ChatModel:
        """The model asked for, else the purpose's default; ConfigError with a
        message that says what to configure when there is none (or no such model)."""
        if not self.chat_models():
            raise ConfigError(no_model_message(purpose))
        model = self.get_chat_model(model_id) if model_id else self.default_chat_model(purpose)
        if model is None:
            raise ConfigError(no_model_message(purpose))
        return model

    def _resolve(self, purpose: str, model_id: str | None, request: ChatRequest) -> list[ChatModel]:
        model = self.chosen_chat_model(purpose, model_id)
        model.check(request)
        _ensure_ready(model)
        return self.fallback_models(purpose, model, request)

    def _final_error(self, purpose: str, failures: list[tuple[str, BaseException]]) -> ModelError:
        parts = []
        for model_id, error in failures:
            _, message = describe(error)
            parts.append(f"{model_id}: {message}")
        last = failures[-1][1]
        tried = "the model" if len(failures) == 1 else f"all {len(failures)} models"
        wait = getattr(last, "retry_after", None)
        later = f"Try again in {wait:.0f} seconds" if wait else "Try again later"
        message = self.redact(
            f"The {purpose} call failed after trying {tried}. "
            + " | ".join(parts)
            + f". {later}, or configure a fallback model under plugins: "
            "datasette-llm-newsroom: fallback."
        )
        status = getattr(last, "status", None)
        error_class = describe(last)[0]
        return ModelError(
            message,
            status=status,
            retryable=bool(getattr(last, "retryable", False)) or error_class == "timeout",
            retry_after=getattr(last, "retry_after", None),
            error_class=error_class,
            model_id=failures[-1][0],
        )

    # --- calls ----------------------------------------------------------
    def _chat_attempts(self, request: ChatRequest, purpose: str, prompt_version: str, actor, model_id,
                       ref, budget: Budget | None, timeout: float | None, streamed: bool) -> Iterator[Attempt]:
        chain = self._resolve(purpose, model_id, request)
        plan = CallPlan(self, chain, "chat", purpose, prompt_version, actor, ref, budget, timeout, streamed)
        return plan.attempts(partial(estimate, request), what=f"this {purpose} call")

    async def stream(
        self,
        request: ChatRequest,
        *,
        purpose: str,
        prompt_version: str,
        actor: dict | None = None,
        model_id: str | None = None,
        ref: str | None = None,
        budget: Budget | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Stream ``TextDelta`` events then one ``StreamEnd`` (with ``call_id``).

        Closing the stream early (``aclose()``) or cancelling the task reading
        it logs the attempt as ``cancelled`` with what was streamed so far.
        """
        attempts = self._chat_attempts(
            request, purpose, prompt_version, actor, model_id, ref, budget, timeout, streamed=True
        )
        for attempt in attempts:
            model, limit = attempt.model, attempt.limit
            first_limit = self._first_byte_timeout(model, timeout, limit)
            limiter = limiter_for(model)
            end: StreamEnd | None = None
            async with limiter.slot():  # waiting for a place is not timed
                async with attempt:
                    send = fit_to_context(request, model)
                    events = (
                        model.stream(send, timeout=max(first_limit, limit))
                        if model.supports_streaming
                        else _whole_as_stream(model, send, limit)
                    )
                    # The first event of a stream has its own wait (queue, prompt reading).
                    first_phase = model.supports_streaming and not timeout
                    wait = first_limit if first_phase else limit
                    try:
                        while True:
                            try:
                                async with asyncio.timeout(wait):
                                    event = await events.__anext__()
                            except StopAsyncIteration:
                                break
                            except (TimeoutError, ModelError) as e:
                                if first_phase and end is None and not attempt.emitted and _is_timeout(e):
                                    limiter.queued()
                                    raise _no_first_token(model, wait) from e
                                raise
                            wait, first_phase = limit, False
                            if isinstance(event, TextDelta):
                                if event.text:
                                    attempt.saw_text(event.text)
                                    yield event
                            elif isinstance(event, StreamEnd):
                                end = event
                    finally:
                        await events.aclose()
            if attempt.failed:
                continue
            limiter.succeeded()
            end = end or StreamEnd()
            usage = end.usage or Usage()
            estimated = not (usage.input_tokens or usage.output_tokens)
            if estimated:
                usage = attempt.streamed_usage()
            call_id = await attempt.succeed(usage, estimated=estimated, finish_reason=end.finish_reason)
            yield StreamEnd(
                usage=usage, finish_reason=end.finish_reason, call_id=call_id, model_id=model.model_id
            )
            return

    async def complete(
        self,
        request: ChatRequest,
        *,
        purpose: str,
        prompt_version: str,
        actor: dict | None = None,
        model_id: str | None = None,
        ref: str | None = None,
        budget: Budget | None = None,
        timeout: float | None = None,
    ) -> ChatResponse:
        """One whole answer (``call_id`` set), with retries and fallback."""
        attempts = self._chat_attempts(
            request, purpose, prompt_version, actor, model_id, ref, budget, timeout, streamed=False
        )
        for attempt in attempts:
            async with limiter_for(attempt.model).slot():
                async with attempt, asyncio.timeout(attempt.limit):
                    response = await attempt.model.complete(
                        fit_to_context(request, attempt.model), timeout=attempt.limit)
            if attempt.failed:
                continue
            usage = response.usage or Usage()
            estimated = not (usage.input_tokens or usage.output_tokens)
            if estimated:
                usage = Usage(attempt.in_tokens, text_tokens(response.text) if response.text else 0)
            call_id = await attempt.succeed(usage, estimated=estimated, finish_reason=response.finish_reason)
            return ChatResponse(
                text=response.text,
                usage=usage,
                model_id=attempt.model.model_id,
                finish_reason=response.finish_reason,
                call_id=call_id,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def embed(
        self,
        texts: list[str],
        *,
        kind: Literal["query", "document"],
        purpose: str = "embed",
        actor: dict | None = None,
        model_id: str | None = None,
        ref: str | None = None,
        budget: Budget | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` in batches (one log row per batch attempt).

        Embeddings never fall back to another model: vectors from two models
        do not mix in one index. Retries apply as for chat calls.
        """
        model = self.get_embedding_model(model_id)
        _ensure_ready(model)
        if not texts:
            return np.zeros((0, model.dimensions or 0), dtype=np.float32)
        plan = CallPlan(self, [model], "embed", purpose, None, actor, ref, budget, timeout)
        batch_size = max(1, getattr(model, "batch_size", 64) or 64)
        out: list[np.ndarray] = []
        for offset in range(0, len(texts), batch_size):
            batch = texts[offset : offset + batch_size]

            def guess(model, batch=batch):
                tokens, cost = estimate_embedding(batch, model)
                return tokens, 0, cost

            for attempt in plan.attempts(guess, what="this embedding batch", items=len(batch)):
                async with attempt, asyncio.timeout(attempt.limit):
                    with_usage = getattr(model, "embed_with_usage", None)
                    if with_usage is not None:
                        vectors, used = await with_usage(batch, kind=kind)
                    else:
                        vectors, used = await model.embed(batch, kind=kind), None
                if attempt.failed:
                    continue
                tokens = used if used is not None else attempt.in_tokens
                await attempt.succeed(Usage(tokens, 0), estimated=used is None)
                out.append(np.asarray(vectors, dtype=np.float32))
                break
        return np.concatenate(out, axis=0) if len(out) > 1 else out[0]


async def _whole_as_stream(model, request: ChatRequest, timeout: float) -> AsyncIterator[StreamEvent]:
    """A model that cannot stream, seen as a stream of one delta."""
    response = await model.complete(request, timeout=timeout)
    if response.text:
        yield TextDelta(response.text)
    yield StreamEnd(usage=response.usage, finish_reason=response.finish_reason)


def _is_timeout(error: BaseException) -> bool:
    return isinstance(error, TimeoutError) or getattr(error, "error_class", None) == "timeout"


def _no_first_token(model, seconds: float) -> ModelError:
    return ModelError(
        f"{model.model_id} did not start answering within {seconds:g} s: its server is probably "
        "busy with other requests (queued) or still reading a long prompt. Sending fewer at once "
        "and retrying; if it keeps happening set this model's concurrency to the server's "
        "slots, or raise first_byte_timeout.",
        retryable=True,
        error_class="first_byte_timeout",
        model_id=model.model_id,
    )


def _ensure_ready(model) -> None:
    """Raise ``ConfigError`` (e.g. missing API key) before any request is made."""
    check = getattr(model, "ensure_ready", None)
    if check is not None:
        check()


_PURPOSE_LABELS = {"extract": "extraction", "answer": "answering questions"}


def no_model_message(purpose: str) -> str:
    label = _PURPOSE_LABELS.get(purpose, repr(purpose))
    return (
        f"No chat model is configured for {label}. Restart Datasette with OPENAI_API_KEY "
        "or ANTHROPIC_API_KEY set, or with DATASETTE_LLM_BASE_URL (and DATASETTE_LLM_MODEL) "
        "pointing at a local OpenAI-compatible server such as Ollama or llama.cpp "
        "(http://127.0.0.1:11434/v1); or add a model under plugins: "
        "datasette-llm-newsroom: models."
    )


async def llm_gateway(datasette, *, sleep: Sleep | None = None) -> Gateway:
    settings = plugin_settings(datasette)
    chat = await _collect(datasette, "register_llm_models")
    embed = await _collect(datasette, "register_embedding_models")
    return Gateway(datasette, settings, chat, embed, sleep=sleep)
