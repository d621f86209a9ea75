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
- ``find_batch`` rebuilds a lost handle: OpenAI from the ``submission_id``
  written into its batches' metadata; Anthropic (no metadata) from the
  results of the batches created since the submission began, once ended.
- With ``datasette=`` given, each result is logged in ``llm_calls`` (kind
  ``chat``, ``call_group`` ``batch:<vendor batch id>``, cost at the batch
  price).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

from pydantic import ValidationError

from .batchformat import (
    BATCH_DISCOUNT,
    LIMITS,
    BatchRequest,
    BatchResult,
    anthropic_item,
    batch_cost,
    check_requests,
    estimate_batch,
    missing,
    openai_line,
    parse_anthropic_result,
    parse_openai_line,
    prices,
    split,
)
from .calllog import redact
from .config import ModelConfig
from .errors import ConfigError, ModelError
from .testpoints import reached
from .types import ChatRequest, Message

__all__ = [
    "BATCH_DISCOUNT",
    "BatchRequest",
    "BatchResult",
    "batch_cost",
    "cancel_batch",
    "estimate_batch",
    "fetch_batch_results",
    "find_batch",
    "poll_batch",
    "submit_batch",
    "supports_batch",
]

BATCH_PROVIDERS = ("openai", "anthropic")
#: Attempts per API call for retryable failures, and the first backoff (seconds, doubling).
RETRIES = 5
BACKOFF = 1.0
MAX_BACKOFF = 60.0
#: Seconds per HTTP call, or the model's ``timeout`` when longer (uploads can be large).
DEFAULT_TIMEOUT = 600.0
SUBMISSION_KEY = "datasette_llm_submission"
_FILE_NAME = re.compile(r"[^A-Za-z0-9_-]")

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
    except ValidationError as e:  # field and problem only: never the values (a key could be one)
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"Batch model configuration is not valid: {problems}.") from None


def _model_name(config: ModelConfig, model: str | None) -> str:
    """The vendor's model name: ``model`` as given, or the config's when ``model`` is its id."""
    if model and not (model == config.id and config.model):
        return model
    return config.model or config.id


@asynccontextmanager
async def _client(config: ModelConfig):
    from .providers.builtin import _connection

    # Uploads and downloads can be hundreds of MB: never the short timeout of a live call.
    config = config.model_copy(update={"timeout": max(config.timeout or 0, DEFAULT_TIMEOUT)})
    provider = _connection(config, os.environ, DEFAULT_TIMEOUT)
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
                on_retry: Callable[[ModelError], None] | None = None,
                retry_if: Callable[[ModelError], bool] | None = None, advice: str = "") -> Any:
    """``await fn()``, retried on 429/5xx/timeouts (those ``retry_if`` allows); other
    failures as ``ModelError`` saying what was being done (and ``advice``)."""
    sleep = asyncio.sleep if sleep is None else sleep
    errors = _vendor_errors(config.provider)
    for attempt in range(1, retries + 1):
        try:
            return await fn()
        except errors as e:
            error = provider.model_error(e, config.id)
            again = error.retryable and (retry_if is None or retry_if(error))
            if not again or attempt == retries:
                tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                if error.error_class == "not_found" and config.base_url:
                    advice = (". A server at base_url that has no batch API answers so too: run "
                              "without batches for this model")
                elif not error.retryable:
                    advice = ""
                raise ModelError(f"{what}{tries}: {error}{advice}",
                                 status=error.status, retryable=error.retryable,
                                 retry_after=error.retry_after, error_class=error.error_class,
                                 model_id=config.id) from e
            if on_retry is not None:
                on_retry(error)
            delay = error.retry_after if error.retry_after is not None else backoff * 2 ** (attempt - 1)
            await sleep(min(MAX_BACKOFF, delay))
    raise AssertionError("unreachable")  # pragma: no cover


def _body_builder(config: ModelConfig, model_name: str, provider) -> Callable[[BatchRequest], dict]:
    """Request bodies built by the suite's own model classes (the same JSON approach as live calls)."""
    if config.provider == "anthropic":
        from .providers.anthropic_models import AnthropicChatModel

        model = AnthropicChatModel(config.id, connection=provider, model_name=model_name,
                                   structured_output=config.structured_output)
    else:
        from .providers.openai_models import OpenAIChatModel

        model = OpenAIChatModel(config.id, connection=provider, model_name=model_name,
                                max_tokens_param=config.max_tokens_param)

    def body(request: BatchRequest) -> dict:
        return model.params(ChatRequest(
            messages=[Message.user(request.user)], system=request.system or None,
            json_schema=request.json_schema, schema_name=request.schema_name,
            max_tokens=request.max_tokens))

    return body


