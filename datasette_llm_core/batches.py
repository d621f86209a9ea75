"""Provider batch APIs: OpenAI Batch API and Anthropic Message Batches.

Half the price of ordinary calls, results within 24 hours. Through the
official SDKs, built from the same configuration as the suite's models
(``provider_config`` is one entry of ``plugins: datasette-llm-newsroom:
models:`` as a dict: ``provider``, ``model``, ``api_key`` / ``api_key_env``,
``base_url``, ``timeout``...; a key held in datasette-secrets is passed as
the resolved ``api_key`` string). Nothing here needs Datasette::

    handle = await submit_batch(config, "gpt-4.1-mini", requests)   # store it (JSON)
    status = await poll_batch(config, handle)        # later, in any process
    if status["state"] != "in_progress":
        async for result in fetch_batch_results(config, handle):
            ...                                      # one BatchResult per custom_id

- A batch over the vendor's limits (OpenAI 50,000 requests or 200 MB per
  file, Anthropic 100,000 requests or 256 MB) is split into several vendor
  batches; the handle lists them as ``parts`` and every function treats them
  as one. If one part cannot be submitted, the parts already created are
  cancelled and the error raised: nothing is left running unseen.
- 429, 5xx and dropped connections are retried with backoff (honouring
  Retry-After). An OpenAI batch whose create call failed ambiguously (5xx,
  timeout) is looked up by the submission token in its metadata before a
  second one is created, so a retry never runs the rows twice.
- ``fetch_batch_results`` yields exactly one ``BatchResult`` per submitted
  ``custom_id``: answers, per-request errors, expired and cancelled requests,
  and requests the vendor returned nothing for (``error_class`` ``missing``).
  Answers to a schema are checked to be JSON objects (prose, cut off and
  refusals are errors quoting what the model said).
- With ``datasette=`` given, each result is logged in ``llm_calls`` (kind
  ``chat``, ``call_group`` ``batch:<vendor batch id>``, cost at the batch
  price).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

from .batchformat import (
    BATCH_DISCOUNT,
    LIMITS,
    BatchRequest,
    BatchResult,
    anthropic_item,
    batch_cost,
    check_requests,
    missing,
    openai_line,
    parse_anthropic_result,
    parse_openai_line,
    split,
)
from .config import ModelConfig
from .errors import ConfigError, ModelError
from .types import ChatRequest, Message

__all__ = [
    "BATCH_DISCOUNT",
    "BatchRequest",
    "BatchResult",
    "batch_cost",
    "cancel_batch",
    "fetch_batch_results",
    "poll_batch",
    "submit_batch",
    "supports_batch",
]

BATCH_PROVIDERS = ("openai", "anthropic")
#: Attempts per API call for retryable failures, and the first backoff (seconds, doubling).
RETRIES = 5
BACKOFF = 1.0
MAX_BACKOFF = 60.0
#: Seconds per HTTP call unless the model config sets ``timeout`` (uploads can be large).
DEFAULT_TIMEOUT = 600.0
SUBMISSION_KEY = "datasette_llm_submission"

Sleep = Callable[[float], Awaitable[Any]]

# OpenAI batch status -> our state
_OPENAI_STATE = {
    "validating": "in_progress", "in_progress": "in_progress", "finalizing": "in_progress",
    "cancelling": "in_progress", "completed": "ended", "failed": "failed", "expired": "expired",
    "cancelled": "cancelled",
}
#: When parts end differently, the batch's state is the worst of them.
_SEVERITY = ["ended", "cancelled", "expired", "failed"]


def supports_batch(provider_config: dict) -> bool:
    """Whether this model's provider has a batch API the suite can use (OpenAI, Anthropic)."""
    return isinstance(provider_config, dict) and provider_config.get("provider") in BATCH_PROVIDERS


# ------------------------------------------------------------------ clients
def _config(provider_config: dict, model: str | None = None) -> ModelConfig:
    if not supports_batch(provider_config):
        raise ConfigError(
            f"Model provider {provider_config.get('provider') if isinstance(provider_config, dict) else None!r} "
            "has no batch API: batches work with provider openai or anthropic. Run the job "
            "without --batch to call the model row by row."
        )
    known = {k: v for k, v in provider_config.items() if k in ModelConfig.model_fields}
    known.setdefault("id", model or provider_config.get("model") or "batch")
    try:
        return ModelConfig.model_validate(known)
    except ValueError as e:
        raise ConfigError(f"Batch model configuration is not valid: {e}") from None


def _model_name(config: ModelConfig, model: str | None) -> str:
    """The vendor's model name: ``model`` as given, or the config's when ``model`` is its id."""
    if model and not (model == config.id and config.model):
        return model
    return config.model or config.id