def _structured(config: ModelConfig) -> str:
    return (config.structured_output or "tool") if config.provider == "anthropic" else "json"


# ------------------------------------------------------------------ submit
async def submit_batch(provider_config: dict, model: str, requests: list[BatchRequest], *,
                       submission_id: str | None = None,
                       max_requests: int | None = None, max_bytes: int | None = None,
                       retries: int = RETRIES, backoff: float = BACKOFF,
                       sleep: Sleep | None = None) -> dict:
    """Send ``requests`` as one batch (split across the vendor's limits); returns the handle.

    The handle is JSON-serialisable and is all that ``poll_batch``,
    ``fetch_batch_results`` and ``cancel_batch`` need, in this process or
    another: ``{"provider", "batch_id", "input_file_id", "model", "total",
    "parts": [{"batch_id", "input_file_id", "custom_ids", "plain_ids"}]}``
    (``plain_ids``: requests sent without a schema).

    ``submission_id`` (default: a new random one) is written into each OpenAI
    batch's metadata: store it before submitting, and if the process dies
    before the handle is stored, ``find_batch`` finds the batch again.
    """
    config = _config(provider_config, model)
    check_requests(requests)
    model_name = _model_name(config, model)
    limit_requests, limit_bytes = LIMITS[config.provider]
    limit_requests = min(limit_requests, max_requests or limit_requests)
    limit_bytes = min(limit_bytes, max_bytes or limit_bytes)
    kw = dict(retries=retries, backoff=backoff, sleep=sleep)
    token = submission_id or uuid.uuid4().hex
    if not isinstance(token, str) or len(token) > 400:
        raise ValueError("submission_id must be a string of at most 400 characters.")
    parts: list[dict] = []
    async with _client(config) as (provider, client):
        body = _body_builder(config, model_name, provider)
        if config.provider == "openai":
            lines = [openai_line(r.custom_id, body(r)) for r in requests]
            sizes = [len(line) for line in lines]
        else:
            items = [anthropic_item(r.custom_id, body(r)) for r in requests]
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
                cancelled = [p["batch_id"] for p in parts]
                if isinstance(e, ModelError):
                    error = ModelError(
                        f"{e} Batch part {len(parts) + 1} of {len(ranges)} could not be submitted, so "
                        f"the {len(parts)} part(s) already submitted were cancelled: nothing of this "
                        "batch is running. Try again later.",
                        status=e.status, retryable=e.retryable, retry_after=e.retry_after,
                        error_class=e.error_class, model_id=e.model_id,
                    )
                    error.cancelled_batch_ids = cancelled
                    raise error from e
                e.cancelled_batch_ids = cancelled  # for a caller that looks the submission up later
            raise
        # crash tests: the vendor has the batch, the caller has not stored its handle yet
        await reached("batch-created")
    return {
        "provider": config.provider,
        "batch_id": parts[0]["batch_id"],
        "input_file_id": parts[0]["input_file_id"],
        "model": model_name,
        "model_id": config.id,
        "submission_id": token,
        "structured": _structured(config),
        "total": len(requests),
        "submitted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "parts": parts,
    }