@asynccontextmanager
async def _client(config: ModelConfig):
    from .providers.builtin import _connection

    provider = _connection(config, os.environ, config.timeout or DEFAULT_TIMEOUT)
    client = provider.client(config.id)
    try:
        yield provider, client
    finally:
        if provider.http_client is None:  # the SDK's own connection pool
            await client.close()


def _vendor_errors(provider_name: str) -> tuple[type[BaseException], ...]:
    if provider_name == "anthropic":
        import anthropic

        return (anthropic.APIError,)
    import openai

    return (openai.APIError,)


async def _call(provider, config: ModelConfig, what: str, fn: Callable[[], Awaitable[Any]], *,
                retries: int = RETRIES, backoff: float = BACKOFF, sleep: Sleep | None = None,
                on_retry: Callable[[ModelError], None] | None = None) -> Any:
    """``await fn()``, retried on 429/5xx/timeouts; other failures as ``ModelError``."""
    sleep = sleep or asyncio.sleep
    errors = _vendor_errors(config.provider)
    for attempt in range(1, retries + 1):
        try:
            return await fn()
        except errors as e:
            error = provider.model_error(e, config.id)
            if not error.retryable or attempt == retries:
                tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                raise ModelError(f"{what}{tries}: {error}", status=error.status, retryable=error.retryable,
                                 retry_after=error.retry_after, error_class=error.error_class,
                                 model_id=config.id) from e
            if on_retry is not None:
                on_retry(error)
            delay = error.retry_after if error.retry_after is not None else backoff * 2 ** (attempt - 1)
            await sleep(min(MAX_BACKOFF, delay))
    raise AssertionError("unreachable")  # pragma: no cover


def _params(config: ModelConfig, model_name: str, provider, request: BatchRequest) -> dict:
    """The request body, built by the suite's own model classes (same JSON approach as live calls)."""
    chat = ChatRequest(messages=[Message.user(request.user)], system=request.system or None,
                       json_schema=request.json_schema, schema_name=request.schema_name,
                       max_tokens=request.max_tokens)
    if config.provider == "anthropic":
        from .providers.anthropic_models import AnthropicChatModel

        model = AnthropicChatModel(config.id, connection=provider, model_name=model_name,
                                   structured_output=config.structured_output)
    else:
        from .providers.openai_models import OpenAIChatModel

        model = OpenAIChatModel(config.id, connection=provider, model_name=model_name,
                                max_tokens_param=config.max_tokens_param)
    return model.params(chat)


def _structured(config: ModelConfig) -> str:
    return (config.structured_output or "tool") if config.provider == "anthropic" else "json"


# ------------------------------------------------------------------ submit
async def submit_batch(provider_config: dict, model: str, requests: list[BatchRequest], *,
                       max_requests: int | None = None, max_bytes: int | None = None,
                       retries: int = RETRIES, backoff: float = BACKOFF,
                       sleep: Sleep | None = None) -> dict:
    """Send ``requests`` as one batch (split across the vendor's limits); returns the handle.

    The handle is JSON-serialisable and is all that ``poll_batch``,
    ``fetch_batch_results`` and ``cancel_batch`` need, in this process or
    another: ``{"provider", "batch_id", "input_file_id", "model", "total",
    "parts": [{"batch_id", "input_file_id", "custom_ids", "plain_ids"}]}``
    (``plain_ids``: requests sent without a schema).
    """
    config = _config(provider_config, model)
    check_requests(requests)
    model_name = _model_name(config, model)
    limit_requests, limit_bytes = LIMITS[config.provider]
    limit_requests = min(limit_requests, max_requests or limit_requests)
    limit_bytes = min(limit_bytes, max_bytes or limit_bytes)
    kw = dict(retries=retries, backoff=backoff, sleep=sleep)
    token = uuid.uuid4().hex
    parts: list[dict] = []
    async with _client(config) as (provider, client):
        bodies = [_params(config, model_name, provider, r) for r in requests]
        if config.provider == "openai":
            lines = [openai_line(r.custom_id, b) for r, b in zip(requests, bodies)]
            sizes = [len(line) for line in lines]
        else:
            items = [anthropic_item(r.custom_id, b) for r, b in zip(requests, bodies)]
            sizes = [size for _, size in items]
        ranges = split(sizes, limit_requests, limit_bytes)
        try:
            for n, indexes in enumerate(ranges, 1):
                label = f"{n}/{len(ranges)}"
                if config.provider == "openai":
                    data = b"".join(lines[i] for i in indexes)
                    part = await _submit_openai(provider, client, config, data, token, label, **kw)
                else:
                    part = await _submit_anthropic(provider, client, config,
                                                   [items[i][0] for i in indexes], **kw)
                part["custom_ids"] = [requests[i].custom_id for i in indexes]
                part["plain_ids"] = [requests[i].custom_id for i in indexes
                                     if requests[i].json_schema is None]
                parts.append(part)
        except BaseException as e:
            if parts:
                await _cancel_parts(provider, client, config, parts, quiet=True)
                if isinstance(e, ModelError):
                    raise ModelError(
                        f"{e} Batch part {len(parts) + 1} of {len(ranges)} could not be submitted, so "
                        f"the {len(parts)} part(s) already submitted were cancelled: nothing of this "
                        "batch is running. Try again later.",
                        status=e.status, retryable=e.retryable, retry_after=e.retry_after,
                        error_class=e.error_class, model_id=e.model_id,
                    ) from e
            raise
    return {
        "provider": config.provider,
        "batch_id": parts[0]["batch_id"],
        "input_file_id": parts[0]["input_file_id"],
        "model": model_name,
        "model_id": config.id,
        "structured": _structured(config),
        "total": len(requests),
        "submitted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "parts": parts,
    }


async def _submit_openai(provider, client, config, data: bytes, token: str, label: str, **kw) -> dict:
    upload = await _call(
        provider, config, f"Uploading the batch input file ({len(data):,} bytes) to OpenAI",
        lambda: client.files.create(file=(f"batch-{token[:8]}-{label.replace('/', 'of')}.jsonl", data,
                                          "application/jsonl"), purpose="batch"),
        **kw,
    )
    ambiguous = False

    def note(error: ModelError) -> None:
        nonlocal ambiguous
        # A 5xx or a timeout may come after the batch was created.
        ambiguous = ambiguous or error.error_class not in ("rate_limit", "overloaded")

    async def create():
        if ambiguous:
            page = await client.batches.list(limit=100)
            for batch in page.data:
                if (batch.metadata or {}).get(SUBMISSION_KEY) == f"{token}:{label}":
                    return batch
        return await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
            metadata={SUBMISSION_KEY: f"{token}:{label}"},
        )

    batch = await _call(provider, config, "Creating the OpenAI batch", create, on_retry=note, **kw)
    return {"batch_id": batch.id, "input_file_id": upload.id}


async def _submit_anthropic(provider, client, config, items: list[dict], **kw) -> dict:
    batch = await _call(provider, config, "Creating the Anthropic message batch",
                        lambda: client.messages.batches.create(requests=items), **kw)
    return {"batch_id": batch.id, "input_file_id": None}


# ------------------------------------------------------------------ poll
def _parts(handle: dict) -> list[dict]:
    if not isinstance(handle, dict) or handle.get("provider") not in BATCH_PROVIDERS:
        raise ValueError("Not a batch handle: pass the dict submit_batch returned.")
    parts = handle.get("parts")
    if parts:
        return parts
    return [{"batch_id": handle["batch_id"], "input_file_id": handle.get("input_file_id")}]


def _check_handle(provider_config: dict, handle: dict) -> ModelConfig:
    config = _config(provider_config, handle.get("model_id") or handle.get("model"))
    if config.provider != handle.get("provider"):
        raise ConfigError(
            f"This batch was submitted to {handle.get('provider')}, but the model configuration "
            f"given is provider {config.provider}: pass the configuration of the model that "
            "submitted it."
        )
    return config


async def _retrieve(provider, client, config, batch_id: str, **kw):
    if config.provider == "openai":
        return await _call(provider, config, f"Reading OpenAI batch {batch_id}",
                           lambda: client.batches.retrieve(batch_id), **kw)
    return await _call(provider, config, f"Reading Anthropic message batch {batch_id}",
                       lambda: client.messages.batches.retrieve(batch_id), **kw)


def _part_status(config: ModelConfig, batch, expected: int) -> dict:
    if config.provider == "openai":
        counts = batch.request_counts
        state = _OPENAI_STATE.get(batch.status, "in_progress")
        errors = [f"{e.message or e.code}" + (f" (line {e.line})" if e.line else "")
                  for e in ((batch.errors.data or []) if batch.errors else [])]
        return {
            "batch_id": batch.id, "state": state, "vendor_status": batch.status,
            "done": counts.completed if counts else 0, "failed": counts.failed if counts else 0,
            "total": max(counts.total if counts else 0, expected), "errors": errors,
        }
    counts = batch.request_counts
    total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
    state = "in_progress"
    if batch.processing_status == "ended":
        state = "ended"
        if total and counts.expired == total:
            state = "expired"
        elif batch.cancel_initiated_at is not None:
            state = "cancelled"
    return {
        "batch_id": batch.id, "state": state, "vendor_status": batch.processing_status,
        "done": counts.succeeded, "failed": counts.errored + counts.canceled + counts.expired,
        "total": max(total, expected), "errors": [],
    }