async def _submit_openai(provider, client, config, data: bytes, token: str, label: str, **kw) -> dict:
    upload = await _call(
        provider, config, f"Uploading the batch input file ({len(data):,} bytes) to OpenAI",
        lambda: client.files.create(file=(f"batch-{_FILE_NAME.sub('_', token)[:40]}-{label.replace('/', 'of')}.jsonl", data,
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
            for batch in await _listed(client, token):
                if batch.metadata[SUBMISSION_KEY] == f"{token}:{label}":
                    return batch
        return await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
            metadata={SUBMISSION_KEY: f"{token}:{label}"},
        )

    batch = await _call(provider, config, "Creating the OpenAI batch", create, on_retry=note, **kw)
    return {"batch_id": batch.id, "input_file_id": upload.id}


#: Failures that say the request was not taken (safe to send again).
_NOT_TAKEN = ("rate_limit", "overloaded")


async def _submit_anthropic(provider, client, config, items: list[dict], **kw) -> dict:
    # Message batches carry no metadata to find one by, so a create call that may
    # have worked (5xx, timeout, dropped connection) is not sent again.
    batch = await _call(
        provider, config, "Creating the Anthropic message batch",
        lambda: client.messages.batches.create(requests=items),
        retry_if=lambda error: error.error_class in _NOT_TAKEN,
        advice=(". The batch may have been created all the same: check the Message Batches page "
                "of the Anthropic console and cancel it there before submitting again, or it "
                "runs (and is billed) twice"),
        **kw,
    )
    return {"batch_id": batch.id, "input_file_id": None}


#: How many of the account's most recent OpenAI batches ``find_batch`` looks through.
FIND_LIMIT = 1_000


async def _listed(client, token: str) -> list:
    """The account's recent OpenAI batches whose metadata carries submission ``token``."""
    found = []
    seen = 0
    async for batch in client.batches.list(limit=100):
        seen += 1
        if str((batch.metadata or {}).get(SUBMISSION_KEY, "")).rpartition(":")[0] == token:
            found.append(batch)
        if seen >= FIND_LIMIT:
            break
    return found


#: Seconds a vendor's clock may be behind ours when ``find_batch`` compares creation times.
CLOCK_SKEW = 300.0


async def find_batch(provider_config: dict, model: str, submission_id: str, *,
                     custom_ids: list[str] | None = None, created_after: float | None = None,
                     retries: int = RETRIES, backoff: float = BACKOFF,
                     sleep: Sleep | None = None) -> dict | None:
    """The handle of the batch submitted with ``submission_id``, None if there is none
    (for a process that died between submitting and storing the handle).

    OpenAI: found by the submission token in its batches' metadata. Its
    ``parts`` are those found; ``parts_expected`` says how many were meant
    (fewer were found when the process died between two parts).

    Anthropic message batches carry no metadata, so they are found by their
    results: give ``custom_ids`` (the submitted ids, which must carry
    something unique to this submission, e.g. ``submission_id`` itself) and
    ``created_after`` (epoch seconds, taken before submitting). The batches
    created since then with no more requests than that are candidates; one
    whose results name our ids is ours. Results can be read only once a batch
    has ended, so while a candidate is still running this raises ``ModelError``
    (``error_class`` ``batch_unconfirmed``, retryable): ask again later, and do
    not submit meanwhile. The handle's ``parts`` hold the ids their results
    named; ``missing_ids`` the submitted ids no batch found holds. Results
    are read as answers to a schema (``plain_ids`` cannot be recovered).
    """
    config = _config(provider_config, model)
    kw = dict(retries=retries, backoff=backoff, sleep=sleep)
    if config.provider != "openai":
        if not custom_ids or created_after is None:
            raise ConfigError(
                "Anthropic message batches carry no metadata: find_batch needs the submitted "
                "custom_ids (unique to this submission) and created_after to find one by its results."
            )
        async with _client(config) as (provider, client):
            return await _find_anthropic(provider, client, config, model, submission_id, custom_ids,
                                         created_after, **kw)
    async with _client(config) as (provider, client):
        batches = await _call(provider, config, "Listing OpenAI batches",
                              lambda: _listed(client, submission_id), **kw)
        if not batches:
            return None
        by_part: dict[int, object] = {}
        expected = 1
        for batch in batches:
            label = batch.metadata[SUBMISSION_KEY].rpartition(":")[2]
            number, _, total = label.partition("/")
            by_part.setdefault(int(number), batch)
            expected = int(total)
        parts = []
        for number in sorted(by_part):
            batch = by_part[number]
            part = {"batch_id": batch.id, "input_file_id": batch.input_file_id}
            ids, plain = await _input_ids(provider, client, config, part, batch, **kw)
            parts.append({**part, "custom_ids": ids, "plain_ids": sorted(plain)})
        first = by_part[min(by_part)]
    return {
        "provider": "openai", "batch_id": parts[0]["batch_id"], "input_file_id": parts[0]["input_file_id"],
        "model": _model_name(config, model), "model_id": config.id, "submission_id": submission_id,
        "structured": _structured(config), "total": sum(len(p["custom_ids"]) for p in parts),
        "submitted_at": dt.datetime.fromtimestamp(first.created_at, dt.timezone.utc).isoformat(),
        "parts": parts, "parts_expected": expected,
    }


async def _find_anthropic(provider, client, config, model, submission_id, custom_ids, created_after,
                          **kw) -> dict | None:
    ours = set(custom_ids)
    since = created_after - CLOCK_SKEW

    async def candidates() -> list:
        found = []
        async for batch in client.messages.batches.list(limit=100):  # most recent first
            if batch.created_at.timestamp() < since:
                break
            counts = batch.request_counts
            total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
            if 0 < total <= len(ours):
                found.append(batch)
            if len(found) >= FIND_LIMIT:
                break
        return found

    batches = await _call(provider, config, "Listing Anthropic message batches", candidates, **kw)
    parts, running = [], []
    for batch in reversed(batches):  # oldest first: the order the parts were created in
        if batch.processing_status != "ended":
            running.append(batch)
            continue
        ids: list[str] = []
        lines = _result_lines(provider, client, config, batch, None, **kw)
        try:
            async for custom_id, _ in lines:
                if custom_id not in ours:
                    ids = []  # another submission's batch: one id says so
                    break
                if custom_id not in ids:
                    ids.append(custom_id)
        finally:
            await lines.aclose()
        if ids:
            parts.append({"batch_id": batch.id, "input_file_id": None, "custom_ids": ids,
                          "plain_ids": [], "created_at": batch.created_at})
    covered = {i for p in parts for i in p["custom_ids"]}
    if running and covered != ours:
        listed = ", ".join(f"{b.id} (created {b.created_at.isoformat(timespec='seconds')})" for b in running[:5])
        raise ModelError(
            f"Message batch(es) {listed} may hold this submission's requests; Anthropic shows a batch's "
            "request ids only in its results, once it has ended. Look again later (within 24 hours), and do "
            "not submit these requests again meanwhile.", retryable=True, error_class="batch_unconfirmed",
            model_id=config.id)
    if not parts:
        return None
    first = parts[0].pop("created_at")
    for part in parts[1:]:
        part.pop("created_at")
    return {
        "provider": "anthropic", "batch_id": parts[0]["batch_id"], "input_file_id": None,
        "model": _model_name(config, model), "model_id": config.id, "submission_id": submission_id,
        "structured": _structured(config), "total": len(covered),
        "submitted_at": first.astimezone(dt.timezone.utc).isoformat(timespec="seconds"),
        "parts": parts, "missing_ids": [i for i in custom_ids if i not in covered],
    }


# ------------------------------------------------------------------ poll
def _parts(handle: dict) -> list[dict]:
    if not isinstance(handle, dict) or handle.get("provider") not in BATCH_PROVIDERS:
        raise ValueError("Not a batch handle: pass the dict submit_batch returned.")
    parts = handle.get("parts")
    if parts:
        return parts
    return [{"batch_id": handle["batch_id"], "input_file_id": handle.get("input_file_id")}]


def _check_handle(provider_config: dict, handle: dict) -> ModelConfig:
    _parts(handle)
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


def _part_status(config: ModelConfig, batch, expected: int, secrets: list[str] | None = None) -> dict:
    if config.provider == "openai":
        counts = batch.request_counts
        state = _OPENAI_STATE.get(batch.status, "in_progress")
        errors = [redact(f"{e.message or e.code}" + (f" (line {e.line})" if e.line else ""), secrets)
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
        if batch.cancel_initiated_at is not None:
            state = "cancelled"
        elif counts.expired:  # requests expire only when the batch's 24 h run out
            state = "expired"
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
            statuses.append(_part_status(config, batch, len(part.get("custom_ids") or []), provider.secrets()))
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
            status = _part_status(config, batch, 0, provider.secrets())
            if status["state"] == "in_progress":
                raise ModelError(
                    f"Batch {part['batch_id']} is still running ({status['vendor_status']}, "
                    f"{status['done']:,} of {status['total']:,} done): poll until it has ended, then "
                    "fetch its results.",
                    retryable=True, error_class="batch_in_progress", model_id=config.id,
                )
            expected = part.get("custom_ids")
            plain = set(part.get("plain_ids") or [])
            if expected is None and config.provider == "openai":  # a handle without them
                expected, plain = await _input_ids(provider, client, config, part, batch, **kw)
            # An Anthropic handle without custom_ids: every result counts, none can be missed.
            open_ended = expected is None
            pending = dict.fromkeys(expected or [])
            seen: set[str] = set()
            secrets = provider.secrets()
            if status["state"] != "failed":
                mode = handle.get("structured") or _structured(config)
                wanted = None if open_ended else set(pending)
                async for custom_id, line in _result_lines(provider, client, config, batch, wanted, **kw):
                    if open_ended:
                        if custom_id in seen:
                            continue
                        seen.add(custom_id)
                    elif custom_id not in pending:
                        continue  # not ours, or already given before a download broke off
                    else:
                        del pending[custom_id]
                    if config.provider == "openai":
                        result = parse_openai_line(line, structured=custom_id not in plain, secrets=secrets)
                    else:
                        result = parse_anthropic_result(
                            custom_id, line, structured=None if custom_id in plain else mode, secrets=secrets)
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


async def _result_lines(provider, client, config, batch, wanted: set[str] | None, *, retries: int = RETRIES,
                        backoff: float = BACKOFF, sleep: Sleep | None = None) -> AsyncIterator[tuple[str, dict]]:
    """``(custom_id, line)`` for each result of a vendor batch, streamed, never held whole:
    OpenAI's output file then its error file (``line`` the whole line), Anthropic's results
    (``line`` the ``result`` object). A download that breaks off is opened again, up to
    ``retries`` times; results already given are skipped by the caller."""
    import httpx2

    sleep = asyncio.sleep if sleep is None else sleep
    kw = dict(retries=retries, backoff=backoff, sleep=sleep)
    broken = (httpx2.HTTPError, *_vendor_errors(config.provider))
    if config.provider == "openai":
        sources = [(f"batch file {fid}", lambda fid=fid: client.files.with_streaming_response.content(fid))
                   for fid in (batch.output_file_id, batch.error_file_id) if fid]
    else:
        sources = [(f"the results of message batch {batch.id}",
                    lambda: _Opened(client.messages.batches.results(batch.id)))]
    for what, opener in sources:
        for attempt in range(1, retries + 1):
            # Entering the SDK's streamed response sends the request (and raises on an error status).
            async def open_stream(opener=opener):
                manager = opener()
                return manager, await manager.__aenter__()

            manager, response = await _call(provider, config, f"Downloading {what}", open_stream, **kw)
            try:
                async for custom_id, line in _parse_stream(config, response):
                    if wanted is None or custom_id in wanted:
                        yield custom_id, line
                break
            except broken as e:
                if attempt == retries:
                    raise ModelError(
                        f"Downloading {what} broke off {retries} times ({type(e).__name__}): fetch the "
                        "results again later; results already read are given again and can be "
                        "matched by custom_id.", retryable=True, error_class="connection_lost",
                        model_id=config.id) from e
                await sleep(min(MAX_BACKOFF, backoff * 2 ** (attempt - 1)))
            finally:
                await manager.__aexit__(None, None, None)


class _Opened:
    """Anthropic's ``results()`` (an awaitable JSONL decoder) as an async context manager."""

    def __init__(self, awaitable) -> None:
        self.awaitable = awaitable
        self.decoder = None

    async def __aenter__(self):
        self.decoder = await self.awaitable
        return self.decoder

    async def __aexit__(self, *exc) -> None:
        if self.decoder is not None:
            await self.decoder.close()


async def _parse_stream(config, response) -> AsyncIterator[tuple[str, dict]]:
    import json

    if config.provider == "anthropic":
        async for item in response:
            yield item.custom_id, item.result.to_dict()
        return
    async for raw in response.iter_lines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            continue  # a broken line: its custom_id is reported missing
        if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
            yield line["custom_id"], line


async def _input_ids(provider, client, config, part, batch, **kw) -> tuple[list[str], set[str]]:
    """The custom_ids of an OpenAI part, and those sent without a schema, from its input file
    (for a handle stored without them)."""
    import json

    file_id = part.get("input_file_id") or batch.input_file_id
    content = await _call(provider, config, f"Downloading batch input file {file_id}",
                          lambda: client.files.content(file_id), **kw)
    ids, plain = [], set()
    for raw in content.text.splitlines():
        if raw.strip():
            line = json.loads(raw)
            ids.append(line["custom_id"])
            if "response_format" not in (line.get("body") or {}):
                plain.add(line["custom_id"])
    return ids, plain


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
            statuses.append(_part_status(config, batch, len(part.get("custom_ids") or []), provider.secrets()))
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
        self.input_price, self.output_price = prices(config.model_dump(), self.model)

    def add(self, result: BatchResult, batch_id: str) -> BatchResult:
        cost = None
        if self.input_price is not None:
            cost = (result.input_tokens * self.input_price + result.output_tokens * (self.output_price or 0.0)
                    ) / 1_000_000 * BATCH_DISCOUNT
        object.__setattr__(result, "cost_usd", cost)  # a result of ours, not yet handed out
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