def _combine(statuses: list[dict]) -> dict:
    states = [s["state"] for s in statuses]
    if "in_progress" in states:
        state = "in_progress"
    else:
        state = max(states, key=_SEVERITY.index)
    return {
        "state": state,
        "done": sum(s["done"] for s in statuses),
        "failed": sum(s["failed"] for s in statuses),
        "total": sum(s["total"] for s in statuses),
        "errors": [e for s in statuses for e in s["errors"]],
        "parts": statuses,
    }


async def poll_batch(provider_config: dict, handle: dict, *, retries: int = RETRIES,
                     backoff: float = BACKOFF, sleep: Sleep | None = None) -> dict:
    """Where the batch stands: ``{"state", "done", "failed", "total", "errors", "parts"}``.

    ``state`` is ``in_progress`` until every part has finished, then
    ``ended``, or ``failed`` (refused by validation: ``errors`` says why),
    ``expired`` or ``cancelled`` when a part ended that way; results can be
    fetched in every state but ``in_progress``.
    """
    config = _check_handle(provider_config, handle)
    kw = dict(retries=retries, backoff=backoff, sleep=sleep)
    async with _client(config) as (provider, client):
        statuses = []
        for part in _parts(handle):
            batch = await _retrieve(provider, client, config, part["batch_id"], **kw)
            statuses.append(_part_status(config, batch, len(part.get("custom_ids") or [])))
    return _combine(statuses)


# ------------------------------------------------------------------ fetch
async def fetch_batch_results(provider_config: dict, handle: dict, *, datasette=None,
                              ref: str | None = None, purpose: str = "extract",
                              actor: dict | None = None, retries: int = RETRIES,
                              backoff: float = BACKOFF,
                              sleep: Sleep | None = None) -> AsyncIterator[BatchResult]:
    """Every request's ``BatchResult``, once each, in the order the vendor returns them
    (requests with no result last). Raises ``ModelError`` while a part is still running."""
    config = _check_handle(provider_config, handle)
    kw = dict(retries=retries, backoff=backoff, sleep=sleep)
    log = _Logger(datasette, config, handle, ref=ref, purpose=purpose, actor=actor)
    async with _client(config) as (provider, client):
        for part in _parts(handle):
            batch = await _retrieve(provider, client, config, part["batch_id"], **kw)
            status = _part_status(config, batch, 0)
            if status["state"] == "in_progress":
                raise ModelError(
                    f"Batch {part['batch_id']} is still running ({status['vendor_status']}, "
                    f"{status['done']:,} of {status['total']:,} done): poll until it has ended, then "
                    "fetch its results.",
                    retryable=True, error_class="batch_in_progress", model_id=config.id,
                )
            expected = part.get("custom_ids")
            if expected is None:
                expected = await _input_ids(provider, client, config, part, batch, **kw)
            plain = set(part.get("plain_ids") or [])
            pending = dict.fromkeys(expected)
            secrets = provider.secrets()
            if config.provider == "openai":
                lines = _openai_lines(provider, client, config, batch, **kw)
                async for line in lines:
                    custom_id = line.get("custom_id")
                    if custom_id in pending:
                        del pending[custom_id]
                        result = parse_openai_line(line, structured=custom_id not in plain, secrets=secrets)
                        yield log.add(result, batch.id)
            elif status["state"] != "failed":
                mode = handle.get("structured") or _structured(config)
                stream = await _call(provider, config, f"Reading the results of batch {batch.id}",
                                     lambda bid=batch.id: client.messages.batches.results(bid), **kw)
                async for item in stream:
                    if item.custom_id in pending:
                        del pending[item.custom_id]
                        result = parse_anthropic_result(
                            item.custom_id, item.result.to_dict(),
                            structured=None if item.custom_id in plain else mode, secrets=secrets)
                        yield log.add(result, batch.id)
            why, error_class = _missing_reason(status)
            for result in missing(list(pending), why, error_class):
                yield log.add(result, batch.id)
    await log.flush()


def _missing_reason(status: dict) -> tuple[str, str]:
    if status["state"] == "failed":
        detail = "; ".join(status["errors"][:3]) or "no reason given"
        return (f"the vendor refused the whole batch {status['batch_id']} when validating it "
                f"({detail}): nothing in it ran"), "batch_failed"
    if status["state"] == "expired":
        return "the batch's 24 h window ended before this request ran", "expired"
    if status["state"] == "cancelled":
        return "the batch was cancelled before this request ran", "cancelled"
    return (f"batch {status['batch_id']} ended without a result for this request (the vendor "
            "returned none): run it again"), "missing"


async def _openai_lines(provider, client, config, batch, **kw) -> AsyncIterator[dict]:
    """The lines of the output file, then the error file (streamed, never held whole)."""
    import json

    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        # Entering the SDK's streamed response sends the request (and raises on an error status).
        opened = await _call(provider, config, f"Downloading batch file {file_id}",
                             lambda fid=file_id: client.files.with_streaming_response.content(fid).__aenter__(),
                             **kw)
        try:
            async for raw in opened.iter_lines():
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue  # a broken line: its custom_id is reported missing
                if isinstance(line, dict):
                    yield line
        finally:
            await opened.close()


async def _input_ids(provider, client, config, part, batch, **kw) -> list[str]:
    """The custom_ids of a part from its input file (a handle without them)."""
    import json

    if config.provider != "openai":
        return []
    file_id = part.get("input_file_id") or batch.input_file_id
    content = await _call(provider, config, f"Downloading batch input file {file_id}",
                          lambda: client.files.content(file_id), **kw)
    ids = []
    for raw in content.text.splitlines():
        if raw.strip():
            ids.append(json.loads(raw)["custom_id"])
    return ids


# ------------------------------------------------------------------ cancel
async def cancel_batch(provider_config: dict, handle: dict, *, retries: int = RETRIES,
                       backoff: float = BACKOFF, sleep: Sleep | None = None) -> dict:
    """Ask the vendor to stop every unfinished part; returns ``poll_batch``'s status after.
    Requests already answered keep their results (fetch them once the batch has ended)."""
    config = _check_handle(provider_config, handle)
    kw = dict(retries=retries, backoff=backoff, sleep=sleep)
    async with _client(config) as (provider, client):
        await _cancel_parts(provider, client, config, _parts(handle), **kw)
        statuses = []
        for part in _parts(handle):
            batch = await _retrieve(provider, client, config, part["batch_id"], **kw)
            statuses.append(_part_status(config, batch, len(part.get("custom_ids") or [])))
    return _combine(statuses)


async def _cancel_parts(provider, client, config, parts: list[dict], *, quiet: bool = False, **kw) -> None:
    for part in parts:
        batch_id = part["batch_id"]
        try:
            batch = await _retrieve(provider, client, config, batch_id, **kw)
            if _part_status(config, batch, 0)["state"] != "in_progress":
                continue
            if config.provider == "openai":
                await _call(provider, config, f"Cancelling OpenAI batch {batch_id}",
                            lambda bid=batch_id: client.batches.cancel(bid), **kw)
            else:
                await _call(provider, config, f"Cancelling Anthropic message batch {batch_id}",
                            lambda bid=batch_id: client.messages.batches.cancel(bid), **kw)
        except ModelError:
            if not quiet:
                raise


# ------------------------------------------------------------------ call log
class _Logger:
    """One ``llm_calls`` row per result when a Datasette is given (written in groups)."""

    def __init__(self, datasette, config: ModelConfig, handle: dict, *, ref, purpose, actor) -> None:
        self.datasette = datasette
        self.config = config
        self.model = handle.get("model") or config.model or config.id
        self.ref, self.purpose = ref, purpose
        self.actor_id = str(actor["id"]) if actor and actor.get("id") is not None else None
        self.submitted_at = handle.get("submitted_at")
        self.price_config = config.model_dump()

    def add(self, result: BatchResult, batch_id: str) -> BatchResult:
        from dataclasses import replace

        cost = batch_cost(self.price_config, self.model, result.input_tokens, result.output_tokens)
        result = replace(result, cost_usd=cost)
        if self.datasette is not None:
            from .calllog import CallRecord, write_call_soon

            write_call_soon(self.datasette, CallRecord(
                kind="chat", outcome="ok" if result.error is None else "error",
                call_group=f"batch:{batch_id}", ref=self.ref, purpose=self.purpose,
                provider=self.config.provider, model_id=self.config.id, actor_id=self.actor_id,
                input_tokens=result.input_tokens, output_tokens=result.output_tokens,
                cost_usd=cost, finish_reason=result.finish_reason, error_class=result.error_class,
                error_message=result.error, started_at=self.submitted_at or _now(),
            ))
        return result

    async def flush(self) -> None:
        if self.datasette is not None:
            from .calllog import flush_pending

            await flush_pending()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
